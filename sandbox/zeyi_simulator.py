"""A stand-in for Zeyi (则一): the two APIs Jinrun calls, and the callbacks Zeyi makes to Jinrun.

Internal teams develop against it and the gateway's end-to-end tests use it as the fake Zeyi, so it
behaves like the partner's side of docs/protocol.md, checked with its own code (``zeyi_protocol``):

- ``POST /tms-service-api/audit/send`` and ``/audit/cancel``, signed (and, when configured,
  AES-encrypted) with the outbound credential, answered with the envelope; one approved or pending
  approval per code; an optional source-IP whitelist.
- A control API on the same port under ``/_control/`` (see docs/sandbox.md) to decide approvals,
  read the log of received requests, inject faults and reset; or an automatic decision rule.
- Each decision becomes a callback to the gateway, like Zeyi's: token from ``POST /auth/token``,
  then ``POST /dingtalkAudit/callback`` signed with the inbound credential, a Gson-style body,
  retried with bounded backoff in a background thread while the gateway fails or is down.

Run it with ``python -m sandbox.zeyi_simulator --port 8001 --gateway-url http://127.0.0.1:8000``.
"""
from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from sandbox.zeyi_protocol import (
    Credential,
    ProtocolError,
    gson_dumps,
    new_nonce,
    new_timestamp,
    parse_json_object,
    seal,
    sign,
    unseal,
)
from sandbox.zeyi_protocol import (
    check_headers as check_security_headers,
)

DEFAULT_CREDENTIALS_PATH = Path(__file__).with_name("credentials.json")
SEND_PATH = "/tms-service-api/audit/send"
CANCEL_PATH = "/tms-service-api/audit/cancel"
TOKEN_PATH = "/auth/token"
CALLBACK_PATH = "/dingtalkAudit/callback"
MAX_BODY_BYTES = 1024 * 1024
MAX_WAIT_SECONDS = 120.0
FAULT_MODES = ("slow", "status503", "not_json", "refuse", "drop")
AUTO_DECIDE_RULES = ("off", "agree", "refuse", "terminate", "by-suffix")

PENDING, AGREED, REFUSED, TERMINATED = "PENDING", "AGREED", "REFUSED", "TERMINATED"
ACTIVE = (PENDING, AGREED)
# Callback delivery states: queued and delivering are in flight; the other three are final.
QUEUED, DELIVERING, DELIVERED, REJECTED, FAILED = (
    "queued", "delivering", "delivered", "rejected", "failed")
IN_FLIGHT = (QUEUED, DELIVERING)


