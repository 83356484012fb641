"""Approval events: every change of an approval, read from the approvals table's stream (the
transactional outbox), becomes one event on the stage's EventBridge bus.

The request paths write DynamoDB only, as before; the stream carries each write of a HEAD item
with its old and new image, and ``handle_batch`` (the ``@app.on_dynamodb_record`` function)
turns the ones that matter into PutEvents entries:

- a HEAD written with another ``status`` or another ``attemptId`` (a new attempt) than before:
  "Approval <Status>" (Submitted, Pending, Agreed, Refused, Terminated, Failed, Cancelling,
  Revoked);
- a HEAD written by a callback whose ``lastCallback`` is new but whose status stayed: "Approval
  Callback Recorded" (the callback was ``ignored``, ``late`` or of an ``unknown_instance``);
- nothing else: a write that changes neither (an in-doubt attempt pruned by Zeyi's late answer),
  a REMOVE, any item but a HEAD. A redelivered callback (``duplicate``) never writes the HEAD.

Each event is fixed by the HEAD's image alone: ``sequence`` is the HEAD's ``version`` (strictly
increasing per code), and ``eventId`` is derived from (code, version), so a stream record
delivered twice gives the same event twice and consumers deduplicate on ``eventId``. The schema
is docs/events/approval-event.schema.json.

Delivery is at least once. Only the entries PutEvents reports failed are sent again, a few times
with a short backoff; records still unpublished are reported as ``batchItemFailures``, so Lambda
retries from the first of them (bisecting, a bounded number of times) and finally sends the
batch's coordinates to the stage's dead-letter queue (``python -m ops events replay-dlq``).
A record that cannot become an event at all is reported the same way and never blocks the
records around it: their events are published regardless.

Cheap to import (no boto3): the function's client comes from ``chalicelib.runtime.aws``.
"""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

from chalicelib.approvals import states
from chalicelib.approvals.stream_mapping import (  # noqa: F401 - re-exported for ops, sandbox, tests
    FUNCTION_NAME,
    STREAM_BATCH_SIZE,
    STREAM_MAPPING,
    STREAM_STARTING_POSITION,
)
from chalicelib.runtime.logs import logger

SOURCE = "jinrun.approval-gateway"
SCHEMA_VERSION = "1"
DETAIL_TYPES = {
    states.SUBMITTING: "Approval Submitted",
    states.PENDING: "Approval Pending",
    states.CANCELLING: "Approval Cancelling",
    states.AGREED: "Approval Agreed",
    states.REFUSED: "Approval Refused",
    states.TERMINATED: "Approval Terminated",
    states.FAILED: "Approval Failed",
    states.REVOKED: "Approval Revoked",
}
CALLBACK_RECORDED = "Approval Callback Recorded"
# An operator's notice, not a change of the approval: its own source, so that the rules of
# internal apps (source jinrun.approval-gateway) never see it, and its own schema
# (docs/events/approval-stuck.schema.json). No ``sequence``: that counts changes only.
OPERATIONS_SOURCE = "jinrun.approval-gateway.operations"
STUCK = "Approval Stuck"
HEAD = "HEAD"
CHANGED_BY_CALLBACK = "callback"
CHANGED_BY_OPERATOR = "operator"
# The ids of all events are UUIDs in this namespace, named by (code, version).
EVENT_ID_NAMESPACE = uuid.UUID("5b0f6f0e-3c1e-4c4f-9a59-4f1c2b7d9e21")

# PutEvents: at most 10 entries and 256 KiB per call (an entry counts its Time, Source,
# DetailType and Detail, as UTF-8).
PUT_EVENTS_MAX_ENTRIES = 10
PUT_EVENTS_MAX_BYTES = 256 * 1024
_TIME_BYTES = 14
# Failed entries are sent again this many times in all, waiting 0.2 s, then 0.4 s: a throttled
# or briefly unavailable bus recovers within the invocation, and anything longer is Lambda's to
# retry (the function stays well inside its timeout).
PUBLISH_TRIES = 3
BACKOFF_SECONDS = 0.2


