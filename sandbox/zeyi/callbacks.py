"""Zeyi calling Jinrun back: a token from ``POST /auth/token``, then ``POST
/dingtalkAudit/callback`` signed with the inbound credential, with a Gson-style body, retried
with bounded backoff on a background thread while the gateway fails or is down."""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

from sandbox.zeyi.config import SimulatorConfig
from sandbox.zeyi.model import Delivery, now_ms
from sandbox.zeyi.rules import (
    CALLBACK_PATH,
    DELIVERED,
    DELIVERING,
    FAILED,
    QUEUED,
    REJECTED,
    TOKEN_PATH,
)
from sandbox.zeyi_protocol import gson_dumps, new_nonce, new_timestamp, seal, sign


def _json_or_none(response):
    try:
        return response.json()
    except ValueError:
        return None


def describe_try(record: dict) -> str:
    """One try of a callback, as a person reads it: the gateway's answer or the error."""
    error = record.get("error")
    if error is not None:
        for cause, short in (("Connection refused", "connection refused"),
                             ("Read timed out", "no answer in time"),
                             ("RemoteDisconnected", "connection closed without an answer")):
            if cause in error:
                return f"{error.split(':')[0]}: {short}"
        return error[:200]
    answer = record.get("response")
    status = record.get("httpStatus")
    if not isinstance(answer, dict):
        return f"HTTP {status} {str(answer)[:120]!r}"
    if answer.get("success"):
        result = answer.get("result")
        shown = " ".join(f"{key}={value}" for key, value in result.items()
                         if isinstance(value, str | int | float | bool)) \
            if isinstance(result, dict) else json.dumps(result, ensure_ascii=False)[:120]
        return f"HTTP {status} success {shown}".rstrip()
    return f"HTTP {status} {answer.get('errorCode')}: {str(answer.get('message'))[:160]}"


