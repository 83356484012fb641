"""No approval event is lost between the stream and the bus: the stream subscription (played by the
sandbox's poller, with the deployed mapping's settings) retries, bisects, and sends a record that
fails for good to the dead-letter queue without holding up the others; the operator's
``python -m ops events replay-dlq`` publishes it again, with the same eventId. Against moto
server, with app.py's own handler."""
from __future__ import annotations

import json

import pytest

import app as gateway_app
from chalicelib.approvals import events
from chalicelib.approvals.store import DynamoDBApprovalStore
from chalicelib.runtime import aws
from ops.events import EventResources, reconcile_event_resources
from sandbox.stream_poller import StreamPoller
from tests.conftest import APPROVALS_TABLE, EVENT_BUS_NAME, NONCES_TABLE
from tests.events_support import Subscriber, assert_valid, stream_arn, stream_records
from tests.test_ops_cli import run_ops, stage_config

RESOURCES = EventResources(EVENT_BUS_NAME)


@pytest.fixture
def subscriber(aws_env):
    reconcile_event_resources(aws.client("events"), aws.client("sqs"), RESOURCES)
    return Subscriber(EVENT_BUS_NAME)


@pytest.fixture
def store(aws_env):
    return DynamoDBApprovalStore(aws.client("dynamodb"), APPROVALS_TABLE, NONCES_TABLE)


def dead_letter_url() -> str:
    return aws.client("sqs").get_queue_url(QueueName=RESOURCES.dead_letter_queue)["QueueUrl"]


def dead_letters(keep: bool = True) -> list[dict]:
    sqs = aws.client("sqs")
    messages = sqs.receive_message(QueueUrl=dead_letter_url(), MaxNumberOfMessages=10,
                                   VisibilityTimeout=0 if keep else 30).get("Messages", [])
    return [json.loads(message["Body"]) for message in messages]


def poller(handler=gateway_app.publish_approval_events) -> StreamPoller:
    return StreamPoller(streams=aws.client("dynamodbstreams"), sqs=aws.client("sqs"),
                        stream_arn=stream_arn(APPROVALS_TABLE), handler=handler,
                        dead_letter_url=dead_letter_url(), function_name="publish_approval_events")


def send(store, *codes: str) -> None:
    for code in codes:
        store.claim(code, {"code": code, "auditType": "CONTRACT"}, 120)


def head_record(code: str) -> str:
    return next(r["dynamodb"]["SequenceNumber"] for r in stream_records(APPROVALS_TABLE)
                if r["dynamodb"]["Keys"] == {"code": {"S": code}, "sk": {"S": "HEAD"}})


