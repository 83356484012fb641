"""moto server for the sandbox, with its requests applied one at a time.

moto's in-memory backends are not thread-safe: its TransactWriteItems deep-copies every table it
touches while other request threads write to them, and under concurrent load (the sandbox's
burst test: 16 sends at once) it answers HTTP 500 "dictionary changed size during iteration".
Real DynamoDB applies each request atomically; serializing the requests here gives the gateway
that same guarantee, so a 500 from the emulator is never mistaken for a gateway bug. Connections
are still accepted concurrently. ``sandbox.moto_speedups`` makes moto cheaper per request with the
same answers (transactions snapshot only what they can change, so the sandbox does not slow down
as its tables grow).
PutEvents can be made to fail on request (``sandbox.aws_faults``). An S3 POST upload's policy is
enforced as S3 does (``sandbox.s3_post_policy``; moto itself stores whatever a POST carries).

Run as ``python -m sandbox.moto_server -H 127.0.0.1 -p 5000``.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug import serving as werkzeug_serving
from werkzeug.serving import run_simple

from sandbox import moto_speedups
from sandbox.aws_faults import FaultInjector
from sandbox.lifeline import die_with_parent
from sandbox.s3_post_policy import S3PostPolicy


def install_one_stream_record_per_write() -> None:
    """Make moto stream one record for an UpdateItem that creates its item, as DynamoDB does.

    moto creates the item with its keys only (streaming an INSERT of the bare keys), then
    applies the update and streams a second INSERT with the whole item. A stream consumer would
    see an item that never existed (the approval events' HEAD without a status or version). The
    first of the two records is dropped and the second takes its sequence number, so the
    stream's numbering stays gapless. Only safe because SerializedApp runs one request at a time.
    """
    import moto.dynamodb.models as models

    original = models.DynamoDBBackend.update_item

    def update_item(self, table_name, key, *args, **kwargs):
        table = self.tables.get(table_name)
        shard = table.stream_shard if table is not None else None
        before = len(shard.items) if shard is not None else 0
        item = original(self, table_name, key, *args, **kwargs)
        if shard is not None and len(shard.items) == before + 2 and all(
                record.record["eventName"] == "INSERT" for record in shard.items[before:]):
            bare, whole = shard.items[before:]
            whole.record["dynamodb"]["SequenceNumber"] = bare.record["dynamodb"]["SequenceNumber"]
            del shard.items[before]
        return item

    models.DynamoDBBackend.update_item = update_item


# What IAM authorizes a transaction's elements as (DynamoDB has no TransactWriteItems action).
_TRANSACT_ACTIONS = {"Put": "PutItem", "Update": "UpdateItem", "Delete": "DeleteItem",
                     "ConditionCheck": "ConditionCheckItem", "Get": "GetItem"}


def install_transaction_item_authorization() -> None:
    """With IAM enforcement on (``INITIAL_NO_AUTH_ACTION_COUNT``), authorize a DynamoDB
    transaction as AWS does: each of its elements as its own action (a Put as
    ``dynamodb:PutItem``...), never as ``dynamodb:TransactWriteItems``, which IAM does not have.
    moto checks the API operation's name, which would refuse every transaction of a correct
    policy. Nothing changes when enforcement is off."""
    import json

    from moto.iam.access_control import IAMRequest

    original = IAMRequest.check_action_permitted

    def check_action_permitted(self, resource: str) -> None:
        if self._action not in ("dynamodb:TransactWriteItems", "dynamodb:TransactGetItems"):
            return original(self, resource)
        try:
            items = json.loads(self._body or b"{}").get("TransactItems") or []
            actions = {_TRANSACT_ACTIONS[kind] for item in items for kind in item}
        except (ValueError, KeyError, AttributeError):
            return original(self, resource)  # malformed: moto's own check, then its own error
        requested = self._action
        try:
            for action in sorted(actions):
                self._action = f"dynamodb:{action}"
                original(self, resource)
        finally:
            self._action = requested

    IAMRequest.check_action_permitted = check_action_permitted


def install_unique_stream_subscriptions() -> None:
    """Refuse a second event source mapping of one function on one DynamoDB stream, as Lambda
    does (409 ResourceConflictException, "provided mapping already exists"); moto makes two,
    which would hide that a rerun of a stopped first ``chalice deploy`` fails there in AWS."""
    from moto.awslambda.exceptions import LambdaClientError
    from moto.awslambda.models import LambdaBackend

    class MappingExists(LambdaClientError):
        code = 409

        def __init__(self, message: str):
            super().__init__("ResourceConflictException", message)

    original = LambdaBackend.create_event_source_mapping

    def create_event_source_mapping(self, spec):
        source = spec.get("EventSourceArn", "")
        if ":dynamodb:" in source:
            function = self._lambdas.get_function_by_name_or_arn_with_qualifier(
                spec.get("FunctionName", ""))
            for existing in self._event_source_mappings.values():
                if (existing.event_source_arn == source
                        and existing.function_arn == function.function_arn):
                    raise MappingExists(
                        f"The event source arn (\" {source} \") and function (\" "
                        f"{function.function_name} \") provided mapping already exists. Please "
                        f"update or delete the existing mapping with UUID {existing.uuid}")
        return original(self, spec)

    LambdaBackend.create_event_source_mapping = create_event_source_mapping


# Held by SerializedApp for each request; an SQS long poll lets go of it while it waits.
_REQUEST_LOCK = threading.Lock()
_LONG_POLL_STEP_SECONDS = 0.05


class SerializedApp:
    """A WSGI app that runs ``app`` for one request at a time, body included."""

    def __init__(self, app):
        self._app = app

    def __call__(self, environ, start_response):
        with _REQUEST_LOCK:
            result = self._app(environ, start_response)
            try:
                body = list(result)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        return body


def install_long_polls_that_wait_alone() -> None:
    """Make an SQS long poll (``WaitTimeSeconds``) wait without holding up every other request,
    as on AWS.

    moto waits inside the request, for up to a second at a time, and SerializedApp holds its lock
    for the whole request: every call to the emulator queued behind each consumer's poll, and the
    message the poll was waiting for could never be sent meanwhile. The wait here lets go of the
    lock and looks again every 50 ms; moto's loop re-reads the queue under the lock each time."""
    import time

    from moto.sqs.models import Queue

    def wait_for_messages(self, timeout: int) -> None:
        _REQUEST_LOCK.release()
        try:
            time.sleep(min(timeout, _LONG_POLL_STEP_SECONDS))
        finally:
            _REQUEST_LOCK.acquire()

    Queue.wait_for_messages = wait_for_messages


def install_task_failure_cause() -> None:
    """Make moto's SendTaskFailure keep its ``cause``, as AWS does.

    moto 5.2's response layer passes only ``error`` on to the execution, so a workflow that
    catches the failure reads a null Cause; AWS hands it the cause the caller sent (the
    approval's decision, for the gateway's task tokens)."""
    from moto.stepfunctions.responses import StepFunctionResponse, get_backend

    def send_task_failure(self):
        backend = get_backend(self.current_account, self.region)
        if getattr(type(backend), "__module__", "").endswith("parser.models"):
            backend.send_task_failure(self._get_param("taskToken"),
                                      error=self._get_param("error"),
                                      cause=self._get_param("cause"))
        else:
            backend.send_task_failure(self._get_param("taskToken"),
                                      error=self._get_param("error"))
        from moto.core.responses import EmptyResult

        return EmptyResult()

    StepFunctionResponse.send_task_failure = send_task_failure


def install_replay_window_and_filter() -> None:
    """Make moto's archive replays keep to their window and their ``FilterArns``, as AWS does.

    moto 5.2 sends every archived event, whatever its time, to every rule on the bus. AWS
    replays only the events whose time is within [EventStartTime, EventEndTime), and, when the
    destination names ``FilterArns``, only to those rules (``ops events replay --rule``)."""
    from datetime import datetime

    import moto.events.models as models
    from moto.core.utils import unix_time

    def epoch(value) -> float:
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, datetime):
            return value.timestamp()
        text = str(value)
        try:
            return float(text)
        except ValueError:
            return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()

    def replay_events(self, archive) -> None:
        backend = models.events_backends[self.account_id][self.region]
        bus = backend.describe_event_bus(self.destination["Arn"].split("/")[-1])
        only = set(self.destination.get("FilterArns") or ())
        start, end = epoch(self.event_start_time), epoch(self.event_end_time)
        for event in archive.events:
            if not start <= epoch(event.get("time", 0)) < end:
                continue
            for rule in bus.rules.values():
                if only and rule.arn not in only:
                    continue
                rule.send_to_targets(dict(event, **{"id": str(models.random.uuid4()),
                                                    "replay-name": self.name}),
                                     transform_input=False)
        self.state = models.ReplayState.COMPLETED
        self.end_time = unix_time()

    models.Replay.replay_events = replay_events


