"""Jinrun's two calls to Zeyi, send and cancel: signed, optionally encrypted, over one session.

Every failure is sorted by one question, whether the request can have reached Zeyi:

- It never left (connection refused, connect timeout, name resolution): retried a few times with
  backoff, then UpstreamUnavailableError. Nothing happened at Zeyi.
- Zeyi answered with its envelope and refused (``businessException`` true):
  UpstreamRejectedError, keeping Zeyi's errorCode and message. Nothing was created.
- Zeyi answered ``success`` false without a business exception: a fault on its side, after which
  the approval may or may not exist. UpstreamSystemError, keeping Zeyi's errorCode.
- Anything else once the body may have been written (read timeout, reset, a 5xx, an answer that
  is not the envelope, the deadline): UpstreamOutcomeUnknownError, never retried, since a retry
  could start a second approval.

Each call has a total deadline (connect, write and every read), enforced by a watchdog that shuts
the call's socket down: a read timeout alone is per socket read, so an answer that trickles in
could otherwise keep a call going past the Lambda timeout, and the caller would get API
Gateway's answer instead of ours.

The retries are an explicit loop rather than urllib3's ``Retry``: one predicate decides both
whether to retry and what to report, the backoff sleep is injectable, and no read, status or
redirect retry can be switched on by a default.

Pooled connections idle for longer than ``IDLE_RECONNECT_SECONDS`` are dropped before a call. A
Lambda container is frozen between invocations and keeps sockets that Zeyi's keep-alive timeout
or the NAT gateway (350 s) has since closed; a request written onto such a socket fails in a way
that cannot be told apart from a lost answer, and would leave the approval in doubt.

Each call is timed (the ``ZeyiLatency`` metric, by operation), logged once with its outcome
(the request's log keys, its correlation id among them, come with it) and traced as an X-Ray
subsegment (chalicelib.runtime.tracing).

``requests`` is imported by the constructor, so only the routes that call Zeyi pay its import.
"""
from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from chalicelib.errors import (
    ConfigError,
    GatewayError,
    UpstreamOutcomeUnknownError,
    UpstreamRejectedError,
    UpstreamSystemError,
    UpstreamUnavailableError,
)
from chalicelib.protocol import envelope, signing
from chalicelib.protocol.credentials import Credential
from chalicelib.protocol.payloads import to_wire
from chalicelib.runtime import metrics, telemetry, tracing
from chalicelib.runtime.logs import logger

SEND_PATH = "/tms-service-api/audit/send"
CANCEL_PATH = "/tms-service-api/audit/cancel"
JSON_CONTENT_TYPE = "application/json;charset=utf-8"
ENCRYPTED_CONTENT_TYPE = "text/plain;charset=utf-8"
CONNECT_ATTEMPTS = 3
BACKOFF_SECONDS = 0.2
IDLE_RECONNECT_SECONDS = 15.0
RESPONSE_MAX_BYTES = 64 * 1024
DEADLINE_SECONDS = 12.0


@dataclass(frozen=True)
class ZeyiAnswer:
    """An answer from Zeyi: its HTTP status and its body as text, exactly as received (bytes
    that are not UTF-8 replaced), so it can be kept whatever it holds; ``envelope`` is set once
    it has been judged an envelope."""

    http_status: int
    text: str
    envelope: dict | None = None


