"""``python -m ops secrets ...``: rotating the gateway's credentials without a plaintext file and
without a failed callback.

- ``add-inbound``: a new inbound credential (generated with a CSPRNG, or its appSecret read from
  stdin) is added next to the current ones, straight into Secrets Manager. The gateway accepts
  every credential of the list, so Zeyi can switch whenever it likes.
- ``last-seen APPKEY``: when Zeyi last used a credential (a CloudWatch Logs Insights query over
  the API handler's log group, where every verified call logs its appKey).
- ``retire-inbound APPKEY``: removes it, unless Zeyi used it recently or it is the last one.
- ``rotate-token-key``: one step per run: add a new key (verifies only), make it the signing key
  once every container has it, retire the old key once no token signed by it can be valid.

A secret value is printed only with ``--show``, once, to stdout; never to a log (this module
logs nothing and silences botocore's request logging while it holds a value).
"""
from __future__ import annotations

import contextlib
import json
import logging
import re
import secrets as secrets_module
import string
import sys
import time
from datetime import UTC, datetime

from chalicelib.errors import ConfigError
from chalicelib.protocol.credentials import parse_inbound, parse_token_keys
from chalicelib.runtime import settings
from ops.common import ACTED, NOTHING_TO_DO, WAIT, OpsError, aws_session, client, error_code
from ops.stage_config import API_HANDLER, Stage, load_stage

APP_SECRET_BYTES = 16  # 32 hex characters: a valid AES-256 key too, for encrypted callbacks
IV_CHARACTERS = 16
TOKEN_KEY_BYTES = 48       # 64 URL-safe characters
KEY_ADDED = "JINRUN_TOKEN_KEY_ADDED"        # staging labels: which rotation step a version is
KEY_PROMOTED = "JINRUN_TOKEN_KEY_PROMOTED"
_APP_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
QUERY_ROWS = 50
QUERY_TIMEOUT_SECONDS = 60.0


