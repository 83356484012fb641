"""Callbacks: the blind one-round-trip write of an in-order callback, and the read-and-rule
path for everything else (``states.decide_callback``); each callback is applied exactly once."""
from __future__ import annotations

import secrets

from chalicelib.approvals import states
from chalicelib.approvals.store.base import (
    ATTEMPT_PREFIX,
    CHANGED_BY_CALLBACK,
    CORRELATION_ID,
    HEAD,
    INSTANCE_PREFIX,
    PREVIEW_CHARS,
    CallbackOutcome,
    CallbackRecord,
    StoreBase,
    _Cancelled,
    _n,
    _plain,
    _s,
    _set_audit_type,
    _storable_text,
    new_attempt_id,
)
from chalicelib.approvals.store.doubt import _doubt_sets, _superseding_doubt
from chalicelib.approvals.store.retries import _TRIES
from chalicelib.errors import ServiceUnavailableError
from chalicelib.runtime.logs import logger


def _head_view(head: dict | None) -> states.Head | None:
    """What the callback rules read of the HEAD (base._RULED_FIELDS, which a ruled write
    conditions on)."""
    if head is None:
        return None
    return states.Head(status=head["status"], attempt_id=head["attemptId"],
                       business_id=head.get("businessId"),
                       in_doubt=tuple(head.get("inDoubt", ())),
                       owed_terminate=tuple(head.get("owedTerminate", ())),
                       agreed_elsewhere=tuple(head.get("agreedElsewhere", ())))


