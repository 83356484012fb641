"""Stateless access tokens for Zeyi's callbacks: HMAC-SHA256 over the appKey and an expiry.

Checking a token costs no AWS call (the key is cached with the other secrets). A token is bound
to the appKey that obtained it, so one inbound credential cannot use another's token. Several keys
may be configured: the first signs, all verify, so the key can be rotated with no failed callback.

Format: ``v1.<base64url(JSON {"k": appKey, "exp": epoch s, "jti": random})>.<base64url(mac)>``.
The payload is at most 512 characters, which caps the appKey at 318 ASCII characters (fewer
when JSON escapes some): a longer one is refused when the inbound secret is loaded
(``check_app_key``), so no token is ever issued that every callback would refuse.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import time
from typing import TYPE_CHECKING

from chalicelib.errors import ConfigError, TokenInvalidError

if TYPE_CHECKING:  # credentials imports this module to check each appKey when it is loaded
    from chalicelib.protocol.credentials import TokenKeys

TOKEN_TYPE = "Bearer"  # noqa: S105 - the OAuth2 token type, not a secret
_VERSION = "v1"
# The payload's limit, in the regex below and at issue time: keep the two equal.
MAX_PAYLOAD_CHARS = 512
_TOKEN_RE = re.compile(r"v1\.([A-Za-z0-9_-]{1,512})\.([A-Za-z0-9_-]{43})")
_JTI_BYTES = 16
# An expiry in epoch seconds has 10 digits until the year 2286.
_EXP_DIGITS = 10
_BEARER_RE = re.compile(r"Bearer ([!-~]{1,1024})", re.IGNORECASE)


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _claims(payload: str) -> dict:
    """The claims of a token whose MAC verified. Only a holder of the key can mint one, so a
    payload that is not a JSON object means a broken issuer: still a refusal, never a 500."""
    try:
        claims = json.loads(b64url_decode(payload))
    except ValueError:  # binascii.Error and UnicodeDecodeError included
        raise TokenInvalidError("access token is not valid") from None
    if not isinstance(claims, dict):
        raise TokenInvalidError("access token is not valid")
    return claims


def mac(key: bytes, signed_part: str) -> bytes:
    """HMAC-SHA256 of ``signed_part``, which starts with its token type's version tag (``v1``
    access tokens, ``f1`` file links: chalicelib.protocol.file_links), so that one kind of token
    signed with the shared keys is never taken for the other."""
    return hmac.new(key, signed_part.encode("ascii"), hashlib.sha256).digest()


def signed_by_any(keys: TokenKeys, signed_part: str, given_mac: bytes) -> bool:
    """Whether any of ``keys`` (the current one and those being retired) made ``given_mac``;
    compared in constant time."""
    return any(hmac.compare_digest(mac(key, signed_part), given_mac) for key in keys.keys)


def _payload(app_key: str, exp: int, jti: str) -> str:
    claims = {"k": app_key, "exp": exp, "jti": jti}
    return b64url_encode(json.dumps(claims, separators=(",", ":")).encode("utf-8"))


def _too_long(app_key: str) -> ConfigError:
    return ConfigError(f"appKey {app_key[:16]}... ({len(app_key)} characters) is too long: its"
                       f" access tokens would be over {MAX_PAYLOAD_CHARS} characters of payload,"
                       " which every callback refuses")


def check_app_key(app_key: str) -> None:
    """Raises ConfigError when ``app_key`` is too long for any token issued to it to verify."""
    longest = _payload(app_key, int("9" * _EXP_DIGITS), "0" * (2 * _JTI_BYTES))
    if len(longest) > MAX_PAYLOAD_CHARS:
        raise _too_long(app_key)


def issue_token(keys: TokenKeys, app_key: str, ttl_seconds: int, *, clock=time.time) -> str:
    """Raises ConfigError rather than issue a token that verify_authorization would refuse."""
    payload = _payload(app_key, int(clock()) + ttl_seconds, secrets.token_hex(_JTI_BYTES))
    if len(payload) > MAX_PAYLOAD_CHARS:
        raise _too_long(app_key)
    signed_part = f"{_VERSION}.{payload}"
    return f"{signed_part}.{b64url_encode(mac(keys.signing_key, signed_part))}"


def verify_authorization(keys: TokenKeys, authorization: str | None, app_key: str, *,
                         clock=time.time) -> None:
    """Check an ``Authorization: Bearer <token>`` header for ``app_key``.

    Raises TokenInvalidError when it is missing, malformed, forged, expired or issued to another
    appKey. The message never repeats the token.
    """
    if not authorization:
        raise TokenInvalidError("Authorization header with a Bearer token is required")
    bearer = _BEARER_RE.fullmatch(authorization.strip())
    match = _TOKEN_RE.fullmatch(bearer.group(1)) if bearer else None
    if match is None:
        raise TokenInvalidError("access token is malformed")
    signed_part = f"{_VERSION}.{match.group(1)}"
    given_mac = b64url_decode(match.group(2))
    if not signed_by_any(keys, signed_part, given_mac):
        raise TokenInvalidError("access token is not valid")
    claims = _claims(match.group(1))
    if claims.get("k") != app_key:
        raise TokenInvalidError("access token was issued to another appKey")
    if not isinstance(claims.get("exp"), int) or claims["exp"] <= clock():
        raise TokenInvalidError("access token has expired; get a new one from /auth/token")