@contextlib.contextmanager
def _quiet_botocore():
    """botocore logs request parameters at DEBUG: a SecretString must never reach a log."""
    loggers = [logging.getLogger(name) for name in ("botocore", "boto3", "urllib3")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _when(epoch_seconds: float) -> str:
    return datetime.fromtimestamp(epoch_seconds, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


# -- inbound credentials ------------------------------------------------------------------------

def _read_inbound(secrets_client, secret_id: str) -> list[dict] | None:
    """The inbound secret's credentials as stored (None when the secret does not exist; empty
    for the placeholder infra/resources.yaml creates). Raises OpsError for an unusable value."""
    try:
        raw = secrets_client.get_secret_value(SecretId=secret_id)["SecretString"]
    except Exception as exc:
        if error_code(exc) == "ResourceNotFoundException":
            return None
        raise
    try:
        data = json.loads(raw)
    except ValueError:
        raise OpsError(f"secret {secret_id} is not JSON: fix it by hand first") from None
    if isinstance(data, dict) and set(data) == {"placeholder"}:
        return []
    try:
        parse_inbound(secret_id, raw)
    except ConfigError as exc:
        raise OpsError(f"{exc.message}: fix it by hand first") from None
    return list(data["credentials"]) if "credentials" in data else [data]


def _inbound_value(secret_id: str, credentials: list[dict], *, encrypted: bool) -> str:
    """The secret's new JSON, checked with the gateway's own parser before anything is stored.
    Raises ConfigError naming the problem (never a value)."""
    value = json.dumps({"credentials": credentials}, ensure_ascii=False)
    parsed = parse_inbound(secret_id, value)
    if encrypted:
        for credential in parsed.by_app_key.values():
            credential.codec()  # raises ConfigError: callbacks are encrypted and it has no iv
    return value


def _new_app_key(stage: Stage, existing: set[str]) -> str:
    today = datetime.now(UTC).strftime("%Y%m%d")
    while True:
        key = f"jinrun-{stage.name}-{today}-{secrets_module.token_hex(3)}"
        if key not in existing:
            return key


def list_inbound_command(args) -> int:
    """The inbound appKeys, oldest first, one a line (no secret): the first is the one to retire
    after a rotation."""
    stage = load_stage(args.stage, args.config)
    secret_id = stage.setting(settings.INBOUND_SECRET_ID)
    with _quiet_botocore():
        credentials = _read_inbound(client(aws_session(args.region), "secretsmanager"), secret_id)
    if credentials is None:
        raise OpsError(f"secret {secret_id} does not exist: create it with `python -m ops "
                       f"secrets add-inbound --stage {stage.name} --show`")
    if not credentials:
        print(f"{secret_id} holds no credential yet (the stack's placeholder): `python -m ops "
              f"secrets add-inbound --stage {stage.name} --show`", file=sys.stderr)
        return NOTHING_TO_DO
    for credential in credentials:
        print(credential["appKey"])
    return ACTED


def add_inbound_command(args) -> int:
    stage = load_stage(args.stage, args.config)
    secret_id = stage.setting(settings.INBOUND_SECRET_ID)
    encrypted = stage.flag(settings.CALLBACK_ENCRYPTED)
    if args.from_stdin:
        app_secret = sys.stdin.readline().rstrip("\r\n")
        if not app_secret:
            raise OpsError("no appSecret on stdin (one line expected)")
    else:
        app_secret = secrets_module.token_hex(APP_SECRET_BYTES)
    if args.app_key is not None and not _APP_KEY_RE.fullmatch(args.app_key):
        raise OpsError("--app-key must be 1 to 64 characters of A-Z, a-z, 0-9, '.', '_', ':', "
                       "'-', starting with a letter or digit")
    session = aws_session(args.region)
    secrets_client = client(session, "secretsmanager")
    with _quiet_botocore():
        current = _read_inbound(secrets_client, secret_id)
        existing = {c.get("appKey") for c in current or []}
        app_key = args.app_key or _new_app_key(stage, existing)
        if app_key in existing:
            raise OpsError(f"appKey {app_key} is already in {secret_id}")
        credential = {"appKey": app_key, "appSecret": app_secret}
        if encrypted or args.with_iv:
            alphabet = string.ascii_letters + string.digits
            credential["iv"] = "".join(secrets_module.choice(alphabet)
                                       for _ in range(IV_CHARACTERS))
        if args.legacy_sign:
            credential["legacySign"] = True
        credentials = [*(current or []), credential]
        try:
            value = _inbound_value(secret_id, credentials, encrypted=encrypted)
        except ConfigError as exc:
            raise OpsError(exc.message) from None
        if current is None:
            from ops.bootstrap import reconcile_secret

            secrets_client.create_secret(
                Name=secret_id, SecretString=value,
                Description="Jinrun approval gateway credential (see docs/operations.md)",
                Tags=[{"Key": k, "Value": v} for k, v in stage.tags.items()])
            reconcile_secret(secrets_client, secret_id, stage.tags)
        else:
            secrets_client.put_secret_value(SecretId=secret_id, SecretString=value)
    cache = stage.seconds(settings.SECRETS_CACHE_SECONDS, 300)
    accepted = ", ".join(c["appKey"] for c in credentials)
    print(f"added inbound credential {app_key} to {secret_id}; it now accepts: {accepted}")
    print(f"every gateway container accepts it within {cache} s (SECRETS_CACHE_SECONDS, by "
          f"{_when(time.time() + cache)}); then hand it to Zeyi over a secure channel")
    if args.show:
        print(f"appKey:    {app_key}")
        print(f"appSecret: {app_secret}")
        if "iv" in credential:
            print(f"iv:        {credential['iv']}")
    else:
        print("the appSecret is not shown (--show prints it once); read it when you hand it "
              f"over: aws secretsmanager get-secret-value --secret-id {secret_id} "
              "--query SecretString --output text")
    return 0


def retire_inbound_command(args) -> int:
    stage = load_stage(args.stage, args.config)
    secret_id = stage.setting(settings.INBOUND_SECRET_ID)
    session = aws_session(args.region)
    secrets_client = client(session, "secretsmanager")
    with _quiet_botocore():
        current = _read_inbound(secrets_client, secret_id)
        if current is None:
            raise OpsError(f"secret {secret_id} does not exist in {session.region_name}")
        keys = [c.get("appKey") for c in current]
        if args.app_key not in keys:
            raise OpsError(f"appKey {args.app_key} is not in {secret_id} (it has: "
                           f"{', '.join(keys) or 'none'})")
        if len(keys) == 1:
            raise OpsError(f"{args.app_key} is the only inbound credential: add its successor "
                           f"first (python -m ops secrets add-inbound --stage {stage.name})")
        if not args.force:
            seen = last_seen(client(session, "logs"), stage.log_group(API_HANDLER), args.app_key,
                             days=args.idle_days)
            if seen is not None:
                raise OpsError(
                    f"Zeyi used {args.app_key} at {_when(seen)}, within the last "
                    f"{args.idle_days:g} day(s): retire it once Zeyi has switched (see "
                    "`secrets last-seen`), or pass --force")
        remaining = [c for c in current if c.get("appKey") != args.app_key]
        try:
            value = _inbound_value(secret_id, remaining,
                                   encrypted=stage.flag(settings.CALLBACK_ENCRYPTED))
        except ConfigError as exc:
            raise OpsError(exc.message) from None
        secrets_client.put_secret_value(SecretId=secret_id, SecretString=value)
    cache = stage.seconds(settings.SECRETS_CACHE_SECONDS, 300)
    print(f"retired {args.app_key} from {secret_id}; it now accepts: "
          f"{', '.join(c['appKey'] for c in remaining)}")
    print(f"containers stop accepting it within {cache} s (SECRETS_CACHE_SECONDS)")
    return 0


# -- when an appKey was last used ------------------------------------------------------------------

def _query_string(app_key: str) -> str:
    return (f'fields @timestamp, @message | filter appKey = "{app_key}" '
            f"| sort @timestamp desc | limit {QUERY_ROWS}")


def _row_time(value: str) -> float | None:
    if value.isdigit():
        return int(value) / 1000
    try:
        return datetime.strptime(value, "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


def last_seen(logs_client, log_group: str, app_key: str, *, days: float, clock=time.time,
              sleep=time.sleep, timeout_seconds: float = QUERY_TIMEOUT_SECONDS) -> float | None:
    """Epoch seconds of the latest log line of ``log_group`` that names ``app_key`` within the
    last ``days``, or None. Raises OpsError when the group does not exist or the query fails."""
    if not _APP_KEY_RE.fullmatch(app_key):
        raise OpsError(f"{app_key!r} is not an appKey")
    end = int(clock())
    try:
        query_id = logs_client.start_query(
            logGroupName=log_group, startTime=end - int(days * 86400), endTime=end + 60,
            queryString=_query_string(app_key))["queryId"]
    except Exception as exc:
        if error_code(exc) == "ResourceNotFoundException":
            raise OpsError(f"log group {log_group} does not exist: the gateway has not logged "
                           "in this region yet (wrong region?)") from None
        raise
    deadline = time.monotonic() + timeout_seconds
    while True:
        answer = logs_client.get_query_results(queryId=query_id)
        if answer["status"] == "Complete":
            break
        if answer["status"] in {"Failed", "Cancelled", "Timeout", "Unknown"}:
            raise OpsError(f"the Logs Insights query on {log_group} ended {answer['status']}")
        if time.monotonic() > deadline:
            raise OpsError(f"the Logs Insights query on {log_group} took more than "
                           f"{timeout_seconds:g} s")
        sleep(1)
    latest = None
    for row in answer.get("results", []):
        fields = {cell["field"]: cell.get("value", "") for cell in row}
        try:
            message = json.loads(fields.get("@message", ""))
        except ValueError:
            continue
        # The query filters already; checking the line again keeps a loose match out.
        if not isinstance(message, dict) or message.get("appKey") != app_key:
            continue
        moment = _row_time(fields.get("@timestamp", ""))
        if moment is not None and (latest is None or moment > latest):
            latest = moment
    return latest


def last_seen_command(args) -> int:
    stage = load_stage(args.stage, args.config)
    session = aws_session(args.region)
    group = stage.log_group(API_HANDLER)
    seen = last_seen(client(session, "logs"), group, args.app_key, days=args.days)
    if seen is None:
        print(f"{args.app_key}: not seen in {group} in the last {args.days:g} day(s)")
    else:
        print(f"{args.app_key}: last seen {_when(seen)} ({int(time.time() - seen)} s ago) in "
              f"{group}")
    return 0


# -- the access-token signing key ------------------------------------------------------------------

class Waiting(list):
    """What ``rotate_token_key`` says when the next step is not due yet."""


def rotate_token_key(secrets_client, secret_id: str, *, cache_seconds: int, ttl_seconds: int,
                     clock=time.time) -> list[str]:
    """Take the next due step of a token-key rotation; return what it did or how long to wait.

    Steps (each a new version of the secret, labelled so the next run knows where it stands):
    [old] -> [old, new] (every container learns to verify new) -> after the cache period,
    [new, old] (new signs) -> after the token TTL plus the cache period, [new]. Raises OpsError
    when the secret holds several keys that no run of this command put there.
    """
    try:
        current = secrets_client.get_secret_value(SecretId=secret_id, VersionStage="AWSCURRENT")
    except Exception as exc:
        if error_code(exc) == "ResourceNotFoundException":
            raise OpsError(f"secret {secret_id} does not exist: create it with "
                           "`python -m ops.bootstrap --token-key generate`") from None
        raise
    try:
        keys = [key.decode("utf-8") for key in
                parse_token_keys(secret_id, current["SecretString"]).keys]
    except ConfigError as exc:
        raise OpsError(exc.message) from None
    labels = set(current.get("VersionStages", []))
    created = current["CreatedDate"]
    since = created.timestamp() if isinstance(created, datetime) else float(created)
    now = clock()

    def put(new_keys: list[str], label: str | None) -> None:
        stages = ["AWSCURRENT", label] if label else ["AWSCURRENT"]
        secrets_client.put_secret_value(SecretId=secret_id,
                                        SecretString=json.dumps({"keys": new_keys}),
                                        VersionStages=stages)

    if KEY_ADDED in labels and len(keys) == 2:
        due = since + cache_seconds
        if now < due:
            return Waiting([f"step 1 of 3 done: the new key verifies; wait {int(due - now) + 1} s "
                            f"more (until {_when(due)}), then run this again to make it the "
                            "signing key"])
        put([keys[1], keys[0]], KEY_PROMOTED)
        due = now + ttl_seconds + cache_seconds
        return ["step 2 of 3: the new key signs every new token now",
                f"run this again after {_when(due)} (tokens and file links valid {ttl_seconds} s"
                f" + cache {cache_seconds} s) to retire the old key"]
    if KEY_PROMOTED in labels and len(keys) == 2:
        due = since + ttl_seconds + cache_seconds
        if now < due:
            return Waiting([f"step 2 of 3 done: tokens signed by the old key may still be valid; "
                            f"wait {int(due - now) + 1} s more (until {_when(due)}), then run "
                            "this again"])
        put([keys[0]], None)
        return ["step 3 of 3: retired the old key; the rotation is complete"]
    if len(keys) == 1:
        put([keys[0], secrets_module.token_urlsafe(TOKEN_KEY_BYTES)], KEY_ADDED)
        due = now + cache_seconds
        return ["step 1 of 3: added a new key; it verifies tokens but signs none yet",
                f"run this again after {_when(due)} (cache {cache_seconds} s) to make it the "
                "signing key"]
    raise OpsError(f"secret {secret_id} holds {len(keys)} keys and no rotation of this command "
                   "is in progress (edited by hand?): reduce it to the signing key by hand, "
                   "then start again")


def rotate_token_key_command(args) -> int:
    stage = load_stage(args.stage, args.config)
    session = aws_session(args.region)
    with _quiet_botocore():
        lines = rotate_token_key(
            client(session, "secretsmanager"), stage.setting(settings.TOKEN_SECRET_ID),
            cache_seconds=stage.seconds(settings.SECRETS_CACHE_SECONDS, 300),
            # The same keys sign the file links (chalicelib.protocol.file_links), which must
            # work while their approval is open and through its grace period: the old key is
            # retired only once no link it signed can still be valid.
            ttl_seconds=max(stage.seconds(settings.TOKEN_TTL_SECONDS, 7200),
                            stage.seconds(settings.STUCK_PENDING_SECONDS, 7 * 24 * 3600)
                            + stage.seconds(settings.FILES_GRACE_SECONDS, 30 * 24 * 3600)))
    for line in lines:
        print(line)
    return WAIT if isinstance(lines, Waiting) else ACTED
