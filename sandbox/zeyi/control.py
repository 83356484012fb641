"""The control API under ``/_control/``: decide approvals, read what the simulator received,
inject faults, reset. Plain JSON (not Zeyi's envelope); documented in docs/sandbox.md."""
from __future__ import annotations

import json
from typing import TYPE_CHECKING
from urllib.parse import unquote

from sandbox.zeyi.rules import DECISIONS, BusinessRefusal

if TYPE_CHECKING:  # the simulator's server calls in here: no import back at run time
    from sandbox.zeyi.simulator import ZeyiSimulator


def handle(simulator: ZeyiSimulator, method: str, path: str, query: dict,
           raw: bytes) -> tuple[int, dict]:
    """One control call; returns (HTTP status, JSON)."""
    segments = [unquote(part) for part in path.split("/")[2:]]
    try:
        body = json.loads(raw) if raw.strip() else {}
    except ValueError:
        return 400, {"error": "body must be JSON"}
    if not isinstance(body, dict):
        return 400, {"error": "body must be a JSON object"}

    def text(name: str) -> str | None:
        values = query.get(name)
        return values[0] if values else None

    def number(name: str, default: float) -> float:
        value = text(name)
        return float(value) if value is not None else default

    try:
        if method == "GET" and segments == ["health"]:
            return 200, {"ok": True, "service": "zeyi-simulator",
                         "gatewayUrl": simulator.config.gateway_url}
        if method == "POST" and segments == ["reset"]:
            simulator.reset()
            return 200, {"ok": True}
        if method == "GET" and segments == ["requests"]:
            return 200, {"requests": simulator.requests_log(
                kind=text("path") or text("kind"), code=text("code"),
                since=int(number("since", 0)))}
        if segments == ["faults"]:
            if method == "POST":
                simulator.add_fault(str(body.get("path", "")), str(body.get("mode", "")),
                                    int(body.get("count", 1)), float(body.get("seconds", 0)))
            return 200, {"faults": simulator.faults()}
        if method == "GET" and segments == ["approvals"]:
            history = (text("history") or "").lower() in {"1", "true", "yes"}
            return 200, {"approvals": simulator.all_approvals(with_history=history)}
        if method == "GET" and len(segments) == 2 and segments[0] == "approvals":
            data = simulator.approval_json(segments[1], number("waitSeconds", 0),
                                           business_id=text("businessId"))
            if data is None:
                return 404, {"error": f"no approval for code {segments[1]}"
                                      + (f" with businessId {text('businessId')}"
                                         if text("businessId") else "")}
            return 200, data
        if method == "POST" and len(segments) == 3 and segments[0] == "approvals":
            code, action = segments[1], segments[2]
            business_id = body.get("businessId", text("businessId"))
            if business_id is not None and not isinstance(business_id, str):
                return 400, {"error": "businessId must be a string"}
            if action == "redeliver":
                approval = simulator.redeliver(code, business_id)
            elif action in DECISIONS:
                for name in ("auditUser", "remark"):
                    if body.get(name) is not None and not isinstance(body[name], str):
                        return 400, {"error": f"{name} must be a string"}
                approval = simulator.decide(code, action, audit_user=body.get("auditUser"),
                                            remark=body.get("remark"), business_id=business_id)
            else:
                return 404, {"error": f"unknown action {action}"}
            return 200, simulator.approval_json(code, number("waitSeconds", 0),
                                                business_id=approval.business_id)
    except KeyError as missing:
        return 404, {"error": f"no approval (or no callback) for code {missing.args[0]}"}
    except BusinessRefusal as refusal:
        return 409, {"error": refusal.message, "errorCode": refusal.error_code}
    except (TypeError, ValueError) as error:
        return 400, {"error": str(error)}
    return 404, {"error": f"no control route {method} {path}"}
