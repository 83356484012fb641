"""Secrets Manager reads, parsed, validated and cached per container with a max age.

A warm request makes no Secrets Manager call. The cache holds the parsed credential objects, so
validation runs once per fetch, and takes an injected clock so the max age is tested without
sleeping. Values are never logged; errors name the secret id only.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

from chalicelib.errors import ConfigError, ServiceUnavailableError

T = TypeVar("T")


class SecretsCache:
    def __init__(self, client_factory: Callable[[], object], *, clock=time.monotonic):
        self._client_factory = client_factory
        self._clock = clock
        self._entries: dict[str, tuple[float, object]] = {}
        self._lock = threading.Lock()

    def get(self, secret_id: str, parse: Callable[[str, str], T], max_age_seconds: float) -> T:
        """The parsed value of ``secret_id``, fetched again once older than ``max_age_seconds``.

        Raises ConfigError when the secret is missing, unreadable or malformed, and
        ServiceUnavailableError when Secrets Manager cannot be reached.
        """
        now = self._clock()
        entry = self._entries.get(secret_id)
        if entry is not None and now - entry[0] < max_age_seconds:
            return entry[1]
        value = parse(secret_id, self._fetch(secret_id))
        with self._lock:
            self._entries[secret_id] = (now, value)
        return value

    def _fetch(self, secret_id: str) -> str:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            response = self._client_factory().get_secret_value(SecretId=secret_id)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "error")
            raise ConfigError(f"secret {secret_id} could not be read ({code})") from exc
        except BotoCoreError as exc:
            raise ServiceUnavailableError(
                f"secret {secret_id} could not be read ({type(exc).__name__})") from exc
        value = response.get("SecretString")
        if not isinstance(value, str):
            raise ConfigError(f"secret {secret_id} has no SecretString")
        return value

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
