"""Every setting the gateway reads, with its environment variable named once.

Settings are read at call time, never at import: Chalice's test client and the sandbox set the
environment per request or per process, and a Lambda container keeps one module for many calls.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from chalicelib.errors import ConfigError

APPROVALS_TABLE = "APPROVALS_TABLE"
NONCES_TABLE = "NONCES_TABLE"
OUTBOUND_SECRET_ID = "OUTBOUND_SECRET_ID"
INBOUND_SECRET_ID = "INBOUND_SECRET_ID"
TOKEN_SECRET_ID = "TOKEN_SECRET_ID"
ZEYI_BASE_URL = "ZEYI_BASE_URL"
ZEYI_CONNECT_TIMEOUT_SECONDS = "ZEYI_CONNECT_TIMEOUT_SECONDS"
ZEYI_READ_TIMEOUT_SECONDS = "ZEYI_READ_TIMEOUT_SECONDS"
ZEYI_DEADLINE_SECONDS = "ZEYI_DEADLINE_SECONDS"
ZEYI_ENCRYPT = "ZEYI_ENCRYPT"
CALLBACK_ENCRYPTED = "CALLBACK_ENCRYPTED"
CALLBACK_REQUIRE_TOKEN = "CALLBACK_REQUIRE_TOKEN"
TOKEN_TTL_SECONDS = "TOKEN_TTL_SECONDS"
TIMESTAMP_SKEW_SECONDS = "TIMESTAMP_SKEW_SECONDS"
SECRETS_CACHE_SECONDS = "SECRETS_CACHE_SECONDS"
SUBMIT_LEASE_SECONDS = "SUBMIT_LEASE_SECONDS"
CANCEL_LEASE_SECONDS = "CANCEL_LEASE_SECONDS"
STUCK_PENDING_SECONDS = "STUCK_PENDING_SECONDS"
ALLOWED_SOURCE_IPS = "ALLOWED_SOURCE_IPS"
AWS_CONNECT_TIMEOUT_SECONDS = "AWS_CONNECT_TIMEOUT_SECONDS"
AWS_READ_TIMEOUT_SECONDS = "AWS_READ_TIMEOUT_SECONDS"
# Approval events (chalicelib.approvals.events): the stage's EventBridge bus, and the approvals
# table's stream the publishing function reads.
EVENT_BUS_NAME = "EVENT_BUS_NAME"
APPROVALS_STREAM_ARN = "APPROVALS_STREAM_ARN"
# Chalice imports app.py with the stage's environment variables set (for `chalice deploy` and
# `chalice package` too), so the stream handler's decorator reads the stream there. A stage that
# does not name it yet (the local stage, the tests; a deployed stage before its first bootstrap)
# gets this stand-in: `python -m ops config check` refuses to deploy with it, and the
# CloudFormation template names the real stream itself.
# File fields (chalicelib.approvals.files, docs/api.md "File fields"): the stage's attachments
# bucket, other buckets an app may name as s3://, the public base URL links are built on, and the
# limits and lifetimes of uploads, links and the URLs an app passes through.
ATTACHMENTS_BUCKET = "ATTACHMENTS_BUCKET"
FILES_READ_BUCKETS = "FILES_READ_BUCKETS"
PUBLIC_BASE_URL = "PUBLIC_BASE_URL"
FILES_MAX_BYTES = "FILES_MAX_BYTES"
FILES_ALLOWED_TYPES = "FILES_ALLOWED_TYPES"
FILES_UPLOAD_SECONDS = "FILES_UPLOAD_SECONDS"
FILES_DOWNLOAD_SECONDS = "FILES_DOWNLOAD_SECONDS"
FILES_GRACE_SECONDS = "FILES_GRACE_SECONDS"
FILES_URL_HORIZON_SECONDS = "FILES_URL_HORIZON_SECONDS"
FILES_ALLOW_HTTP = "FILES_ALLOW_HTTP"
# Documents and images an approver's phone or desktop can open.
DEFAULT_FILE_TYPES = (
    "application/pdf", "image/png", "image/jpeg", "image/gif", "image/webp", "text/plain",
    "text/csv", "application/msword", "application/vnd.ms-excel", "application/vnd.ms-powerpoint",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    "application/zip",
)
STREAM_ARN_UNSET = "arn:aws:dynamodb:us-east-1:000000000000:table/unset/stream/unset"

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True)
class Settings:
    approvals_table: str
    nonces_table: str
    outbound_secret_id: str
    inbound_secret_id: str
    token_secret_id: str
    zeyi_base_url: str
    zeyi_connect_timeout_seconds: float
    zeyi_read_timeout_seconds: float
    zeyi_deadline_seconds: float
    zeyi_encrypt: bool
    callback_encrypted: bool
    callback_require_token: bool
    token_ttl_seconds: int
    timestamp_skew_seconds: int
    secrets_cache_seconds: int
    submit_lease_seconds: int
    cancel_lease_seconds: int
    stuck_pending_seconds: int
    allowed_source_ips: tuple[str, ...]
    aws_connect_timeout_seconds: float
    aws_read_timeout_seconds: float
    event_bus_name: str = "approval-events"
    attachments_bucket: str = "jinrun-attachments"
    files_read_buckets: tuple[str, ...] = ()
    public_base_url: str = ""
    files_max_bytes: int = 25 * 1024 * 1024
    files_allowed_types: tuple[str, ...] = DEFAULT_FILE_TYPES
    files_upload_seconds: int = 900
    files_download_seconds: int = 300
    files_grace_seconds: int = 30 * 24 * 3600
    files_url_horizon_seconds: int = 7 * 24 * 3600
    files_allow_http: bool = False

    @property
    def nonce_ttl_seconds(self) -> int:
        # A nonce must outlive every timestamp that could still pass the window (±skew), twice over.
        return 4 * self.timestamp_skew_seconds


def _text(name: str, default: str) -> str:
    return os.environ.get(name, default).strip()


def _number(name: str, default: float, kind=float):
    raw = os.environ.get(name, "").strip()
    if not raw:
        return kind(default)
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"setting {name} must be a number, got {raw!r}") from None
    if value <= 0:
        raise ConfigError(f"setting {name} must be positive, got {raw!r}")
    return value


def _flag(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    lowered = raw.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigError(f"setting {name} must be true or false, got {raw!r}")


def load_settings() -> Settings:
    """Read the settings from the environment.

    Raises ConfigError naming the variable when a value cannot be used.
    """
    ips = _list(ALLOWED_SOURCE_IPS)
    stuck_pending_seconds = _number(STUCK_PENDING_SECONDS, 7 * 24 * 3600, int)
    return Settings(
        approvals_table=_text(APPROVALS_TABLE, "approvals"),
        nonces_table=_text(NONCES_TABLE, "nonces"),
        outbound_secret_id=_text(OUTBOUND_SECRET_ID, "jinrun/zeyi/outbound"),
        inbound_secret_id=_text(INBOUND_SECRET_ID, "jinrun/zeyi/inbound"),
        token_secret_id=_text(TOKEN_SECRET_ID, "jinrun/zeyi/token-key"),
        zeyi_base_url=_text(ZEYI_BASE_URL, "https://test.shjiuze.cn").rstrip("/"),
        zeyi_connect_timeout_seconds=_number(ZEYI_CONNECT_TIMEOUT_SECONDS, 3.0),
        zeyi_read_timeout_seconds=_number(ZEYI_READ_TIMEOUT_SECONDS, 10.0),
        zeyi_deadline_seconds=_number(ZEYI_DEADLINE_SECONDS, 12.0),
        zeyi_encrypt=_flag(ZEYI_ENCRYPT, False),
        callback_encrypted=_flag(CALLBACK_ENCRYPTED, False),
        callback_require_token=_flag(CALLBACK_REQUIRE_TOKEN, True),
        token_ttl_seconds=_number(TOKEN_TTL_SECONDS, 7200, int),
        timestamp_skew_seconds=_number(TIMESTAMP_SKEW_SECONDS, 300, int),
        secrets_cache_seconds=_number(SECRETS_CACHE_SECONDS, 300, int),
        submit_lease_seconds=_number(SUBMIT_LEASE_SECONDS, 120, int),
        cancel_lease_seconds=_number(CANCEL_LEASE_SECONDS, 600, int),
        # A PENDING approval older than this is reported stuck (chalicelib.approvals.stuck).
        stuck_pending_seconds=stuck_pending_seconds,
        allowed_source_ips=ips,
        aws_connect_timeout_seconds=_number(AWS_CONNECT_TIMEOUT_SECONDS, 1.0),
        aws_read_timeout_seconds=_number(AWS_READ_TIMEOUT_SECONDS, 3.0),
        event_bus_name=_text(EVENT_BUS_NAME, "approval-events"),
        attachments_bucket=_text(ATTACHMENTS_BUCKET, "jinrun-attachments"),
        files_read_buckets=_list(FILES_READ_BUCKETS),
        public_base_url=_text(PUBLIC_BASE_URL, "").rstrip("/"),
        files_max_bytes=_number(FILES_MAX_BYTES, 25 * 1024 * 1024, int),
        files_allowed_types=tuple(t.lower() for t in _list(FILES_ALLOWED_TYPES))
        or DEFAULT_FILE_TYPES,
        files_upload_seconds=_number(FILES_UPLOAD_SECONDS, 900, int),
        files_download_seconds=_number(FILES_DOWNLOAD_SECONDS, 300, int),
        files_grace_seconds=_number(FILES_GRACE_SECONDS, 30 * 24 * 3600, int),
        # A plain file URL must work at least this long after the send: by default until the
        # approval would be reported stuck.
        files_url_horizon_seconds=_number(FILES_URL_HORIZON_SECONDS, stuck_pending_seconds, int),
        files_allow_http=_flag(FILES_ALLOW_HTTP, False),
    )


def _list(name: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in _text(name, "").split(",") if part.strip())


def approvals_stream_arn() -> str:
    """The stream the approval events are published from, as the stage names it; the stand-in
    when it does not."""
    return _text(APPROVALS_STREAM_ARN, "") or STREAM_ARN_UNSET