class EventError(ValueError):
    """A stream record that cannot become an event: it is reported failed, never skipped."""


@dataclass(frozen=True)
class ApprovalEvent:
    event_id: str
    detail_type: str
    detail: dict
    time: datetime
    source: str = SOURCE

    def entry(self, bus_name: str) -> dict:
        """The PutEvents entry."""
        return {"EventBusName": bus_name, "Source": self.source, "DetailType": self.detail_type,
                "Detail": json.dumps(self.detail, ensure_ascii=False, separators=(",", ":")),
                "Time": self.time, "Resources": []}


@dataclass
class BatchOutcome:
    """What one batch of stream records came to."""

    records: int = 0
    published: int = 0
    failed: list[str] = field(default_factory=list)  # stream sequence numbers, in stream order

    @property
    def response(self) -> dict:
        """Lambda's partial batch response: it retries from the first failed record."""
        return {"batchItemFailures": [{"itemIdentifier": number} for number in self.failed]}


# -- a stream record → its event ---------------------------------------------------------------

def _value(attribute: dict):
    """One attribute of a stream image (DynamoDB's typed JSON) as a plain value."""
    ((kind, value),) = attribute.items()
    if kind == "S":
        return value
    if kind == "N":
        number = Decimal(value)
        return int(number) if number == number.to_integral_value() else float(number)
    if kind == "BOOL":
        return bool(value)
    if kind == "NULL":
        return None
    if kind == "M":
        return {name: _value(item) for name, item in value.items()}
    if kind == "L":
        return [_value(item) for item in value]
    if kind in ("SS", "NS"):
        return [_value({kind[0]: item}) for item in value]
    raise EventError(f"an attribute of type {kind} is not expected on a HEAD")


def image(typed: dict | None) -> dict | None:
    """A stream image as plain values (None stays None)."""
    if typed is None:
        return None
    return {name: _value(attribute) for name, attribute in typed.items()}


def event_id(code: str, version: int) -> str:
    return _named_id([code, version])


def _named_id(parts: list) -> str:
    """The same UUID for the same parts, always (consumers deduplicate on it)."""
    return str(uuid.uuid5(EVENT_ID_NAMESPACE, json.dumps(parts)))