class CallbackStore(StoreBase):
    def record_callback(self, callback: CallbackRecord, nonce_ttl_seconds: int) -> CallbackOutcome:
        """Store a verified callback and apply it to the attempt it belongs to, exactly once.

        Raises NonceReplayedError when the nonce was already used, ServiceUnavailableError when
        concurrent writers keep winning.
        """
        outcome = self._apply_blindly(callback, nonce_ttl_seconds)
        for tries in range(_TRIES):
            if outcome is not None:
                return outcome
            self._backoff(tries)
            outcome = self._apply_as_ruled(callback, nonce_ttl_seconds)
        if outcome is not None:  # the last try committed: Zeyi must hear so
            return outcome
        raise ServiceUnavailableError("callback could not be stored: too many concurrent writes")

    def _callback_put(self, callback: CallbackRecord, disposition: str, status: str,
                      attempt_id: str | None) -> dict:
        """The callback's record, written only if this callback was never recorded before."""
        item = {
            "code": _s(callback.code), "sk": _s(callback.key),
            "businessId": _s(callback.business_id), "type": _s(callback.type),
            "receivedAt": _n(self._now_ms()), "nonce": _s(callback.nonce),
            "appKey": _s(callback.app_key), "body": _s(callback.body),
            "disposition": _s(disposition), "statusAfter": _s(status),
            **_callback_fields(callback),
        }
        if attempt_id is not None:
            item["attemptId"] = _s(attempt_id)
        return {"Put": {"TableName": self._approvals, "Item": item,
                        "ConditionExpression": "attribute_not_exists(sk)",
                        "ReturnValuesOnConditionCheckFailure": "ALL_OLD"}}

    def _last_callback(self, callback: CallbackRecord, disposition: str,
                       attempt_id: str | None) -> dict:
        """What the HEAD keeps of the latest callback: enough to tell what a change was."""
        value = {"businessId": _s(callback.business_id), "type": _s(callback.type),
                 "disposition": _s(disposition), "receivedAt": _n(self._now_ms()),
                 **_callback_fields(callback)}
        if attempt_id is not None:
            value["attemptId"] = _s(attempt_id)
        return {"M": value}

    def _apply_blindly(self, callback: CallbackRecord, ttl: int) -> CallbackOutcome | None:
        """The one-round-trip path: the code's current attempt is open and this is the first
        instance it hears of. Returns None when that does not hold (then read and rule)."""
        request_id = secrets.token_hex(8)
        status = states.target_of(callback.event)
        values: dict = {}
        condition = (f"{self._status_condition(callback.event, values)}"
                     " AND attribute_not_exists(businessId)")
        if callback.event == states.TERMINATE:
            # An attempt in doubt may be owed this very terminate: the rules decide.
            condition += " AND attribute_not_exists(owedTerminate)"
        try:
            self._transact([
                self._nonce_put(callback.app_key, callback.nonce, ttl, request_id),
                self._callback_put(callback, states.APPLIED, status, None),
                self._head_update(callback.code, {
                    "status": _s(status), "businessId": _s(callback.business_id),
                    "updatedAt": _n(self._now_ms()), "changedBy": _s(CHANGED_BY_CALLBACK),
                    "lastCallback": self._last_callback(callback, states.APPLIED, None),
                }, ("leaseExpiresAt",), blind=condition, values=values),
                self._instance_unbound(callback.code, callback.business_id),
            ])
            return CallbackOutcome(states.APPLIED, status)
        except _Cancelled as cancelled:
            if cancelled.failed(0) and self._committed_already(cancelled.old_item(0), request_id):
                return CallbackOutcome(states.APPLIED, status)
            if cancelled.conflicted():
                return None
            if cancelled.failed(1):
                return self._duplicate(callback, ttl, cancelled.old_item(1))
            return None

    def _duplicate(self, callback: CallbackRecord, ttl: int, first: dict | None) -> CallbackOutcome:
        """A redelivery: burn its nonce, change nothing, report the status its first delivery
        left (what Zeyi was told then)."""
        self.use_nonce(callback.app_key, callback.nonce, ttl)
        status = (first or {}).get("statusAfter", {}).get("S")
        if status is None:  # an answer that lost the record's old image: read the code
            status = (self.get_head(callback.code) or {}).get("status")
        return CallbackOutcome(states.DUPLICATE, status or states.target_of(callback.event))

    def _apply_as_ruled(self, callback: CallbackRecord, ttl: int) -> CallbackOutcome | None:
        """Read the HEAD and the instance, write what the rules say, conditioned on that read.
        Returns None when a concurrent write got in between (the caller starts over)."""
        try:
            head_item, instance_item = self._read(callback.code, HEAD,
                                                  INSTANCE_PREFIX + callback.business_id)
        except _Cancelled as cancelled:  # a write of this code was in progress: start over
            cancelled.check_expected()
            return None
        head = _plain(head_item) if head_item else None
        bound_to = None
        if instance_item:
            instance = _plain(instance_item)
            bound_to = (instance["attemptId"], instance["status"])
        ruling = states.decide_callback(_head_view(head), callback.business_id, callback.event,
                                        bound_to)
        now = self._now_ms()
        new_id = new_attempt_id(now)
        attempt_id = new_id if ruling.attempt_id == states.NEW_ATTEMPT else ruling.attempt_id
        current = new_id if ruling.current == states.NEW_ATTEMPT else ruling.current
        request_id = secrets.token_hex(8)
        items = [self._nonce_put(callback.app_key, callback.nonce, ttl, request_id),
                 self._callback_put(callback, ruling.disposition, ruling.status, attempt_id),
                 self._ruled_head(callback, head, ruling, attempt_id, current, now),
                 *self._ruled_items(callback, head, ruling, bound_to, attempt_id, current, now)]
        try:
            self._transact(items)
        except _Cancelled as cancelled:
            if cancelled.failed(0) and self._committed_already(cancelled.old_item(0), request_id):
                return CallbackOutcome(ruling.disposition, ruling.status)
            if cancelled.conflicted():
                return None
            if cancelled.failed(1):
                return self._duplicate(callback, ttl, cancelled.old_item(1))
            return None
        if ruling.warning:
            logger.warning("callback of an unexpected instance",
                           extra={"code": callback.code, "businessId": callback.business_id,
                                  "reason": ruling.warning, "disposition": ruling.disposition})
        return CallbackOutcome(ruling.disposition, ruling.status)

    def _ruled_head(self, callback: CallbackRecord, head: dict | None, ruling: states.Ruling,
                    attempt_id: str | None, current: str, now: int) -> dict:
        sets = {"updatedAt": _n(now), "changedBy": _s(CHANGED_BY_CALLBACK),
                "lastCallback": self._last_callback(callback, ruling.disposition, attempt_id)}
        if head is None or current != head["attemptId"] or ruling.status != head["status"]:
            sets.update(attemptId=_s(current), status=_s(ruling.status))
        if ruling.disposition == states.APPLIED and attempt_id == current:
            sets["businessId"] = _s(callback.business_id)
        new_attempt_removes: list[str] = []
        if ruling.current == states.NEW_ATTEMPT:
            _set_audit_type(sets, new_attempt_removes, callback.audit_type)
        if head is None:
            return self._head_update(callback.code, sets)
        in_doubt = tuple(head.get("inDoubt", ()))
        owed = tuple(head.get("owedTerminate", ()))
        if current != head["attemptId"]:
            in_doubt, owed = _superseding_doubt(head)
        settled = {attempt_id, current, ruling.displaced[1] if ruling.displaced else None}
        in_doubt = tuple(attempt for attempt in in_doubt if attempt not in settled)
        # An agreed instance's attempt waits here until its own revocation settles it or the
        # current one's makes it current (states.Head.agreed_elsewhere).
        elsewhere = tuple(attempt for attempt in head.get("agreedElsewhere", ())
                          if attempt not in settled)
        if ruling.attempt_id == states.NEW_ATTEMPT and ruling.current != states.NEW_ATTEMPT:
            elsewhere = (*elsewhere, attempt_id)[-states.IN_DOUBT_MAX:]
        removes = (["leaseExpiresAt"] if "status" in sets else []) + new_attempt_removes
        if current != head["attemptId"] and ruling.current != states.NEW_ATTEMPT:
            # An earlier attempt is current again: the HEAD describes it, not the one it
            # superseded (the approval events route on its auditType).
            self._describe_attempt(callback.code, current, sets, removes)
        elif current != head["attemptId"]:
            removes.append(CORRELATION_ID)
        _doubt_sets(head, in_doubt, owed, sets, removes, elsewhere)
        return self._head_update(callback.code, sets, tuple(removes), ruled_on=head)

    def _describe_attempt(self, code: str, attempt_id: str, sets: dict,
                          removes: list[str]) -> None:
        """The HEAD's fields that describe its current attempt, from the attempt's own item
        (written once by its send: nothing to condition on)."""
        item = self._call("get_item", TableName=self._approvals,
                          Key=self._key(code, ATTEMPT_PREFIX + attempt_id),
                          ConsistentRead=True).get("Item")
        attempt = _plain(item) if item else {}
        request = attempt.get("request") if isinstance(attempt.get("request"), dict) else {}
        _set_audit_type(sets, removes, attempt.get("auditType") or request.get("auditType"))
        if "businessId" not in sets and isinstance(attempt.get("businessId"), str):
            sets["businessId"] = _s(attempt["businessId"])  # made current by another's callback
        if isinstance(attempt.get(CORRELATION_ID), str):
            sets[CORRELATION_ID] = _s(attempt[CORRELATION_ID])
        else:
            removes.append(CORRELATION_ID)

    def _ruled_items(self, callback: CallbackRecord, head: dict | None, ruling: states.Ruling,
                     bound_to: tuple[str, str] | None, attempt_id: str | None, current: str,
                     now: int) -> list[dict]:
        """The instance and attempt items a ruling writes besides the HEAD and the record."""
        code, business_id = callback.code, callback.business_id
        items = []
        if ruling.disposition == states.UNKNOWN_INSTANCE:
            # Bound to no attempt, so its later callbacks are known to be its own.
            status = states.next_status_of_instance(bound_to[1], callback.event) \
                if bound_to is not None else None
            items.append(self._instance_put(code, business_id, states.UNOWNED,
                                            status or (bound_to or ("", None))[1]
                                            or states.target_of(callback.event), now))
        elif ruling.disposition != states.IGNORED \
                and business_id != (head or {}).get("businessId"):
            if attempt_id is not None and attempt_id != current:
                items.append(self._instance_put(code, business_id, attempt_id,
                                                ruling.attempt_status, now))
            elif bound_to is None:
                items.append(self._instance_unbound(code, business_id))
            # A bound instance never makes its attempt current again: instances are bound once
            # they have ended, and an ended instance's later callback settles only its own
            # attempt (states._earlier_instance; tests/test_states.py pins it).
        new_item = ruling.attempt_id == states.NEW_ATTEMPT
        if new_item:
            audit: dict = {}
            _set_audit_type(audit, [], callback.audit_type)
            sets_audit_type = audit.get("auditType")
            items.append({"Put": {
                "TableName": self._approvals,
                "Item": {**self._key(code, ATTEMPT_PREFIX + attempt_id),
                         "attemptId": _s(attempt_id), "origin": _s("callback"),
                         "status": _s(ruling.attempt_status or ruling.status),
                         "businessId": _s(business_id),
                         "createdAt": _n(now), "updatedAt": _n(now),
                         **({"auditType": sets_audit_type} if sets_audit_type else {})},
                "ConditionExpression": "attribute_not_exists(sk)"}})
        superseded = head is not None and current != head["attemptId"]
        # The superseded attempt may be the one this callback settles (its instance revoked).
        settles_superseded = superseded and attempt_id == head["attemptId"]
        if superseded:
            items.extend(self._superseded(code, head, current, now,
                                          status=ruling.attempt_status if settles_superseded
                                          else None))
        if ruling.attempt_status is not None and not new_item and not settles_superseded:
            items.append(self._attempt_update(code, attempt_id, {
                "status": _s(ruling.attempt_status), "businessId": _s(business_id)}, now))
        if ruling.displaced is not None:
            displaced, to_attempt = ruling.displaced
            items.append(self._instance_put(code, displaced, to_attempt, head["status"], now))
            items.append(self._attempt_update(code, to_attempt, {
                "status": _s(head["status"]), "businessId": _s(displaced)}, now))
        return items


def _callback_fields(callback: CallbackRecord) -> dict:
    """The parsed fields a record and the HEAD keep; free text only as a short preview."""
    fields, cut = {}, []
    if callback.result:
        fields["result"] = _s(callback.result)
    for name, value in (("auditType", callback.audit_type), ("auditUser", callback.audit_user),
                        ("remark", callback.remark)):
        if value is not None:
            text, was_cut = _storable_text(value, PREVIEW_CHARS[name])
            fields[name] = _s(text)
            if was_cut:
                cut.append(_s(name))
    if cut:
        fields["cut"] = {"L": cut}
    return fields
