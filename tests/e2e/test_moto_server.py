"""sandbox.moto_server: moto with serialized requests and cheap transaction snapshots must still
roll a cancelled TransactWriteItems back completely, must survive concurrent transactions, and
must let an SQS long poll wait without holding up the other requests, as AWS does; and its
speed-ups (sandbox.moto_speedups) must answer as moto does."""
from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import boto3
import pytest
from botocore.exceptions import ClientError

from chalicelib.runtime.tables import approvals_table_definition, nonces_table_definition
from sandbox.stack import ManagedProcess, free_port


@pytest.fixture(scope="module")
def moto_log(tmp_path_factory):
    return tmp_path_factory.mktemp("moto") / "moto.log"


@pytest.fixture(scope="module")
def moto_url(moto_log):
    port = free_port()
    process = ManagedProcess(
        "moto", [sys.executable, "-m", "sandbox.moto_server", "-H", "127.0.0.1", "-p", str(port)],
        env=dict(os.environ, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing"),
        ready_url=f"http://127.0.0.1:{port}/moto-api/", log_path=moto_log).start()
    yield f"http://127.0.0.1:{port}"
    process.stop()


def _client(url: str, service: str):
    return boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                                 region_name="us-east-1").client(service, endpoint_url=url)


@pytest.fixture(scope="module")
def dynamodb(moto_url):
    client = _client(moto_url, "dynamodb")
    client.create_table(**approvals_table_definition("approvals"))
    client.create_table(**nonces_table_definition("nonces"))
    return client


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


def test_a_message_sent_during_a_long_poll_is_the_polls_answer(moto_url):
    # A consumer long-polls an empty queue; the producer's send, made meanwhile on the same
    # emulator, must get through and reach that poll (with the poll holding every request up,
    # the send waited for the poll's end and the poll came back empty).
    sqs = _client(moto_url, "sqs")
    queue = sqs.create_queue(QueueName="long-poll")["QueueUrl"]
    with ThreadPoolExecutor(max_workers=1) as pool:
        poll = pool.submit(sqs.receive_message, QueueUrl=queue, WaitTimeSeconds=10)
        time.sleep(0.5)  # the poll is waiting in the emulator by now
        _client(moto_url, "sqs").send_message(QueueUrl=queue, MessageBody="approval")
        messages = poll.result(timeout=15).get("Messages", [])
    assert [message["Body"] for message in messages] == ["approval"]


def test_every_kind_of_attribute_value_comes_back_as_it_was_written(dynamodb, moto_url):
    # sandbox.moto_speedups writes attribute values itself; a client sees what it stored, in
    # GetItem's answer and in the stream's record alike.
    streams = _client(moto_url, "dynamodbstreams")
    arn = dynamodb.describe_table(TableName="approvals")["Table"]["LatestStreamArn"]
    shard = streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"][-1]
    iterator = streams.get_shard_iterator(StreamArn=arn, ShardId=shard["ShardId"],
                                          ShardIteratorType="LATEST")["ShardIterator"]
    item = {"code": {"S": "KINDS"}, "sk": {"S": "HEAD"}, "text": {"S": "金润 approval"},
            "empty": {"S": ""}, "number": {"N": "-12.5"}, "blob": {"B": b"\x00\xffzeyi"},
            "texts": {"SS": ["a", "b"]}, "numbers": {"NS": ["1", "2"]},
            "blobs": {"BS": [b"\x01", b"\x02"]}, "null": {"NULL": True},
            "flag": {"BOOL": False},
            "map": {"M": {"nested": {"L": [{"S": "x"}, {"M": {"deep": {"N": "3"}}}]}}}}
    dynamodb.put_item(TableName="approvals", Item=item)
    assert _item(dynamodb, "KINDS", "HEAD") == item
    records = streams.get_records(ShardIterator=iterator)["Records"]
    assert records[-1]["dynamodb"]["NewImage"] == item


def test_the_speed_ups_are_in_place(moto_url, moto_log):
    # sandbox.moto_server runs moto unpatched, and says so, where moto's internals have moved
    # (another moto version): correct, but the suite would be several times slower.
    _client(moto_url, "dynamodb").list_tables()
    assert "running moto unpatched" not in moto_log.read_text(encoding="utf-8")


def test_kms_keys_still_sign_verify_and_encrypt(moto_url):
    # sandbox.moto_speedups makes a key's RSA pair on first use.
    kms = _client(moto_url, "kms")
    signing = kms.create_key(KeyUsage="SIGN_VERIFY", KeySpec="RSA_2048")["KeyMetadata"]["KeyId"]
    signature = kms.sign(KeyId=signing, Message=b"approval", SigningAlgorithm="RSASSA_PSS_SHA_256")
    assert kms.verify(KeyId=signing, Message=b"approval", Signature=signature["Signature"],
                      SigningAlgorithm="RSASSA_PSS_SHA_256")["SignatureValid"]
    assert kms.get_public_key(KeyId=signing)["PublicKey"]
    symmetric = kms.create_key()["KeyMetadata"]["KeyId"]
    blob = kms.encrypt(KeyId=symmetric, Plaintext=b"secret")["CiphertextBlob"]
    assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"secret"