def load_credentials(path: Path | str = DEFAULT_CREDENTIALS_PATH) -> tuple[Credential, Credential]:
    """(outbound, inbound) from a credentials.json shaped like sandbox/credentials.json."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return Credential.from_json(data["outbound"]), Credential.from_json(data["inbound"])


@dataclass(frozen=True)
class SimulatorConfig:
    outbound: Credential
    """What the gateway signs (and encrypts) its calls with; the simulator verifies with it."""
    inbound: Credential
    """What the simulator signs its token requests and callbacks with (and encrypts callbacks
    with, when ``encrypt_callbacks`` is on)."""
    host: str = "127.0.0.1"
    port: int = 8001
    gateway_url: str | None = None
    encrypt_requests: bool = False
    encrypt_callbacks: bool = False
    ip_whitelist: tuple[str, ...] = ()
    auto_decide: str = "off"
    auto_decide_delay_seconds: float = 1.0
    skew_seconds: int = 300
    callback_max_tries: int = 8
    callback_first_backoff_seconds: float = 0.2
    callback_max_backoff_seconds: float = 5.0
    callback_timeout_seconds: float = 10.0
    callback_concurrency: int = 16
    cancel_callback_delay_seconds: float = 0.5
    """Zeyi hears of a revoked instance from DingTalk a moment after it accepted the cancel."""
    token_body: str = "{}"
    verbose: bool = False

    def __post_init__(self):
        if self.auto_decide not in AUTO_DECIDE_RULES:
            raise ValueError(f"auto_decide must be one of {', '.join(AUTO_DECIDE_RULES)}")
        for cidr in self.ip_whitelist:
            ipaddress.ip_network(cidr, strict=False)  # raises ValueError on a bad entry


class BusinessRefusal(Exception):
    """A business rule refused a well-formed, authentic call (``businessException`` true)."""

    def __init__(self, error_code: str, message: str):
        super().__init__(message)
        self.error_code = error_code
        self.message = message


def envelope(*, success: bool = True, business: bool = False, error_code: str | None = None,
             message: str | None = None, result=None) -> dict:
    return {"success": success, "businessException": business, "errorCode": error_code,
            "message": message, "result": result}


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Delivery:
    """One callback the simulator owes the gateway, and every try to deliver it."""

    id: int
    body: dict
    status: str = QUEUED
    tries: list[dict] = field(default_factory=list)
    created_at: int = field(default_factory=_now_ms)
    finished_at: int | None = None

    def to_json(self) -> dict:
        return {"id": self.id, "type": self.body["type"], "result": self.body.get("result"),
                "body": self.body, "status": self.status, "tries": list(self.tries),
                "createdAt": self.created_at, "finishedAt": self.finished_at}


@dataclass
class Approval:
    """One approval instance at Zeyi (a DingTalk process instance) for one business code."""

    code: str
    audit_type: str
    business_id: str
    request: dict
    status: str = PENDING
    created_at: int = field(default_factory=_now_ms)
    decision: dict | None = None
    deliveries: list[Delivery] = field(default_factory=list)

    @property
    def settled(self) -> bool:
        return all(delivery.status not in IN_FLIGHT for delivery in self.deliveries)

    def to_json(self) -> dict:
        return {"code": self.code, "auditType": self.audit_type, "businessId": self.business_id,
                "status": self.status, "request": self.request, "createdAt": self.created_at,
                "decision": self.decision, "settled": self.settled,
                "callbacks": [delivery.to_json() for delivery in self.deliveries]}


@dataclass
class Fault:
    path: str
    mode: str
    remaining: int
    seconds: float

    def to_json(self) -> dict:
        return {"path": self.path, "mode": self.mode, "count": self.remaining,
                "seconds": self.seconds}


def _text_field(body: dict, name: str, *, required: bool = True, empty_ok: bool = False,
                where: str = "") -> None:
    value = body.get(name)
    if value is None and not required:
        return
    if not isinstance(value, str) or (not value and not empty_ok):
        raise ProtocolError("BODY_INVALID", f"{where}{name} must be a non-empty string"
                            if not empty_ok else f"{where}{name} must be a string")


def validate_send(body: dict) -> None:
    """Raises ProtocolError BODY_INVALID naming the first field that breaks the send body."""
    for name in ("code", "auditType", "originatorUsername", "orgCode"):
        _text_field(body, name)
    forms = body.get("auditFormList")
    if not isinstance(forms, list) or not forms:
        raise ProtocolError("BODY_INVALID", "auditFormList must be a non-empty list")
    for index, item in enumerate(forms):
        where = f"auditFormList[{index}]."
        if not isinstance(item, dict):
            raise ProtocolError("BODY_INVALID", f"auditFormList[{index}] must be an object")
        if item.get("type") not in ("text", "file"):
            raise ProtocolError("BODY_INVALID", f"{where}type must be text or file")
        _text_field(item, "key", where=where)
        _text_field(item, "value", empty_ok=True, where=where)
        _text_field(item, "extendValue", required=False, empty_ok=True, where=where)
    params = body.get("conditionParamList")
    if params is None:
        return
    if not isinstance(params, list):
        raise ProtocolError("BODY_INVALID", "conditionParamList must be a list")
    for index, item in enumerate(params):
        where = f"conditionParamList[{index}]."
        if not isinstance(item, dict):
            raise ProtocolError("BODY_INVALID", f"conditionParamList[{index}] must be an object")
        _text_field(item, "name", where=where)
        _text_field(item, "value", empty_ok=True, where=where)


def validate_cancel(body: dict) -> None:
    """Raises ProtocolError BODY_INVALID naming the first field that breaks the cancel body."""
    for name in ("code", "type", "username"):
        _text_field(body, name)
    _text_field(body, "remark", empty_ok=True)


class ZeyiSimulator:
    """The simulator's state and behaviour; ``start()`` serves it on a background thread."""

    def __init__(self, config: SimulatorConfig, *, clock=time.time):
        self.config = config
        self._clock = clock
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._serve_thread: threading.Thread | None = None
        self._workers: set[threading.Thread] = set()
        self._timers: set[threading.Timer] = set()
        self._token: tuple[str, float] | None = None
        self._token_lock = threading.Lock()
        # Like a real sender's bounded pool: a burst of decisions never opens hundreds of
        # connections to the gateway at once.
        self._delivery_slots = threading.BoundedSemaphore(config.callback_concurrency)
        self._reset_state()

    def _reset_state(self) -> None:
        with self._lock:
            self._approvals: dict[str, list[Approval]] = {}
            self._requests: deque[dict] = deque(maxlen=10000)
            self._request_ids = 0
            self._delivery_ids = 0
            self._faults: list[Fault] = []
            self._nonces: dict[str, float] = {}
            for timer in self._timers:
                timer.cancel()
            self._timers.clear()
            self._changed.notify_all()

    # ----- serving -------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._server.server_address[1] if self._server else self.config.port

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    def bind(self) -> ZeyiSimulator:
        server = _Server((self.config.host, self.config.port), _Handler)
        server.simulator = self
        self._server = server
        return self

    def start(self) -> ZeyiSimulator:
        """Bind (port 0 picks a free one) and serve on a daemon thread; returns self."""
        if self._server is None:
            self.bind()
        self._serve_thread = threading.Thread(target=self._server.serve_forever,
                                              kwargs={"poll_interval": 0.1},
                                              name="zeyi-simulator", daemon=True)
        self._serve_thread.start()
        return self

    def serve_forever(self) -> None:
        if self._server is None:
            self.bind()
        self._server.serve_forever(poll_interval=0.1)

    def stop(self, timeout_seconds: float = 5.0) -> None:
        """Stop serving, cancel pending decisions, and let delivery threads end (bounded)."""
        self._stopping.set()
        with self._lock:
            for timer in self._timers:
                timer.cancel()
            self._changed.notify_all()
        if self._server is not None:
            if self._serve_thread is not None:
                self._server.shutdown()
                self._serve_thread.join(timeout_seconds)
            self._server.server_close()
        deadline = time.monotonic() + timeout_seconds
        for worker in list(self._workers):
            worker.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> ZeyiSimulator:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # ----- Zeyi's API ----------------------------------------------------------------------

    def handle_zeyi_call(self, kind: str, client_ip: str, headers: dict[str, str],
                         raw: bytes) -> tuple[dict, dict]:
        """Check and apply one send or cancel; returns (envelope, log entry)."""
        entry = {"kind": kind, "clientIp": client_ip, "headers": headers,
                 "body": raw.decode("utf-8", errors="replace"), "plaintext": None,
                 "json": _best_effort_json(raw)}
        try:
            self._check_ip(client_ip)
            check_security_headers(self.config.outbound, headers, raw,
                                   skew_seconds=self.config.skew_seconds, clock=self._clock)
            self._remember_nonce(headers["appKey"], headers["nonce"])
            data: bytes | str = raw
            if self.config.encrypt_requests:
                data = unseal(self.config.outbound, headers, raw)
                entry["plaintext"] = data
            body = parse_json_object(data)
            entry["json"] = body
            if kind == "send":
                validate_send(body)
                result = self._send(body)
            else:
                validate_cancel(body)
                result = self._cancel(body)
        except ProtocolError as error:
            entry["verdict"] = error.error_code
            return envelope(success=False, error_code=error.error_code,
                            message=error.message), entry
        except BusinessRefusal as refusal:
            entry["verdict"] = refusal.error_code
            return envelope(success=False, business=True, error_code=refusal.error_code,
                            message=refusal.message), entry
        entry["verdict"] = "OK"
        return envelope(result=result), entry

    def _check_ip(self, client_ip: str) -> None:
        if not self.config.ip_whitelist:
            return
        address = ipaddress.ip_address(client_ip)
        if not any(address in ipaddress.ip_network(cidr, strict=False)
                   for cidr in self.config.ip_whitelist):
            raise ProtocolError("IP_NOT_WHITELISTED",
                                f"caller IP {client_ip} is not on Zeyi's whitelist")

    def _remember_nonce(self, app_key: str, nonce: str) -> None:
        now = self._clock()
        key = f"{app_key}:{nonce}"
        with self._lock:
            if len(self._nonces) > 10000:
                self._nonces = {k: v for k, v in self._nonces.items() if v > now}
            expires = self._nonces.get(key)
            if expires is not None and expires > now:
                raise ProtocolError("NONCE_REPLAYED", "this nonce was already used")
            self._nonces[key] = now + 2 * self.config.skew_seconds

    def _send(self, body: dict) -> None:
        code = body["code"]
        with self._lock:
            current = self._current(code)
            if current is not None and current.status in ACTIVE:
                raise BusinessRefusal(
                    "APPROVAL_ACTIVE",
                    f"同一编号最多只能有1个审核通过或审核中的审批: code {code} already has an"
                    f" approval that is {current.status}")
            approval = Approval(code=code, audit_type=body["auditType"],
                                business_id=f"proc-{uuid.uuid4().hex[:20]}", request=body)
            self._approvals.setdefault(code, []).append(approval)
            self._changed.notify_all()
        self._schedule_auto_decision(approval)
        return None  # Zeyi answers a send with result null

    def _cancel(self, body: dict) -> None:
        code = body["code"]
        with self._lock:
            current = self._current(code)
            if current is None or current.status != PENDING:
                state = "no approval" if current is None else f"its approval is {current.status}"
                raise BusinessRefusal("APPROVAL_NOT_PENDING",
                                      f"code {code} cannot be cancelled: {state}")
            # A revoked DingTalk instance reports terminate, like a deleted one.
            self._decide_locked(current, "terminate", auditUser=body["username"],
                                remark=body.get("remark", ""),
                                delay_seconds=self.config.cancel_callback_delay_seconds)
        return None

    def _current(self, code: str) -> Approval | None:
        attempts = self._approvals.get(code)
        return attempts[-1] if attempts else None

    # ----- decisions and callbacks ---------------------------------------------------------

    def decide(self, code: str, action: str, *, audit_user: str | None = None,
               remark: str | None = None) -> Approval:
        """Agree, refuse or terminate the pending approval of ``code`` and queue its callback.

        Raises KeyError when ``code`` has no approval, BusinessRefusal when it is not pending.
        """
        if action not in ("agree", "refuse", "terminate"):
            raise ValueError(f"unknown decision {action}")
        with self._lock:
            approval = self._current(code)
            if approval is None:
                raise KeyError(code)
            if approval.status != PENDING:
                raise BusinessRefusal("APPROVAL_NOT_PENDING",
                                      f"code {code} is {approval.status}, not PENDING")
            defaults = {"agree": "同意", "refuse": "驳回", "terminate": "撤销"}
            self._decide_locked(approval, action, auditUser=audit_user or "manager01",
                                remark=defaults[action] if remark is None else remark)
            return approval

    def _decide_locked(self, approval: Approval, action: str, *, auditUser: str,  # noqa: N803
                       remark: str, delay_seconds: float = 0.0) -> None:
        approval.status = {"agree": AGREED, "refuse": REFUSED, "terminate": TERMINATED}[action]
        callback_type = "terminate" if action == "terminate" else "finish"
        body = {"code": approval.code, "auditType": approval.audit_type,
                "businessId": approval.business_id, "type": callback_type}
        if callback_type == "finish":
            body["result"] = action
        body["auditUser"] = auditUser
        body["remark"] = remark
        approval.decision = {"action": action, "at": _now_ms(), "auditUser": auditUser,
                             "remark": remark}
        self._queue_delivery_locked(approval, body, delay_seconds)

    def redeliver(self, code: str) -> Approval:
        """Send the latest callback of ``code`` again, as Zeyi may. Raises KeyError when none."""
        with self._lock:
            approval = self._current(code)
            if approval is None or not approval.deliveries:
                raise KeyError(code)
            self._queue_delivery_locked(approval, dict(approval.deliveries[-1].body))
            return approval

    def _queue_delivery_locked(self, approval: Approval, body: dict,
                               delay_seconds: float = 0.0) -> None:
        self._delivery_ids += 1
        delivery = Delivery(id=self._delivery_ids, body=body)
        approval.deliveries.append(delivery)
        self._changed.notify_all()
        if not self.config.gateway_url:
            self._finish_delivery(delivery, FAILED, error="no gateway URL is configured")
            return
        worker = threading.Thread(target=self._deliver, args=(delivery, delay_seconds),
                                  daemon=True,
                                  name=f"callback-{approval.code}-{delivery.id}")
        self._workers.add(worker)
        worker.start()

    def _schedule_auto_decision(self, approval: Approval) -> None:
        rule = self.config.auto_decide
        if rule == "off":
            return
        action = rule
        if rule == "by-suffix":
            action = ("refuse" if approval.code.endswith("-R")
                      else "terminate" if approval.code.endswith("-T") else "agree")

        def fire():
            with self._lock:
                self._timers.discard(timer)
                if self._current(approval.code) is approval and approval.status == PENDING:
                    self.decide(approval.code, action, audit_user="auto-approver",
                                remark=f"auto-decided: {action}")

        timer = threading.Timer(self.config.auto_decide_delay_seconds, fire)
        timer.daemon = True
        with self._lock:
            self._timers.add(timer)
        timer.start()

    def _finish_delivery(self, delivery: Delivery, status: str, error: str | None = None) -> None:
        with self._lock:
            delivery.status = status
            delivery.finished_at = _now_ms()
            if error:
                delivery.tries.append({"at": _now_ms(), "error": error})
            self._changed.notify_all()

    def _deliver(self, delivery: Delivery, delay_seconds: float = 0.0) -> None:
        backoff = self.config.callback_first_backoff_seconds
        try:
            if delay_seconds > 0:
                self._stopping.wait(delay_seconds)
            for attempt in range(1, self.config.callback_max_tries + 1):
                if self._stopping.is_set():
                    self._finish_delivery(delivery, FAILED, error="simulator stopped")
                    return
                with self._lock:
                    delivery.status = DELIVERING
                with self._delivery_slots:
                    outcome, record = self._try_delivery(delivery)
                with self._lock:
                    delivery.tries.append(record)
                    if outcome in (DELIVERED, REJECTED):
                        self._finish_delivery(delivery, outcome)
                        return
                    delivery.status = QUEUED
                    self._changed.notify_all()
                if attempt < self.config.callback_max_tries:
                    self._stopping.wait(backoff)
                    backoff = min(backoff * 2, self.config.callback_max_backoff_seconds)
            self._finish_delivery(delivery, FAILED,
                                  error=f"gave up after {self.config.callback_max_tries} tries")
        finally:
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
                               headers["nonce"], wire)
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

    def _try_delivery(self, delivery: Delivery) -> tuple[str, dict]:
        import requests

        record: dict = {"at": _now_ms()}
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

    # ----- control API ---------------------------------------------------------------------

    def log_request(self, entry: dict) -> None:
        with self._lock:
            self._request_ids += 1
            entry["id"] = self._request_ids
            entry.setdefault("at", _now_ms())
            self._requests.append(entry)

    def requests_log(self, *, kind: str | None = None, code: str | None = None,
                     since: int = 0) -> list[dict]:
        with self._lock:
            return [dict(entry) for entry in self._requests
                    if entry["id"] > since and (kind is None or entry.get("kind") == kind)
                    and (code is None or (entry.get("json") or {}).get("code") == code)]

    def approval_json(self, code: str, wait_seconds: float = 0.0) -> dict | None:
        """The current approval of ``code`` with its earlier attempts; waits (bounded) until
        every callback of the current approval is delivered, rejected or given up."""
        deadline = time.monotonic() + min(max(wait_seconds, 0.0), MAX_WAIT_SECONDS)
        with self._lock:
            while True:
                approval = self._current(code)
                remaining = deadline - time.monotonic()
                if (approval is not None and approval.settled) or remaining <= 0 \
                        or self._stopping.is_set():
                    break
                self._changed.wait(min(remaining, 0.5))
            if approval is None:
                return None
            data = approval.to_json()
            data["history"] = [earlier.to_json() for earlier in self._approvals[code][:-1]]
            return data

    def all_approvals(self) -> list[dict]:
        with self._lock:
            return [attempts[-1].to_json() for attempts in self._approvals.values()]

    def add_fault(self, path: str, mode: str, count: int = 1, seconds: float = 0.0) -> Fault:
        """Make the next ``count`` calls of ``path`` (send or cancel) misbehave.

        Raises ValueError for an unknown path or mode.
        """
        kind = {"send": "send", SEND_PATH: "send", "cancel": "cancel",
                CANCEL_PATH: "cancel"}.get(path)
        if kind is None:
            raise ValueError("path must be send or cancel")
        if mode not in FAULT_MODES:
            raise ValueError(f"mode must be one of {', '.join(FAULT_MODES)}")
        if count < 1 or not 0 <= seconds <= MAX_WAIT_SECONDS:
            raise ValueError(f"count must be >= 1 and seconds within 0..{MAX_WAIT_SECONDS}")
        fault = Fault(path=kind, mode=mode, remaining=count, seconds=seconds)
        with self._lock:
            self._faults.append(fault)
        return fault

    def take_fault(self, kind: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.path == kind and fault.remaining > 0:
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def faults(self) -> list[dict]:
        with self._lock:
            return [fault.to_json() for fault in self._faults]

    def reset(self) -> None:
        """Forget approvals, requests, faults and nonces; callbacks in flight still finish."""
        self._reset_state()

    def wait_idle(self, timeout_seconds: float = 10.0) -> bool:
        """True once no callback is in flight anywhere (bounded)."""
        deadline = time.monotonic() + timeout_seconds
        with self._lock:
            while True:
                busy = any(not attempts[-1].settled for attempts in self._approvals.values())
                remaining = deadline - time.monotonic()
                if not busy or remaining <= 0:
                    return not busy
                self._changed.wait(min(remaining, 0.5))


def _best_effort_json(raw: bytes):
    """The body parsed for the request log only (even when the request is refused)."""
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _json_or_none(response):
    try:
        return response.json()
    except ValueError:
        return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # a burst of concurrent sends must not overflow the accept queue


class _Handler(BaseHTTPRequestHandler):
    server_version = "ZeyiSimulator/1.0"
    protocol_version = "HTTP/1.1"
    timeout = 60  # an idle keep-alive connection is closed after a minute

    @property
    def simulator(self) -> ZeyiSimulator:
        return self.server.simulator

    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        if self.simulator.config.verbose:
            sys.stderr.write(f"zeyi-simulator {self.address_string()} {format % args}\n")

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def _read_body(self) -> bytes | None:
        length = self.headers.get("Content-Length") or "0"
        if not length.isdigit() or int(length) > MAX_BODY_BYTES:
            self._reply(413, envelope(success=False, error_code="BODY_TOO_LARGE",
                                      message=f"body must be at most {MAX_BODY_BYTES} bytes"))
            return None
        return self.rfile.read(int(length)) if int(length) else b""

    def _reply(self, status: int, payload, content_type: str = "application/json;charset=utf-8"):
        data = payload if isinstance(payload, bytes) else json.dumps(
            payload, ensure_ascii=False).encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _dispatch(self, method: str) -> None:
        parts = urlsplit(self.path)
        path, query = parts.path, parse_qs(parts.query)
        raw = self._read_body() if method == "POST" else b""
        if raw is None:
            return
        if method == "POST" and path in (SEND_PATH, CANCEL_PATH):
            self._zeyi_call("send" if path == SEND_PATH else "cancel", path, raw)
        elif path.startswith("/_control/"):
            status, payload = _control(self.simulator, method, path, query, raw)
            self._reply(status, payload)
        else:
            self._reply(404, envelope(success=False, error_code="NOT_FOUND",
                                      message=f"no route {method} {path}"))

    def _zeyi_call(self, kind: str, path: str, raw: bytes) -> None:
        simulator = self.simulator
        fault = simulator.take_fault(kind)
        headers = {name: value for name, value in self.headers.items()}
        if fault is not None and fault.mode != "slow":
            entry = {"kind": kind, "path": path, "clientIp": self.client_address[0],
                     "headers": headers, "body": raw.decode("utf-8", errors="replace"),
                     "json": _best_effort_json(raw), "verdict": f"fault:{fault.mode}"}
            simulator.log_request(entry)
            self._fault_reply(fault)
            return
        if fault is not None:
            simulator._stopping.wait(fault.seconds)  # noqa: SLF001 - shutdown cuts the delay
        answer, entry = simulator.handle_zeyi_call(kind, self.client_address[0], headers, raw)
        entry["path"] = path
        if fault is not None:
            entry["fault"] = "slow"
        simulator.log_request(entry)
        self._reply(200, answer)

    def _fault_reply(self, fault: Fault) -> None:
        if fault.mode == "status503":
            self._reply(503, b"<html><body>503 Service Temporarily Unavailable</body></html>",
                        "text/html")
        elif fault.mode == "not_json":
            self._reply(200, b"<html><body>502 Bad Gateway (nginx)</body></html>", "text/html")
        elif fault.mode == "refuse":
            self._reply(200, envelope(success=False, business=True,
                                      error_code="SIMULATED_REFUSAL",
                                      message="refused by an injected fault"))
        else:  # drop: close the connection without answering
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)


