"""What the approval events' tests share: the approvals table's stream as Lambda hands it over,
the stage's bus with an internal app's queue on it, moto's PutEvents faults, and the schema."""
from __future__ import annotations

import contextlib
import json
import time
from functools import cache
from pathlib import Path

import requests

from chalicelib.approvals.events import SOURCE
from chalicelib.runtime import aws
from ops.events import lambda_record

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PATH = ROOT / "docs" / "events" / "approval-event.schema.json"
STUCK_SCHEMA_PATH = ROOT / "docs" / "events" / "approval-stuck.schema.json"


@cache
def validator(path: Path = SCHEMA_PATH):
    import jsonschema

    schema = json.loads(path.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def assert_valid(envelope: dict, schema: Path = SCHEMA_PATH) -> None:
    """The event, as a target receives it, is what docs/events/ says it is."""
    errors = sorted(validator(schema).iter_errors(envelope), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def as_delivered(event) -> dict:
    """An ApprovalEvent as EventBridge delivers it to a target."""
    entry = event.entry("bus")
    return {"version": "0", "id": "delivery-id", "detail-type": entry["DetailType"],
            "source": entry["Source"], "time": event.time.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "region": "us-east-1", "resources": [], "detail": json.loads(entry["Detail"])}


# -- the stream ---------------------------------------------------------------------------------

def stream_arn(table: str) -> str:
    return aws.client("dynamodb").describe_table(TableName=table)["Table"]["LatestStreamArn"]


def stream_records(table: str, after: str | None = None) -> list[dict]:
    """Every record of the table's stream (after sequence number ``after``), in Lambda's shape."""
    streams = aws.client("dynamodbstreams")
    arn = stream_arn(table)
    records = []
    for shard in streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"]:
        kwargs = ({"ShardIteratorType": "AFTER_SEQUENCE_NUMBER", "SequenceNumber": after}
                  if after else {"ShardIteratorType": "TRIM_HORIZON"})
        iterator = streams.get_shard_iterator(StreamArn=arn, ShardId=shard["ShardId"],
                                              **kwargs)["ShardIterator"]
        while iterator:
            page = streams.get_records(ShardIterator=iterator, Limit=1000)
            if not page["Records"]:
                break
            records += [lambda_record(record, arn) for record in page["Records"]]
            iterator = page.get("NextShardIterator")
    return records


# -- the bus and an internal app's queue on it ----------------------------------------------------

class Subscriber:
    """An internal app: a queue that a rule on the bus feeds with every event of ``source``
    (the approval events unless told otherwise)."""

    def __init__(self, bus: str, name: str = "internal-app", source: str = SOURCE):
        bridge, sqs = aws.client("events"), aws.client("sqs")
        self.url = sqs.create_queue(QueueName=name)["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=self.url, AttributeNames=["QueueArn"])[
            "Attributes"]["QueueArn"]
        bridge.put_rule(Name=name, EventBusName=bus, EventPattern=json.dumps({"source": [source]}))
        bridge.put_targets(Rule=name, EventBusName=bus, Targets=[{"Id": name, "Arn": arn}])
        self.received: list[dict] = []

    def drain(self, settle_seconds: float = 0.0) -> list[dict]:
        """Every event delivered so far (and during ``settle_seconds`` more), oldest first."""
        sqs = aws.client("sqs")
        deadline = time.monotonic() + settle_seconds
        while True:
            messages = sqs.receive_message(QueueUrl=self.url, MaxNumberOfMessages=10,
                                           WaitTimeSeconds=0).get("Messages", [])
            for message in messages:
                self.received.append(json.loads(message["Body"]))
                sqs.delete_message(QueueUrl=self.url, ReceiptHandle=message["ReceiptHandle"])
            if not messages:
                if time.monotonic() >= deadline:
                    return self.received
                time.sleep(0.1)


def create_bus(name: str) -> None:
    aws.client("events").create_event_bus(Name=name)


# -- moto's PutEvents faults (sandbox.aws_faults) -------------------------------------------------

@contextlib.contextmanager
def injected_faults(aws_url: str):
    """A test's PutEvents faults on the moto server at ``aws_url``: none before, none after."""
    injector = Faults(aws_url)
    injector.clear()
    try:
        yield injector
    finally:
        injector.clear()


class Faults:
    def __init__(self, aws_url: str):
        self.url = f"{aws_url}/_sandbox/faults"

    def add(self, **fault) -> None:
        response = requests.post(self.url, json=fault, timeout=10)
        assert response.status_code == 200, response.text

    def clear(self) -> None:
        requests.delete(self.url, timeout=10).raise_for_status()

    def calls(self) -> list[dict]:
        return requests.get(self.url, timeout=10).json()["calls"]


def summary(envelope: dict) -> tuple:
    """What a consumer looks at first: (detail-type, status, previousStatus, sequence)."""
    detail = envelope["detail"]
    return envelope["detail-type"], detail["status"], detail["previousStatus"], detail["sequence"]
