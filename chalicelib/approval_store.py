"""DynamoDB storage of approvals and of the inbound nonces.

Layout (table ``approvals``, key ``code`` + ``sk``; all reads of one code are one Query):
- ``HEAD``: the code's current attempt: ``status``, ``attemptId``, ``leaseExpiresAt`` (epoch ms,
  while SUBMITTING), ``businessId``, ``version`` (bumped by every send-side change, so a claim can
  be conditioned on exactly what it read), ``unsettledBefore`` (an earlier attempt's outcome was
  never learned, so a callback may still settle this code even after a FAILED resend).
- ``ATTEMPT#<attemptId>``: one per send (or per callback for a code never sent): the request,
  Zeyi's answer, and the status the attempt ended with once a newer attempt replaced it. The
  current attempt's live status is the HEAD's.
- ``CALLBACK#<businessId>#<type>#<result>``: one per distinct callback, with its raw body. The key
  is the callback's identity, so a redelivery cannot be recorded or applied twice.

A callback is one ``TransactWriteItems``: the nonce, the callback record and the HEAD's move, each
conditional. Only when that is refused (duplicate, final state, unknown code) does a second write
follow, so a warm, in-order callback costs exactly one DynamoDB round trip.
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
    NonceReplayedError,
    ServiceUnavailableError,
)

HEAD = "HEAD"
ATTEMPT_PREFIX = "ATTEMPT#"
CALLBACK_PREFIX = "CALLBACK#"
_TRANSIENT_CODES = frozenset({
    "ThrottlingException", "ProvisionedThroughputExceededException", "RequestLimitExceeded",
    "InternalServerError", "ServiceUnavailable", "TransactionConflictException",
    "TransactionInProgressException",
})
_CLAIM_TRIES = 4
_CALLBACK_TRIES = 3


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


@dataclass(frozen=True)
class CallbackOutcome:
    """What a callback did: ``applied`` moved the approval, ``duplicate`` had been seen before,
    ``ignored`` arrived after the approval had already ended."""

    disposition: str
    status: str


class _Cancelled(Exception):
    def __init__(self, reasons: list[dict]):
        super().__init__("transaction cancelled")
        self.reasons = reasons

    def failed(self, index: int) -> bool:
        return self.reasons[index].get("Code") == "ConditionalCheckFailed"

    def conflicted(self) -> bool:
        return any(r.get("Code") == "TransactionConflict" for r in self.reasons)

    def old_item(self, index: int) -> dict | None:
        return self.reasons[index].get("Item")


def _s(value: str) -> dict:
    return {"S": value}


def _n(value: int) -> dict:
    return {"N": str(value)}


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

    def _transact(self, items: list[dict]) -> dict:
        # botocore retries a call whose answer timed out; the token makes DynamoDB treat that
        # retry of an already committed transaction as the same request, not a conflicting one
        # (which would report a fresh nonce as replayed, or a free code as active).
        return self._call("transact_write_items", TransactItems=items,
                          ClientRequestToken=str(uuid.uuid4()))

    def _key(self, code: str, sk: str) -> dict:
        return {"code": _s(code), "sk": _s(sk)}

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
        """Store a verified callback and move its approval, exactly once.

        Raises NonceReplayedError when the nonce was already used.
        """
        target = states.status_after_callback(callback.type, callback.result)
        for _ in range(_CALLBACK_TRIES):
            request_id = secrets.token_hex(8)
            try:
                self._apply_callback(callback, target, nonce_ttl_seconds, request_id)
                return CallbackOutcome("applied", target)
            except _Cancelled as cancelled:
                if cancelled.failed(0) and self._committed_already(cancelled.old_item(0),
                                                                   request_id):
                    return CallbackOutcome("applied", target)
                if cancelled.failed(1):
                    self._record_only(callback, nonce_ttl_seconds, None)
                    first = cancelled.old_item(1) or {}
                    return CallbackOutcome("duplicate",
                                           first.get("statusAfter", {}).get("S", target))
                if cancelled.failed(2):
                    head = cancelled.old_item(2)
                    if head is not None:
                        status = head["status"]["S"]
                        self._record_only(callback, nonce_ttl_seconds, status)
                        return CallbackOutcome("ignored", status)
                    request_id = secrets.token_hex(8)
                    try:
                        self._create_from_callback(callback, target, nonce_ttl_seconds,
                                                   request_id)
                        return CallbackOutcome("applied", target)
                    except _Cancelled as again:
                        if again.failed(0) and self._committed_already(again.old_item(0),
                                                                       request_id):
                            return CallbackOutcome("applied", target)
                        continue  # another writer created the code meanwhile: start over
                # A transaction conflict with a concurrent writer: try again.
        raise ServiceUnavailableError("callback could not be stored: too many concurrent writes")

    def _callback_put(self, callback: CallbackRecord, applied: bool, status: str) -> dict:
        """The callback's record, written only if this callback was never recorded before."""
        item = {
            "code": _s(callback.code),
            "sk": _s(callback.key),
            "businessId": _s(callback.business_id),
            "type": _s(callback.type),
            "receivedAt": _n(self._now_ms()),
            "nonce": _s(callback.nonce),
            "appKey": _s(callback.app_key),
            "body": _s(callback.body),
            "applied": {"BOOL": applied},
            "statusAfter": _s(status),
        }
        for name, value in (("result", callback.result), ("auditType", callback.audit_type),
                            ("auditUser", callback.audit_user), ("remark", callback.remark)):
            if value is not None:
                item[name] = _s(value)
        return {"Put": {"TableName": self._approvals, "Item": item,
                        "ConditionExpression": "attribute_not_exists(sk)",
                        "ReturnValuesOnConditionCheckFailure": "ALL_OLD"}}

    def _apply_callback(self, callback: CallbackRecord, target: str, ttl: int,
                        request_id: str) -> None:
        now = self._now_ms()
        self._transact([
            self._nonce_put(callback.app_key, callback.nonce, ttl, request_id),
            self._callback_put(callback, True, target),
            {"Update": {
                "TableName": self._approvals,
                "Key": self._key(callback.code, HEAD),
                "UpdateExpression": "SET #status = :target, businessId = :bid, updatedAt = :now"
                                    " REMOVE leaseExpiresAt",
                # A FAILED head may still be settled when an earlier attempt's outcome was never
                # known: Zeyi may hold that approval (and so refused the resend that FAILED).
                "ConditionExpression": "attribute_exists(code) AND (#status IN (:s1, :s2, :s3)"
                                       " OR (#status = :failed AND unsettledBefore = :true))",
                "ExpressionAttributeNames": {"#status": "status"},
                "ExpressionAttributeValues": {
                    ":target": _s(target), ":bid": _s(callback.business_id), ":now": _n(now),
                    ":s1": _s(states.SUBMITTING), ":s2": _s(states.PENDING),
                    ":s3": _s(states.CANCELLING), ":failed": _s(states.FAILED),
                    ":true": {"BOOL": True},
                },
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            }},
        ])

    def _create_from_callback(self, callback: CallbackRecord, target: str, ttl: int,
                              request_id: str) -> None:
        # The code was never sent through the gateway (it may predate it): the callback becomes
        # the code's first attempt, in the state it announces.
        now = self._now_ms()
        attempt_id = new_attempt_id(now)
        self._transact([
            self._nonce_put(callback.app_key, callback.nonce, ttl, request_id),
            self._callback_put(callback, True, target),
            {"Put": {
                "TableName": self._approvals,
                "Item": {
                    **self._key(callback.code, HEAD), "status": _s(target),
                    "attemptId": _s(attempt_id), "businessId": _s(callback.business_id),
                    "updatedAt": _n(now), "version": _n(1),
                },
                "ConditionExpression": "attribute_not_exists(code)",
            }},
            {"Put": {
                "TableName": self._approvals,
                "Item": {
                    **self._key(callback.code, ATTEMPT_PREFIX + attempt_id),
                    "attemptId": _s(attempt_id), "origin": _s("callback"),
                    "status": _s(target), "businessId": _s(callback.business_id),
                    "createdAt": _n(now), "updatedAt": _n(now),
                },
            }},
        ])

    def _record_only(self, callback: CallbackRecord, ttl: int, status: str | None) -> None:
        """Burn the nonce and, for a late callback, keep it for audit; the approval stays as is."""
        request_id = secrets.token_hex(8)
        items = [self._nonce_put(callback.app_key, callback.nonce, ttl, request_id)]
        if status is not None:
            items.append(self._callback_put(callback, False, status))
        try:
            self._transact(items)
        except _Cancelled as cancelled:
            if cancelled.failed(0) and self._committed_already(cancelled.old_item(0),
                                                               request_id):
                return
            if len(items) > 1 and cancelled.failed(1):
                return  # the same late callback, recorded by a concurrent delivery
            raise ServiceUnavailableError("callback could not be stored: concurrent writes") \
                from None

    # -- sends and cancels -------------------------------------------------------------------------

    def get_head(self, code: str) -> dict | None:
        """The code's current state (plain Python values), or None for a code never seen."""
        item = self._call("get_item", TableName=self._approvals, Key=self._key(code, HEAD),
                          ConsistentRead=True).get("Item")
        return _plain(item) if item else None

    def claim(self, code: str, request: dict, lease_seconds: int) -> str:
        """Make a new SUBMITTING attempt the code's current one and return its id.

        Raises ApprovalActiveError when the code has an active approval (a SUBMITTING one only
        while its lease runs).
        """
        head = self.get_head(code)
        for _ in range(_CLAIM_TRIES):
            now = self._now_ms()
            if head is not None:
                _raise_if_active(code, head, now)
            attempt_id = new_attempt_id(now)
            items = [
                {"Update": {
                    "TableName": self._approvals,
                    "Key": self._key(code, HEAD),
                    "UpdateExpression": "SET #status = :submitting, attemptId = :id,"
                                        " leaseExpiresAt = :lease, updatedAt = :now,"
                                        " version = :next, unsettledBefore = :unsettled"
                                        " REMOVE businessId",
                    "ConditionExpression": ("attribute_not_exists(code)" if head is None
                                            else "version = :version"),
                    "ExpressionAttributeNames": {"#status": "status"},
                    "ExpressionAttributeValues": {
                        ":submitting": _s(states.SUBMITTING), ":id": _s(attempt_id),
                        ":lease": _n(now + lease_seconds * 1000), ":now": _n(now),
                        ":next": _n((head or {}).get("version", 0) + 1),
                        ":unsettled": {"BOOL": _leaves_unsettled(head)},
                        **({} if head is None else {":version": _n(head.get("version", 0))}),
                    },
                }},
                {"Put": {
                    "TableName": self._approvals,
                    "Item": {
                        **self._key(code, ATTEMPT_PREFIX + attempt_id),
                        "attemptId": _s(attempt_id), "origin": _s("send"),
                        "status": _s(states.SUBMITTING), "request": _to_dynamo(request),
                        "createdAt": _n(now), "updatedAt": _n(now),
                    },
                    "ConditionExpression": "attribute_not_exists(sk)",
                }},
            ]
            if head is not None:
                # The previous attempt ends with the status the HEAD showed: keep it on its item.
                items.append({"Update": {
                    "TableName": self._approvals,
                    "Key": self._key(code, ATTEMPT_PREFIX + head["attemptId"]),
                    "UpdateExpression": "SET #status = :final, updatedAt = :now,"
                                        " supersededBy = :id",
                    "ExpressionAttributeNames": {"#status": "status"},
                    "ExpressionAttributeValues": {
                        ":final": _s(head["status"]), ":now": _n(now), ":id": _s(attempt_id)},
                }})
            try:
                self._transact(items)
                return attempt_id
            except _Cancelled:
                # Someone changed the code since we read it, or this was botocore's retry of
                # our own claim after its answer was lost: read again, once, for both questions.
                head = self.get_head(code)
                if (head or {}).get("attemptId") == attempt_id:
                    return attempt_id
        if head is not None:
            _raise_if_active(code, head, self._now_ms())
        raise ServiceUnavailableError(f"code {code} is being changed concurrently; try again")

    def settle_send(self, code: str, attempt_id: str, status: str, outcome: dict) -> bool:
        """Record Zeyi's answer to a send: PENDING or FAILED. Returns False when the attempt was
        no longer the code's SUBMITTING one (a callback settled it first, or its lease ended and
        a newer send took over); its own item is updated either way."""
        now = self._now_ms()
        attempt_update = {"Update": {
            "TableName": self._approvals,
            "Key": self._key(code, ATTEMPT_PREFIX + attempt_id),
            "UpdateExpression": "SET #status = :status, outcome = :outcome, updatedAt = :now",
            "ExpressionAttributeNames": {"#status": "status"},
            "ExpressionAttributeValues": {
                ":status": _s(status), ":outcome": _to_dynamo(outcome), ":now": _n(now)},
        }}
        try:
            self._transact([
                {"Update": {
                    "TableName": self._approvals,
                    "Key": self._key(code, HEAD),
                    "UpdateExpression": "SET #status = :status, updatedAt = :now,"
                                        " version = version + :one REMOVE leaseExpiresAt",
                    "ConditionExpression": "attemptId = :id AND #status = :submitting",
                    "ExpressionAttributeNames": {"#status": "status"},
                    "ExpressionAttributeValues": {
                        ":status": _s(status), ":now": _n(now), ":one": _n(1),
                        ":id": _s(attempt_id), ":submitting": _s(states.SUBMITTING)},
                }},
                attempt_update,
            ])
            return True
        except _Cancelled:
            # Keep Zeyi's answer on the attempt without touching the HEAD, and without claiming
            # a status the HEAD does not show.
            update = attempt_update["Update"]
            self._call("update_item", TableName=update["TableName"], Key=update["Key"],
                       UpdateExpression="SET outcome = :outcome, updatedAt = :now",
                       ExpressionAttributeValues={
                           ":outcome": update["ExpressionAttributeValues"][":outcome"],
                           ":now": _n(now)})
            return False

    def mark_cancelling(self, code: str, attempt_id: str, cancel_request: dict) -> bool:
        """PENDING → CANCELLING once Zeyi accepted a cancel. Returns False when a callback had
        already moved the approval on."""
        now = self._now_ms()
        try:
            self._transact([
                {"Update": {
                    "TableName": self._approvals,
                    "Key": self._key(code, HEAD),
                    "UpdateExpression": "SET #status = :cancelling, updatedAt = :now,"
                                        " version = version + :one",
                    "ConditionExpression": "attemptId = :id AND #status = :pending",
                    "ExpressionAttributeNames": {"#status": "status"},
                    "ExpressionAttributeValues": {
                        ":cancelling": _s(states.CANCELLING), ":pending": _s(states.PENDING),
                        ":now": _n(now), ":one": _n(1), ":id": _s(attempt_id)},
                }},
                {"Update": {
                    "TableName": self._approvals,
                    "Key": self._key(code, ATTEMPT_PREFIX + attempt_id),
                    "UpdateExpression": "SET cancel = :cancel, updatedAt = :now",
                    "ExpressionAttributeValues": {
                        ":cancel": _to_dynamo({**cancel_request, "acceptedAt": now}),
                        ":now": _n(now)},
                }},
            ])
            return True
        except _Cancelled:
            return False

    # -- reads -----------------------------------------------------------------------------------

    def history(self, code: str) -> dict:
        """Current status, every attempt and every callback of ``code``, newest first.

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
        attempts, callbacks = [], []
        for item in items:
            sk = item.pop("sk")
            item.pop("code", None)
            if sk.startswith(ATTEMPT_PREFIX):
                if item["attemptId"] == head["attemptId"]:
                    item["status"] = head["status"]
                    if "leaseExpiresAt" in head:
                        item["leaseExpiresAt"] = head["leaseExpiresAt"]
                attempts.append(item)
            elif sk.startswith(CALLBACK_PREFIX):
                item.pop("appKey", None)
                callbacks.append(item)
        attempts.sort(key=lambda a: a["attemptId"], reverse=True)
        callbacks.sort(key=lambda c: c["receivedAt"], reverse=True)
        return {
            "code": code,
            "status": head["status"],
            "currentAttemptId": head["attemptId"],
            "businessId": head.get("businessId"),
            "updatedAt": head.get("updatedAt"),
            "attempts": attempts,
            "callbacks": callbacks,
        }


def new_attempt_id(now_ms: int) -> str:
    # Sorts by creation time; the random tail keeps two attempts of one millisecond apart.
    return f"{now_ms:013d}-{secrets.token_hex(4)}"


def _leaves_unsettled(head: dict | None) -> bool:
    """Whether, behind the attempt being claimed, Zeyi may still hold an approval whose outcome
    the gateway never learned: an attempt left SUBMITTING, possibly behind FAILED resends."""
    if head is None:
        return False
    return head["status"] == states.SUBMITTING or (
        head["status"] == states.FAILED and bool(head.get("unsettledBefore")))


def _raise_if_active(code: str, head: dict, now_ms: int) -> None:
    status = head["status"]
    if status not in states.ACTIVE:
        return
    if status == states.SUBMITTING and head.get("leaseExpiresAt", 0) <= now_ms:
        return  # a crashed or unanswered send no longer blocks the code
    message = f"code {code} already has an approval in status {status}"
    if status == states.SUBMITTING:
        retry_s = max(1, -(-(head["leaseExpiresAt"] - now_ms) // 1000))
        message += f"; its outcome is not known yet, retry in {retry_s} s if no callback arrives"
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
