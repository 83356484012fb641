"""Zeyi's request signature: md5 over appKey + appSecret + timestamp + nonce + body.

md5(secret || message) is the partner's protocol, not our choice: it admits length extension, which
is why callers of ``verify`` also check strict formats, strict UTF-8 JSON, the nonce store and the
timestamp window (see docs/protocol.md). Kept in one module so it can be replaced.
"""
from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time

from chalicelib.errors import (
    NonceInvalidError,
    SignInvalidError,
    TimestampInvalidError,
    TimestampOutOfWindowError,
)

NONCE_LENGTH = 6
# Zeyi's header table says lower-case, its sign text mixed case, its Java SDK sends upper-case:
# we accept all three and send lower-case with digits, as the header table and its example do.
NONCE_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
_NONCE_RE = re.compile(r"[A-Za-z0-9]{6}")
_TIMESTAMP_RE = re.compile(r"[0-9]{13}")
_SIGN_RE = re.compile(r"[0-9A-Fa-f]{32}")


def sign(app_key: str, app_secret: str, timestamp: str, nonce: str, body: bytes,
         *, legacy: bool = False) -> str:
    """The 32 lower-case hex md5 Zeyi expects; ``legacy`` leaves the body out, as SDK 1.0.0 does."""
    digest = hashlib.md5(usedforsecurity=False)
    digest.update((app_key + app_secret + timestamp + nonce).encode("utf-8"))
    if not legacy:
        digest.update(body)
    return digest.hexdigest()


def verify(app_key: str, app_secret: str, timestamp: str, nonce: str, body: bytes,
           signature: str, *, legacy: bool = False) -> None:
    """Check ``signature`` in constant time, in either case.

    Raises SignInvalidError when it is not 32 hex characters or does not match.
    """
    if not _SIGN_RE.fullmatch(signature):
        raise SignInvalidError("sign must be 32 hexadecimal characters")
    expected = sign(app_key, app_secret, timestamp, nonce, body, legacy=legacy)
    if not hmac.compare_digest(expected.encode("ascii"), signature.lower().encode("ascii")):
        raise SignInvalidError("sign does not match the request")


def new_nonce() -> str:
    return "".join(secrets.choice(NONCE_ALPHABET) for _ in range(NONCE_LENGTH))


def check_nonce(nonce: str) -> None:
    """Raises NonceInvalidError unless ``nonce`` is exactly 6 of [A-Za-z0-9]."""
    if not _NONCE_RE.fullmatch(nonce):
        raise NonceInvalidError("nonce must be 6 characters of A-Z, a-z, 0-9")


def new_timestamp(clock=time.time) -> str:
    return str(int(clock() * 1000))


def check_timestamp(timestamp: str, skew_seconds: int, clock=time.time) -> None:
    """Raises TimestampInvalidError for anything but 13 digits, TimestampOutOfWindowError when the
    time is more than ``skew_seconds`` away from now, in either direction."""
    if not _TIMESTAMP_RE.fullmatch(timestamp):
        raise TimestampInvalidError("timestamp must be epoch milliseconds, 13 digits")
    drift_ms = int(timestamp) - int(clock() * 1000)
    if abs(drift_ms) > skew_seconds * 1000:
        direction = "in the future" if drift_ms > 0 else "too old"
        raise TimestampOutOfWindowError(
            f"timestamp is {direction}: allowed skew is {skew_seconds} s")
