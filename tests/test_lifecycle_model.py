"""The approval record against a reference model of Zeyi, through every order hypothesis finds.

Hypothesis drives the real use cases (outbound.send_approval, cancel_approval) and the real
store (callbacks through DynamoDBApprovalStore.record_callback) on moto server, next to
tests/zeyi_model.py: Zeyi's instances per code, its one-active-approval rule, what it decided,
and the callbacks it owes. Each step is one of: a send or a cancel that Zeyi accepts, refuses,
fails with a system error, never receives, or answers and loses the answer before or after
acting; an approver's decision; the delivery of any owed callback in any order; a redelivery
with a fresh nonce; time passing beyond a lease; botocore resending a write that had committed;
and a callback landing between a claim's read and its write.

After every step:
- nothing answered with our own 5xx (Zeyi's faults give their documented 502/504, no more);
- a send reached Zeyi only when the gateway's status allowed a new attempt then;
- Zeyi never holds two active approvals of the code, and the gateway never shows two;
- AGREED never changes; every delivered callback is recorded exactly once;
- once every callback Zeyi owes is delivered, the status is Zeyi's decision for its latest
  instance. The one latitude is the one docs/architecture.md documents: when a callback of an
  instance whose send had been superseded (its answer lost, or its cancel's terminate late)
  arrives after a newer send, the gateway cannot tell whose it is, and may show that decision.

``make test`` runs LIFECYCLE_EXAMPLES (300) examples; LIFECYCLE_EXAMPLES=5000 is the deep run.
"""
from __future__ import annotations

import os
import uuid

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from chalicelib.approvals import outbound, states
from chalicelib.approvals.store import CallbackRecord, DynamoDBApprovalStore
from chalicelib.errors import (
    ApprovalActiveError,
    ApprovalNotCancellableError,
    ApprovalNotFoundError,
    GatewayError,
)
from chalicelib.runtime import aws
from tests import peer
from tests.conftest import APPROVALS_TABLE, INBOUND, NONCES_TABLE, Clock
from tests.zeyi_model import AGREED, FAULTS, PENDING, Callback, ZeyiModel

EXAMPLES = int(os.environ.get("LIFECYCLE_EXAMPLES", "300"))
STEPS = int(os.environ.get("LIFECYCLE_STEPS", "14"))
LEASE_SECONDS = 120
CANCEL_LEASE_SECONDS = 600
# What a Zeyi fault may legitimately make the gateway answer with a 5xx.
UPSTREAM_CODES = {"UPSTREAM_UNAVAILABLE", "UPSTREAM_OUTCOME_UNKNOWN", "SYSTEM_ERROR"}
STEP_KINDS = ("send", "decide", "deliver", "send", "decide", "deliver", "revoke", "cancel",
              "redeliver")
# Most calls go well; each fault still comes up in most runs of a few steps.
faults = st.one_of(st.none(), st.sampled_from(FAULTS[1:]))
waits = st.sampled_from([0, LEASE_SECONDS, CANCEL_LEASE_SECONDS])
actions = st.sampled_from(["refuse", "terminate", "agree"])
rarely = st.sampled_from([False, False, False, True])
often = st.sampled_from([True, True, False])


class RacingStore(DynamoDBApprovalStore):
    """The real store, with a hook between a claim's read and its write (run once), and a
    record of what each try of a claim read before it wrote."""

    between = None
    claim_reads: list

    def _claim_items(self, code, head, *args, **kwargs):
        if self.between is not None:
            between, self.between = self.between, None
            between()
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


