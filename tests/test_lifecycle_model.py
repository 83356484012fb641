"""The approval record and its events against a reference model of Zeyi, through every order
hypothesis finds, under the faults real AWS produces.

Hypothesis drives the real use cases (outbound.send_approval, cancel_approval), the real store
(claims, answers, callbacks, operators' resolutions) and the real outbox (the table's stream on
moto server, chalicelib.approvals.events) next to tests/zeyi_model.py: Zeyi's instances per code,
its one-active-approval rule, what it decided, and the callbacks it owes. The steps are as small
as production's:

- a whole send or cancel through the use case, which Zeyi accepts, refuses, fails with a system
  error, never receives, or answers and loses the answer before or after acting;
- a send in three separate steps (the claim; Zeyi's call and decision; the recording of Zeyi's
  answer), so that callbacks, cancels, leases running out and operators land between them;
- an approver's decision; a revocation or deletion of an ended instance (an agreed one becomes
  REVOKED at Zeyi); an instance Zeyi creates outside the gateway; the delivery of any owed
  callback in any order, and redeliveries with a fresh nonce;
- an operator resolving an open approval as FAILED or TERMINATED;
- time passing beyond a lease;
- DynamoDB faults in the store's client: transactions cancelled for throttling, capacity or a
  conflict (a few, or more than the store's tries: retries running out), a committed write whose
  answer is lost (botocore resends it);
- two actors on one code: another callback landing between a claim's read and its write, or
  between a ruled callback's read and its conditional write;
- publishing the code's events from the stream with PutEvents failing some entries, Lambda
  retrying from the first failed record, and a consumer following docs/events.md receiving them
  in any order, duplicated.

After every step:
- nothing answered with our own 5xx except a retryable 503 when injected faults outlasted the
  store's tries (Zeyi's faults give their documented 502/504);
- a send reached Zeyi only when the gateway's status allowed a new attempt then;
- Zeyi never holds two active approvals of the code, and the gateway never shows two;
- AGREED changes only to REVOKED; every delivered callback is recorded exactly once;
- once every callback Zeyi owes is delivered, the status is what docs/architecture.md allows:
  Zeyi's decision for its latest instance the gateway can know of, or an older instance's decision
  only when every newer instance ended without agreement, or when the gateway could not tell
  (the older instance's send answer was lost: "Attempts in doubt"), never for an instance whose
  attempt is owed a terminate (its cancel was accepted);
- the events published for the code reconstruct its record's history (each status change's
  previousStatus is the status before it), and a consumer following the ordering contract acts on
  every status change exactly once and ends on the record's status, whatever the delivery order.

``make test`` runs the default profile (300 examples, in 4 shards that pytest-xdist's workers
share, each on a worker of its own: the ``spread`` mark); ``HYPOTHESIS_PROFILE=deep`` runs thousands
with longer histories (LIFECYCLE_EXAMPLES and LIFECYCLE_STEPS override either).
"""
from __future__ import annotations

import json
import os
import sys
import uuid

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from chalicelib.approvals import events, outbound, states
from chalicelib.approvals.store import CallbackRecord
from chalicelib.errors import (
    ApprovalActiveError,
    ApprovalNotCancellableError,
    ApprovalNotFoundError,
    ApprovalNotOpenError,
    GatewayError,
    ServiceUnavailableError,
    StoreError,
    UpstreamOutcomeUnknownError,
)
from chalicelib.runtime import aws
from examples import approval_events_consumer as consumer
from tests import peer
from tests.conftest import APPROVALS_TABLE, INBOUND, NONCES_TABLE, Clock, make_tables
from tests.racing_store import RacingStore
from tests.zeyi_model import AGREED, FAULTS, PENDING, REFUSED, TERMINATED, Callback, ZeyiModel

