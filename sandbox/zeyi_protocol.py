"""Zeyi's wire protocol as Zeyi itself speaks it, written from docs/protocol.md alone.

This module must not import ``chalicelib``: the simulator checks the gateway's signatures and
ciphertexts with its own code, so the two implementations test each other.

- sign = md5 hex of appKey + appSecret + timestamp + nonce + body (the raw bytes as sent);
- optional AES-CBC/PKCS#7, key = appSecret bytes, iv = iv bytes, plaintext = appKey + timestamp +
  nonce + data, the wire body is the Base64 text and the sign covers that text;
- JSON bodies serialized like Gson (Zeyi's Java peers): compact, UTF-8, ``< > & ' =`` escaped.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
import time
from dataclasses import dataclass, field

NONCE_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"  # Zeyi's SDK sends upper-case
_NONCE_RE = re.compile(r"[A-Za-z0-9]{6}")
_TIMESTAMP_RE = re.compile(r"[0-9]{13}")
_SIGN_RE = re.compile(r"[0-9A-Fa-f]{32}")
_GSON_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "'": "\\u0027", "=": "\\u003d"}


@dataclass(frozen=True)
class Credential:
    """One appKey/appSecret pair; ``iv`` only when the pair also encrypts."""

    app_key: str
    app_secret: str = field(repr=False)
    iv: str | None = field(default=None, repr=False)

    @classmethod
    def from_json(cls, data: dict) -> Credential:
        return cls(app_key=data["appKey"], app_secret=data["appSecret"], iv=data.get("iv"))


class ProtocolError(Exception):
    """A request broke the protocol; ``error_code`` is what the simulator answers with."""

    def __init__(self, error_code: str, message: str):
        super().__init__(message)
        self.error_code = error_code
        self.message = message


def sign(app_key: str, app_secret: str, timestamp: str, nonce: str, body: bytes) -> str:
    digest = hashlib.md5(usedforsecurity=False)  # the partner's protocol, not a choice
    digest.update((app_key + app_secret + timestamp + nonce).encode("utf-8"))
    digest.update(body)
    return digest.hexdigest()


def new_nonce() -> str:
    return "".join(secrets.choice(NONCE_ALPHABET) for _ in range(6))


def new_timestamp(clock=time.time) -> str:
    return str(int(clock() * 1000))


def signed_headers(credential: Credential, body: bytes, *, clock=time.time) -> dict[str, str]:
    """Fresh timestamp and nonce, and the sign over ``body`` exactly as it will be sent."""
    timestamp = new_timestamp(clock)
    nonce = new_nonce()
    return {"appKey": credential.app_key, "timestamp": timestamp, "nonce": nonce,
            "sign": sign(credential.app_key, credential.app_secret, timestamp, nonce, body)}


def check_headers(credential: Credential | None, headers: dict[str, str], body: bytes, *,
                  skew_seconds: int, clock=time.time) -> None:
    """Check the four security headers in the protocol's order, all but the nonce store.

    Raises ProtocolError with APP_KEY_UNKNOWN, TIMESTAMP_INVALID, TIMESTAMP_OUT_OF_WINDOW,
    NONCE_INVALID or SIGN_INVALID.
    """
    if credential is None or headers.get("appKey") != credential.app_key:
        raise ProtocolError("APP_KEY_UNKNOWN", "appKey is not known")
    timestamp = headers.get("timestamp") or ""
    if not _TIMESTAMP_RE.fullmatch(timestamp):
        raise ProtocolError("TIMESTAMP_INVALID", "timestamp must be 13 digits of epoch ms")
    if abs(int(timestamp) - int(clock() * 1000)) > skew_seconds * 1000:
        raise ProtocolError("TIMESTAMP_OUT_OF_WINDOW",
                            f"timestamp is more than {skew_seconds} s away from now")
    nonce = headers.get("nonce") or ""
    if not _NONCE_RE.fullmatch(nonce):
        raise ProtocolError("NONCE_INVALID", "nonce must be 6 characters of A-Z, a-z, 0-9")
    given = headers.get("sign") or ""
    if not _SIGN_RE.fullmatch(given):
        raise ProtocolError("SIGN_INVALID", "sign must be 32 hexadecimal characters")
    expected = sign(credential.app_key, credential.app_secret, timestamp, nonce, body)
    if not hmac.compare_digest(expected.encode("ascii"), given.lower().encode("ascii")):
        raise ProtocolError("SIGN_INVALID", "sign does not match the request")


def _cipher(credential: Credential):
    from Crypto.Cipher import AES

    if credential.iv is None:
        raise ValueError(f"credential {credential.app_key} has no iv, so it cannot encrypt")
    return AES.new(credential.app_secret.encode("utf-8"), AES.MODE_CBC,
                   credential.iv.encode("utf-8"))


def aes_encrypt(credential: Credential, plaintext: str) -> str:
    from Crypto.Util.Padding import pad

    data = _cipher(credential).encrypt(pad(plaintext.encode("utf-8"), 16))
    return base64.b64encode(data).decode("ascii")


def aes_decrypt(credential: Credential, ciphertext_b64: bytes | str) -> str:
    """Raises ProtocolError BODY_INVALID for anything that is not our ciphertext of UTF-8 text."""
    from Crypto.Util.Padding import unpad

    try:
        data = base64.b64decode(ciphertext_b64, validate=True)
        if not data or len(data) % 16:
            raise ValueError("not whole AES blocks")
        return unpad(_cipher(credential).decrypt(data), 16).decode("utf-8")
    except (ValueError, binascii.Error):
        raise ProtocolError("BODY_INVALID", "encrypted body could not be decrypted") from None


def seal(credential: Credential, headers: dict[str, str], data: str) -> str:
    """The encrypted wire body for ``data``; sign the returned Base64 text, not ``data``."""
    return aes_encrypt(credential, headers["appKey"] + headers["timestamp"] + headers["nonce"]
                       + data)


def unseal(credential: Credential, headers: dict[str, str], body: bytes) -> str:
    """Raises ProtocolError BODY_INVALID unless the plaintext starts with the headers' values."""
    plaintext = aes_decrypt(credential, body)
    prefix = headers["appKey"] + headers["timestamp"] + headers["nonce"]
    if not plaintext.startswith(prefix):
        raise ProtocolError("BODY_INVALID",
                            "decrypted body does not start with appKey + timestamp + nonce")
    return plaintext[len(prefix):]


def gson_dumps(value) -> str:
    """Serialize like Gson: no spaces, non-ASCII kept, ``< > & ' =`` as \\u escapes.

    With compact separators those five characters can only occur inside strings, so replacing
    them in the output escapes exactly what Gson escapes.
    """
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return "".join(_GSON_ESCAPES.get(char, char) for char in text)


def parse_json_object(data: bytes | str) -> dict:
    """Strict UTF-8, strict JSON, an object. Raises ProtocolError BODY_INVALID otherwise."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        value = json.loads(text, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError):
        raise ProtocolError("BODY_INVALID", "body is not UTF-8 JSON") from None
    if not isinstance(value, dict):
        raise ProtocolError("BODY_INVALID", "body must be a JSON object")
    return value


def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON")
