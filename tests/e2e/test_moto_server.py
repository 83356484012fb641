"""sandbox.moto_server: moto with serialized requests and cheap transaction snapshots must still
roll a cancelled TransactWriteItems back completely, and must survive concurrent transactions."""
from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor

import boto3
import pytest
from botocore.exceptions import ClientError

from chalicelib.runtime.tables import approvals_table_definition, nonces_table_definition
from sandbox.stack import ManagedProcess, free_port


@pytest.fixture(scope="module")
def dynamodb(tmp_path_factory):
    port = free_port()
    process = ManagedProcess(
        "moto", [sys.executable, "-m", "sandbox.moto_server", "-H", "127.0.0.1", "-p", str(port)],
        env=dict(os.environ, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing"),
        ready_url=f"http://127.0.0.1:{port}/moto-api/",
        log_path=tmp_path_factory.mktemp("moto") / "moto.log").start()
    client = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                                   region_name="us-east-1").client(
        "dynamodb", endpoint_url=f"http://127.0.0.1:{port}")
    client.create_table(**approvals_table_definition("approvals"))
    client.create_table(**nonces_table_definition("nonces"))
    yield client
    process.stop()


def _item(client, code, sk):
    return client.get_item(TableName="approvals", Key={"code": {"S": code}, "sk": {"S": sk}},
                           ConsistentRead=True).get("Item")


def test_a_cancelled_transaction_leaves_nothing_behind(dynamodb):
    dynamodb.put_item(TableName="approvals", Item={
        "code": {"S": "C1"}, "sk": {"S": "HEAD"}, "status": {"S": "PENDING"}})
    dynamodb.put_item(TableName="approvals", Item={
        "code": {"S": "C2"}, "sk": {"S": "HEAD"}, "status": {"S": "AGREED"}})
    with pytest.raises(ClientError) as raised:
        dynamodb.transact_write_items(TransactItems=[
            {"Put": {"TableName": "nonces", "Item": {"pk": {"S": "k:N1"}},
                     "ConditionExpression": "attribute_not_exists(pk)"}},
            {"Put": {"TableName": "approvals",
                     "Item": {"code": {"S": "C1"}, "sk": {"S": "CALLBACK#1"}}}},
            {"Update": {"TableName": "approvals", "Key": {"code": {"S": "C1"}, "sk": {"S": "HEAD"}},
                        "UpdateExpression": "SET #s = :v",
                        "ExpressionAttributeNames": {"#s": "status"},
                        "ExpressionAttributeValues": {":v": {"S": "AGREED"}}}},
            {"Update": {"TableName": "approvals", "Key": {"code": {"S": "C2"}, "sk": {"S": "HEAD"}},
                        "UpdateExpression": "SET #s = :v",
                        "ConditionExpression": "#s = :pending",
                        "ExpressionAttributeNames": {"#s": "status"},
                        "ExpressionAttributeValues": {":v": {"S": "REFUSED"},
                                                      ":pending": {"S": "PENDING"}},
                        "ReturnValuesOnConditionCheckFailure": "ALL_OLD"}},
        ])
    reasons = raised.value.response["CancellationReasons"]
    assert [r["Code"] for r in reasons] == ["None", "None", "None", "ConditionalCheckFailed"]
    assert reasons[3]["Item"]["status"] == {"S": "AGREED"}
    assert dynamodb.get_item(TableName="nonces", Key={"pk": {"S": "k:N1"}}).get("Item") is None
    assert _item(dynamodb, "C1", "CALLBACK#1") is None
    assert _item(dynamodb, "C1", "HEAD")["status"] == {"S": "PENDING"}
    assert _item(dynamodb, "C2", "HEAD")["status"] == {"S": "AGREED"}


def test_concurrent_transactions_all_succeed(dynamodb):
    def write(index: int):
        dynamodb.transact_write_items(TransactItems=[
            {"Put": {"TableName": "nonces", "Item": {"pk": {"S": f"k:{index:06d}"}},
                     "ConditionExpression": "attribute_not_exists(pk)"}},
            {"Put": {"TableName": "approvals",
                     "Item": {"code": {"S": f"P{index}"}, "sk": {"S": "HEAD"}},
                     "ConditionExpression": "attribute_not_exists(code)"}},
        ])
        return index

    with ThreadPoolExecutor(max_workers=16) as pool:
        assert sorted(pool.map(write, range(200))) == list(range(200))
    assert all(_item(dynamodb, f"P{i}", "HEAD") for i in (0, 99, 199))