PROFILES = {"default": (300, 14), "deep": (1500, 16)}
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "default")
EXAMPLES = int(os.environ.get("LIFECYCLE_EXAMPLES", PROFILES[PROFILE][0]))
STEPS = int(os.environ.get("LIFECYCLE_STEPS", PROFILES[PROFILE][1]))
LEASE_SECONDS = 120
CANCEL_LEASE_SECONDS = 600
# What a Zeyi fault may legitimately make the gateway answer with a 5xx.
UPSTREAM_CODES = {"UPSTREAM_UNAVAILABLE", "UPSTREAM_OUTCOME_UNKNOWN", "SYSTEM_ERROR"}
STEP_KINDS = ("send", "decide", "deliver", "send", "decide", "deliver", "revoke", "cancel",
              "redeliver", "claim", "call_zeyi", "record_answer", "resolve", "elsewhere",
              "publish")
_examples_run = 0  # the deep run says how far it got
_examples_started = 0
FRESH_TABLES_EVERY = 100  # examples (_empty_tables)
TRANSIENT = ("ThrottlingError", "ProvisionedThroughputExceeded", "TransactionConflict")
# Most calls go well; each fault still comes up in most runs of a few steps.
faults = st.one_of(st.none(), st.sampled_from(FAULTS[1:]))
waits = st.sampled_from([0, LEASE_SECONDS, CANCEL_LEASE_SECONDS])
actions = st.sampled_from(["refuse", "terminate", "agree"])
rarely = st.sampled_from([False, False, False, True])
often = st.sampled_from([True, True, False])
# The DynamoDB faults of a step: mostly none, a few transient cancellations, or more than the
# store's five tries.
dynamo_faults = st.one_of(
    st.just(()), st.just(()), st.just(()),
    st.lists(st.sampled_from(TRANSIENT), min_size=1, max_size=3).map(tuple),
    st.lists(st.sampled_from(TRANSIENT), min_size=12, max_size=12).map(tuple))


class FaultyDynamoDB:
    """The store's DynamoDB client: the next TransactWriteItems calls are cancelled with the
    queued per-item reasons (on the last item, as DynamoDB names the throttled table or index)
    before they reach the table."""

    def __init__(self, client):
        self._client = client
        self.queued: list[str] = []

    def __getattr__(self, name):
        return getattr(self._client, name)

    def transact_write_items(self, **kwargs):
        from botocore.exceptions import ClientError

        if self.queued:
            code = self.queued.pop(0)
            items = kwargs["TransactItems"]
            reasons = [{"Code": "None"} for _ in items[:-1]] + [{"Code": code,
                                                                  "Message": "injected"}]
            raise ClientError({"Error": {"Code": "TransactionCanceledException",
                                         "Message": "Transaction cancelled"},
                               "CancellationReasons": reasons}, "TransactWriteItems")
        return self._client.transact_write_items(**kwargs)


class RecordingStore(RacingStore):
    """The racing store, with a record of what each try of a claim read before it wrote."""

    claim_reads: list

    def _claim_items(self, code, head, *args, **kwargs):
        self._race("between_claim")  # first, as the store's own claim sees the time after it
        self.claim_reads.append((head, self._now_ms()))
        return super()._claim_items(code, head, *args, **kwargs)


class LoseNextAnswer:
    """botocore resends the next TransactWriteItems after it committed, as it does when the
    answer is lost to a timeout."""

    def __init__(self, client):
        self._events = client.meta.events
        self.armed = False

    def _retry(self, response=None, **kwargs):
        if self.armed and response is not None and response[0].status_code == 200:
            self.armed = False
            return 0
        return None

    def __enter__(self):
        self._events.register_first("needs-retry.dynamodb.TransactWriteItems", self._retry)
        return self

    def __exit__(self, *exc_info):
        self._events.unregister("needs-retry.dynamodb.TransactWriteItems", self._retry)


