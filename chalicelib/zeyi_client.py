"""Jinrun's two calls to Zeyi, send and cancel: signed, optionally encrypted, over one session.

Every failure is sorted by one question, whether the request can have reached Zeyi:

- It never left (connection refused, connect timeout, name resolution): retried a few times with
  backoff, then UpstreamUnavailableError. Nothing happened at Zeyi.
- Zeyi answered with its envelope and refused (success false or businessException true):
  UpstreamRejectedError, keeping Zeyi's errorCode and message.
- Anything else once the body may have been written (read timeout, reset, a 5xx, an answer that
  is not the envelope): UpstreamOutcomeUnknownError, never retried, since a retry could start a
  second approval.

The retries are an explicit loop rather than urllib3's ``Retry``: one predicate decides both
whether to retry and what to report, the backoff sleep is injectable, and no read, status or
redirect retry can be switched on by a default.

Pooled connections idle for longer than ``IDLE_RECONNECT_SECONDS`` are dropped before a call. A
Lambda container is frozen between invocations and keeps sockets that Zeyi's keep-alive timeout
or the NAT gateway (350 s) has since closed; a request written onto such a socket fails in a way
that cannot be told apart from a lost answer, and would leave the approval in doubt.

``requests`` is imported by the constructor, so only the routes that call Zeyi pay its import.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable

from chalicelib import envelope, signing
from chalicelib.credentials import Credential
from chalicelib.errors import (
    ConfigError,
    UpstreamOutcomeUnknownError,
    UpstreamRejectedError,
    UpstreamUnavailableError,
)
from chalicelib.payloads import to_wire

SEND_PATH = "/tms-service-api/audit/send"
CANCEL_PATH = "/tms-service-api/audit/cancel"
JSON_CONTENT_TYPE = "application/json;charset=utf-8"
ENCRYPTED_CONTENT_TYPE = "text/plain;charset=utf-8"
CONNECT_ATTEMPTS = 3
BACKOFF_SECONDS = 0.2
IDLE_RECONNECT_SECONDS = 15.0
RESPONSE_MAX_BYTES = 64 * 1024


class ZeyiClient:
    def __init__(self, base_url: str, credential: Callable[[], Credential], *,
                 connect_timeout_seconds: float, read_timeout_seconds: float, encrypt: bool,
                 session=None, connect_attempts: int = CONNECT_ATTEMPTS,
                 backoff_seconds: float = BACKOFF_SECONDS,
                 idle_reconnect_seconds: float = IDLE_RECONNECT_SECONDS,
                 clock=time.time, monotonic=time.monotonic, sleep=time.sleep):
        self._base_url = _checked_base_url(base_url)
        self._credential = credential
        self._timeout = (connect_timeout_seconds, read_timeout_seconds)
        self._encrypt = encrypt
        self._connect_attempts = max(1, connect_attempts)
        self._backoff_seconds = backoff_seconds
        self._idle_reconnect_seconds = idle_reconnect_seconds
        self._clock = clock
        self._monotonic = monotonic
        self._sleep = sleep
        self._last_used: float | None = None
        self._session = session if session is not None else _new_session()

    def send(self, body: dict) -> dict:
        """POST a send body; returns Zeyi's envelope when Zeyi accepted it.

        Raises UpstreamRejectedError, UpstreamUnavailableError or UpstreamOutcomeUnknownError
        (see the module docstring); ConfigError or ServiceUnavailableError when the outbound
        credential cannot be had, before anything is sent.
        """
        return self._call(SEND_PATH, body)

    def cancel(self, body: dict) -> dict:
        """POST a cancel body; returns Zeyi's envelope when Zeyi accepted it. Raises as send."""
        return self._call(CANCEL_PATH, body)

    # -- one call ---------------------------------------------------------------------------------

    def _call(self, path: str, body: dict) -> dict:
        import requests

        credential = self._credential()
        data = to_wire(body)
        url = self._base_url + path
        self._drop_idle_connections()
        attempt = 1
        while True:
            wire, headers = self._signed(credential, data)
            try:
                response = self._session.post(url, data=wire, headers=headers,
                                              timeout=self._timeout, allow_redirects=False,
                                              stream=True)
            except requests.RequestException as exc:
                if not _never_left(exc):
                    raise _unknown(exc, self._timeout[1]) from exc
                if attempt >= self._connect_attempts:
                    raise UpstreamUnavailableError(
                        f"Zeyi could not be reached after {attempt} attempts"
                        f" ({_describe(exc)}); nothing was sent") from exc
                self._sleep(self._backoff_seconds * 2 ** (attempt - 1))
                attempt += 1
                continue
            finally:
                self._last_used = self._monotonic()
            with response:
                return _judge(response, self._timeout[1])

    def _signed(self, credential: Credential, data: bytes) -> tuple[bytes, dict[str, str]]:
        """The exact bytes to send and their headers; the sign covers those bytes."""
        timestamp = signing.new_timestamp(self._clock)
        nonce = signing.new_nonce()
        if self._encrypt:
            # The Base64 text is the body and what is signed (docs/protocol.md, Encryption).
            sealed = credential.codec().seal(credential.app_key, timestamp, nonce,
                                             data.decode("utf-8"))
            wire, content_type = sealed.encode("ascii"), ENCRYPTED_CONTENT_TYPE
        else:
            wire, content_type = data, JSON_CONTENT_TYPE
        return wire, {
            "appKey": credential.app_key,
            "timestamp": timestamp,
            "nonce": nonce,
            "sign": signing.sign(credential.app_key, credential.app_secret, timestamp, nonce,
                                 wire, legacy=credential.legacy_sign),
            "Content-Type": content_type,
            "Accept": "application/json",
        }

    def _drop_idle_connections(self) -> None:
        now = self._monotonic()
        if self._last_used is not None and now - self._last_used > self._idle_reconnect_seconds:
            for adapter in self._session.adapters.values():
                adapter.close()