def _control(simulator: ZeyiSimulator, method: str, path: str, query: dict,
             raw: bytes) -> tuple[int, dict]:
    """The control API; returns (HTTP status, JSON). Documented in docs/sandbox.md."""
    segments = [unquote(part) for part in path.split("/")[2:]]
    try:
        body = json.loads(raw) if raw.strip() else {}
    except ValueError:
        return 400, {"error": "body must be JSON"}
    if not isinstance(body, dict):
        return 400, {"error": "body must be a JSON object"}

    def number(name: str, default: float) -> float:
        values = query.get(name)
        return float(values[0]) if values else default

    try:
        if method == "GET" and segments == ["health"]:
            return 200, {"ok": True, "service": "zeyi-simulator"}
        if method == "POST" and segments == ["reset"]:
            simulator.reset()
            return 200, {"ok": True}
        if method == "GET" and segments == ["requests"]:
            kind = (query.get("path") or query.get("kind") or [None])[0]
            code = (query.get("code") or [None])[0]
            return 200, {"requests": simulator.requests_log(
                kind=kind, code=code, since=int(number("since", 0)))}
        if segments == ["faults"]:
            if method == "POST":
                simulator.add_fault(str(body.get("path", "")), str(body.get("mode", "")),
                                    int(body.get("count", 1)), float(body.get("seconds", 0)))
            return 200, {"faults": simulator.faults()}
        if method == "GET" and segments == ["approvals"]:
            return 200, {"approvals": simulator.all_approvals()}
        if method == "GET" and len(segments) == 2 and segments[0] == "approvals":
            data = simulator.approval_json(segments[1], number("waitSeconds", 0))
            if data is None:
                return 404, {"error": f"no approval for code {segments[1]}"}
            return 200, data
        if method == "POST" and len(segments) == 3 and segments[0] == "approvals":
            code, action = segments[1], segments[2]
            if action == "redeliver":
                simulator.redeliver(code)
            elif action in ("agree", "refuse", "terminate"):
                simulator.decide(code, action, audit_user=body.get("auditUser"),
                                 remark=body.get("remark"))
            else:
                return 404, {"error": f"unknown action {action}"}
            return 200, simulator.approval_json(code)
    except KeyError as missing:
        return 404, {"error": f"no approval (or no callback) for code {missing.args[0]}"}
    except BusinessRefusal as refusal:
        return 409, {"error": refusal.message, "errorCode": refusal.error_code}
    except (TypeError, ValueError) as error:
        return 400, {"error": str(error)}
    return 404, {"error": f"no control route {method} {path}"}