def iso_time(epoch_ms: int) -> str:
    moment = datetime.fromtimestamp(epoch_ms // 1000, UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{epoch_ms % 1000:03d}Z"


def _required(head: dict, name: str, kind: type):
    value = head.get(name)
    if not isinstance(value, kind) or isinstance(value, bool) or value in ("", None):
        raise EventError(f"the HEAD of {head.get('code')!r} has no usable {name}: {value!r}")
    return value


def event_of(record: dict) -> ApprovalEvent | None:
    """The event one stream record (Lambda's record shape) stands for, or None when it stands
    for none. Raises EventError when it is a HEAD change that cannot be told."""
    if record.get("eventName") not in ("INSERT", "MODIFY"):
        return None
    stream = record.get("dynamodb") or {}
    new = image(stream.get("NewImage"))
    if new is None:
        raise EventError(f"a {record.get('eventName')} record without a new image: the stream "
                         "must show new and old images")
    if new.get("sk") != HEAD:
        return None
    old = image(stream.get("OldImage")) if record["eventName"] == "MODIFY" else None
    code = _required(new, "code", str)
    version = _required(new, "version", int)
    status = _required(new, "status", str)
    if status not in DETAIL_TYPES:
        raise EventError(f"the HEAD of {code!r} has an unknown status {status!r}")
    updated_at = _required(new, "updatedAt", int)
    before = old or {}
    moved = old is None or before.get("status") != status \
        or before.get("attemptId") != new.get("attemptId")
    callback = new.get("lastCallback") if new.get("changedBy") == CHANGED_BY_CALLBACK else None
    if callback is not None and (not isinstance(callback, dict)
                                 or callback == before.get("lastCallback")):
        callback = None
    if not moved and callback is None:
        return None
    detail = {
        "schemaVersion": SCHEMA_VERSION,
        "eventId": event_id(code, version),
        "code": code,
        "sequence": version,
        "status": status,
        "previousStatus": old.get("status") if old is not None else None,
        "changedBy": new.get("changedBy"),
        "attemptId": new.get("attemptId"),
        "businessId": new.get("businessId"),
        "auditType": new.get("auditType"),
        "result": None,
        "auditUser": None,
        "remark": None,
        "occurredAt": iso_time(updated_at),
    }
    if callback is not None:
        disposition = callback.get("disposition")
        detail.update(
            # A callback recorded under an earlier attempt names it; one no attempt can own
            # belongs to none.
            attemptId=None if disposition == states.UNKNOWN_INSTANCE
            else callback.get("attemptId") or new.get("attemptId"),
            businessId=callback.get("businessId"),
            auditType=new.get("auditType") or callback.get("auditType"),
            result=callback.get("result"), auditUser=callback.get("auditUser"),
            remark=callback.get("remark"))
        detail["callback"] = {"type": callback.get("type"), "disposition": disposition,
                              "receivedAt": iso_time(callback["receivedAt"])
                              if isinstance(callback.get("receivedAt"), int) else None,
                              "cut": list(callback.get("cut", []))}
    if new.get("changedBy") == CHANGED_BY_OPERATOR and isinstance(new.get("resolution"), dict):
        resolution = new["resolution"]
        detail["resolution"] = {"by": resolution.get("by"), "reason": resolution.get("reason"),
                                "from": resolution.get("from"),
                                "at": iso_time(resolution["at"])
                                if isinstance(resolution.get("at"), int) else None}
    if isinstance(new.get("correlationId"), str):
        detail["correlationId"] = new["correlationId"]
    return ApprovalEvent(event_id=detail["eventId"],
                         detail_type=DETAIL_TYPES[status] if moved else CALLBACK_RECORDED,
                         detail=detail, time=datetime.fromtimestamp(updated_at / 1000, UTC))


def stuck_event(approval, now_ms: int) -> ApprovalEvent:
    """The notice of one approval the scheduled search found stuck (a
    ``stuck_approvals.StuckApproval``). The search runs every 5 minutes and says so each time
    the approval is still stuck, always with the same ``eventId`` for one stay in one status, so
    a subscriber acts (pages, opens a ticket) once."""
    event_id = _named_id(
        ["stuck", approval.code, approval.status, approval.attempt_id, approval.open_since_ms])
    lease = approval.lease_expires_at_ms
    detail = {
        "schemaVersion": SCHEMA_VERSION,
        "eventId": event_id,
        "code": approval.code,
        "status": approval.status,
        "attemptId": approval.attempt_id or None,
        "openSince": iso_time(approval.open_since_ms),
        "openForSeconds": max(0, (now_ms - approval.open_since_ms) // 1000),
        "leaseExpiredAt": iso_time(lease) if lease is not None else None,
        "reason": approval.reason,
        "correlationId": approval.correlation_id,
        "observedAt": iso_time(now_ms),
    }
    return ApprovalEvent(event_id=event_id, detail_type=STUCK, detail=detail,
                         time=datetime.fromtimestamp(now_ms / 1000, UTC),
                         source=OPERATIONS_SOURCE)


# -- publishing ---------------------------------------------------------------------------------

@dataclass
class _Pending:
    sequence_number: str
    event: ApprovalEvent
    entry: dict
    size: int
    reason: str = ""


def _size(entry: dict) -> int:
    return _TIME_BYTES + sum(len(entry[name].encode("utf-8"))
                             for name in ("Source", "DetailType", "Detail"))


def _chunks(pending: list[_Pending]):
    chunk, size = [], 0
    for item in pending:
        if chunk and (len(chunk) == PUT_EVENTS_MAX_ENTRIES
                      or size + item.size > PUT_EVENTS_MAX_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append(item)
        size += item.size
    if chunk:
        yield chunk


def _put(client, chunk: list[_Pending]) -> list[_Pending]:
    """One PutEvents call; the items it did not publish, each with why."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        answer = client.put_events(Entries=[item.entry for item in chunk])
    except ClientError as exc:
        error = exc.response.get("Error", {})
        for item in chunk:
            item.reason = f"PutEvents failed: {error.get('Code')}: {error.get('Message')}"
        return chunk
    except BotoCoreError as exc:
        for item in chunk:
            item.reason = f"PutEvents failed: {type(exc).__name__}"
        return chunk
    if not answer.get("FailedEntryCount"):
        return []
    failed = []
    for item, result in zip(chunk, answer.get("Entries", []), strict=False):
        if result.get("ErrorCode") or not result.get("EventId"):
            item.reason = f"{result.get('ErrorCode')}: {result.get('ErrorMessage')}"
            failed.append(item)
    # An answer with fewer results than entries says nothing of the others: not published.
    failed += chunk[len(answer.get("Entries", [])):]
    return failed


def publish(outgoing: list[tuple[str, ApprovalEvent]], *, client, bus_name: str,
            tries: int = PUBLISH_TRIES, sleep=time.sleep) -> list[str]:
    """Put the events on the bus, in order, sending again only the entries PutEvents reported
    failed, at most ``tries`` times in all. Returns the sequence numbers of the records whose
    event is still not published."""
    pending, too_large = [], []
    for sequence_number, event in outgoing:
        entry = event.entry(bus_name)
        item = _Pending(sequence_number, event, entry, _size(entry))
        if item.size > PUT_EVENTS_MAX_BYTES:
            item.reason = f"the event is {item.size} bytes, over PutEvents' 256 KiB"
            too_large.append(item)
        else:
            pending.append(item)
    for attempt in range(tries):
        if not pending:
            break
        if attempt:
            sleep(BACKOFF_SECONDS * 2 ** (attempt - 1))
        pending = [item for chunk in _chunks(pending) for item in _put(client, chunk)]
    unpublished = sorted(too_large + pending, key=lambda item: int(item.sequence_number))
    for item in unpublished:
        logger.error("approval event not published", extra={
            "code": item.event.detail["code"], "sequence": item.event.detail.get("sequence"),
            "eventId": item.event.event_id, "detailType": item.event.detail_type,
            **({"streamSequenceNumber": item.sequence_number}
               if item.event.source == SOURCE else {}),
            "reason": item.reason})
    return [item.sequence_number for item in unpublished]


def handle_batch(records: list[dict], *, client, bus_name: str, tries: int = PUBLISH_TRIES,
                 sleep=time.sleep) -> BatchOutcome:
    """Publish the events of a batch of stream records (Lambda's shape, in stream order).

    Raises EventError for a record without a sequence number, which Lambda cannot be told about
    on its own: the whole batch is then retried (and bisected).
    """
    outcome = BatchOutcome(records=len(records))
    outgoing: list[tuple[str, ApprovalEvent]] = []
    unreadable: list[str] = []
    for record in records:
        sequence_number = (record.get("dynamodb") or {}).get("SequenceNumber")
        if not isinstance(sequence_number, str) or not sequence_number:
            raise EventError("a stream record without a SequenceNumber")
        try:
            event = event_of(record)
        except Exception as exc:  # one unreadable record must not stop the others' events
            logger.error("stream record cannot become an approval event", extra={
                "keys": (record.get("dynamodb") or {}).get("Keys"),
                "streamSequenceNumber": sequence_number,
                "reason": f"{type(exc).__name__}: {exc}"})
            unreadable.append(sequence_number)
            continue
        if event is not None:
            outgoing.append((sequence_number, event))
    failed = publish(outgoing, client=client, bus_name=bus_name, tries=tries, sleep=sleep)
    outcome.failed = sorted(unreadable + failed, key=int)
    outcome.published = len(outgoing) - len(failed)
    logger.info("approval events published", extra={
        "records": outcome.records, "events": len(outgoing), "published": outcome.published,
        "failed": len(outcome.failed)})
    return outcome
