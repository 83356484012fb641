"""The simulator's state and behaviour: Zeyi's API (send, cancel), decisions on approval
instances, the callbacks they cause, injected faults, and the queries the control API and the
inbox page read. HTTP lives in ``sandbox.zeyi.server``."""
from __future__ import annotations

import ipaddress
import sys
import threading
import time
import uuid
from collections import deque

from sandbox.terminal import say
from sandbox.zeyi.callbacks import CallbackSender
from sandbox.zeyi.config import SimulatorConfig
from sandbox.zeyi.model import (
    FAULT_MODES,
    Approval,
    Delivery,
    Fault,
    best_effort_json,
    code_of,
    now_ms,
)
from sandbox.zeyi.rules import (
    ACTIVE,
    CANCEL_PATH,
    DECISIONS,
    DEFAULT_REMARKS,
    ENDED,
    MAX_WAIT_SECONDS,
    PENDING,
    SEND_PATH,
    BusinessRefusal,
    callback_body,
    envelope,
    validate_cancel,
    validate_send,
)
from sandbox.zeyi.server import make_server
from sandbox.zeyi_protocol import ProtocolError, parse_json_object, unseal
from sandbox.zeyi_protocol import check_headers as check_security_headers


class ZeyiSimulator:
    """The simulator; ``start()`` serves it on a background thread."""

    def __init__(self, config: SimulatorConfig, *, clock=time.time):
        self.config = config
        self._clock = clock
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._server = None
        self._serve_thread: threading.Thread | None = None
        self._timers: set[threading.Timer] = set()
        self.callbacks = CallbackSender(config, changed=self._changed, stopping=self._stopping,
                                        clock=clock, say=self.say)
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

    def say(self, line: str) -> None:
        """One readable line on the terminal, when ``echo`` is on."""
        if self.config.echo:
            say(f"[zeyi]    {line}", sys.stdout)

    @property
    def stopping(self) -> threading.Event:
        return self._stopping

    # ----- serving -------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._server.server_address[1] if self._server else self.config.port

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    def bind(self) -> ZeyiSimulator:
        self._server = make_server(self)
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
        self.callbacks.join(timeout_seconds)

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
                 "json": best_effort_json(raw)}
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
                approval = self._send(body)
                outcome = f"OK: PENDING as {approval.business_id}"
            else:
                validate_cancel(body)
                self._cancel(body)
                outcome = "OK: TERMINATED, terminate callback follows"
        except ProtocolError as error:
            entry["verdict"] = error.error_code
            self.say(f"{kind} {code_of(entry)} → refused {error.error_code}:"
                     f" {error.message}")
            return envelope(success=False, error_code=error.error_code,
                            message=error.message), entry
        except BusinessRefusal as refusal:
            entry["verdict"] = refusal.error_code
            self.say(f"{kind} {code_of(entry)} → refused {refusal.error_code}:"
                     f" {refusal.message}")
            return envelope(success=False, business=True, error_code=refusal.error_code,
                            message=refusal.message), entry
        entry["verdict"] = "OK"
        self.say(f"{kind} {body['code']} → {outcome}")
        return envelope(result=None), entry  # Zeyi answers a send or cancel with result null

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

    def _send(self, body: dict) -> Approval:
        code = body["code"]
        with self._lock:
            current = self._current(code)
            # An agreed approval revoked or deleted in DingTalk no longer holds its code (Zeyi's
            # rule counts agreed-or-in-progress approvals; the gateway's REVOKED frees it too).
            if current is not None and current.status in ACTIVE and not current.revocations:
                raise BusinessRefusal(
                    "APPROVAL_ACTIVE",
                    f"同一编号最多只能有1个审核通过或审核中的审批: code {code} already has an"
                    f" approval that is {current.status}")
            approval = Approval(code=code, audit_type=body["auditType"],
                                business_id=f"proc-{uuid.uuid4().hex[:20]}", request=body)
            self._approvals.setdefault(code, []).append(approval)
            self._changed.notify_all()
        self._schedule_auto_decision(approval)
        return approval

    def _cancel(self, body: dict) -> None:
        code = body["code"]
        with self._lock:
            current = self._current(code)
            if current is None or current.status != PENDING:
                state = "no approval" if current is None else f"its approval is {current.status}"
                raise BusinessRefusal("APPROVAL_NOT_PENDING",
                                      f"code {code} cannot be cancelled: {state}")
            # A revoked DingTalk instance reports terminate, like a deleted one.
            self._decide_locked(current, "terminate", audit_user=body["username"],
                                remark=body.get("remark", ""),
                                delay_seconds=self.config.cancel_callback_delay_seconds)

    def _current(self, code: str) -> Approval | None:
        attempts = self._approvals.get(code)
        return attempts[-1] if attempts else None

    def instance(self, code: str, business_id: str | None = None) -> Approval:
        """The approval instance ``business_id`` of ``code``, or its current one.

        Raises KeyError when there is none.
        """
        with self._lock:
            instances = self._approvals.get(code) or []
            if business_id is None:
                if not instances:
                    raise KeyError(code)
                return instances[-1]
            for approval in instances:
                if approval.business_id == business_id:
                    return approval
            raise KeyError(f"{code} with businessId {business_id}")

    # ----- decisions and callbacks ---------------------------------------------------------

    def decide(self, code: str, action: str, *, audit_user: str | None = None,
               remark: str | None = None, business_id: str | None = None) -> Approval:
        """Agree, refuse or terminate an approval instance of ``code`` (its current one unless
        ``business_id`` names another) and queue its callback.

        A PENDING instance takes any decision. An instance that ended (AGREED or REFUSED) can
        still be terminated, as DingTalk lets an ended instance be revoked or deleted: Zeyi
        sends a ``terminate`` callback and keeps its own decision, and a revoked agreement no
        longer holds the code.
        Raises KeyError when there is no such instance, BusinessRefusal when the decision is not
        possible in the instance's state, ValueError for an unknown action.
        """
        if action not in DECISIONS:
            raise ValueError(f"unknown decision {action}")
        user = audit_user or "manager01"
        text = DEFAULT_REMARKS[action] if remark is None else remark
        with self._lock:
            approval = self.instance(code, business_id)
            if approval.status == PENDING:
                self._decide_locked(approval, action, audit_user=user, remark=text)
                return approval
            if action == "terminate" and approval.status in ENDED:
                approval.revocations.append({"at": now_ms(), "auditUser": user, "remark": text})
                self.say(f"terminate {code} {approval.business_id} after it was"
                         f" {approval.status} (revoked: Zeyi keeps {approval.status})"
                         f" by {user}: {text}")
                self._queue_delivery_locked(approval, callback_body(
                    code, approval.audit_type, approval.business_id, "terminate",
                    audit_user=user, remark=text))
                return approval
            possible = ("only terminate (a revocation) is possible"
                        if approval.status in ENDED else "nothing more can be decided")
            raise BusinessRefusal(
                "APPROVAL_NOT_PENDING",
                f"code {code} approval {approval.business_id} is {approval.status}, not PENDING:"
                f" {possible}")

    def _decide_locked(self, approval: Approval, action: str, *, audit_user: str,
                       remark: str, delay_seconds: float = 0.0) -> None:
        approval.status = DECISIONS[action]
        approval.decision = {"action": action, "at": now_ms(), "auditUser": audit_user,
                             "remark": remark}
        self.say(f"{action} {approval.code} {approval.business_id} → {approval.status}"
                 f" by {audit_user}: {remark}")
        self._queue_delivery_locked(approval, callback_body(
            approval.code, approval.audit_type, approval.business_id, action,
            audit_user=audit_user, remark=remark), delay_seconds)

    def redeliver(self, code: str, business_id: str | None = None) -> Approval:
        """Send the latest callback of an instance of ``code`` (its current one unless
        ``business_id`` names another) again, as Zeyi may. Raises KeyError when none."""
        with self._lock:
            approval = self.instance(code, business_id)
            if not approval.deliveries:
                raise KeyError(f"{code} has no callback to redeliver")
            self.say(f"redeliver {code} {approval.business_id}")
            self._queue_delivery_locked(approval, dict(approval.deliveries[-1].body))
            return approval

    def _queue_delivery_locked(self, approval: Approval, body: dict,
                               delay_seconds: float = 0.0) -> None:
        self._delivery_ids += 1
        delivery = Delivery(id=self._delivery_ids, body=body)
        approval.deliveries.append(delivery)
        self._changed.notify_all()
        self.callbacks.start(delivery, delay_seconds)

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

    # ----- queries, faults, reset ----------------------------------------------------------

    def log_request(self, entry: dict) -> None:
        with self._lock:
            self._request_ids += 1
            entry["id"] = self._request_ids
            entry.setdefault("at", now_ms())
            self._requests.append(entry)

    def requests_log(self, *, kind: str | None = None, code: str | None = None,
                     since: int = 0) -> list[dict]:
        with self._lock:
            return [dict(entry) for entry in self._requests
                    if entry["id"] > since and (kind is None or entry.get("kind") == kind)
                    and (code is None or (entry.get("json") or {}).get("code") == code)]

    def approval_json(self, code: str, wait_seconds: float = 0.0,
                      business_id: str | None = None) -> dict | None:
        """An approval instance of ``code`` (its current one unless ``business_id`` names
        another) with the instances before it as ``history``; None when there is none. Waits
        (bounded) until every callback of that instance is delivered, rejected or given up."""
        deadline = time.monotonic() + min(max(wait_seconds, 0.0), MAX_WAIT_SECONDS)
        with self._lock:
            while True:
                try:
                    approval = self.instance(code, business_id)
                except KeyError:
                    approval = None
                remaining = deadline - time.monotonic()
                if (approval is not None and approval.settled) or remaining <= 0 \
                        or self._stopping.is_set():
                    break
                self._changed.wait(min(remaining, 0.5))
            if approval is None:
                return None
            instances = self._approvals[code]
            data = approval.to_json()
            data["current"] = approval is instances[-1]
            data["history"] = [earlier.to_json()
                               for earlier in instances[:instances.index(approval)]]
            return data

    def all_approvals(self, *, with_history: bool = False) -> list[dict]:
        """Every code's current approval (and, ``with_history``, its earlier instances)."""
        with self._lock:
            found = []
            for instances in self._approvals.values():
                data = instances[-1].to_json()
                if with_history:
                    data["history"] = [earlier.to_json() for earlier in instances[:-1]]
                found.append(data)
            return found

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
        self.say(f"fault armed: the next {count} {kind} call(s) → {mode}"
                 + (f" ({seconds:g} s)" if seconds else ""))
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
        self.say("reset: approvals, requests, faults and nonces forgotten")

    def wait_idle(self, timeout_seconds: float = 10.0) -> bool:
        """True once no callback is in flight anywhere (bounded)."""
        deadline = time.monotonic() + timeout_seconds
        with self._lock:
            while True:
                busy = any(not approval.settled for instances in self._approvals.values()
                           for approval in instances)
                remaining = deadline - time.monotonic()
                if not busy or remaining <= 0:
                    return not busy
                self._changed.wait(min(remaining, 0.5))

    def say_request(self, line: str) -> None:
        """One line per HTTP request served, when ``verbose`` is on."""
        if self.config.verbose:
            say(f"[zeyi]    {line}")