def by_code(received: list[dict]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for event in received:
        found.setdefault(event["detail"]["code"], set()).add(event["detail"]["eventId"])
    return found


def test_a_poison_record_goes_to_the_dlq_without_holding_up_the_others(store, subscriber,
                                                                        faults, tmp_path,
                                                                        capsys):
    send(store, "DL-A", "DL-B", "DL-C")
    faults.add(mode="fail_entries", match='"code":"DL-B"', errorCode="MalformedDetail")
    mapping = poller()
    mapping.poll_once()

    # Retried from the poison record 8 times, then its batch's coordinates went to the DLQ.
    assert mapping.stats.dead_letters == 1
    assert mapping.stats.invocations == 1 + events.STREAM_MAPPING["MaximumRetryAttempts"]
    [letter] = dead_letters()
    info = letter["DDBStreamBatchInfo"]
    records = stream_records(APPROVALS_TABLE)
    assert (info["startSequenceNumber"], info["endSequenceNumber"]) == (
        head_record("DL-B"), records[-1]["dynamodb"]["SequenceNumber"])
    assert info["streamArn"] == stream_arn(APPROVALS_TABLE)
    assert letter["requestContext"]["condition"] == "RetryAttemptsExhausted"
    # The others were published, DL-C on every retry, as the same event each time.
    received = list(subscriber.drain(settle_seconds=0.5))
    assert by_code(received) == {"DL-A": {events.event_id("DL-A", 1)},
                                 "DL-C": {events.event_id("DL-C", 1)}}
    assert len([e for e in received if e["detail"]["code"] == "DL-C"]) > 1
    # The shard moved on: a later change is published at the next poll.
    send(store, "DL-D")
    mapping.poll_once()
    assert "DL-D" in by_code(subscriber.drain(settle_seconds=0.5))
    before_replay = len(subscriber.received)

    # The operator, once the cause is fixed, replays the DLQ: DL-B's event, at last.
    faults.clear()
    config = stage_config(tmp_path, EVENT_BUS_NAME=EVENT_BUS_NAME)
    status, out, err = run_ops(capsys, "events", "replay-dlq", "--stage", "dev",
                               "--config", config)
    assert (status, err) == (0, "")
    assert f"shard {info['shardId']} records {info['startSequenceNumber']}.." in out
    assert "1 message(s) replayed and removed from test-approval-events-dlq; 0 left in it" in out
    assert dead_letters() == []
    replayed = subscriber.drain(settle_seconds=0.5)[before_replay:]
    assert by_code(replayed)["DL-B"] == {events.event_id("DL-B", 1)}
    # Replayed records that had been published already come again as the very same events.
    assert by_code(replayed)["DL-C"] == {events.event_id("DL-C", 1)}
    for event in subscriber.received:
        assert_valid(event)


def test_a_replay_that_still_fails_keeps_the_message(store, subscriber, faults, tmp_path,
                                                     capsys):
    send(store, "DL-K")
    faults.add(mode="fail_entries", match='"code":"DL-K"')
    poller().poll_once()
    config = stage_config(tmp_path, EVENT_BUS_NAME=EVENT_BUS_NAME)

    status, out, _ = run_ops(capsys, "events", "replay-dlq", "--dry-run", "--stage", "dev",
                             "--config", config)
    assert status == 0
    assert "2 record(s) of DL-K; would publish their events again" in out
    assert "nothing published (--dry-run)" in out
    status, out, _ = run_ops(capsys, "events", "replay-dlq", "--stage", "dev", "--config", config)
    assert status == 1
    assert "1 of 2 record(s) still fail" in out and "left in the queue" in out
    assert "0 message(s) replayed and removed from test-approval-events-dlq; 1 left in it" in out
    assert len(dead_letters()) == 1  # still there, visible again
    assert subscriber.drain(settle_seconds=0.3) == []


def test_a_message_that_is_no_batch_failure_record_is_left_alone(subscriber, tmp_path, capsys):
    aws.client("sqs").send_message(QueueUrl=dead_letter_url(), MessageBody='{"hello": 1}')
    config = stage_config(tmp_path, EVENT_BUS_NAME=EVENT_BUS_NAME)
    status, out, _ = run_ops(capsys, "events", "replay-dlq", "--stage", "dev", "--config", config)
    assert status == 1
    assert "not a stream batch failure record; left in the queue" in out
    assert dead_letters() == [{"hello": 1}]


def test_a_function_that_fails_is_bisected_down_to_the_record(store, subscriber):
    send(store, "BI-1", "BI-2", "BI-3", "BI-4")
    poison = head_record("BI-3")

    def crashing(event, context):
        if any(r["dynamodb"]["SequenceNumber"] == poison for r in event["Records"]):
            raise RuntimeError("this function cannot take BI-3")
        return gateway_app.publish_approval_events(event, context)

    mapping = poller(crashing)
    mapping.poll_once()
    [letter] = dead_letters()
    info = letter["DDBStreamBatchInfo"]
    assert (info["startSequenceNumber"], info["endSequenceNumber"], info["batchSize"]) == (
        poison, poison, 1)
    assert set(by_code(subscriber.drain(settle_seconds=0.5))) == {"BI-1", "BI-2", "BI-4"}
