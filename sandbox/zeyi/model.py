"""What the simulator remembers: approval instances, the callbacks it owes for them, and the
faults waiting for the next calls. Plain records; the rules that change them are in
``sandbox.zeyi.simulator``."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from sandbox.zeyi.rules import IN_FLIGHT, PENDING, QUEUED

FAULT_MODES = {
    "slow": "wait `seconds`, then process normally (the approval is created even if the caller"
            " gave up)",
    "status503": "answer an HTML 503, nothing created",
    "not_json": "answer HTTP 200 with an HTML body, nothing created",
    "refuse": "answer success:false, businessException:true, SIMULATED_REFUSAL, nothing created",
    "system_error": "answer success:false, businessException:false, SYSTEM_ERROR, nothing"
                    " created",
    "drop": "close the connection before anything was created",
    "accept_then_drop": "process normally (the approval is created or cancelled), then close the"
                        " connection without answering",
    "trickle": "process normally, then send the HTTP answer a few bytes at a time over"
               " `seconds`",
}
"""Each fault mode and what the next send or cancel then sees."""


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Delivery:
    """One callback the simulator owes the gateway, and every try to deliver it."""

    id: int
    body: dict
    status: str = QUEUED
    tries: list[dict] = field(default_factory=list)
    created_at: int = field(default_factory=now_ms)
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
    created_at: int = field(default_factory=now_ms)
    decision: dict | None = None
    revocations: list[dict] = field(default_factory=list)
    """Terminations after the instance had ended: reported by callback, the decision stays."""
    deliveries: list[Delivery] = field(default_factory=list)

    @property
    def settled(self) -> bool:
        return all(delivery.status not in IN_FLIGHT for delivery in self.deliveries)

    def to_json(self) -> dict:
        return {"code": self.code, "auditType": self.audit_type, "businessId": self.business_id,
                "status": self.status, "request": self.request, "createdAt": self.created_at,
                "decision": self.decision, "revocations": list(self.revocations),
                "settled": self.settled,
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


def best_effort_json(raw: bytes):
    """The body parsed for the request log only (even when the request is refused)."""
    try:
        return json.loads(raw)
    except ValueError:
        return None


def code_of(entry: dict) -> str:
    """The code a logged request was about, for a terminal line."""
    body = entry.get("json")
    code = body.get("code") if isinstance(body, dict) else None
    return code if isinstance(code, str) else "(no code)"
