"""Sends and cancels: the claim of a code, Zeyi's answers to sends and cancels, and an
operator's resolution of an approval stuck open."""
from __future__ import annotations

from chalicelib.approvals import states
from chalicelib.approvals.store.base import (
    ATTEMPT_PREFIX,
    CHANGED_BY_ANSWER,
    CHANGED_BY_CANCEL,
    CHANGED_BY_OPERATOR,
    CHANGED_BY_SEND,
    CORRELATION_ID,
    StoreBase,
    _Cancelled,
    _n,
    _plain,
    _s,
    _set_audit_type,
    _to_dynamo,
    new_attempt_id,
)
from chalicelib.approvals.store.doubt import _doubt_sets, _superseding_doubt
from chalicelib.approvals.store.retries import _TRIES
from chalicelib.errors import (
    ApprovalActiveError,
    ApprovalNotFoundError,
    ApprovalNotOpenError,
    ServiceUnavailableError,
)
from chalicelib.runtime.logs import logger


class ClaimItemRefused(Exception):
    """An item the caller added to a claim (``extra_items``) failed its condition, so nothing
    was claimed; ``old_items`` are those items as they were (DynamoDB's typed JSON)."""

    def __init__(self, old_items: list[dict]):
        super().__init__("an item written with the claim failed its condition")
        self.old_items = old_items