class ZeyiClient:
    def __init__(self, base_url: str, credential: Callable[[], Credential], *,
                 connect_timeout_seconds: float, read_timeout_seconds: float, encrypt: bool,
                 deadline_seconds: float = DEADLINE_SECONDS, session=None,
                 connect_attempts: int = CONNECT_ATTEMPTS,
                 backoff_seconds: float = BACKOFF_SECONDS,
                 idle_reconnect_seconds: float = IDLE_RECONNECT_SECONDS,
                 clock=time.time, monotonic=time.monotonic, sleep=time.sleep):
        self._base_url = _checked_base_url(base_url)
        self._credential = credential
        self._connect_timeout = connect_timeout_seconds
        self._read_timeout = read_timeout_seconds
        self._deadline_seconds = deadline_seconds
        self._encrypt = encrypt
        self._connect_attempts = max(1, connect_attempts)
        self._backoff_seconds = backoff_seconds
        self._idle_reconnect_seconds = idle_reconnect_seconds
        self._clock = clock
        self._monotonic = monotonic
        self._sleep = sleep
        self._last_used: float | None = None
        self._session = session if session is not None else _new_session()

    def send(self, body: dict) -> ZeyiAnswer:
        """POST a send body; returns Zeyi's answer when Zeyi accepted it.

        Raises UpstreamRejectedError, UpstreamSystemError, UpstreamUnavailableError or
        UpstreamOutcomeUnknownError (see the module docstring); ConfigError or
        ServiceUnavailableError when the outbound credential cannot be had, before anything is
        sent.
        """
        return self._call("send", SEND_PATH, body)

    def cancel(self, body: dict) -> ZeyiAnswer:
        """POST a cancel body; returns Zeyi's answer when Zeyi accepted it. Raises as send."""
        return self._call("cancel", CANCEL_PATH, body)

    # -- one call ---------------------------------------------------------------------------------

    def _call(self, operation: str, path: str, body: dict) -> ZeyiAnswer:
        credential = self._credential()
        data = to_wire(body)
        url = self._base_url + path
        started = self._monotonic()
        said = {"outcome": "INTERNAL_ERROR"}
        answer = None
        scope = telemetry.current()
        annotations = {"correlation_id": scope.correlation_id} if scope else None
        with tracing.subsegment("Zeyi", namespace="remote", annotations=annotations) as trace:
            trace["http"] = {"request": {"method": "POST", "url": url}}
            try:
                answer = self._call_within_deadline(url, credential, data)
                said["outcome"] = "accepted"
                return answer
            except GatewayError as exc:
                answer = getattr(exc, "answer", None)
                said.update(outcome=telemetry.error_code_of(exc), errorCode=exc.error_code)
                trace["error" if telemetry.zeyi_outcome_of(exc) == telemetry.FAILED
                      else "fault"] = True
                raise
            finally:
                elapsed_ms = (self._monotonic() - started) * 1000
                if answer is not None:
                    trace["http"]["response"] = {"status": answer.http_status}
                    said["httpStatus"] = answer.http_status
                telemetry.milliseconds(metrics.ZEYI_LATENCY, elapsed_ms, ("operation", operation))
                logger.info(f"zeyi {operation} {said['outcome']}",
                            extra={"operation": operation, "elapsedMs": round(elapsed_ms), **said})

    def _call_within_deadline(self, url: str, credential: Credential,
                              data: bytes) -> ZeyiAnswer:
        import requests

        self._drop_idle_connections()
        with _Deadline(self._deadline_seconds, self._monotonic) as deadline:
            try:
                return self._post(url, credential, data, deadline)
            except (requests.RequestException, OSError) as exc:
                # OSError: a socket the watchdog shut down mid-read, seen by any layer.
                if deadline.expired:
                    raise self._past_deadline() from exc
                raise _unknown(exc, self._read_timeout) from exc
            finally:
                self._last_used = self._monotonic()
                if deadline.expired:
                    self._close_connections()  # the watchdog broke one: never reuse it

    def _post(self, url: str, credential: Credential, data: bytes,
              deadline: _Deadline) -> ZeyiAnswer:
        import requests

        attempt = 1
        while True:
            wire, headers = self._signed(credential, data)
            remaining = deadline.remaining()
            try:
                response = self._session.post(
                    url, data=wire, headers=headers, allow_redirects=False, stream=True,
                    timeout=(min(self._connect_timeout, remaining),
                             min(self._read_timeout, remaining)))
            except requests.RequestException as exc:
                if deadline.expired or not _never_left(exc):
                    raise
                if attempt >= self._connect_attempts or deadline.remaining() <= 0:
                    raise UpstreamUnavailableError(
                        f"Zeyi could not be reached after {attempt} attempts"
                        f" ({_describe(exc)}); nothing was sent") from exc
                self._sleep(min(self._backoff_seconds * 2 ** (attempt - 1),
                                max(0.0, deadline.remaining())))
                attempt += 1
                continue
            with response:
                return _judge(response)

    def _past_deadline(self) -> UpstreamOutcomeUnknownError:
        return UpstreamOutcomeUnknownError(
            f"Zeyi did not answer within the deadline of {self._deadline_seconds:g} s")

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
            self._close_connections()

    def _close_connections(self) -> None:
        for adapter in self._session.adapters.values():
            adapter.close()