def main(argv: list[str] | None = None) -> None:
    die_with_parent()
    parser = argparse.ArgumentParser(prog="python -m sandbox.moto_server")
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, default=5000)
    parser.add_argument("--quiet", action="store_true",
                        help="no request log (a tenth of moto's time when nobody reads it)")
    args = parser.parse_args(argv)
    if args.quiet:
        import logging

        logging.getLogger("werkzeug").setLevel(logging.WARNING)
    os.environ.setdefault("MOTO_PORT", str(args.port))  # as moto.server does
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        moto_speedups.install()
    except (ImportError, AttributeError) as error:  # another moto version: correct, just slower
        print(f"sandbox.moto_server: running moto unpatched ({error})", file=sys.stderr)
    install_one_stream_record_per_write()
    install_transaction_item_authorization()
    install_unique_stream_subscriptions()
    install_task_failure_cause()
    install_long_polls_that_wait_alone()
    install_replay_window_and_filter()
    # The log is a file: werkzeug's ANSI colours would only clutter it.
    werkzeug_serving._log_add_style = False
    app = FaultInjector(DomainDispatcherApplication(create_backend_app))  # sandbox.aws_faults
    app = S3PostPolicy(app)  # S3's POST policy conditions, which moto does not enforce
    run_simple(args.host, args.port, SerializedApp(app), threaded=True,
               request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main()