class FlakyBus:
    """EventBridge's PutEvents for the publisher: entries whose event id is in ``failing`` fail
    the first time they are put (a partial failure), every other entry is delivered, in order."""

    def __init__(self, failing: set[str]):
        self.failing = set(failing)
        self.delivered: list[dict] = []

    def put_events(self, Entries):  # noqa: N803 - boto3's parameter name
        results = []
        for entry in Entries:
            detail = json.loads(entry["Detail"])
            if detail["eventId"] in self.failing:
                self.failing.discard(detail["eventId"])
                results.append({"ErrorCode": "ThrottlingException", "ErrorMessage": "injected"})
            else:
                self.delivered.append({"detail-type": entry["DetailType"], "detail": detail})
                results.append({"EventId": str(uuid.uuid4())})
        return {"FailedEntryCount": sum("ErrorCode" in r for r in results), "Entries": results}


class Lifecycle(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        global _examples_started
        _examples_started += 1
        if _examples_started % FRESH_TABLES_EVERY == 0:
            _empty_tables()
        self.code = f"M-{uuid.uuid4().hex[:12]}"
        self.clock = Clock()
        self.dynamodb = FaultyDynamoDB(aws.client("dynamodb"))
        self.store = RecordingStore(self.dynamodb, APPROVALS_TABLE, NONCES_TABLE,
                                    clock=self.clock, sleep=lambda seconds: None)
        self.store.claim_reads = []
        self.zeyi = ZeyiModel()
        self.delivered: dict[tuple, Callback] = {}
        self.claims = 0                          # attempts the gateway started (sends at Zeyi)
        self.created_by: dict[str, int] = {}     # instance -> the claim that created it
        self.late: set[str] = set()              # first callback came after a newer claim
        self.cancelled: set[str] = set()         # instances Zeyi terminated for our cancel
        self.resolved: str | None = None         # an operator's status, until the next claim
        self.in_flight: dict | None = None       # a send in separate steps
        self.injected = 0                        # DynamoDB faults queued for this step
        self.status: str | None = None
        self.status_read: str | None = None
        self.dirty = False
        self.ever_agreed = False
        self._open_stream()

    # -- the steps --------------------------------------------------------------------------

    @rule(data=st.data())
    def step(self, data):
        # One rule drawing among the kinds of step that can do something now, rather than a
        # rule per kind: hypothesis would switch whole rules off for an example (swarm
        # testing), and an example without sends or without decisions exercises nothing.
        instances = self.zeyi.instances.get(self.code, [])
        flight = self.in_flight or {}
        latest = instances[-1] if instances else None
        possible = {
            "send": self.in_flight is None,
            "cancel": self.status in (states.PENDING, states.CANCELLING),
            "decide": any(i.state == PENDING for i in instances),
            "revoke": any(i.state != PENDING for i in instances),
            "deliver": bool(self.zeyi.owed),
            "redeliver": bool(self.delivered),
            "claim": self.in_flight is None,
            "call_zeyi": "attempt" in flight and "answer" not in flight,
            "record_answer": "answer" in flight,
            "resolve": self.status in states.OPEN,
            "elsewhere": latest is None or latest.state not in (PENDING, AGREED),
            "publish": self.status is not None,
        }
        kind = data.draw(st.sampled_from([k for k in STEP_KINDS if possible[k]]), label="step")
        self.dynamodb.queued = list(data.draw(dynamo_faults, label="DynamoDB faults"))
        self.injected = len(self.dynamodb.queued)
        try:
            getattr(self, kind)(data)
        finally:
            self.dynamodb.queued = []

    def send(self, data):
        """An internal app sends the code, after some seconds (a lease may run out); the claim's
        write may lose its answer, or an owed callback may land inside the claim."""
        fault = data.draw(faults, label="Zeyi")
        self.clock.skipped_seconds += data.draw(waits, label="seconds before")
        lose_answer = data.draw(rarely, label="lose the answer of the next write")
        racing = None
        if self.zeyi.owed and data.draw(st.booleans(), label="a callback lands inside the claim"):
            racing = data.draw(st.sampled_from(self.zeyi.owed), label="callback")
        if racing is not None:
            self.store.between_claim = lambda: self._deliver(racing)
        self.store.claim_reads = []
        sends = self.zeyi.sends
        self.zeyi.faults.append(fault)
        with LoseNextAnswer(aws.client("dynamodb")) as lose:
            lose.armed = lose_answer
            self._call(outbound.send_approval, peer.send_body(self.code), store=self.store,
                       zeyi=self.zeyi, lease_seconds=LEASE_SECONDS)
        self.zeyi.faults.clear()
        self.store.between_claim = None
        if self.zeyi.sends > sends:
            self._claimed()
            self._zeyi_called(sends)

    def claim(self, data):
        """The first step of a send: the claim alone (Zeyi not called yet)."""
        self.clock.skipped_seconds += data.draw(waits, label="seconds before")
        self.store.claim_reads = []
        body = peer.send_body(self.code)
        self.dirty = True
        try:
            attempt = self.store.claim(self.code, body, LEASE_SECONDS)
        except ApprovalActiveError:
            return
        except ServiceUnavailableError:
            assert self.dynamodb_exhausted(), "a claim answered 503 without a cause"
            return
        self._claimed()
        self.in_flight = {"attempt": attempt, "body": body}

    def call_zeyi(self, data):
        """The second step: Zeyi's call and what it decides; the answer is not recorded yet."""
        fault = data.draw(faults, label="Zeyi")
        self.zeyi.faults.append(fault)
        sends = self.zeyi.sends
        try:
            answer = self.zeyi.send(self.in_flight["body"])
            self.in_flight["answer"] = ("accepted", answer)
        except UpstreamOutcomeUnknownError as error:
            self.in_flight["answer"] = ("unknown", error)
        except GatewayError as error:
            self.in_flight["answer"] = ("rejected", error)
        self.zeyi.faults.clear()
        self._zeyi_called(sends)

    def record_answer(self, data):
        """The third step: record Zeyi's answer as the send use case does."""
        flight, self.in_flight = self.in_flight, None
        kind, answer = flight["answer"]
        self.dirty = True
        try:
            if kind == "unknown":
                self.store.note_outcome(self.code, flight["attempt"], {"kind": "unknown"})
            else:
                status = states.PENDING if kind == "accepted" else states.FAILED
                self.store.settle_send(self.code, flight["attempt"], status, {"kind": kind})
        except (ServiceUnavailableError, StoreError):
            assert self.dynamodb_exhausted(), "an answer went unrecorded without a cause"

    def _claimed(self):
        # The try that wrote is the last one: what it read must have allowed a new send.
        head, now = self.store.claim_reads[-1]
        assert head is None or states.may_send(head["status"], head.get("leaseExpiresAt"),
                                               now), "a send superseded an active approval"
        self.claims += 1
        self.resolved = None

    def _zeyi_called(self, sends_before):
        instances = self.zeyi.instances.get(self.code, [])
        if instances and instances[-1].send_number is not None \
                and instances[-1].send_number > sends_before:
            self.created_by[instances[-1].business_id] = self.claims

    def cancel(self, data):
        """An internal app cancels the code."""
        self.zeyi.faults.append(data.draw(faults, label="Zeyi"))
        instances = self.zeyi.instances.get(self.code, [])
        before = instances[-1].state if instances else None
        with LoseNextAnswer(aws.client("dynamodb")) as lose:
            lose.armed = data.draw(rarely, label="lose the answer of the next write")
            self._call(outbound.cancel_approval, peer.cancel_body(self.code), store=self.store,
                       zeyi=self.zeyi, lease_seconds=CANCEL_LEASE_SECONDS)
        self.zeyi.faults.clear()
        if before == PENDING and instances[-1].state == TERMINATED \
                and (self.store.get_head(self.code) or {}).get("status") == states.CANCELLING:
            # The gateway knows this instance is owed a terminate (docs/architecture.md).
            self.cancelled.add(instances[-1].business_id)

    def resolve(self, data):
        """An operator closes the open approval."""
        status = data.draw(st.sampled_from([states.FAILED, states.TERMINATED]), label="as")
        self.dirty = True
        try:
            self.store.resolve(self.code, status, reason="model", by="ops")
        except ApprovalNotOpenError:
            return
        except ServiceUnavailableError:
            assert self.dynamodb_exhausted()
            return
        self.resolved = status
        instances = self.zeyi.instances.get(self.code, [])
        if instances:  # the operator's word replaces what the gateway knew of its cancel
            self.cancelled.discard(instances[-1].business_id)

    def elsewhere(self, data):
        """Zeyi gets an approval of the code from outside the gateway."""
        self.zeyi.create_elsewhere(self.code)

    def dynamodb_exhausted(self) -> bool:
        """Whether this step's injected faults could outlast the store's five tries."""
        return self.injected >= 5

    def _call(self, use_case, body, **ports):
        self.dirty = True
        try:
            use_case(body, **ports)
        except (ApprovalActiveError, ApprovalNotCancellableError, ApprovalNotFoundError):
            pass
        except GatewayError as error:
            assert error.status < 500 or error.error_code in UPSTREAM_CODES \
                or (error.error_code == "SERVICE_UNAVAILABLE" and self.dynamodb_exhausted()), (
                f"{error.status} {error.error_code}: {error.message}")

    def decide(self, data):
        """An approver decides a pending instance; Zeyi calls back at once, or later."""
        pending = [i for i in self.zeyi.instances[self.code] if i.state == PENDING]
        self._decide(data, data.draw(st.sampled_from(pending), label="instance"),
                     data.draw(actions, label="decision"))

    def revoke(self, data):
        """An instance that ended is revoked or deleted: Zeyi calls back with terminate (an
        agreed instance is REVOKED at Zeyi, any other keeps its decision)."""
        ended = [i for i in self.zeyi.instances[self.code] if i.state != PENDING]
        self._decide(data, data.draw(st.sampled_from(ended), label="instance"), "terminate")

    def _decide(self, data, instance, action):
        callback = self.zeyi.decide(instance, action)
        if callback in self.zeyi.owed and data.draw(often, label="called back at once"):
            self._deliver(callback, data)

    def deliver(self, data):
        """Zeyi delivers any owed callback; another may land inside its ruling."""
        callback = data.draw(st.sampled_from(self.zeyi.owed), label="callback")
        self._deliver(callback, data)

    def redeliver(self, data):
        """Zeyi delivers a callback again, with a fresh nonce."""
        callback = data.draw(st.sampled_from(sorted(self.delivered.values(),
                                                    key=lambda c: c.identity)))
        try:
            assert self._record(callback).disposition == states.DUPLICATE
        except ServiceUnavailableError:
            assert self.dynamodb_exhausted()

    def _deliver(self, callback: Callback, data=None):
        others = [c for c in self.zeyi.owed if c != callback]
        if data is not None and others and data.draw(rarely, label="another lands inside it"):
            racing = data.draw(st.sampled_from(others), label="racing callback")
            self.store.between_ruling = lambda: self._deliver(racing)
        instance = callback.business_id
        if instance not in {c.business_id for c in self.delivered.values()} \
                and self.claims > self.created_by.get(instance, 0):
            self.late.add(instance)
        try:
            outcome = self._record(callback)
        except ServiceUnavailableError:
            # Zeyi is told 503 and delivers it again later: still owed.
            assert self.dynamodb_exhausted()
            return
        finally:
            self.store.between_ruling = None
        self.zeyi.owed.remove(callback)
        assert outcome.disposition != states.DUPLICATE
        self.delivered[callback.identity] = callback

    def _record(self, callback: Callback):
        self.dirty = True
        body = peer.callback_body(code=callback.code, businessId=callback.business_id,
                                  type=callback.type, result=callback.result or ...)
        record = CallbackRecord(
            code=callback.code, business_id=callback.business_id, type=callback.type,
            result=callback.result, audit_type="CONTRACT", audit_user="M01", remark="ok",
            body=body.decode("utf-8"), app_key=INBOUND["appKey"], nonce=peer.nonce())
        return self.store.record_callback(record, nonce_ttl_seconds=1200)

    # -- the outbox -------------------------------------------------------------------------

    def _open_stream(self):
        streams = aws.client("dynamodbstreams")
        arn = aws.client("dynamodb").describe_table(
            TableName=APPROVALS_TABLE)["Table"]["LatestStreamArn"]
        self.stream_records: list[dict] = []
        self.iterators = [streams.get_shard_iterator(
            StreamArn=arn, ShardId=shard["ShardId"], ShardIteratorType="LATEST")["ShardIterator"]
            for shard in streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"]]
        self.stream_arn = arn

    def _records(self) -> list[dict]:
        """This code's stream records so far, in Lambda's shape (read on from where it was)."""
        from ops.events import lambda_record

        streams = aws.client("dynamodbstreams")
        for index, iterator in enumerate(self.iterators):
            for _ in range(100):  # bounded: moto answers a shard's records at once
                if not iterator:
                    break
                page = streams.get_records(ShardIterator=iterator, Limit=1000)
                iterator = page.get("NextShardIterator")
                if not page["Records"]:
                    break
                self.stream_records += [
                    lambda_record(record, self.stream_arn) for record in page["Records"]
                    if record["dynamodb"]["Keys"]["code"]["S"] == self.code]
            self.iterators[index] = iterator
        return self.stream_records

    def publish(self, data):
        """The code's events so far reach a consumer through failing PutEvents, Lambda's retry,
        and any delivery order."""
        records = self._records()
        all_events = [e for e in map(events.event_of, records) if e is not None]
        failing = set(data.draw(st.sets(st.sampled_from([e.event_id for e in all_events]))
                                if all_events else st.just(set()), label="PutEvents fails"))
        delivered = self._publish(records, failing)
        order = data.draw(st.permutations(delivered), label="delivery order")
        extra = data.draw(st.lists(st.sampled_from(delivered), max_size=3)
                          if delivered else st.just([]), label="delivered twice")
        self._consume(all_events, order + extra)

    def _publish(self, records: list[dict], failing: set[str]) -> list[dict]:
        bus = FlakyBus(failing)
        pending = records
        for _ in range(len(records) + 2):  # Lambda retries from the first failed record
            if not pending:
                break
            outcome = events.handle_batch(pending, client=bus, bus_name="bus", tries=1,
                                          sleep=lambda seconds: None)
            if not outcome.failed:
                break
            first = outcome.failed[0]
            pending = [r for r in pending if int(r["dynamodb"]["SequenceNumber"]) >= int(first)]
        else:
            pytest.fail("events still unpublished after Lambda's retries")
        return bus.delivered

    def _consume(self, all_events, delivered: list[dict]):
        changes = [e for e in all_events if e.detail_type != events.CALLBACK_RECORDED]
        # The events reconstruct the record's history: each status change starts where the one
        # before it ended.
        for before, after in zip(changes, changes[1:], strict=False):
            assert after.detail["previousStatus"] == before.detail["status"], (before, after)
        seen, acted = consumer.Seen(), []
        for event in delivered:
            consumer.handle(json.dumps(event, ensure_ascii=False), seen,
                            act=lambda e, verdict: acted.append(e["detail"]["eventId"]))
        wanted = {e.event_id for e in all_events}
        assert sorted(acted) == sorted(wanted), "not every change acted on exactly once"
        head = self.store.get_head(self.code)
        if changes:
            assert seen.statuses[self.code] == head["status"] == changes[-1].detail["status"]

    # -- what must hold after every step -------------------------------------------------------

    @invariant()
    def the_record_is_right(self):
        instances = self.zeyi.instances.get(self.code, [])
        assert sum(i.state in (PENDING, AGREED) for i in instances) <= 1
        if self.dirty:  # a step that wrote nothing leaves the status as the last one read
            head = self.store.get_head(self.code)
            self.status_read = head and head["status"]
            self.dirty = False
        status = self.status_read
        if self.ever_agreed:
            assert status in (AGREED, states.REVOKED), "AGREED changed"
        self.ever_agreed = status == AGREED
        self.status = status
        if not self.zeyi.owed and self.in_flight is None:
            assert status in self._acceptable(instances), (status, self._acceptable(instances))

    def _acceptable(self, instances) -> set:
        if any(i.state == AGREED for i in instances):
            return {AGREED}
        # An instance created outside the gateway that never called back is unknown to it.
        delivered = {c.business_id for c in self.delivered.values()}
        known = [i for i in instances if i.business_id in self.created_by
                 or i.business_id in delivered]
        acceptable = set()
        for index, instance in enumerate(known):
            if instance.state == PENDING:
                continue
            newer = known[index + 1:]
            ended_without_agreement = all(n.state in (REFUSED, TERMINATED) for n in newer)
            # A late callback of an instance whose send's answer was lost: the gateway cannot
            # tell it from the current attempt's (never for one it knows was cancelled).
            could_not_tell = instance.business_id in self.late \
                and instance.business_id not in self.cancelled
            if ended_without_agreement or could_not_tell:
                acceptable.add(instance.state)
        latest = known[-1] if known else None
        if latest is None or self.created_by.get(latest.business_id) != self.claims:
            # Our newest attempt created nothing at Zeyi: the gateway may say so.
            acceptable |= {None, states.SUBMITTING, states.FAILED}
        if latest is not None and latest.state == PENDING:
            acceptable |= {states.SUBMITTING, states.PENDING}
            if self.resolved is not None:  # an operator's word, until Zeyi reports otherwise
                acceptable.add(self.resolved)
        elif latest is not None:
            acceptable.add(latest.state)
        if self.resolved is not None and (latest is None
                                          or self.created_by.get(latest.business_id)
                                          != self.claims):
            acceptable.add(self.resolved)
        return acceptable

    def teardown(self):
        global _examples_run
        _examples_run += 1
        if PROFILE == "deep" and _examples_run % 100 == 0:
            print(f"lifecycle model: {_examples_run} examples run", file=sys.stderr, flush=True)
        if self.status is None:
            return
        record = self.store.history(self.code)
        assert record["callbackCount"] == len(self.delivered)
        # A second agreed instance waits, AGREED, for the revocation that tells which holds
        # the code (architecture.md, rule 6); the gateway says so on it.
        established = [a for a in record["attempts"] if a["status"] in (states.PENDING, AGREED)
                       and not a.get("waitingForRevocation")]
        assert len(established) <= 1, established
        # Every event, delivered newest first and once more: the consumer ends on the record.
        records = self._records()
        all_events = [e for e in map(events.event_of, records) if e is not None]
        delivered = self._publish(records, set())
        self._consume(all_events, list(reversed(delivered)) + delivered[:1])


def _empty_tables() -> None:
    """Empty tables: moto keeps every item and stream record in memory, and some of its work
    grows with a table's size (a deep run slowed down until DynamoDB calls timed out). Each
    example has a code of its own, so nothing carries over."""
    dynamodb = aws.client("dynamodb")
    for table in (APPROVALS_TABLE, NONCES_TABLE):
        dynamodb.update_table(TableName=table, DeletionProtectionEnabled=False)
        dynamodb.delete_table(TableName=table)
    make_tables(dynamodb)


# The examples run as independent shards, so that make test's workers share them instead of
# one worker running them all while the others wait (the model test was the run's longest path).
SHARDS = int(os.environ.get("LIFECYCLE_SHARDS", "4"))


@pytest.mark.spread
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("shard", range(SHARDS))
def test_the_record_follows_zeyi_in_every_order(aws_env, shard):
    Lifecycle.TestCase.settings = settings(
        max_examples=-(-EXAMPLES // SHARDS), stateful_step_count=STEPS, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                               HealthCheck.data_too_large])
    Lifecycle.TestCase().runTest()
    print(f"lifecycle model: {_examples_run} examples run, all passed", file=sys.stderr)