class _Deadline:
    """The total time one call to Zeyi may take. At the deadline a watchdog thread shuts down
    the socket of every connection the call has used, so whatever read is waiting ends at once
    (a socket timeout is per read, and a trickled answer would renew it forever)."""

    _active = threading.local()

    def __init__(self, seconds: float, monotonic):
        self._seconds = seconds
        self._ends = monotonic() + seconds
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._connections: list = []
        self._done = False
        self.expired = False
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def remaining(self) -> float:
        return self._ends - self._monotonic()

    def __enter__(self) -> _Deadline:
        _Deadline._active.current = self
        self._timer.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._timer.cancel()
        with self._lock:
            self._done = True
        _Deadline._active.current = None

    @classmethod
    def watch(cls, connection) -> None:
        """Called by every connection as a request starts on it, in the caller's thread."""
        deadline = getattr(cls._active, "current", None)
        if deadline is not None:
            with deadline._lock:
                deadline._connections.append(connection)

    def _expire(self) -> None:
        with self._lock:
            if self._done:
                return
            self.expired = True
            for connection in self._connections:
                sock = getattr(connection, "sock", None)
                if sock is not None:
                    with contextlib.suppress(OSError):  # already closed
                        sock.shutdown(socket.SHUT_RDWR)


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
    from urllib3.connection import HTTPConnection, HTTPSConnection
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

    class WatchedHTTPConnection(HTTPConnection):
        def request(self, *args, **kwargs):
            _Deadline.watch(self)
            return super().request(*args, **kwargs)

    class WatchedHTTPSConnection(HTTPSConnection):
        def request(self, *args, **kwargs):
            _Deadline.watch(self)
            return super().request(*args, **kwargs)

    class WatchedHTTPPool(HTTPConnectionPool):
        ConnectionCls = WatchedHTTPConnection

    class WatchedHTTPSPool(HTTPSConnectionPool):
        ConnectionCls = WatchedHTTPSConnection

    class WatchedAdapter(HTTPAdapter):
        def init_poolmanager(self, *args, **kwargs):
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = {"http": WatchedHTTPPool,
                                                       "https": WatchedHTTPSPool}

    session = requests.Session()
    # No retry below this module: a read or status retry could deliver a send twice.
    adapter = WatchedAdapter(max_retries=0, pool_connections=1, pool_maxsize=4)
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
    return UpstreamOutcomeUnknownError(
        f"the connection to Zeyi broke after the request was sent ({type(exc).__name__})",
        status=502)


def _judge(response) -> ZeyiAnswer:
    """Zeyi's answer when it accepted; raises for a refusal or an untrustworthy answer.

    Raises requests.RequestException when the body cannot be read (the caller sorts it).
    """
    status = response.status_code
    raw = _read_capped(response)
    if raw is None:
        raise UpstreamOutcomeUnknownError(
            f"Zeyi's answer (HTTP {status}) is larger than {RESPONSE_MAX_BYTES} bytes",
            status=502, answer=ZeyiAnswer(status, ""))
    answer = ZeyiAnswer(status, raw.decode("utf-8", errors="replace"))
    if status >= 500:
        raise UpstreamOutcomeUnknownError(f"Zeyi answered HTTP {status}", status=502,
                                          answer=answer)
    try:
        parsed = json.loads(answer.text)
    except (ValueError, RecursionError):
        parsed = None
    if not envelope.is_envelope(parsed):
        raise UpstreamOutcomeUnknownError(
            f"Zeyi's answer (HTTP {status}) is not its response envelope", status=502,
            answer=answer)
    message = _text(parsed.get("message"))
    error_code = _text(parsed.get("errorCode"))
    if not parsed["success"] and parsed["businessException"]:
        raise UpstreamRejectedError(message or f"Zeyi refused the request (HTTP {status})",
                                    error_code=error_code, answer=answer)
    if not parsed["success"]:
        raise UpstreamSystemError(
            f"Zeyi reported a failure that is not a business refusal"
            f" ({error_code or 'no errorCode'}: {message or 'no message'})",
            error_code=error_code, answer=answer)
    if parsed["businessException"] or not 200 <= status < 300:
        raise UpstreamOutcomeUnknownError(
            f"Zeyi answered HTTP {status} with a contradictory success envelope", status=502,
            answer=answer)
    return ZeyiAnswer(status, answer.text, parsed)


def _text(value, max_chars: int = 500) -> str | None:
    """An errorCode or message of Zeyi's, cut short: it goes into our own answer and logs."""
    if not isinstance(value, str) or not value:
        return None
    return value[:max_chars].encode("utf-8", "replace").decode("utf-8")


def _read_capped(response) -> bytes | None:
    """The body, or None when it exceeds RESPONSE_MAX_BYTES (it is then not read further)."""
    chunks, size = [], 0
    for chunk in response.iter_content(chunk_size=16 * 1024):
        size += len(chunk)
        if size > RESPONSE_MAX_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
