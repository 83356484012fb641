"""File fields: the references an internal app may write, the stable links Zeyi receives, and the
checks that refuse a plain URL which cannot last as long as the approval.

A file field's ``value`` (docs/api.md, "File fields") is one of:
- a ``fileId`` from ``POST /files``, written as is: ``file-`` and 32 lowercase hex digits;
- an object the gateway may read, written ``s3://<bucket>/<key>`` with the key as stored (not
  URL-encoded), in the stage's attachments bucket or one of its allow-listed buckets;
- a plain https URL that will still work when the approver clicks it (``durability_problem``).

The first two are replaced, in the body signed and sent to Zeyi, by
``<public API>/files/<link token>``. A link token is
``f1.<base64url(JSON claims)>.<base64url(HMAC-SHA256)>``, MAC'd with the gateway's token keys
(the first signs, every one verifies, as for access tokens: rotating the key keeps a valid link
working while the old key is still listed). The ``f1.`` prefix is inside the MAC, so an access
token can never pass as a link, nor the reverse. The claims name the object, the code and the
attempt; they carry no secret (the bucket and key are not secret: only the gateway's role can
read them).

Pure: no AWS, no clock of its own.
"""
from __future__ import annotations

import json
import re
import string
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import parse_qsl, quote, urlsplit

from chalicelib.protocol.credentials import TokenKeys
from chalicelib.protocol.tokens import b64url_decode, b64url_encode, mac, signed_by_any

FILE_ID_RE = re.compile(r"file-[0-9a-f]{32}")
S3_PREFIX = "s3://"
# S3's bucket naming rules (the common subset: no dots next to each other, 3 to 63 characters).
_BUCKET_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]|\.(?!\.)){1,61}[a-z0-9]")
KEY_MAX_BYTES = 1024  # S3's own limit
_LINK_VERSION = "f1"
_LINK_RE = re.compile(r"f1\.([A-Za-z0-9_-]{1,3000})\.([A-Za-z0-9_-]{43})")
UPLOAD_PREFIX = "uploads/"
# Where a presigned URL's expiry can be read: SigV4 (X-Amz-Date + X-Amz-Expires) and SigV2 or
# CloudFront (Expires, epoch seconds). Names are matched case-insensitively, as S3 does.
_SECURITY_TOKEN = "x-amz-security-token"  # noqa: S105 - a query parameter's name


@dataclass(frozen=True)
class ObjectRef:
    """An S3 object a file field names, and what an approver's browser is told about it."""

    bucket: str
    key: str
    file_name: str
    content_type: str


@dataclass(frozen=True)
class LinkClaims:
    ref: ObjectRef
    code: str
    attempt_id: str
    issued_at_ms: int


class LinkInvalid(Exception):  # noqa: N818 - a verdict, not a fault: becomes a 404 page
    """A link token that is malformed, damaged or not signed by any of the gateway's keys."""


def is_file_id(value: str) -> bool:
    return FILE_ID_RE.fullmatch(value) is not None


def upload_key(file_id: str) -> str:
    return f"{UPLOAD_PREFIX}{file_id}"


def parse_s3_url(value: str) -> tuple[str, str] | None:
    """``(bucket, key)`` of an ``s3://bucket/key`` reference, None when ``value`` is not one.

    Raises ValueError (with the reason) for an ``s3://`` value that is malformed."""
    if not value.startswith(S3_PREFIX):
        return None
    bucket, _, key = value[len(S3_PREFIX):].partition("/")
    if not _BUCKET_RE.fullmatch(bucket):
        raise ValueError("names no valid bucket: write s3://<bucket>/<key>")
    if not key or len(key.encode("utf-8")) > KEY_MAX_BYTES or not key.isprintable():
        raise ValueError(f"names no valid key: write s3://<bucket>/<key>, the key as stored"
                         f" (1 to {KEY_MAX_BYTES} bytes, printable)")
    return bucket, key


def issue_link_token(keys: TokenKeys, claims: LinkClaims) -> str:
    data = {"b": claims.ref.bucket, "k": claims.ref.key, "n": claims.ref.file_name,
            "t": claims.ref.content_type, "c": claims.code, "a": claims.attempt_id,
            "i": claims.issued_at_ms}
    payload = b64url_encode(json.dumps(data, ensure_ascii=False, separators=(",", ":"))
                         .encode("utf-8"))
    signed_part = f"{_LINK_VERSION}.{payload}"
    return f"{signed_part}.{b64url_encode(mac(keys.signing_key, signed_part))}"


