"""examples/approval_events_consumer.py, the consumer an internal team copies: it acts on every
status change exactly once, whatever the queue delivers twice or late, and knows which one is the
code's current status. With events the gateway really published (moto's EventBridge delivering
to SQS)."""
from __future__ import annotations

import json
import time

import pytest

from chalicelib.approvals.events import handle_batch
from chalicelib.approvals.store import CallbackRecord, DynamoDBApprovalStore
from chalicelib.runtime import aws
from examples import approval_events_consumer as consumer
from tests.conftest import APPROVALS_TABLE, EVENT_BUS_NAME, NONCES_TABLE
from tests.events_support import Subscriber, assert_valid, create_bus, stream_records


@pytest.fixture
def delivered(aws_env) -> list[dict]:
    """HT-EX-1's three events (sent, accepted, agreed), as EventBridge delivers them."""
    store = DynamoDBApprovalStore(aws.client("dynamodb"), APPROVALS_TABLE, NONCES_TABLE)
    attempt = store.claim("HT-EX-1", {"code": "HT-EX-1", "auditType": "CONTRACT"}, 120)
    store.settle_send("HT-EX-1", attempt, "PENDING", {"kind": "accepted"})
    store.record_callback(CallbackRecord(
        code="HT-EX-1", business_id="bid", type="finish", result="agree", audit_type=None,
        audit_user="王经理", remark="同意", body="{}", app_key="k", nonce="n0nce01"), 1200)
    create_bus(EVENT_BUS_NAME)
    subscriber = Subscriber(EVENT_BUS_NAME, "probe")
    handle_batch(stream_records(APPROVALS_TABLE), client=aws.client("events"),
                 bus_name=EVENT_BUS_NAME)
    events = sorted(subscriber.drain(settle_seconds=0.5), key=lambda e: e["detail"]["sequence"])
    assert [e["detail"]["sequence"] for e in events] == [1, 2, 3]
    return events


def _queue(name: str, bodies: list[dict], visibility_seconds: int = 30) -> str:
    sqs = aws.client("sqs")
    url = sqs.create_queue(QueueName=name, Attributes={
        "VisibilityTimeout": str(visibility_seconds)})["QueueUrl"]
    for body in bodies:
        sqs.send_message(QueueUrl=url, MessageBody=json.dumps(body, ensure_ascii=False))
    return url


def test_it_acts_once_per_change_and_drops_only_duplicates(delivered):
    submitted, pending, agreed = delivered
    # The queue delivers the decision before the answer, and the decision twice.
    url = _queue("team-a", [submitted, agreed, agreed, pending])
    acted = []
    seen = consumer.Seen()
    counts = consumer.consume(aws.client("sqs"), url, seen,
                              act=lambda event, verdict: acted.append((event, verdict)),
                              once=True)
    assert counts == {"new": 2, "late": 1, "note": 0, "duplicate": 1}
    assert [(event["detail"]["status"], verdict) for event, verdict in acted] == [
        ("SUBMITTING", "new"), ("AGREED", "new"), ("PENDING", "late")]
    assert seen.statuses["HT-EX-1"] == "AGREED"
    assert aws.client("sqs").receive_message(QueueUrl=url).get("Messages") is None


def test_a_revoked_agreement_reaches_it_in_any_order_and_a_note_hides_nothing(aws_env):
    """Issue 17, item 4: the agreement (3), a callback that changed no status (4) and the
    revocation (5), delivered newest first: the consumer used to drop "Approval Agreed" as stale
    once the note had moved its sequence on."""
    store = DynamoDBApprovalStore(aws.client("dynamodb"), APPROVALS_TABLE, NONCES_TABLE)
    attempt = store.claim("HT-EX-2", {"code": "HT-EX-2", "auditType": "CONTRACT"}, 120)
    store.settle_send("HT-EX-2", attempt, "PENDING", {"kind": "accepted"})

    def callback(business_id, type_, result, nonce, user):
        store.record_callback(CallbackRecord(
            code="HT-EX-2", business_id=business_id, type=type_, result=result,
            audit_type=None, audit_user=user, remark="作废" if type_ == "terminate" else "同意",
            body="{}", app_key="k", nonce=nonce), 1200)

    callback("bid", "finish", "agree", "n0nce11", "王经理")
    callback("bid-other", "terminate", None, "n0nce12", "系统")   # no attempt can own it
    callback("bid", "terminate", None, "n0nce13", "李总")          # the agreement revoked
    create_bus(EVENT_BUS_NAME)
    subscriber = Subscriber(EVENT_BUS_NAME, "probe-2")
    handle_batch(stream_records(APPROVALS_TABLE), client=aws.client("events"),
                 bus_name=EVENT_BUS_NAME)
    events = sorted(subscriber.drain(settle_seconds=0.5), key=lambda e: e["detail"]["sequence"])
    assert [e["detail-type"] for e in events] == [
        "Approval Submitted", "Approval Pending", "Approval Agreed",
        "Approval Callback Recorded", "Approval Revoked"]
    url = _queue("team-d", list(reversed(events)))
    acted, seen = [], consumer.Seen()
    consumer.consume(aws.client("sqs"), url, seen,
                     act=lambda event, verdict: acted.append((event["detail-type"], verdict)),
                     once=True)
    assert sorted(acted) == sorted([
        ("Approval Revoked", "new"), ("Approval Callback Recorded", "note"),
        ("Approval Agreed", "late"), ("Approval Pending", "late"),
        ("Approval Submitted", "late")])
    assert seen.statuses["HT-EX-2"] == store.get_head("HT-EX-2")["status"] == "REVOKED"
    for event in events:
        assert_valid(event)  # docs/events/approval-event.schema.json knows "Approval Revoked"
    revoked = events[-1]["detail"]
    assert (revoked["previousStatus"], revoked["auditUser"], revoked["remark"]) == (
        "AGREED", "李总", "作废")


def test_a_message_it_could_not_act_on_stays_in_the_queue(delivered):
    url = _queue("team-b", delivered[:1], visibility_seconds=1)

    def failing(event, verdict):
        raise RuntimeError("the contracts database is down")

    with pytest.raises(RuntimeError):
        consumer.consume(aws.client("sqs"), url, consumer.Seen(), act=failing, once=True)
    time.sleep(1.5)  # SQS hands it out again once its visibility timeout is over
    assert consumer.consume(aws.client("sqs"), url, consumer.Seen(), act=lambda e, v: None,
                            once=True)["new"] == 1


def test_run_as_a_script_it_says_what_it_did(delivered, aws_env, capsys):
    _queue("team-c", delivered + delivered[1:2])
    assert consumer.main(["--queue", "team-c", "--endpoint-url", aws_env.url, "--once"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "3 acted on (0 late, 0 note(s)), 1 duplicate(s)"
    assert out[0].startswith("HT-EX-1 #1 Approval Submitted: (first change) → SUBMITTING")
    assert out[2].startswith("HT-EX-1 #3 Approval Agreed: PENDING → AGREED by 王经理 (同意)")


def test_it_says_when_an_operator_closed_an_approval(capsys):
    consumer.act({"detail-type": "Approval Failed", "detail": {
        "code": "HT-EX-3", "sequence": 2, "previousStatus": "SUBMITTING", "status": "FAILED",
        "resolution": {"by": "ops-li", "reason": "Zeyi has no such approval"}}}, "new")
    assert capsys.readouterr().out.strip() == (
        "HT-EX-3 #2 Approval Failed: SUBMITTING → FAILED, closed by an operator (ops-li:"
        " Zeyi has no such approval)")
