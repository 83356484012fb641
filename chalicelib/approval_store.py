"""DynamoDB storage of approvals and of the inbound nonces.

Layout (table ``approvals``, key ``code`` + ``sk``; every read of one code is one Query):
- ``HEAD``: the code's current state, small whatever the code's history: ``status``,
  ``attemptId`` (the current attempt), ``businessId`` (the Zeyi instance bound to it, once a
  callback named one), ``auditType`` (the current attempt's, for the approval events),
  ``leaseExpiresAt`` (SUBMITTING and CANCELLING), ``inDoubt`` (earlier
  attempts superseded before Zeyi's answer or callback was heard: they may own an instance the
  gateway has not seen), ``lastCallback`` (what the latest callback said, previews only),
  ``changedBy`` and ``version``. Every write of the HEAD bumps ``version``, so a write that read
  the HEAD first conditions on exactly what it read, and ``version`` orders the code's changes.
- ``ATTEMPT#<attemptId>``: one per send (or per callback that creates an attempt): the request,
  Zeyi's answer as raw text, and, once it is no longer current, the status it ended with and its
  instance. The current attempt's live status is the HEAD's.
- ``INSTANCE#<businessId>``: the binding of an instance to an attempt that is no longer current,
  with the instance's decision. The current attempt's instance is the HEAD's ``businessId``.
- ``CALLBACK#<businessId>#<type>#<result>``: one per distinct callback, with its raw body (kept
  once; remark and approver only as short previews). The key is the callback's identity, so a
  redelivery cannot be recorded or applied twice.

The rules (which status follows which, which attempt a callback belongs to) are in
``chalicelib.states``; the conditions here are derived from them. A callback is first tried as one
blind ``TransactWriteItems`` (nonce, record, HEAD move, instance unbound), which is what a warm,
in-order callback costs. Only when that is refused does the store read the HEAD and the instance
and write what ``states.decide_callback`` rules, conditioned on the version it read.
"""
from __future__ import annotations

import secrets
import time
import uuid
from dataclasses import dataclass
from decimal import Decimal

from chalicelib import states
from chalicelib.errors import (
    ApprovalActiveError,
    ApprovalNotFoundError,
    ApprovalNotOpenError,
    NonceReplayedError,
    ServiceUnavailableError,
    StoreError,
)
from chalicelib.logs import logger
from chalicelib.tables import OPEN_INDEX, OPEN_SINCE_ATTRIBUTE, OPEN_STATUS_ATTRIBUTE

HEAD = "HEAD"
ATTEMPT_PREFIX = "ATTEMPT#"
CALLBACK_PREFIX = "CALLBACK#"
INSTANCE_PREFIX = "INSTANCE#"
_TRANSIENT_CODES = frozenset({
    "ThrottlingException", "ProvisionedThroughputExceededException", "RequestLimitExceeded",
    "InternalServerError", "ServiceUnavailable", "TransactionConflictException",
    "TransactionInProgressException",
})
_TRIES = 5  # every read-then-write and every conflicted transaction, bounded
# Previews of the free text a callback carries; the whole text stays in the raw body.
PREVIEW_CHARS = {"auditType": 128, "auditUser": 200, "remark": 1000}
# Newest first, at most this many in a status answer; the counts say how many there are.
HISTORY_ATTEMPTS = 20
HISTORY_CALLBACKS = 50
CHANGED_BY_SEND, CHANGED_BY_ANSWER, CHANGED_BY_CANCEL, CHANGED_BY_CALLBACK, CHANGED_BY_OPERATOR = (
    "send", "answer", "cancel", "callback", "operator")
# The correlation id (chalicelib.correlation) of the request that sent or cancelled the code's
# current attempt: on the attempt item, in its ``cancel``, and on the HEAD, written by the claim,
# the send's answer and the accepted cancel. Callbacks and operators leave the HEAD's as it is,
# so what they decide carries the id of the request that started it; a callback that makes
# another attempt current removes it (that attempt's own id is on its item).
CORRELATION_ID = "correlationId"