class Lifecycle(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.code = f"M-{uuid.uuid4().hex[:12]}"
        self.clock = Clock()
        self.store = RacingStore(aws.client("dynamodb"), APPROVALS_TABLE, NONCES_TABLE,
                                 clock=self.clock)
        self.zeyi = ZeyiModel()
        self.delivered: dict[tuple, Callback] = {}
        self.claims = 0                          # attempts the gateway started (sends at Zeyi)
        self.created_by: dict[str, int] = {}     # instance -> the claim that created it
        self.late: set[str] = set()              # first callback came after a newer claim
        self.status: str | None = None
        self.status_read: str | None = None
        self.dirty = False
        self.ever_agreed = False

    # -- the steps --------------------------------------------------------------------------

    @rule(data=st.data())
    def step(self, data):
        # One rule drawing among the kinds of step that can do something now, rather than a
        # rule per kind: hypothesis would switch whole rules off for an example (swarm
        # testing), and an example without sends or without decisions exercises nothing.
        instances = self.zeyi.instances.get(self.code, [])
        possible = {
            "send": True,
            "cancel": self.status in (states.PENDING, states.CANCELLING),
            "decide": any(i.state == PENDING for i in instances),
            "revoke": any(i.state != PENDING for i in instances),
            "deliver": bool(self.zeyi.owed),
            "redeliver": bool(self.delivered),
        }
        kind = data.draw(st.sampled_from([k for k in STEP_KINDS if possible[k]]), label="step")
        getattr(self, kind)(data)

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
            self.store.between = lambda: self._deliver(racing)
        self.store.claim_reads = []
        sends, instances = self.zeyi.sends, len(self.zeyi.instances.get(self.code, []))
        self.zeyi.faults.append(fault)
        with LoseNextAnswer(aws.client("dynamodb")) as lose:
            lose.armed = lose_answer
            self._call(outbound.send_approval, peer.send_body(self.code), store=self.store,
                       zeyi=self.zeyi, lease_seconds=LEASE_SECONDS)
        self.zeyi.faults.clear()
        self.store.between = None
        if self.zeyi.sends > sends:
            # The try that wrote is the last one: what it read must have allowed a new send.
            head, now = self.store.claim_reads[-1]
            assert head is None or states.may_send(head["status"], head.get("leaseExpiresAt"),
                                                   now), "a send superseded an active approval"
            self.claims += 1
            now = self.zeyi.instances.get(self.code, [])
            if len(now) > instances:
                self.created_by[now[-1].business_id] = self.claims

    def cancel(self, data):
        """An internal app cancels the code."""
        self.zeyi.faults.append(data.draw(faults, label="Zeyi"))
        with LoseNextAnswer(aws.client("dynamodb")) as lose:
            lose.armed = data.draw(rarely, label="lose the answer of the next write")
            self._call(outbound.cancel_approval, peer.cancel_body(self.code), store=self.store,
                       zeyi=self.zeyi, lease_seconds=CANCEL_LEASE_SECONDS)
        self.zeyi.faults.clear()

    def _call(self, use_case, body, **ports):
        self.dirty = True
        try:
            use_case(body, **ports)
        except (ApprovalActiveError, ApprovalNotCancellableError, ApprovalNotFoundError):
            pass
        except GatewayError as error:
            assert error.status < 500 or error.error_code in UPSTREAM_CODES, (
                f"{error.status} {error.error_code}: {error.message}")

    def decide(self, data):
        """An approver decides a pending instance; Zeyi calls back at once, or later."""
        pending = [i for i in self.zeyi.instances[self.code] if i.state == PENDING]
        self._decide(data, data.draw(st.sampled_from(pending), label="instance"),
                     data.draw(actions, label="decision"))

    def revoke(self, data):
        """An instance that ended is revoked or deleted: Zeyi calls back with terminate, and
        the instance's decision stays what it was."""
        ended = [i for i in self.zeyi.instances[self.code] if i.state != PENDING]
        self._decide(data, data.draw(st.sampled_from(ended), label="instance"), "terminate")

    def _decide(self, data, instance, action):
        callback = self.zeyi.decide(instance, action)
        if callback in self.zeyi.owed and data.draw(often, label="called back at once"):
            self._deliver(callback)

    def deliver(self, data):
        """Zeyi delivers any owed callback."""
        self._deliver(data.draw(st.sampled_from(self.zeyi.owed), label="callback"))

    def redeliver(self, data):
        """Zeyi delivers a callback again, with a fresh nonce."""
        callback = data.draw(st.sampled_from(sorted(self.delivered.values(),
                                                    key=lambda c: c.identity)))
        assert self._record(callback).disposition == states.DUPLICATE

    def _deliver(self, callback: Callback):
        self.zeyi.owed.remove(callback)
        instance = callback.business_id
        if instance not in {c.business_id for c in self.delivered.values()} \
                and self.claims > self.created_by.get(instance, 0):
            self.late.add(instance)
        outcome = self._record(callback)
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
            assert status == AGREED, "AGREED changed"
        self.ever_agreed = status == AGREED
        self.status = status
        if not self.zeyi.owed:
            assert status in self._acceptable(instances), (status, self._acceptable(instances))

    def _acceptable(self, instances) -> set:
        if any(i.state == AGREED for i in instances):
            return {AGREED}
        acceptable = {i.state for i in instances
                      if i.business_id in self.late and i.state != PENDING}
        latest = instances[-1] if instances else None
        if latest is None or self.created_by.get(latest.business_id) != self.claims:
            # Our newest attempt created nothing at Zeyi: the gateway may say so.
            acceptable |= {None, states.SUBMITTING, states.FAILED}
        if latest is not None and latest.state == PENDING:
            acceptable |= {states.SUBMITTING, states.PENDING}
        elif latest is not None:
            acceptable.add(latest.state)
        return acceptable

    def teardown(self):
        if self.status is None:
            return
        record = self.store.history(self.code)
        assert record["callbackCount"] == len(self.delivered)
        established = [a for a in record["attempts"] if a["status"] in (states.PENDING, AGREED)]
        assert len(established) <= 1, established


@pytest.mark.timeout(900)
def test_the_record_follows_zeyi_in_every_order(aws_env):
    Lifecycle.TestCase.settings = settings(
        max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    Lifecycle.TestCase().runTest()
