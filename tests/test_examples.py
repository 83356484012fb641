"""examples/approval_events_consumer.py, the consumer an internal team copies: it acts once per
change, in sequence, whatever the queue delivers twice or late. With events the gateway really
published (moto's EventBridge delivering to SQS)."""
from __future__ import annotations

import json
import time

import pytest

from chalicelib.approvals.events import handle_batch
from chalicelib.approvals.store import CallbackRecord, DynamoDBApprovalStore
from chalicelib.runtime import aws
from examples import approval_events_consumer as consumer
from tests.conftest import APPROVALS_TABLE, EVENT_BUS_NAME, NONCES_TABLE
from tests.events_support import Subscriber, create_bus, stream_records


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


def test_it_acts_once_per_change_and_drops_duplicates_and_stale_events(delivered):
    submitted, pending, agreed = delivered
    # The queue delivers the decision before the answer, and the decision twice.
    url = _queue("team-a", [submitted, agreed, agreed, pending])
    acted = []
    counts = consumer.consume(aws.client("sqs"), url, consumer.Seen(), act=acted.append,
                              once=True)
    assert counts == {"new": 2, "duplicate": 1, "stale": 1}
    assert [event["detail"]["status"] for event in acted] == ["SUBMITTING", "AGREED"]
    assert aws.client("sqs").receive_message(QueueUrl=url).get("Messages") is None


def test_a_message_it_could_not_act_on_stays_in_the_queue(delivered):
    url = _queue("team-b", delivered[:1], visibility_seconds=1)

    def failing(event):
        raise RuntimeError("the contracts database is down")

    with pytest.raises(RuntimeError):
        consumer.consume(aws.client("sqs"), url, consumer.Seen(), act=failing, once=True)
    time.sleep(1.5)  # SQS hands it out again once its visibility timeout is over
    assert consumer.consume(aws.client("sqs"), url, consumer.Seen(), act=lambda e: None,
                            once=True)["new"] == 1


def test_run_as_a_script_it_says_what_it_did(delivered, aws_env, capsys):
    _queue("team-c", delivered + delivered[1:2])
    assert consumer.main(["--queue", "team-c", "--endpoint-url", aws_env.url, "--once"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "3 acted on, 1 duplicate(s), 0 stale"
    assert out[2].startswith("HT-EX-1 #3 Approval Agreed: PENDING → AGREED by 王经理 (同意)")