class ClaimStore(StoreBase):
    def claim(self, code: str, request: dict, lease_seconds: int, *,
              correlation_id: str | None = None, extra_items=None) -> str:
        """Make a new SUBMITTING attempt the code's current one and return its id;
        ``correlation_id`` (the sending request's) goes on the attempt and the HEAD.
        ``extra_items(attempt_id)``, when given, returns more TransactWriteItems items that
        belong with the claim (an idempotency key, a task token): written in the same
        transaction, so neither exists without the other.

        Raises ApprovalActiveError when the code has an active approval (a leased one only
        while its lease runs), ClaimItemRefused when an extra item failed its condition.
        """
        head = self.get_head(code)
        for tries in range(_TRIES):
            self._backoff(tries)
            now = self._now_ms()
            if head is not None:
                _raise_if_blocked(code, head, now)
            attempt_id = new_attempt_id(now)
            items = self._claim_items(code, head, request, attempt_id, lease_seconds, now,
                                      correlation_id)
            extras = list(extra_items(attempt_id)) if extra_items else []
            try:
                self._transact(items + extras)
                return attempt_id
            except _Cancelled as cancelled:
                # Someone changed the code since we read it, or this was botocore's retry of
                # our own claim after its answer was lost: read again, once, for both questions.
                head = self.get_head(code)
                if (head or {}).get("attemptId") == attempt_id:
                    return attempt_id
                refused = [cancelled.old_item(len(items) + i) or {} for i in range(len(extras))
                           if cancelled.failed(len(items) + i)]
                if refused:
                    raise ClaimItemRefused(refused) from None
        if head is not None:
            _raise_if_blocked(code, head, self._now_ms())
        raise ServiceUnavailableError(f"code {code} is being changed concurrently; try again")

    def _claim_items(self, code: str, head: dict | None, request: dict, attempt_id: str,
                     lease_seconds: int, now: int,
                     correlation_id: str | None = None) -> list[dict]:
        sets = {"status": _s(states.SUBMITTING), "attemptId": _s(attempt_id),
                "leaseExpiresAt": _n(now + lease_seconds * 1000), "updatedAt": _n(now),
                "changedBy": _s(CHANGED_BY_SEND)}
        removes = ["businessId", "lastCallback"]
        _set_audit_type(sets, removes, request.get("auditType"))
        attempt = {}
        if correlation_id is not None:
            sets[CORRELATION_ID] = attempt[CORRELATION_ID] = _s(correlation_id)
        else:
            removes.append(CORRELATION_ID)  # the previous attempt's is not this one's
        if head is not None:
            _doubt_sets(head, *_superseding_doubt(head), sets, removes)
        items = [
            self._head_update(code, sets, tuple(removes), read=head),
            {"Put": {
                "TableName": self._approvals,
                "Item": {**self._key(code, ATTEMPT_PREFIX + attempt_id),
                         "attemptId": _s(attempt_id), "origin": _s("send"),
                         "status": _s(states.SUBMITTING), "request": _to_dynamo(request),
                         "createdAt": _n(now), "updatedAt": _n(now), **attempt},
                "ConditionExpression": "attribute_not_exists(sk)",
            }},
        ]
        if head is not None:
            items.extend(self._superseded(code, head, attempt_id, now))
        return items

    def settle_send(self, code: str, attempt_id: str, status: str, outcome: dict, *,
                    correlation_id: str | None = None) -> bool:
        """Record Zeyi's answer to a send: PENDING (accepted) or FAILED (rejected, or never
        reached). Returns False when the attempt was no longer the code's SUBMITTING one (a
        callback settled it first, or a newer send superseded it); its own item keeps the
        answer either way."""
        event = states.ACCEPTED if status == states.PENDING else states.REJECTED
        return self._move_attempt(code, attempt_id, event, {"outcome": _to_dynamo(outcome)},
                                  changed_by=CHANGED_BY_ANSWER, correlation_id=correlation_id)

    def note_outcome(self, code: str, attempt_id: str, outcome: dict) -> None:
        """Keep on the attempt what happened to a send whose outcome is unknown; the code's
        status does not change (its lease, or a callback, settles it)."""
        self._call("update_item", **self._attempt_update(
            code, attempt_id, {"outcome": _to_dynamo(outcome)}, self._now_ms())["Update"])

    def mark_cancelling(self, code: str, attempt_id: str, cancel_request: dict,
                        lease_seconds: int, *, correlation_id: str | None = None) -> bool:
        """PENDING → CANCELLING once Zeyi accepted a cancel, under a lease: if the terminate
        never comes, the code is free again once it runs out. Returns False when a callback
        had already moved the approval on. ``correlation_id`` (the cancelling request's) goes
        on the HEAD and into the attempt's ``cancel``."""
        now = self._now_ms()
        cancel = {**cancel_request, "acceptedAt": now}
        if correlation_id is not None:
            cancel[CORRELATION_ID] = correlation_id
        return self._move_attempt(
            code, attempt_id, states.CANCEL_ACCEPTED, {"cancel": _to_dynamo(cancel)},
            changed_by=CHANGED_BY_CANCEL, lease_ms=lease_seconds * 1000,
            correlation_id=correlation_id)

    def _move_attempt(self, code: str, attempt_id: str, event: str, attempt_sets: dict,
                      *, changed_by: str, lease_ms: int | None = None,
                      correlation_id: str | None = None) -> bool:
        """Apply ``event`` to the current attempt ``attempt_id`` (a blind write conditioned on
        the transition table) and keep ``attempt_sets`` on its item. Returns False when the
        attempt was not in a status ``event`` may leave; its item gets ``attempt_sets`` then."""
        target = states.target_of(event)
        for tries in range(_TRIES):
            self._backoff(tries)
            now = self._now_ms()
            values = {":id": _s(attempt_id)}
            condition = f"attemptId = :id AND {self._status_condition(event, values)}"
            sets = {"status": _s(target), "updatedAt": _n(now), "changedBy": _s(changed_by)}
            if lease_ms is not None:
                sets["leaseExpiresAt"] = _n(now + lease_ms)
            if correlation_id is not None:
                sets[CORRELATION_ID] = _s(correlation_id)
            try:
                self._transact([
                    self._head_update(code, sets, ("leaseExpiresAt",), blind=condition,
                                      values=values),
                    self._attempt_update(code, attempt_id, attempt_sets, now),
                ])
                return True
            except _Cancelled as cancelled:
                if cancelled.conflicted():
                    continue
                head = _plain(cancelled.old_item(0)) if cancelled.old_item(0) else None
                if head and head["attemptId"] == attempt_id and head["status"] == target \
                        and head.get("changedBy") == changed_by:
                    # botocore's retry of our own committed write. (Only this use case writes
                    # ``changed_by`` with this target: an operator's FAILED is not Zeyi's answer,
                    # which is then kept below.)
                    return True
                self._keep_on_attempt(code, attempt_id, event, attempt_sets, head, now)
                return False
        raise ServiceUnavailableError(f"code {code} is being changed concurrently; try again")

    def _keep_on_attempt(self, code: str, attempt_id: str, event: str, attempt_sets: dict,
                         head: dict | None, now: int) -> None:
        """Keep an answer on an attempt that moved on. A send a newer one superseded and that
        Zeyi rejected owns no instance: its item says FAILED, and it leaves the doubt."""
        from botocore.exceptions import ClientError

        superseded = head is not None and head["attemptId"] != attempt_id
        if not (superseded and event == states.REJECTED):
            self._call("update_item",
                       **self._attempt_update(code, attempt_id, attempt_sets, now)["Update"])
            return
        try:
            self._call("update_item", **self._attempt_update(
                code, attempt_id, {**attempt_sets, "status": _s(states.FAILED)}, now,
                only_if_status=states.SUBMITTING)["Update"])
        except ClientError:  # a late callback settled it already: keep the answer only
            self._call("update_item",
                       **self._attempt_update(code, attempt_id, attempt_sets, now)["Update"])
            return
        in_doubt = [attempt for attempt in head.get("inDoubt", ()) if attempt != attempt_id]
        if len(in_doubt) == len(head.get("inDoubt", ())):
            return
        sets = {"updatedAt": _n(now), "changedBy": _s(CHANGED_BY_ANSWER)}
        removes: list[str] = []
        _doubt_sets(head, tuple(in_doubt), tuple(head.get("owedTerminate", ())), sets, removes)
        try:
            self._transact([self._head_update(code, sets, tuple(removes), read=head)])
        except _Cancelled:
            # Moved again meanwhile: the attempt stays in doubt, which only means a late
            # callback of another instance may still be recorded under it.
            logger.info("a rejected attempt stays in doubt", extra={"code": code})

    def resolve(self, code: str, status: str, *, reason: str, by: str) -> dict:
        """Close an approval stuck open as FAILED or TERMINATED, an operator's override kept
        with who and why on the HEAD and on the attempt. Returns the HEAD afterwards.

        A decision Zeyi reports later still counts (states.decide_callback). Raises
        ApprovalNotFoundError, ApprovalNotOpenError when the approval is not open, and
        ServiceUnavailableError when concurrent writers keep winning.
        """
        event = {states.FAILED: states.RESOLVE_FAILED,
                 states.TERMINATED: states.RESOLVE_TERMINATED}[status]
        for tries in range(_TRIES):
            self._backoff(tries)
            head = self.get_head(code)
            if head is None:
                raise ApprovalNotFoundError(
                    f"no approval was ever sent or called back for code {code}")
            if head["status"] not in states.allowed_from(event):
                raise ApprovalNotOpenError(
                    f"code {code} is {head['status']}: only an open approval (SUBMITTING,"
                    " PENDING, CANCELLING) can be resolved", result={"code": code,
                                                                     "status": head["status"]})
            now = self._now_ms()
            resolution = _to_dynamo({"by": by, "reason": reason, "at": now,
                                     "from": head["status"]})
            try:
                self._transact([
                    self._head_update(code, {
                        "status": _s(status), "updatedAt": _n(now),
                        "changedBy": _s(CHANGED_BY_OPERATOR), "resolution": resolution,
                    }, ("leaseExpiresAt",), read=head),
                    self._attempt_update(code, head["attemptId"], {"resolution": resolution},
                                         now),
                ])
            except _Cancelled:
                continue
            return self.get_head(code)
        raise ServiceUnavailableError(f"code {code} is being changed concurrently; try again")


def _raise_if_blocked(code: str, head: dict, now_ms: int) -> None:
    status = head["status"]
    if states.may_send(status, head.get("leaseExpiresAt"), now_ms):
        return
    message = f"code {code} already has an approval in status {status}"
    if status in states.LEASED:
        retry_s = max(1, -(-(head["leaseExpiresAt"] - now_ms) // 1000))
        waiting = ("its outcome is not known yet" if status == states.SUBMITTING
                   else "Zeyi accepted its cancel and has not confirmed it yet")
        message += f"; {waiting}, retry in {retry_s} s if no callback arrives"
    raise ApprovalActiveError(message, result={"code": code, "status": status})
