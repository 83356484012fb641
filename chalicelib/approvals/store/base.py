"""DynamoDB storage of approvals and of the inbound nonces.

Layout (table ``approvals``, key ``code`` + ``sk``; every read of one code is one Query):
- ``HEAD``: the code's current state, small whatever the code's history: ``status``,
  ``attemptId`` (the current attempt), ``businessId`` (the Zeyi instance bound to it, once a
  callback named one), ``auditType`` (the current attempt's, for the approval events),
  ``leaseExpiresAt`` (SUBMITTING and CANCELLING), ``inDoubt`` (earlier
  attempts superseded before Zeyi's answer or callback was heard: they may own an instance the
  gateway has not seen), ``owedTerminate`` (those of them superseded while CANCELLING, see
  ``doubt``), ``agreedElsewhere`` (attempts of a second agreed instance, waiting for a
  revocation to tell which holds the code), ``lastCallback`` (what the latest callback said,
  previews only), ``changedBy`` and ``version``. Every write of the HEAD bumps ``version``, so a
  write that read the HEAD first conditions on exactly what it read, and ``version`` orders the
  code's changes.
- ``ATTEMPT#<attemptId>``: one per send (or per callback that creates an attempt): the request,
  Zeyi's answer as raw text, and, once it is no longer current, the status it ended with and its
  instance. The current attempt's live status is the HEAD's.
- ``INSTANCE#<businessId>``: the binding of an instance to an attempt that is no longer current,
  with the instance's decision. The current attempt's instance is the HEAD's ``businessId``.
- ``CALLBACK#<businessId>#<type>#<result>``: one per distinct callback, with its raw body (kept
  once; remark and approver only as short previews). The key is the callback's identity, so a
  redelivery cannot be recorded or applied twice.

The rules (which status follows which, which attempt a callback belongs to) are in
``chalicelib.approvals.states``; the conditions here are derived from them. A callback is first
tried as one blind ``TransactWriteItems`` (nonce, record, HEAD move, instance unbound), which is
what a warm, in-order callback costs. Only when that is refused does the store read the HEAD and the
instance and write what ``states.decide_callback`` rules, conditioned on the version it read.
"""
from __future__ import annotations

import secrets
import time
import uuid
from dataclasses import dataclass
from decimal import Decimal

from chalicelib.approvals import states
from chalicelib.approvals.store.retries import _TRANSIENT_REASONS, backoff
from chalicelib.errors import NonceReplayedError, ServiceUnavailableError, StoreError
from chalicelib.runtime.table_keys import OPEN_SINCE_ATTRIBUTE, OPEN_STATUS_ATTRIBUTE

HEAD = "HEAD"
ATTEMPT_PREFIX = "ATTEMPT#"
CALLBACK_PREFIX = "CALLBACK#"
INSTANCE_PREFIX = "INSTANCE#"
_TRANSIENT_CODES = frozenset({
    "ThrottlingException", "ProvisionedThroughputExceededException", "RequestLimitExceeded",
    "InternalServerError", "ServiceUnavailable", "TransactionConflictException",
    "TransactionInProgressException",
})
# Previews of the free text a callback carries; the whole text stays in the raw body.
PREVIEW_CHARS = {"auditType": 128, "auditUser": 200, "remark": 1000}
CHANGED_BY_SEND, CHANGED_BY_ANSWER, CHANGED_BY_CANCEL, CHANGED_BY_CALLBACK, CHANGED_BY_OPERATOR = (
    "send", "answer", "cancel", "callback", "operator")
# The correlation id (chalicelib.runtime.correlation) of the request that sent or cancelled the
# code's current attempt: on the attempt item, in its ``cancel``, and on the HEAD, written by the
# claim, the send's answer and the accepted cancel. Callbacks and operators leave the HEAD's as it
# is, so what they decide carries the id of the request that started it; a callback that makes
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
        """Nothing was decided: a conflict or throttling cancelled it, and a later try may
        commit. (A condition reported next to a throttled item may not have been evaluated
        against what a retry will see, so the retry decides.)"""
        return any(self._code(i) in _TRANSIENT_REASONS for i in range(len(self.reasons)))

    def check_expected(self) -> None:
        """Raises StoreError when a reason is neither a condition nor transient: retrying
        would fail the same way, and calling it transient would make Zeyi retry forever."""
        unexpected = sorted({code for code in map(self._code, range(len(self.reasons)))
                             if code not in (None, "ConditionalCheckFailed")
                             and code not in _TRANSIENT_REASONS})
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


class StoreBase:
    """The key layout, the HEAD's versioned write and the transaction helpers that every use
    case of the store shares."""

    def __init__(self, client, approvals_table: str, nonces_table: str, *, clock=time.time,
                 sleep=time.sleep):
        self._client = client
        self._approvals = approvals_table
        self._nonces = nonces_table
        self._clock = clock
        self._sleep = sleep

    def _backoff(self, tries_done: int) -> None:
        backoff(self._sleep, tries_done)

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
        if status in states.OPEN:  # the open-approvals index: see chalicelib.runtime.tables
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

    def _superseded(self, code: str, head: dict, by: str, now: int,
                    status: str | None = None) -> list[dict]:
        """The attempt that was current keeps the status it ended with (``status`` when the
        superseding callback is its own), and its instance (if a callback named one) is bound
        to it from now on."""
        status = status or head["status"]
        sets = {"status": _s(status), "supersededBy": _s(by)}
        if head.get("leaseExpiresAt") is not None:
            sets["leaseExpiresAt"] = _n(head["leaseExpiresAt"])
        items = []
        if head.get("businessId"):
            sets["businessId"] = _s(head["businessId"])
            items.append(self._instance_put(code, head["businessId"], head["attemptId"],
                                            status, now))
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

    def get_head(self, code: str) -> dict | None:
        """The code's current state (plain Python values), or None for a code never seen."""
        item = self._call("get_item", TableName=self._approvals, Key=self._key(code, HEAD),
                          ConsistentRead=True).get("Item")
        return _plain(item) if item else None


# What states.decide_callback reads of the HEAD.
_RULED_FIELDS = ("status", "attemptId", "businessId", "inDoubt", "owedTerminate",
                 "agreedElsewhere")


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