@dataclass(frozen=True)
class CallbackRecord:
    """A verified, parsed callback, ready to be stored."""

    code: str
    business_id: str
    type: str
    result: str | None
    audit_type: str | None
    audit_user: str | None
    remark: str | None
    body: str
    app_key: str
    nonce: str

    @property
    def key(self) -> str:
        return f"{CALLBACK_PREFIX}{self.business_id}#{self.type}#{self.result or ''}"

    @property
    def event(self) -> str:
        return states.decision_of(self.type, self.result)


@dataclass(frozen=True)
class CallbackOutcome:
    """What a callback did (a ``states`` disposition) and the code's status afterwards."""

    disposition: str
    status: str


class _Cancelled(Exception):
    """A TransactWriteItems that DynamoDB cancelled, with its reasons in item order."""

    def __init__(self, reasons: list[dict]):
        super().__init__("transaction cancelled")
        self.reasons = reasons

    def _code(self, index: int) -> str | None:
        if index >= len(self.reasons):
            return None
        code = self.reasons[index].get("Code")
        return None if code in (None, "None") else code

    def failed(self, index: int) -> bool:
        return self._code(index) == "ConditionalCheckFailed"

    def old_item(self, index: int) -> dict | None:
        return self.reasons[index].get("Item") if index < len(self.reasons) else None

    def conflicted(self) -> bool:
        return any(self._code(i) == "TransactionConflict" for i in range(len(self.reasons)))

    def check_expected(self) -> None:
        """Raises StoreError when a reason is neither a condition nor a conflict: retrying
        would fail the same way, and calling it a conflict would make Zeyi retry forever."""
        unexpected = sorted({code for code in map(self._code, range(len(self.reasons)))
                             if code not in (None, "ConditionalCheckFailed",
                                             "TransactionConflict")})
        if unexpected:
            raise StoreError(f"DynamoDB cancelled a write: {', '.join(unexpected)}")


def _s(value: str) -> dict:
    return {"S": value}


def _n(value: int) -> dict:
    return {"N": str(value)}


def _storable_text(value: str, max_chars: int) -> tuple[str, bool]:
    """``value`` cut to ``max_chars``, with any unencodable character (a lone surrogate that
    JSON's ``\\ud800`` escape can produce) replaced, so the write cannot fail on it."""
    cut = len(value) > max_chars
    text = value[:max_chars]
    return text.encode("utf-8", "replace").decode("utf-8"), cut