def _checked_base_url(base_url: str) -> str:
    """Raises ConfigError unless ``base_url`` is an http(s) URL with a host."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(base_url)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        valid = False
    if not valid or parts.query or parts.fragment:
        raise ConfigError(f"setting ZEYI_BASE_URL must be an http(s) URL, got {base_url!r}")
    return base_url.rstrip("/")


def _new_session():
    import requests
    from requests.adapters import HTTPAdapter

    session = requests.Session()
    # No retry below this module: a read or status retry could deliver a send twice.
    adapter = HTTPAdapter(max_retries=0, pool_connections=1, pool_maxsize=4)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


def _never_left(exc: Exception) -> bool:
    """True only when the connection was never established, so no byte reached Zeyi."""
    import requests
    from urllib3.exceptions import NewConnectionError

    if isinstance(exc, requests.ConnectTimeout):
        return True
    if isinstance(exc, requests.ConnectionError) and exc.args:
        # requests wraps urllib3's MaxRetryError, whose reason is the socket-level failure;
        # NewConnectionError covers refused, unreachable and name resolution (a subclass).
        reason = getattr(exc.args[0], "reason", exc.args[0])
        return isinstance(reason, NewConnectionError)
    return False


def _describe(exc: Exception) -> str:
    import requests

    if isinstance(exc, requests.ConnectTimeout):
        return "connect timeout"
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    if type(reason).__name__ == "NameResolutionError":
        return "name resolution failed"
    return "connection refused or unreachable"


def _unknown(exc: Exception, read_timeout: float) -> UpstreamOutcomeUnknownError:
    """A failure after the body may have been written: 504 for a timeout, 502 otherwise."""
    import requests

    if isinstance(exc, requests.ReadTimeout) or "timed out" in str(exc).lower():
        return UpstreamOutcomeUnknownError(f"Zeyi did not answer within {read_timeout:g} s")
    return _bad_answer(f"the connection to Zeyi broke after the request was sent"
                       f" ({type(exc).__name__})")


def _judge(response, read_timeout: float) -> dict:
    """Zeyi's envelope when it accepted; raises for a refusal or an untrustworthy answer."""
    import requests

    status = response.status_code
    try:
        raw = _read_capped(response)
    except requests.RequestException as exc:
        raise _unknown(exc, read_timeout) from exc
    if status >= 500:
        raise _bad_answer(f"Zeyi answered HTTP {status}")
    if raw is None:
        raise _bad_answer(f"Zeyi's answer (HTTP {status}) is larger than {RESPONSE_MAX_BYTES}"
                          " bytes")
    try:
        answer = json.loads(raw.decode("utf-8"))
    except ValueError:
        answer = None
    if not envelope.is_envelope(answer):
        raise _bad_answer(f"Zeyi's answer (HTTP {status}) is not its response envelope")
    if not answer["success"] or answer["businessException"]:
        raise UpstreamRejectedError(
            answer.get("message") or f"Zeyi refused the request (HTTP {status})",
            error_code=answer.get("errorCode"), business=answer["businessException"],
            result=answer.get("result"))
    if not 200 <= status < 300:
        raise _bad_answer(f"Zeyi answered HTTP {status} with a success envelope")
    return answer


def _bad_answer(message: str) -> UpstreamOutcomeUnknownError:
    error = UpstreamOutcomeUnknownError(message)
    error.status = 502
    return error


def _read_capped(response) -> bytes | None:
    """The body, or None when it exceeds RESPONSE_MAX_BYTES (it is then not read further)."""
    chunks, size = [], 0
    for chunk in response.iter_content(chunk_size=16 * 1024):
        size += len(chunk)
        if size > RESPONSE_MAX_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
