"""Zeyi's own rules, as the simulator plays them: its paths, the envelope, which bodies it takes,
the one-active-approval-per-code rule, and the states of an approval and of a callback.

Checked with the simulator's own code only (never ``chalicelib``), so the gateway and its test
partner cannot share a bug.
"""
from __future__ import annotations

from sandbox.zeyi_protocol import ProtocolError

SEND_PATH = "/tms-service-api/audit/send"
CANCEL_PATH = "/tms-service-api/audit/cancel"
TOKEN_PATH = "/auth/token"
CALLBACK_PATH = "/dingtalkAudit/callback"
MAX_BODY_BYTES = 1024 * 1024
MAX_WAIT_SECONDS = 120.0

PENDING, AGREED, REFUSED, TERMINATED = "PENDING", "AGREED", "REFUSED", "TERMINATED"
ACTIVE = (PENDING, AGREED)
"""What blocks a new send of the same code: 同一编号最多只能有1个审核通过或审核中的审批."""
ENDED = (AGREED, REFUSED)
"""Ended normally: DingTalk still lets such an instance be revoked or deleted, which Zeyi
reports as a ``terminate`` callback while its own record keeps the decision."""
DECISIONS = {"agree": AGREED, "refuse": REFUSED, "terminate": TERMINATED}
DEFAULT_REMARKS = {"agree": "同意", "refuse": "驳回", "terminate": "撤销"}

# Callback delivery states: queued and delivering are in flight; the other three are final.
QUEUED, DELIVERING, DELIVERED, REJECTED, FAILED = (
    "queued", "delivering", "delivered", "rejected", "failed")
IN_FLIGHT = (QUEUED, DELIVERING)


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


def callback_body(code: str, audit_type: str, business_id: str, action: str, *,
                  audit_user: str, remark: str) -> dict:
    """The callback Zeyi sends for ``action`` (agree, refuse: ``finish``; terminate), with its
    fields in the order Zeyi's Gson serializes them."""
    callback_type = "terminate" if action == "terminate" else "finish"
    body = {"code": code, "auditType": audit_type, "businessId": business_id,
            "type": callback_type}
    if callback_type == "finish":
        body["result"] = action
    body["auditUser"] = audit_user
    body["remark"] = remark
    return body