class DynamoDBApprovalStore:
    def __init__(self, client, approvals_table: str, nonces_table: str, *, clock=time.time):
        self._client = client
        self._approvals = approvals_table
        self._nonces = nonces_table
        self._clock = clock

    # -- low level -----------------------------------------------------------------------------

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _call(self, operation: str, **kwargs) -> dict:
        """Run one DynamoDB call; transient AWS failures become ServiceUnavailableError."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self._client, operation)(**kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code == "TransactionCanceledException":
                raise _Cancelled(exc.response.get("CancellationReasons", [])) from exc
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code in _TRANSIENT_CODES or status >= 500:
                raise ServiceUnavailableError(f"DynamoDB is unavailable ({code})") from exc
            raise
        except BotoCoreError as exc:
            raise ServiceUnavailableError(
                f"DynamoDB could not be reached ({type(exc).__name__})") from exc

    def _transact(self, items: list[dict]) -> None:
        """One TransactWriteItems. Raises _Cancelled for a condition or a conflict, StoreError
        for any other cancellation reason."""
        # botocore retries a call whose answer timed out; the token makes DynamoDB treat that
        # retry of an already committed transaction as the same request, not a conflicting one.
        # (moto ignores the token: the callers also recognise their own committed write.)
        try:
            self._call("transact_write_items", TransactItems=items,
                       ClientRequestToken=str(uuid.uuid4()))
        except _Cancelled as cancelled:
            cancelled.check_expected()
            raise

    def _key(self, code: str, sk: str) -> dict:
        return {"code": _s(code), "sk": _s(sk)}

    def _read(self, code: str, *sort_keys: str) -> list[dict | None]:
        """The items of ``code`` under ``sort_keys``, read together and consistently."""
        answer = self._call("transact_get_items", TransactItems=[
            {"Get": {"TableName": self._approvals, "Key": self._key(code, sk)}}
            for sk in sort_keys])
        return [response.get("Item") for response in answer["Responses"]]

    def _nonce_put(self, app_key: str, nonce: str, ttl_seconds: int, request_id: str) -> dict:
        now_s = int(self._clock())
        # Correctness never waits for TTL deletion, which can lag by days: an expired entry
        # counts as absent. The request id tells this very request's retry from a replay.
        return {"Put": {
            "TableName": self._nonces,
            "Item": {"pk": _s(f"{app_key}:{nonce}"), "expiresAt": _n(now_s + ttl_seconds),
                     "requestId": _s(request_id)},
            "ConditionExpression": "attribute_not_exists(pk) OR expiresAt < :now",
            "ExpressionAttributeValues": {":now": _n(now_s)},
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        }}

    @staticmethod
    def _committed_already(existing_nonce: dict | None, request_id: str) -> bool:
        """True when the nonce was stored by ``request_id`` itself: botocore resent a write whose
        answer was lost, and the first try had committed. Raises NonceReplayedError otherwise."""
        if existing_nonce and existing_nonce.get("requestId", {}).get("S") == request_id:
            return True
        raise NonceReplayedError("nonce was already used")

    def _head_update(self, code: str, sets: dict[str, dict], removes: tuple[str, ...] = (),
                     *, read: dict | None = None, ruled_on: dict | None = None,
                     blind: str | None = None, values: dict | None = None) -> dict:
        """The HEAD's write: SET ``sets``, REMOVE ``removes``, bump ``version``.

        Conditioned on ``blind`` (a condition derived from the transition table) when given;
        else on the version of the HEAD ``read`` before; else on the HEAD ``ruled_on`` still
        holding what the callback rules read of it (so concurrent callbacks that change none of
        it, such as recordings of late ones, do not make each other start over); else on the
        HEAD not existing yet.
        """
        status = sets.get("status", {}).get("S")
        if status in states.OPEN:  # the open-approvals index: see chalicelib.tables
            sets = {**sets, OPEN_STATUS_ATTRIBUTE: sets["status"],
                    OPEN_SINCE_ATTRIBUTE: sets["updatedAt"]}
        elif status is not None:
            removes = (*removes, OPEN_STATUS_ATTRIBUTE, OPEN_SINCE_ATTRIBUTE)
        names = {f"#h{i}": name for i, name in enumerate(sets)}
        values = dict(values or {})
        assignments = [f"#h{i} = :h{i}" for i in range(len(sets))]
        values.update({f":h{i}": value for i, value in enumerate(sets.values())})
        values[":one"] = _n(1)
        if blind is not None:
            condition = blind
            assignments.append("version = version + :one")
        elif read is not None:
            condition = "version = :version"
            values[":version"] = _n(read["version"])
            assignments.append("version = version + :one")
        elif ruled_on is not None:
            clauses = []
            for i, name in enumerate(_RULED_FIELDS):
                names[f"#r{i}"] = name
                if ruled_on.get(name) in (None, []):
                    clauses.append(f"attribute_not_exists(#r{i})")
                else:
                    clauses.append(f"#r{i} = :r{i}")
                    values[f":r{i}"] = _to_dynamo(ruled_on[name])
            condition = " AND ".join(clauses)
            assignments.append("version = version + :one")
        else:
            condition = "attribute_not_exists(code)"
            assignments.append("version = :one")
        if "#status" in condition:
            names["#status"] = "status"
        expression = "SET " + ", ".join(assignments)
        removes = tuple(name for name in removes if name not in sets)
        if removes:
            expression += " REMOVE " + ", ".join(removes)
        return {"Update": {
            "TableName": self._approvals, "Key": self._key(code, HEAD),
            "UpdateExpression": expression, "ConditionExpression": condition,
            "ExpressionAttributeNames": names, "ExpressionAttributeValues": values,
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        }}

    def _status_condition(self, event: str, values: dict) -> str:
        """``#status IN (...)``: the statuses the transition table lets ``event`` leave."""
        placeholders = []
        for i, status in enumerate(sorted(states.allowed_from(event))):
            values[f":from{i}"] = _s(status)
            placeholders.append(f":from{i}")
        return f"#status IN ({', '.join(placeholders)})"

    # -- nonces ----------------------------------------------------------------------------------

    def use_nonce(self, app_key: str, nonce: str, ttl_seconds: int) -> None:
        """Record a nonce. Raises NonceReplayedError when it was used within its lifetime."""
        from botocore.exceptions import ClientError

        request_id = secrets.token_hex(8)
        try:
            put = self._nonce_put(app_key, nonce, ttl_seconds, request_id)["Put"]
            self._call("put_item", **put)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise
            self._committed_already(exc.response.get("Item"), request_id)

    # -- callbacks -------------------------------------------------------------------------------

    def record_callback(self, callback: CallbackRecord, nonce_ttl_seconds: int) -> CallbackOutcome:
        """Store a verified callback and apply it to the attempt it belongs to, exactly once.

        Raises NonceReplayedError when the nonce was already used, ServiceUnavailableError when
        concurrent writers keep winning.
        """
        outcome = self._apply_blindly(callback, nonce_ttl_seconds)
        for _ in range(_TRIES):
            if outcome is not None:
                return outcome
            outcome = self._apply_as_ruled(callback, nonce_ttl_seconds)
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

    def _instance_unbound(self, code: str, business_id: str) -> dict:
        return {"ConditionCheck": {
            "TableName": self._approvals, "Key": self._key(code, INSTANCE_PREFIX + business_id),
            "ConditionExpression": "attribute_not_exists(sk)",
        }}

    def _instance_put(self, code: str, business_id: str, attempt_id: str, status: str,
                      now: int) -> dict:
        """Bind an instance to an attempt that is not (or no longer) the current one."""
        return {"Put": {
            "TableName": self._approvals,
            "Item": {**self._key(code, INSTANCE_PREFIX + business_id),
                     "attemptId": _s(attempt_id), "status": _s(status), "boundAt": _n(now)},
            "ConditionExpression": "attribute_not_exists(sk) OR attemptId = :attempt",
            "ExpressionAttributeValues": {":attempt": _s(attempt_id)},
        }}

    def _apply_blindly(self, callback: CallbackRecord, ttl: int) -> CallbackOutcome | None:
        """The one-round-trip path: the code's current attempt is open and this is the first
        instance it hears of. Returns None when that does not hold (then read and rule)."""
        request_id = secrets.token_hex(8)
        status = states.target_of(callback.event)
        values: dict = {}
        condition = (f"{self._status_condition(callback.event, values)}"
                     " AND attribute_not_exists(businessId)")
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
        if ruling.attempt_id == states.NEW_ATTEMPT:
            _set_audit_type(sets, new_attempt_removes, callback.audit_type)
        if head is None:
            return self._head_update(callback.code, sets)
        before = tuple(head.get("inDoubt", ()))
        in_doubt = before
        if current != head["attemptId"]:
            in_doubt = states.in_doubt_after_superseding(head["status"], head.get("businessId"),
                                                         before, head["attemptId"])
        settled = {attempt_id, current, ruling.displaced[1] if ruling.displaced else None}
        in_doubt = tuple(attempt for attempt in in_doubt if attempt not in settled)
        removes = (["leaseExpiresAt"] if "status" in sets else []) + new_attempt_removes
        if current != head["attemptId"]:
            removes.append(CORRELATION_ID)
        if in_doubt != before:
            if in_doubt:
                sets["inDoubt"] = {"L": [_s(attempt) for attempt in in_doubt]}
            else:
                removes.append("inDoubt")
        return self._head_update(callback.code, sets, tuple(removes), ruled_on=head)

    def _ruled_items(self, callback: CallbackRecord, head: dict | None, ruling: states.Ruling,
                     bound_to: tuple[str, str] | None, attempt_id: str | None, current: str,
                     now: int) -> list[dict]:
        """The instance and attempt items a ruling writes besides the HEAD and the record."""
        code, business_id = callback.code, callback.business_id
        items = []
        if ruling.disposition != states.IGNORED and business_id != (head or {}).get("businessId"):
            if attempt_id is not None and attempt_id != current:
                items.append(self._instance_put(code, business_id, attempt_id,
                                                ruling.attempt_status, now))
            elif bound_to is not None:
                # Its attempt is current again: the HEAD holds the binding from now on.
                items.append({"Delete": {
                    "TableName": self._approvals,
                    "Key": self._key(code, INSTANCE_PREFIX + business_id),
                    "ConditionExpression": "attemptId = :attempt",
                    "ExpressionAttributeValues": {":attempt": _s(attempt_id)}}})
            else:
                items.append(self._instance_unbound(code, business_id))
        if ruling.attempt_id == states.NEW_ATTEMPT:
            items.append({"Put": {
                "TableName": self._approvals,
                "Item": {**self._key(code, ATTEMPT_PREFIX + attempt_id),
                         "attemptId": _s(attempt_id), "origin": _s("callback"),
                         "status": _s(ruling.status), "businessId": _s(business_id),
                         "createdAt": _n(now), "updatedAt": _n(now)},
                "ConditionExpression": "attribute_not_exists(sk)"}})
        if head is not None and current != head["attemptId"]:
            items.extend(self._superseded(code, head, current, now))
        if ruling.attempt_status is not None:
            items.append(self._attempt_update(code, attempt_id, {
                "status": _s(ruling.attempt_status), "businessId": _s(business_id)}, now))
        if ruling.displaced is not None:
            displaced, to_attempt = ruling.displaced
            items.append(self._instance_put(code, displaced, to_attempt, head["status"], now))
            items.append(self._attempt_update(code, to_attempt, {
                "status": _s(head["status"]), "businessId": _s(displaced)}, now))
        return items

    def _superseded(self, code: str, head: dict, by: str, now: int) -> list[dict]:
        """The attempt that was current keeps the status it ended with, and its instance (if
        a callback named one) is bound to it from now on."""
        sets = {"status": _s(head["status"]), "supersededBy": _s(by)}
        if head.get("leaseExpiresAt") is not None:
            sets["leaseExpiresAt"] = _n(head["leaseExpiresAt"])
        items = []
        if head.get("businessId"):
            sets["businessId"] = _s(head["businessId"])
            items.append(self._instance_put(code, head["businessId"], head["attemptId"],
                                            head["status"], now))
        items.append(self._attempt_update(code, head["attemptId"], sets, now))
        return items

    def _attempt_update(self, code: str, attempt_id: str, sets: dict[str, dict], now: int,
                        *, only_if_status: str | None = None) -> dict:
        names = {f"#a{i}": name for i, name in enumerate(sets)}
        values = {f":a{i}": value for i, value in enumerate(sets.values())}
        values[":now"] = _n(now)
        condition = "attribute_exists(sk)"
        if only_if_status is not None:
            names["#status"] = "status"
            values[":only"] = _s(only_if_status)
            condition += " AND #status = :only"
        assignments = [f"#a{i} = :a{i}" for i in range(len(sets))] + ["updatedAt = :now"]
        return {"Update": {
            "TableName": self._approvals, "Key": self._key(code, ATTEMPT_PREFIX + attempt_id),
            "UpdateExpression": "SET " + ", ".join(assignments),
            "ConditionExpression": condition,
            "ExpressionAttributeNames": names, "ExpressionAttributeValues": values}}

    # -- sends and cancels -------------------------------------------------------------------------

    def get_head(self, code: str) -> dict | None:
        """The code's current state (plain Python values), or None for a code never seen."""
        item = self._call("get_item", TableName=self._approvals, Key=self._key(code, HEAD),
                          ConsistentRead=True).get("Item")
        return _plain(item) if item else None

    def claim(self, code: str, request: dict, lease_seconds: int, *,
              correlation_id: str | None = None) -> str:
        """Make a new SUBMITTING attempt the code's current one and return its id;
        ``correlation_id`` (the sending request's) goes on the attempt and the HEAD.

        Raises ApprovalActiveError when the code has an active approval (a leased one only
        while its lease runs).
        """
        head = self.get_head(code)
        for _ in range(_TRIES):
            now = self._now_ms()
            if head is not None:
                _raise_if_blocked(code, head, now)
            attempt_id = new_attempt_id(now)
            try:
                self._transact(self._claim_items(code, head, request, attempt_id,
                                                 lease_seconds, now, correlation_id))
                return attempt_id
            except _Cancelled:
                # Someone changed the code since we read it, or this was botocore's retry of
                # our own claim after its answer was lost: read again, once, for both questions.
                head = self.get_head(code)
                if (head or {}).get("attemptId") == attempt_id:
                    return attempt_id
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
            in_doubt = states.in_doubt_after_superseding(head["status"], head.get("businessId"),
                                                  tuple(head.get("inDoubt", ())),
                                                  head["attemptId"])
            if in_doubt:
                sets["inDoubt"] = {"L": [_s(attempt) for attempt in in_doubt]}
            else:
                removes.append("inDoubt")
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
        for _ in range(_TRIES):
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
                if head and head["attemptId"] == attempt_id and head["status"] == target:
                    return True  # botocore's retry of our own committed write
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
        if in_doubt:
            sets["inDoubt"] = {"L": [_s(attempt) for attempt in in_doubt]}
        try:
            self._transact([self._head_update(code, sets, () if in_doubt else ("inDoubt",),
                                              read=head)])
        except _Cancelled:
            # Moved again meanwhile: the attempt stays in doubt, which only means a late
            # callback of another instance may still be recorded under it.
            logger.info("a rejected attempt stays in doubt", extra={"code": code})

    # -- operators -------------------------------------------------------------------------------

    def resolve(self, code: str, status: str, *, reason: str, by: str) -> dict:
        """Close an approval stuck open as FAILED or TERMINATED, an operator's override kept
        with who and why on the HEAD and on the attempt. Returns the HEAD afterwards.

        A decision Zeyi reports later still counts (states.decide_callback). Raises
        ApprovalNotFoundError, ApprovalNotOpenError when the approval is not open, and
        ServiceUnavailableError when concurrent writers keep winning.
        """
        event = {states.FAILED: states.RESOLVE_FAILED,
                 states.TERMINATED: states.RESOLVE_TERMINATED}[status]
        for _ in range(_TRIES):
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

    def open_approvals(self, status: str, *, opened_before_ms: int | None = None,
                       limit: int = 100) -> list[dict]:
        """The HEADs of approvals open in ``status`` (SUBMITTING, PENDING or CANCELLING),
        oldest first, that entered it before ``opened_before_ms``: a Query on the sparse
        open-approvals index, never a Scan."""
        values = {":status": _s(status)}
        condition = "#open = :status"
        if opened_before_ms is not None:
            condition += " AND #since < :before"
            values[":before"] = _n(opened_before_ms)
        kwargs = {"TableName": self._approvals, "IndexName": OPEN_INDEX,
                  "KeyConditionExpression": condition,
                  "ExpressionAttributeNames": {"#open": OPEN_STATUS_ATTRIBUTE,
                                               "#since": OPEN_SINCE_ATTRIBUTE}
                  if opened_before_ms is not None else {"#open": OPEN_STATUS_ATTRIBUTE},
                  "ExpressionAttributeValues": values}
        heads: list[dict] = []
        while len(heads) < limit:
            page = self._call("query", **kwargs, Limit=limit - len(heads))
            heads.extend(_plain(item) for item in page.get("Items", []))
            if "LastEvaluatedKey" not in page:
                break
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        return heads

    # -- reads -----------------------------------------------------------------------------------

    def history(self, code: str, *, bodies: bool = False) -> dict:
        """Current status, the newest attempts and callbacks of ``code``, newest first; each
        callback's raw body only with ``bodies`` (they can be hundreds of kilobytes each).

        Raises ApprovalNotFoundError for a code never seen.
        """
        items: list[dict] = []
        kwargs = {
            "TableName": self._approvals, "ConsistentRead": True,
            "KeyConditionExpression": "code = :code",
            "ExpressionAttributeValues": {":code": _s(code)},
        }
        while True:
            page = self._call("query", **kwargs)
            items.extend(_plain(item) for item in page.get("Items", []))
            if "LastEvaluatedKey" not in page:
                break
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        head = next((item for item in items if item["sk"] == HEAD), None)
        if head is None:
            raise ApprovalNotFoundError(f"no approval was ever sent or called back for code {code}")
        attempts, callbacks, owners = [], [], {}
        for item in items:
            sk = item.pop("sk")
            item.pop("code", None)
            if sk.startswith(ATTEMPT_PREFIX):
                if item["attemptId"] == head["attemptId"]:
                    item["status"] = head["status"]
                    for name in ("leaseExpiresAt", "businessId"):
                        if name in head:
                            item[name] = head[name]
                if item.get("businessId"):
                    owners[item["businessId"]] = item["attemptId"]
                attempts.append(item)
            elif sk.startswith(CALLBACK_PREFIX):
                item.pop("appKey", None)
                if not bodies:
                    item.pop("body", None)
                callbacks.append(item)
            elif sk.startswith(INSTANCE_PREFIX):
                owners[sk[len(INSTANCE_PREFIX):]] = item["attemptId"]
        for callback in callbacks:
            callback.setdefault("attemptId", owners.get(callback["businessId"]))
        attempts.sort(key=lambda a: a["attemptId"], reverse=True)
        callbacks.sort(key=lambda c: c["receivedAt"], reverse=True)
        return {
            "code": code,
            "status": head["status"],
            "currentAttemptId": head["attemptId"],
            "businessId": head.get("businessId"),
            "updatedAt": head.get("updatedAt"),
            "version": head.get("version"),
            "attemptCount": len(attempts),
            "callbackCount": len(callbacks),
            "attempts": attempts[:HISTORY_ATTEMPTS],
            "callbacks": callbacks[:HISTORY_CALLBACKS],
        }


