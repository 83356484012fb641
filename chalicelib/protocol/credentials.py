"""Credentials parsed from their Secrets Manager JSON and validated once, when loaded.

A misconfigured secret shows at the first call that needs it, as a ConfigError that names the
secret and the field, never the value.

Secret shapes:
- outbound: ``{"appKey", "appSecret", "iv", "legacySign"?}``
- inbound: ``{"credentials": [{"appKey", "appSecret", "iv"?, "legacySign"?}, ...]}`` or one such
  object; several entries let one credential be rotated with no failed callback.
- token key: ``{"keys": ["...", ...]}``: the first signs new tokens, every key verifies.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from chalicelib.errors import ConfigError
from chalicelib.protocol import tokens
from chalicelib.protocol.aes import AesCodec, check_key_material

TOKEN_KEY_MIN_BYTES = 32


@dataclass(frozen=True)
class Credential:
    app_key: str
    app_secret: str = field(repr=False)
    iv: str | None = field(default=None, repr=False)
    legacy_sign: bool = False

    def codec(self) -> AesCodec:
        if self.iv is None:
            raise ConfigError(f"credential {self.app_key}: encryption is on but it has no iv")
        return AesCodec(self.app_secret.encode("utf-8"), self.iv.encode("utf-8"),
                        where=f"credential {self.app_key}")


@dataclass(frozen=True)
class InboundCredentials:
    by_app_key: dict[str, Credential]

    def get(self, app_key: str) -> Credential | None:
        return self.by_app_key.get(app_key)


@dataclass(frozen=True)
class TokenKeys:
    keys: tuple[bytes, ...] = field(repr=False)

    @property
    def signing_key(self) -> bytes:
        return self.keys[0]


def _load_json(secret_id: str, raw: str) -> object:
    try:
        return json.loads(raw)
    except ValueError:
        raise ConfigError(f"secret {secret_id}: value is not JSON") from None


def _text_field(secret_id: str, data: dict, name: str, *, required: bool = True) -> str | None:
    value = data.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"secret {secret_id}: field {name} is missing or not a non-empty string")
    return value


def _credential(secret_id: str, data: object, *, iv_required: bool) -> Credential:
    if not isinstance(data, dict):
        raise ConfigError(f"secret {secret_id}: a credential must be a JSON object")
    legacy = data.get("legacySign", False)
    if not isinstance(legacy, bool):
        raise ConfigError(f"secret {secret_id}: field legacySign must be true or false")
    credential = Credential(
        app_key=_text_field(secret_id, data, "appKey"),
        app_secret=_text_field(secret_id, data, "appSecret"),
        iv=_text_field(secret_id, data, "iv", required=iv_required),
        legacy_sign=legacy,
    )
    if credential.iv is not None:
        check_key_material(credential.app_secret.encode("utf-8"), credential.iv.encode("utf-8"),
                           where=f"secret {secret_id}")
    return credential


def parse_outbound(secret_id: str, raw: str) -> Credential:
    """Raises ConfigError naming the secret and field when the outbound secret is unusable."""
    return _credential(secret_id, _load_json(secret_id, raw), iv_required=True)


def parse_inbound(secret_id: str, raw: str) -> InboundCredentials:
    """Raises ConfigError naming the secret and field when the inbound secret is unusable."""
    data = _load_json(secret_id, raw)
    has_list = isinstance(data, dict) and "credentials" in data
    entries = data["credentials"] if has_list else [data]
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"secret {secret_id}: field credentials must be a non-empty list")
    by_key: dict[str, Credential] = {}
    for entry in entries:
        credential = _credential(secret_id, entry, iv_required=False)
        # Zeyi gets a token for each inbound appKey; one too long for any token to verify is a
        # misconfiguration, shown here (and by `ops config check`) rather than at each callback.
        try:
            tokens.check_app_key(credential.app_key)
        except ConfigError as exc:
            raise ConfigError(f"secret {secret_id}: {exc.message}") from None
        if credential.app_key in by_key:
            raise ConfigError(f"secret {secret_id}: appKey {credential.app_key} is listed twice")
        by_key[credential.app_key] = credential
    return InboundCredentials(by_key)


def parse_token_keys(secret_id: str, raw: str) -> TokenKeys:
    """Raises ConfigError when the token key secret holds no key of at least 32 bytes."""
    data = _load_json(secret_id, raw)
    keys = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(keys, list) or not keys:
        raise ConfigError(f"secret {secret_id}: field keys must be a non-empty list")
    encoded = []
    for key in keys:
        if not isinstance(key, str) or len(key.encode("utf-8")) < TOKEN_KEY_MIN_BYTES:
            raise ConfigError(f"secret {secret_id}: every entry of keys must be a string of at"
                              f" least {TOKEN_KEY_MIN_BYTES} bytes")
        encoded.append(key.encode("utf-8"))
    return TokenKeys(tuple(encoded))
