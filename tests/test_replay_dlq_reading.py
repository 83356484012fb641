"""``python -m ops events replay-dlq`` reads a dead letter's records back from the stream as
DynamoDB Streams serves them on an open shard: empty pages anywhere, even before the records
(issue 17, item 3). A dead letter is deleted only once every record of its batch is published
again. moto's stream answers every record in one page, so the streams client here hands them out
one per page with empty pages in between, as DynamoDB Streams may; everything else (the table,
the stream's records, SQS, EventBridge, the events' publishing) is moto server."""
from __future__ import annotations

import json

import pytest

from chalicelib.approvals import events
from chalicelib.approvals.store import DynamoDBApprovalStore
from chalicelib.runtime import aws
from ops.events import EventResources, reconcile_event_resources, replay_dead_letters
from tests.conftest import APPROVALS_TABLE, EVENT_BUS_NAME, NONCES_TABLE
from tests.events_support import Subscriber, stream_arn, stream_records

RESOURCES = EventResources(EVENT_BUS_NAME)


class SparseStream:
    """The DynamoDB Streams client, except that get_records answers at most one record per page
    and ``empty`` empty pages before each record after the first (the iterator stays where it
    was on an empty page, as on an open shard)."""

    def __init__(self, client, empty: int):
        self._client = client
        self._empty = empty
        self._pending: dict[str, tuple[list[dict], str | None, int]] = {}
        self.pages = 0

    def __getattr__(self, name):
        return getattr(self._client, name)

    def get_records(self, **kwargs):
        self.pages += 1
        iterator = kwargs["ShardIterator"]
        if iterator not in self._pending:
            page = self._client.get_records(**kwargs)
            self._pending[iterator] = (page.get("Records", []), page.get("NextShardIterator"), 0)
        records, after, served = self._pending[iterator]
        if not records:
            return {"Records": [], "NextShardIterator": after}
        if served and self._pending.get(("gap", iterator), 0) < self._empty:
            self._pending[("gap", iterator)] = self._pending.get(("gap", iterator), 0) + 1
            return {"Records": [], "NextShardIterator": iterator}
        self._pending[("gap", iterator)] = 0
        self._pending[iterator] = (records[1:], after, served + 1)
        return {"Records": records[:1], "NextShardIterator": iterator}


@pytest.fixture
def subscriber(aws_env):
    reconcile_event_resources(aws.client("events"), aws.client("sqs"), RESOURCES)
    return Subscriber(EVENT_BUS_NAME)


def dead_letter(first: dict, last: dict) -> str:
    """Lambda's on-failure record of a batch from ``first`` to ``last``, in the DLQ."""
    sqs = aws.client("sqs")
    url = sqs.get_queue_url(QueueName=RESOURCES.dead_letter_queue)["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"DDBStreamBatchInfo": {
        "streamArn": stream_arn(APPROVALS_TABLE),
        "shardId": first["shard"], "startSequenceNumber": first["dynamodb"]["SequenceNumber"],
        "endSequenceNumber": last["dynamodb"]["SequenceNumber"], "batchSize": 2}}))
    return url


def two_claims_in_one_dead_letter(*codes: str) -> str:
    """Claim ``codes`` and put the batch of their two HEAD records in the DLQ; the queue's URL."""
    store = DynamoDBApprovalStore(aws.client("dynamodb"), APPROVALS_TABLE, NONCES_TABLE)
    for code in codes:
        store.claim(code, {"code": code, "auditType": "CONTRACT"}, 120)
    shard = aws.client("dynamodbstreams").describe_stream(
        StreamArn=stream_arn(APPROVALS_TABLE))["StreamDescription"]["Shards"][0]["ShardId"]
    heads = [dict(r, shard=shard) for r in stream_records(APPROVALS_TABLE)
             if r["dynamodb"]["Keys"]["sk"]["S"] == "HEAD"]
    return dead_letter(heads[-2], heads[-1])


def test_a_dead_letter_is_replayed_whole_across_empty_pages(aws_env, subscriber):
    url = two_claims_in_one_dead_letter("RD-1", "RD-2")
    streams = SparseStream(aws.client("dynamodbstreams"), empty=3)
    lines: list[str] = []
    replayed, left = replay_dead_letters(aws.client("sqs"), streams, aws.client("events"),
                                         queue_url=url, bus_name=EVENT_BUS_NAME,
                                         max_messages=10, out=lines.append)
    assert (replayed, left) == (1, 0), lines
    received = {e["detail"]["eventId"] for e in subscriber.drain(settle_seconds=0.5)}
    assert received >= {events.event_id("RD-1", 1), events.event_id("RD-2", 1)}
    assert streams.pages >= 5  # the empty pages were read through, not taken for the end


def test_a_dead_letter_whose_records_cannot_all_be_read_stays_in_the_queue(aws_env, subscriber,
                                                                           monkeypatch):
    import ops.events

    url = two_claims_in_one_dead_letter("RD-3", "RD-4")
    monkeypatch.setattr(ops.events, "_MAX_PAGES", 4)  # the second record is 4 empty pages away
    lines: list[str] = []
    replayed, left = replay_dead_letters(aws.client("sqs"),
                                         SparseStream(aws.client("dynamodbstreams"), empty=4),
                                         aws.client("events"), queue_url=url,
                                         bus_name=EVENT_BUS_NAME, max_messages=10,
                                         out=lines.append)
    assert (replayed, left) == (0, 1)
    assert "did not reach the end of" in lines[0] and "left in the queue" in lines[0]
