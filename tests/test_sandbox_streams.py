"""The sandbox's moto server streams what DynamoDB streams, which the approval events rely on: a
cancelled transaction streams nothing (for a reader already positioned on the stream too), and an
UpdateItem that creates its item streams one INSERT of the whole item."""
from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from chalicelib.runtime import aws
from tests.conftest import APPROVALS_TABLE, NONCES_TABLE
from tests.events_support import stream_arn


def _reader():
    """An iterator positioned at the stream's end, followed as the sandbox's poller does."""
    streams = aws.client("dynamodbstreams")
    arn = stream_arn(APPROVALS_TABLE)
    [shard] = streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"]
    position = {"iterator": streams.get_shard_iterator(
        StreamArn=arn, ShardId=shard["ShardId"], ShardIteratorType="LATEST")["ShardIterator"]}

    def read() -> list[dict]:
        page = streams.get_records(ShardIterator=position["iterator"])
        position["iterator"] = page["NextShardIterator"]
        return page["Records"]
    return read


def _head(code: str) -> dict:
    return {"code": {"S": code}, "sk": {"S": "HEAD"}}


def test_a_cancelled_transaction_streams_nothing(aws_env):
    dynamodb = aws.client("dynamodb")
    dynamodb.put_item(TableName=APPROVALS_TABLE, Item={**_head("S-1"), "status": {"S": "PENDING"}})
    read = _reader()
    assert read() == []
    with pytest.raises(ClientError):
        dynamodb.transact_write_items(TransactItems=[
            {"Put": {"TableName": NONCES_TABLE, "Item": {"pk": {"S": "k:n1"}}}},
            {"Update": {"TableName": APPROVALS_TABLE, "Key": _head("S-1"),
                        "UpdateExpression": "SET #s = :agreed",
                        "ExpressionAttributeNames": {"#s": "status"},
                        "ExpressionAttributeValues": {":agreed": {"S": "AGREED"}}}},
            {"ConditionCheck": {"TableName": APPROVALS_TABLE,
                                "Key": {"code": {"S": "S-1"}, "sk": {"S": "INSTANCE#x"}},
                                "ConditionExpression": "attribute_exists(sk)"}},
        ])
    assert read() == []  # the HEAD update applied, then rolled back: never streamed
    dynamodb.update_item(TableName=APPROVALS_TABLE, Key=_head("S-1"),
                         UpdateExpression="SET #s = :refused",
                         ExpressionAttributeNames={"#s": "status"},
                         ExpressionAttributeValues={":refused": {"S": "REFUSED"}})
    [record] = read()  # the same reader still sees what comes next
    assert record["dynamodb"]["OldImage"]["status"] == {"S": "PENDING"}
    assert record["dynamodb"]["NewImage"]["status"] == {"S": "REFUSED"}


def test_an_update_that_creates_its_item_streams_one_insert(aws_env):
    dynamodb = aws.client("dynamodb")
    read = _reader()
    dynamodb.update_item(TableName=APPROVALS_TABLE, Key=_head("S-2"),
                         UpdateExpression="SET version = :one", ConditionExpression=
                         "attribute_not_exists(code)",
                         ExpressionAttributeValues={":one": {"N": "1"}})
    dynamodb.update_item(TableName=APPROVALS_TABLE, Key=_head("S-2"),
                         UpdateExpression="SET version = :two",
                         ExpressionAttributeValues={":two": {"N": "2"}})
    inserted, modified = read()
    assert inserted["eventName"] == "INSERT" and modified["eventName"] == "MODIFY"
    assert inserted["dynamodb"]["NewImage"]["version"] == {"N": "1"}
    assert int(modified["dynamodb"]["SequenceNumber"]) == int(
        inserted["dynamodb"]["SequenceNumber"]) + 1