# What states.decide_callback reads of the HEAD.
_RULED_FIELDS = ("status", "attemptId", "businessId", "inDoubt")


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


def _set_audit_type(sets: dict, removes: list[str], audit_type: object) -> None:
    """The HEAD names its current attempt's auditType (the approval events carry it); an attempt
    that names none leaves no earlier attempt's on it."""
    if isinstance(audit_type, str) and audit_type:
        sets["auditType"] = _s(_storable_text(audit_type, PREVIEW_CHARS["auditType"])[0])
    else:
        removes.append("auditType")


def new_attempt_id(now_ms: int) -> str:
    # Sorts by creation time; the random tail keeps two attempts of one millisecond apart.
    return f"{now_ms:013d}-{secrets.token_hex(4)}"


def _head_view(head: dict | None) -> states.Head | None:
    if head is None:
        return None
    return states.Head(status=head["status"], attempt_id=head["attemptId"],
                       business_id=head.get("businessId"),
                       in_doubt=tuple(head.get("inDoubt", ())))


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


def _to_dynamo(value) -> dict:
    from boto3.dynamodb.types import TypeSerializer

    return TypeSerializer().serialize(_no_floats(value))


def _no_floats(value):
    if isinstance(value, float):
        return Decimal(str(value))
    if isinstance(value, dict):
        return {k: _no_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_floats(v) for v in value]
    return value


def _plain(item: dict) -> dict:
    from boto3.dynamodb.types import TypeDeserializer

    deserializer = TypeDeserializer()
    return {name: _json_safe(deserializer.deserialize(value)) for name, value in item.items()}


def _json_safe(value):
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value