def verify_link_token(keys: TokenKeys, token: str) -> LinkClaims:
    """The claims of a link token signed by any of ``keys``.

    Raises LinkInvalid when it is malformed, damaged or forged."""
    match = _LINK_RE.fullmatch(token or "")
    if match is None:
        raise LinkInvalid("malformed")
    signed_part = f"{_LINK_VERSION}.{match.group(1)}"
    given = b64url_decode(match.group(2))
    if not signed_by_any(keys, signed_part, given):
        raise LinkInvalid("not signed by the gateway")
    try:
        data = json.loads(b64url_decode(match.group(1)))
        ref = ObjectRef(bucket=_str(data["b"]), key=_str(data["k"]), file_name=_str(data["n"]),
                        content_type=_str(data["t"]))
        issued = data["i"]
        if not isinstance(issued, int) or isinstance(issued, bool):
            raise ValueError("i")
        return LinkClaims(ref=ref, code=_str(data["c"]), attempt_id=_str(data["a"]),
                          issued_at_ms=issued)
    except (ValueError, KeyError, TypeError):
        # Only a holder of the key can mint a token, so this is a broken issuer: still a 404.
        raise LinkInvalid("claims unreadable") from None


def _str(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("not a string")
    return value


def link_url(public_base_url: str, token: str) -> str:
    return f"{public_base_url.rstrip('/')}/files/{token}"


# -- plain URLs: can this one still work when the approver clicks it? -----------------------------

DO_INSTEAD = ("upload the file (POST /files) and send its fileId, or name the object as"
              " s3://<bucket>/<key>")


def durability_problem(url: str, *, now_s: float, horizon_seconds: int,
                       allow_http: bool) -> str | None:
    """Why a file URL cannot be relied on until the approval is decided, None when it can.

    ``horizon_seconds``: how long after the send the URL must still work."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "https" and not allow_http:
        return "is not an https URL"
    query = {name.lower(): value for name, value in parse_qsl(parts.query,
                                                               keep_blank_values=True)}
    if _SECURITY_TOKEN in query:
        return ("is presigned with temporary credentials (X-Amz-Security-Token): it stops"
                " working when the role session that signed it ends, whatever its expiry says")
    expires_at = _expiry(query, now_s)
    if expires_at is not None and expires_at < now_s + horizon_seconds:
        when = datetime.fromtimestamp(expires_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return (f"expires at {when}, before the approval can be expected to be decided"
                f" (it must work for {horizon_seconds} s after the send)")
    return None


def _expiry(query: dict[str, str], now_s: float) -> float | None:
    if "x-amz-expires" in query:
        try:
            seconds = int(query["x-amz-expires"])
        except ValueError:
            return now_s  # unreadable: assume the worst
        signed = query.get("x-amz-date", "")
        try:
            start = datetime.strptime(signed, "%Y%m%dT%H%M%SZ").replace(
                tzinfo=UTC).timestamp()
        except ValueError:
            start = now_s
        return start + seconds
    if "expires" in query:
        try:
            return float(int(query["expires"]))
        except ValueError:
            return now_s
    return None


# -- what the approver's browser is told -----------------------------------------------------------

_ATTR_CHARS = set(string.ascii_letters + string.digits + "!#$&+-.^_`|~")


def content_disposition(file_name: str) -> str:
    """``attachment`` with the name twice (RFC 6266): an ASCII fallback in ``filename`` and the
    exact UTF-8 name in ``filename*`` (RFC 5987), which every current browser prefers."""
    fallback = "".join(ch if 32 <= ord(ch) < 127 and ch not in '"\\%' else "_"
                       for ch in file_name) or "file"
    encoded = "".join(ch if ch in _ATTR_CHARS else quote(ch, safe="") for ch in file_name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}"


def metadata_name(file_name: str) -> str:
    """The file name as S3 user metadata can hold it (ASCII only): percent-encoded UTF-8."""
    return quote(file_name, safe="")
