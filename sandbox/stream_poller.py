"""The sandbox's stand-in for Lambda's event source mapping on the approvals table's stream:
``chalice local`` runs no stream handler, so this reads moto's stream and calls app.py's
``publish_approval_events`` itself, with the event Lambda would give it.

It follows the deployed mapping's settings (``chalicelib.approvals.events``: batch size,
TRIM_HORIZON, ``STREAM_MAPPING``): a batch whose handler reports ``batchItemFailures`` is retried
from the first failed record; a batch whose handler raises is split in two (bisection, which does
not count as a retry); after ``MaximumRetryAttempts`` retries the batch's coordinates go to the
dead-letter queue as Lambda's on-failure record, and the shard moves on. (Record age is not
enforced: the sandbox's stream never trims.)

Run by ``make run`` and the end-to-end tests (``sandbox.stack``) as
``python -m sandbox.stream_poller --status-file PATH``: the local stage's environment, moto at
``AWS_ENDPOINT_URL``. One readable line per batch on stderr; the handler's JSON log on stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from chalicelib.approvals import events
from sandbox.lifeline import die_with_parent
from sandbox.terminal import say

IDLE_SECONDS = 0.3
ACCOUNT = "123456789012"


@dataclass
class PollerStats:
    invocations: int = 0
    records: int = 0
    batches_failed: int = 0
    dead_letters: int = 0
    checkpoints: dict[str, str] = field(default_factory=dict)


class StreamPoller:
    """Reads one stream and hands its records to ``handler`` as Lambda does."""

    def __init__(self, *, streams, sqs, stream_arn: str, handler: Callable, dead_letter_url: str,
                 function_name: str, region: str = "us-east-1",
                 batch_size: int = events.STREAM_BATCH_SIZE,
                 max_retries: int = events.STREAM_MAPPING["MaximumRetryAttempts"],
                 bisect: bool = events.STREAM_MAPPING["BisectBatchOnFunctionError"],
                 report: Callable[[str], None] = lambda line: None):
        self.streams = streams
        self.sqs = sqs
        self.stream_arn = stream_arn
        self.handler = handler
        self.dead_letter_url = dead_letter_url
        self.function_name = function_name
        self.function_arn = f"arn:aws:lambda:{region}:{ACCOUNT}:function:{function_name}"
        self.batch_size = batch_size
        self.max_retries = max_retries
        self.bisect = bisect
        self.report = report
        self.stats = PollerStats()
        self._iterators: dict[str, str] = {}

    # -- reading the stream ----------------------------------------------------------------------

    def _iterator(self, shard_id: str) -> str:
        if shard_id not in self._iterators:
            checkpoint = self.stats.checkpoints.get(shard_id)
            kwargs = ({"ShardIteratorType": "AFTER_SEQUENCE_NUMBER", "SequenceNumber": checkpoint}
                      if checkpoint else {"ShardIteratorType": events.STREAM_STARTING_POSITION})
            self._iterators[shard_id] = self.streams.get_shard_iterator(
                StreamArn=self.stream_arn, ShardId=shard_id, **kwargs)["ShardIterator"]
        return self._iterators[shard_id]

    def poll_once(self) -> int:
        """Read and deliver one batch per shard; the number of records delivered."""
        from ops.events import lambda_record

        delivered = 0
        shards = self.streams.describe_stream(StreamArn=self.stream_arn)["StreamDescription"][
            "Shards"]
        for shard in shards:
            shard_id = shard["ShardId"]
            page = self.streams.get_records(ShardIterator=self._iterator(shard_id),
                                            Limit=self.batch_size)
            records = [lambda_record(record, self.stream_arn) for record in page["Records"]]
            if page.get("NextShardIterator"):
                self._iterators[shard_id] = page["NextShardIterator"]
            else:
                self._iterators.pop(shard_id, None)
            if records:
                self._deliver(shard_id, records)
                delivered += len(records)
        return delivered

    # -- Lambda's side of a batch ----------------------------------------------------------------

    def _invoke(self, records: list[dict]) -> int | None:
        """Call the handler; the index of the first record to retry from, None when the batch
        succeeded, -1 when the function failed (it raised, or named a record not in the batch:
        Lambda counts that as a failed batch)."""
        from chalice.local import LambdaContext

        self.stats.invocations += 1
        context = LambdaContext(self.function_name, memory_size=512)
        try:
            response = self.handler({"Records": records}, context)
        except Exception as exc:  # the function failed: Lambda retries (or bisects) the batch
            self.report(f"handler raised {type(exc).__name__}: {exc}")
            return -1
        failures = (response or {}).get("batchItemFailures") or []
        if not failures:
            return None
        numbers = [record["dynamodb"]["SequenceNumber"] for record in records]
        identifiers = [failure.get("itemIdentifier") for failure in failures]
        if any(identifier not in numbers for identifier in identifiers):
            return -1  # Lambda treats an unknown identifier as a failed batch
        return min(numbers.index(identifier) for identifier in identifiers)

    def _deliver(self, shard_id: str, records: list[dict]) -> None:
        todo = [records]
        while todo:
            batch = todo.pop(0)
            retries = 0
            while batch:
                first_failed = self._invoke(batch)
                if first_failed is None:
                    self._report_published(batch)
                    break
                self.stats.batches_failed += 1
                if first_failed == -1 and self.bisect and len(batch) > 1:
                    middle = len(batch) // 2
                    todo[:0] = [batch[:middle], batch[middle:]]
                    self.report(f"{len(batch)} record(s): the function failed; split in two")
                    batch = []
                    break
                batch = batch[max(first_failed, 0):]
                retries += 1
                if retries > self.max_retries:
                    self._dead_letter(shard_id, batch)
                    break
                self.report(f"{len(batch)} record(s) from {batch[0]['dynamodb']['SequenceNumber']}"
                            f" not published; retry {retries}/{self.max_retries}")
        self.stats.records += len(records)
        self.stats.checkpoints[shard_id] = records[-1]["dynamodb"]["SequenceNumber"]

    def _report_published(self, batch: list[dict]) -> None:
        for record in batch:
            try:
                event = events.event_of(record)
            except events.EventError:
                continue
            if event is not None:
                detail = event.detail
                self.report(f"{detail['code']} #{detail['sequence']} {event.detail_type}"
                            f" ({detail['status']})")

    def _dead_letter(self, shard_id: str, batch: list[dict]) -> None:
        """Lambda's on-failure record for a stream batch, sent to the dead-letter queue."""
        def arrival(record):
            created = record["dynamodb"].get("ApproximateCreationDateTime") or time.time()
            return datetime.fromtimestamp(float(created), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

        message = {
            "requestContext": {"requestId": str(uuid.uuid4()), "functionArn": self.function_arn,
                               "condition": "RetryAttemptsExhausted",
                               "approximateInvokeCount": self.max_retries + 1},
            "responseContext": {"statusCode": 200, "executedVersion": "$LATEST",
                                "functionError": None},
            "version": "1.0",
            "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
            "DDBStreamBatchInfo": {
                "shardId": shard_id,
                "startSequenceNumber": batch[0]["dynamodb"]["SequenceNumber"],
                "endSequenceNumber": batch[-1]["dynamodb"]["SequenceNumber"],
                "approximateArrivalOfFirstRecord": arrival(batch[0]),
                "approximateArrivalOfLastRecord": arrival(batch[-1]),
                "batchSize": len(batch),
                "streamArn": self.stream_arn,
            },
        }
        self.sqs.send_message(QueueUrl=self.dead_letter_url, MessageBody=json.dumps(message))
        self.stats.dead_letters += 1
        self.report(f"{len(batch)} record(s) from {batch[0]['dynamodb']['SequenceNumber']}"
                    f" still not published after {self.max_retries} retries → dead-letter queue")

    def run(self, stop: threading.Event, *, status_path: Path | None = None,
            idle_seconds: float = IDLE_SECONDS) -> None:
        while not stop.is_set():
            try:
                delivered = self.poll_once()
            except Exception as exc:  # moto restarting, a network blip: try again shortly
                self.report(f"cannot read the stream: {type(exc).__name__}: {exc}")
                self._iterators.clear()
                delivered = 0
            if status_path is not None:
                write_status(status_path, self.stats)
            if not delivered:
                stop.wait(idle_seconds)


def write_status(path: Path, stats: PollerStats) -> None:
    """What the poller has done, for the tests and for a curious developer; replaced whole."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps({
        "pid": os.getpid(), "invocations": stats.invocations, "records": stats.records,
        "batchesFailed": stats.batches_failed, "deadLetters": stats.dead_letters,
        "checkpoints": stats.checkpoints, "at": time.time()}), encoding="utf-8")
    temporary.replace(path)


def _wait_for_stream(dynamodb, table: str, stop: threading.Event) -> str | None:
    while not stop.is_set():
        try:
            stream = dynamodb.describe_table(TableName=table)["Table"].get("LatestStreamArn")
        except Exception:  # the table is not there yet: the bootstrap creates it
            stream = None
        if stream:
            return stream
        stop.wait(0.5)
    return None


def main(argv: list[str] | None = None) -> int:
    die_with_parent()
    parser = argparse.ArgumentParser(prog="python -m sandbox.stream_poller")
    parser.add_argument("--status-file", required=True, type=Path)
    args = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    import boto3

    import app as gateway_app
    from chalicelib.runtime import settings
    from ops.events import EventResources

    session = boto3.session.Session()
    stage = settings.load_settings()
    stream = _wait_for_stream(session.client("dynamodb"), stage.approvals_table, stop)
    if stream is None:
        return 0
    sqs = session.client("sqs")
    queue = sqs.get_queue_url(QueueName=EventResources(stage.event_bus_name).dead_letter_queue)

    def report(line: str) -> None:
        say(f"[events]  {line}")

    poller = StreamPoller(
        streams=session.client("dynamodbstreams"), sqs=sqs, stream_arn=stream,
        handler=gateway_app.publish_approval_events, dead_letter_url=queue["QueueUrl"],
        function_name=f"{gateway_app.app.app_name}-local-{events.FUNCTION_NAME}",
        region=session.region_name or "us-east-1", report=report)
    write_status(args.status_file, poller.stats)
    poller.run(stop, status_path=args.status_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