def _flag(value: str) -> bool:
    return value.strip().lower() in {"1", "true", "yes", "on"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(prog="python -m sandbox.zeyi_simulator",
                                     description="Zeyi approval API simulator (test only).")
    parser.add_argument("--host", default=env("ZEYI_SIM_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(env("SANDBOX_ZEYI_PORT", "8001")))
    parser.add_argument("--credentials", default=env("ZEYI_SIM_CREDENTIALS",
                                                     str(DEFAULT_CREDENTIALS_PATH)),
                        help="JSON with outbound and inbound credentials")
    parser.add_argument("--gateway-url", default=env("ZEYI_SIM_GATEWAY_URL"),
                        help="where callbacks go, e.g. http://127.0.0.1:8000")
    parser.add_argument("--encrypt-requests", action="store_true",
                        default=_flag(env("ZEYI_SIM_ENCRYPT_REQUESTS", "")),
                        help="expect AES-encrypted send/cancel bodies (gateway ZEYI_ENCRYPT)")
    parser.add_argument("--encrypt-callbacks", action="store_true",
                        default=_flag(env("ZEYI_SIM_ENCRYPT_CALLBACKS", "")),
                        help="encrypt callback bodies (gateway CALLBACK_ENCRYPTED)")
    parser.add_argument("--ip-whitelist", default=env("ZEYI_SIM_IP_WHITELIST", ""),
                        help="comma-separated IPs or CIDRs allowed to call; empty allows all")
    parser.add_argument("--auto-decide", default=env("ZEYI_SIM_AUTO_DECIDE", "off"),
                        choices=AUTO_DECIDE_RULES,
                        help="decide every send automatically; by-suffix: -R refuse, -T terminate,"
                             " others agree")
    parser.add_argument("--auto-decide-delay", type=float,
                        default=float(env("ZEYI_SIM_AUTO_DECIDE_DELAY", "1.0")))
    parser.add_argument("--skew-seconds", type=int, default=300)
    parser.add_argument("--callback-max-tries", type=int, default=8)
    parser.add_argument("--callback-first-backoff", type=float, default=0.2)
    parser.add_argument("--callback-max-backoff", type=float, default=5.0)
    parser.add_argument("--cancel-callback-delay", type=float, default=0.5,
                        help="seconds between an accepted cancel and its terminate callback")
    parser.add_argument("--verbose", action="store_true")
    return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> SimulatorConfig:
    outbound, inbound = load_credentials(args.credentials)
    whitelist = tuple(part.strip() for part in args.ip_whitelist.split(",") if part.strip())
    return SimulatorConfig(
        outbound=outbound, inbound=inbound, host=args.host, port=args.port,
        gateway_url=args.gateway_url or None, encrypt_requests=args.encrypt_requests,
        encrypt_callbacks=args.encrypt_callbacks, ip_whitelist=whitelist,
        auto_decide=args.auto_decide, auto_decide_delay_seconds=args.auto_decide_delay,
        skew_seconds=args.skew_seconds, callback_max_tries=args.callback_max_tries,
        callback_first_backoff_seconds=args.callback_first_backoff,
        callback_max_backoff_seconds=args.callback_max_backoff,
        cancel_callback_delay_seconds=args.cancel_callback_delay, verbose=args.verbose)


def main(argv: list[str] | None = None) -> int:
    config = config_from_args(parse_args(argv))
    simulator = ZeyiSimulator(config)
    try:
        simulator.bind()
    except OSError as error:
        print(f"zeyi-simulator: cannot listen on {config.host}:{config.port}: {error}",
              file=sys.stderr)
        return 2

    def _terminate(*_):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _terminate)
    print(f"zeyi-simulator listening on {simulator.url} (callbacks to"
          f" {config.gateway_url or 'nowhere'}, auto-decide {config.auto_decide})", flush=True)
    try:
        simulator.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        simulator.stop(timeout_seconds=2.0)
    return 0


__all__ = ["SimulatorConfig", "ZeyiSimulator", "load_credentials", "main"]

if __name__ == "__main__":
    sys.exit(main())