class CallbackSender:
    """Owns the callback threads, the cached access token and the bounded pool of connections.

    ``changed`` is the simulator's condition (its lock inside): every change to a delivery is
    made under it and announced with ``notify_all``, so waiters see settled callbacks at once.
    """

    def __init__(self, config: SimulatorConfig, *, changed: threading.Condition,
                 stopping: threading.Event, clock: Callable[[], float],
                 say: Callable[[str], None]):
        self.config = config
        self._changed = changed
        self._stopping = stopping
        self._clock = clock
        self._say = say
        self._token: tuple[str, float] | None = None
        self._token_lock = threading.Lock()
        # Like a real sender's bounded pool: a burst of decisions never opens hundreds of
        # connections to the gateway at once.
        self._slots = threading.BoundedSemaphore(config.callback_concurrency)
        self._workers: set[threading.Thread] = set()

    def start(self, delivery: Delivery, delay_seconds: float = 0.0) -> None:
        """Deliver ``delivery`` on its own thread (after ``delay_seconds``)."""
        if not self.config.gateway_url:
            self._finish(delivery, FAILED, error="no gateway URL is configured")
            return
        worker = threading.Thread(target=self._deliver, args=(delivery, delay_seconds),
                                  daemon=True,
                                  name=f"callback-{delivery.body['code']}-{delivery.id}")
        with self._changed:
            self._workers.add(worker)
        worker.start()

    def join(self, timeout_seconds: float) -> None:
        deadline = time.monotonic() + timeout_seconds
        with self._changed:
            workers = list(self._workers)
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))

    def _finish(self, delivery: Delivery, status: str, error: str | None = None) -> None:
        with self._changed:
            delivery.status = status
            delivery.finished_at = now_ms()
            if error:
                delivery.tries.append({"at": now_ms(), "error": error})
            self._changed.notify_all()

    def _label(self, delivery: Delivery) -> str:
        body = delivery.body
        kind = body["type"] if body["type"] == "terminate" else f"finish/{body.get('result')}"
        return f"callback {body['code']} {kind}"

    def _deliver(self, delivery: Delivery, delay_seconds: float = 0.0) -> None:
        backoff = self.config.callback_first_backoff_seconds
        tries = self.config.callback_max_tries
        try:
            if delay_seconds > 0:
                self._stopping.wait(delay_seconds)
            for attempt in range(1, tries + 1):
                if self._stopping.is_set():
                    self._finish(delivery, FAILED, error="simulator stopped")
                    return
                with self._changed:
                    delivery.status = DELIVERING
                with self._slots:
                    outcome, record = self._try(delivery)
                with self._changed:
                    delivery.tries.append(record)
                    if outcome in (DELIVERED, REJECTED):
                        self._finish(delivery, outcome)
                    else:
                        delivery.status = QUEUED
                        self._changed.notify_all()
                if outcome == DELIVERED:
                    self._say(f"{self._label(delivery)} try {attempt}/{tries} →"
                              f" {describe_try(record)} (delivered)")
                    return
                if outcome == REJECTED:
                    self._say(f"{self._label(delivery)} try {attempt}/{tries} →"
                              f" {describe_try(record)} (a business refusal: not retried)")
                    return
                if attempt < tries:
                    self._say(f"{self._label(delivery)} try {attempt}/{tries} →"
                              f" {describe_try(record)} (retrying in {backoff:g} s)")
                    self._stopping.wait(backoff)
                    backoff = min(backoff * 2, self.config.callback_max_backoff_seconds)
                else:
                    self._say(f"{self._label(delivery)} try {attempt}/{tries} →"
                              f" {describe_try(record)} (giving up)")
            self._finish(delivery, FAILED, error=f"gave up after {tries} tries")
        finally:
            with self._changed:
                self._workers.discard(threading.current_thread())

    def _signed_post(self, path: str, data: str, *, token: str | None = None,
                     encrypt: bool = False):
        """POST ``data`` to the gateway like Zeyi's SDK: fresh nonce, sign over the wire body."""
        import requests

        credential = self.config.inbound
        headers = {"appKey": credential.app_key, "timestamp": new_timestamp(self._clock),
                   "nonce": new_nonce()}
        if encrypt:
            wire = seal(credential, headers, data).encode("ascii")
            headers["Content-Type"] = "text/plain;charset=utf-8"
        else:
            wire = data.encode("utf-8")
            headers["Content-Type"] = "application/json;charset=utf-8"
        headers["sign"] = sign(credential.app_key, credential.app_secret, headers["timestamp"],
                               headers["nonce"], b"" if self.config.legacy_sign else wire)
        if token is not None:
            headers["authorization"] = f"Bearer {token}"
        response = requests.post(self.config.gateway_url.rstrip("/") + path, data=wire,
                                 headers=headers, timeout=self.config.callback_timeout_seconds)
        return headers, response

    def _access_token(self) -> str:
        """A cached token, or a new one from the gateway. Raises RuntimeError when refused."""
        with self._token_lock:
            if self._token is not None and self._token[1] > time.monotonic():
                return self._token[0]
            # The token request is signed but never encrypted: the gateway's token route takes
            # an empty or plain JSON body whatever CALLBACK_ENCRYPTED says.
            _, response = self._signed_post(TOKEN_PATH, self.config.token_body)
            answer = _json_or_none(response)
            result = answer.get("result") if isinstance(answer, dict) else None
            token = result.get("accessToken") if isinstance(result, dict) else None
            if response.status_code // 100 != 2 or not answer.get("success") or not token:
                raise RuntimeError(f"token request answered HTTP {response.status_code}:"
                                   f" {response.text[:300]}")
            lifetime = float(result.get("expiresIn") or 300)
            self._token = (token, time.monotonic() + max(1.0, lifetime - 60))
            return token

    def _forget_token(self) -> None:
        with self._token_lock:
            self._token = None

    def _try(self, delivery: Delivery) -> tuple[str, dict]:
        import requests

        record: dict = {"at": now_ms()}
        try:
            token = self._access_token()
            headers, response = self._signed_post(CALLBACK_PATH, gson_dumps(delivery.body),
                                                  token=token,
                                                  encrypt=self.config.encrypt_callbacks)
        except (requests.RequestException, RuntimeError) as error:
            self._forget_token()
            record["error"] = f"{type(error).__name__}: {error}"[:500]
            return QUEUED, record
        answer = _json_or_none(response)
        record.update({"httpStatus": response.status_code, "nonce": headers["nonce"],
                       "response": answer if answer is not None else response.text[:500]})
        if response.status_code // 100 == 2 and isinstance(answer, dict) and answer.get("success"):
            return DELIVERED, record
        if isinstance(answer, dict) and answer.get("success") is False \
                and answer.get("businessException") is True:
            return REJECTED, record
        self._forget_token()
        return QUEUED, record
