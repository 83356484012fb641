"""Zeyi as its spec describes it, in memory: the reference model of the lifecycle tests.

It stands where the gateway's ZeyiClient would call the real Zeyi (``send``/``cancel`` with the
client's answers and errors), keeps Zeyi's instances per code under Zeyi's own rule (at most one
approved-or-in-progress approval per code), decides them, and holds the callbacks Zeyi owes the
gateway until a test delivers them, in any order. Faults are queued per call: a refusal, a
system error, Zeyi unreachable, or an answer lost before or after Zeyi acted.
"""
from __future__ import annotations

import itertools
import json
from collections import deque
from dataclasses import dataclass, field

from chalicelib.errors import (
    UpstreamOutcomeUnknownError,
    UpstreamRejectedError,
    UpstreamSystemError,
    UpstreamUnavailableError,
)
from chalicelib.protocol.zeyi_client import ZeyiAnswer

PENDING, AGREED, REFUSED, TERMINATED = "PENDING", "AGREED", "REFUSED", "TERMINATED"
# An agreed instance revoked (撤销) or deleted (删除) in DingTalk: it no longer holds the code.
REVOKED = "REVOKED"
DECISIONS = {"agree": AGREED, "refuse": REFUSED, "terminate": TERMINATED}
# What a send or cancel may meet: None is a plain, well-behaved call.
FAULTS = (None, "refuse", "system_error", "unavailable", "lost_before", "lost_after")
_ids = itertools.count(1)


@dataclass(frozen=True)
class Callback:
    code: str
    business_id: str
    type: str
    result: str | None

    @property
    def identity(self) -> tuple:
        return (self.business_id, self.type, self.result)

    def body(self) -> dict:
        body = {"code": self.code, "auditType": "CONTRACT", "businessId": self.business_id,
                "type": self.type, "auditUser": "M01", "remark": "ok"}
        if self.result:
            body["result"] = self.result
        return body


@dataclass
class Instance:
    code: str
    business_id: str
    state: str = PENDING
    send_number: int | None = None  # which of the gateway's sends created it (None: not ours)
    callbacks: list[Callback] = field(default_factory=list)


class ZeyiModel:
    def __init__(self):
        self.instances: dict[str, list[Instance]] = {}
        self.owed: list[Callback] = []      # decided, not yet delivered to the gateway
        self.faults: deque[str | None] = deque()
        self.sends = 0                      # calls that reached send() at all

    # -- what the gateway calls ------------------------------------------------------------------

    def send(self, body: dict) -> ZeyiAnswer:
        self.sends += 1
        fault = self.faults.popleft() if self.faults else None
        code = body["code"]
        if fault == "unavailable":
            raise UpstreamUnavailableError("Zeyi could not be reached (model); nothing was sent")
        if fault == "lost_before":
            raise UpstreamOutcomeUnknownError("the answer was lost (model, nothing created)")
        if fault == "system_error":
            raise UpstreamSystemError("Zeyi failed (model)", error_code="SYSTEM_ERROR")
        if fault == "refuse":
            raise UpstreamRejectedError("refused (model)", error_code="SIMULATED_REFUSAL")
        latest = self.latest(code)
        if latest is not None and latest.state in (PENDING, AGREED):
            raise UpstreamRejectedError("同一编号最多只能有1个审核通过或审核中的审批",
                                        error_code="APPROVAL_ACTIVE")
        self.instances.setdefault(code, []).append(
            Instance(code, f"inst-{next(_ids)}", send_number=self.sends))
        if fault == "lost_after":
            raise UpstreamOutcomeUnknownError("the answer was lost (model, created)")
        return _accepted()

    def cancel(self, body: dict) -> ZeyiAnswer:
        fault = self.faults.popleft() if self.faults else None
        if fault == "unavailable":
            raise UpstreamUnavailableError("Zeyi could not be reached (model); nothing was sent")
        if fault == "lost_before":
            raise UpstreamOutcomeUnknownError("the answer was lost (model, nothing done)")
        if fault in ("refuse", "system_error"):
            raise UpstreamRejectedError("refused (model)", error_code="SIMULATED_REFUSAL")
        latest = self.latest(body["code"])
        if latest is None or latest.state != PENDING:
            raise UpstreamRejectedError("not pending", error_code="APPROVAL_NOT_PENDING")
        self.decide(latest, "terminate")
        if fault == "lost_after":
            raise UpstreamOutcomeUnknownError("the answer was lost (model, cancelled)")
        return _accepted()

    # -- what Zeyi and its approvers do ----------------------------------------------------------

    def create_elsewhere(self, code: str) -> Instance:
        """An approval of the code that did not come from the gateway (it predates it)."""
        assert self.latest(code) is None or self.latest(code).state not in (PENDING, AGREED)
        instance = Instance(code, f"ext-{next(_ids)}")
        self.instances.setdefault(code, []).append(instance)
        return instance

    def decide(self, instance: Instance, action: str) -> Callback:
        """Agree, refuse or terminate a pending instance; terminate an ended one (revoked or
        deleted after its decision: a callback; an agreed one is REVOKED then, any other keeps
        its decision)."""
        assert instance.state == PENDING or action == "terminate"
        if instance.state == PENDING:
            instance.state = DECISIONS[action]
        elif instance.state == AGREED:
            instance.state = REVOKED
        callback = Callback(instance.code, instance.business_id,
                            "terminate" if action == "terminate" else "finish",
                            None if action == "terminate" else action)
        if all(c.identity != callback.identity for c in instance.callbacks):
            instance.callbacks.append(callback)
            self.owed.append(callback)
        return callback

    def latest(self, code: str) -> Instance | None:
        instances = self.instances.get(code)
        return instances[-1] if instances else None


def _accepted() -> ZeyiAnswer:
    envelope = {"success": True, "businessException": False, "errorCode": None, "message": None,
                "result": None}
    return ZeyiAnswer(200, json.dumps(envelope), envelope)
