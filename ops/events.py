"""The approval events' resources and their operator commands (``python -m ops events ...``).

- ``reconcile_event_resources``: the stage's bus, its archive and the dead-letter queue of the
  publishing function, created when missing (``python -m ops.bootstrap`` and the sandbox run it;
  the CloudFormation path declares the same in infra/resources.yaml).
- ``config fill-stream``: name the approvals table's stream in the stage, where chalice reads it
  when it imports app.py to deploy (``APPROVALS_STREAM_ARN``).
- ``events configure-mapping``: what ``chalice deploy`` cannot set on the function's stream
  subscription (partial batch failures, bisection, bounded retries, the dead-letter queue).
  ``python -m ops deploy`` runs it after every deploy.
- ``events replay``: replay a period of the bus's archive to one consumer's rule only
  (StartReplay with ``FilterArns``); the other consumers see nothing again.
- ``events replay-dlq``: publish again the stream records whose events ended in the
  dead-letter queue. A message there is Lambda's on-failure record: it names the shard and the
  range of sequence numbers, not the records, so the records are read back from the stream,
  which keeps them 24 hours. The events are the same ones (same ``eventId``): a consumer that
  had some of them drops the duplicates.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from chalicelib.approvals import events
from chalicelib.runtime import settings
from ops.common import ACTED, FAILED, NOTHING_TO_DO, WAIT, OpsError, aws_session, client, error_code
from ops.stage_config import LOCAL_STAGES, Stage, load_stage

ARCHIVE_RETENTION_DAYS = 365
DEAD_LETTER_RETENTION_SECONDS = 14 * 24 * 3600  # SQS's maximum
ARCHIVE_PATTERN = {"source": [events.SOURCE]}
# DynamoDB Streams answers empty pages on an open shard before the part that holds records ("it
# might take multiple calls to get to a portion of the shard that contains stream records"), so
# an empty page says nothing: reading stops at the batch's last record, at the end of a closed
# shard, or after this many pages, and a batch not read to its last record is never replayed.
_MAX_PAGES = 1000
_REPLAY_VISIBILITY_SECONDS = 120


@dataclass(frozen=True)
class EventResources:
    """The names of a stage's event resources: the bus names them all."""

    bus: str

    @property
    def archive(self) -> str:
        return self.bus

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.bus}-dlq"

    @classmethod
    def of(cls, stage: Stage) -> EventResources:
        return cls(stage.setting(settings.EVENT_BUS_NAME))


# -- resources ----------------------------------------------------------------------------------

def _missing(call: Callable[[], object], *codes: str) -> bool:
    try:
        call()
        return False
    except Exception as exc:
        if error_code(exc) in codes:
            return True
        raise


def _bus_missing(events_client, name: str) -> bool:
    return _missing(lambda: events_client.describe_event_bus(Name=name),
                    "ResourceNotFoundException")


def _archive_missing(events_client, name: str) -> bool:
    return _missing(lambda: events_client.describe_archive(ArchiveName=name),
                    "ResourceNotFoundException")


def _queue_missing(sqs_client, name: str) -> bool:
    return _missing(lambda: sqs_client.get_queue_url(QueueName=name),
                    "AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist")


def reconcile_event_resources(events_client, sqs_client, resources: EventResources,
                              tags: dict[str, str] | None = None) -> list[str]:
    """Create whichever of the bus, its archive and the dead-letter queue is missing; return
    what was created, one line each. Existing ones are left as they are."""
    tags = tags or {}
    changes = []
    if _bus_missing(events_client, resources.bus):
        events_client.create_event_bus(Name=resources.bus, Tags=[
            {"Key": key, "Value": value} for key, value in tags.items()])
        changes.append(f"created event bus {resources.bus}")
    if _archive_missing(events_client, resources.archive):
        bus_arn = events_client.describe_event_bus(Name=resources.bus)["Arn"]
        events_client.create_archive(
            ArchiveName=resources.archive, EventSourceArn=bus_arn,
            Description="Every approval event, for replay to a consumer that lost some",
            EventPattern=json.dumps(ARCHIVE_PATTERN), RetentionDays=ARCHIVE_RETENTION_DAYS)
        changes.append(f"created archive {resources.archive} of every approval event "
                       f"({ARCHIVE_RETENTION_DAYS} days)")
    if _queue_missing(sqs_client, resources.dead_letter_queue):
        sqs_client.create_queue(QueueName=resources.dead_letter_queue, Attributes={
            "MessageRetentionPeriod": str(DEAD_LETTER_RETENTION_SECONDS),
            "SqsManagedSseEnabled": "true"}, tags=tags)
        changes.append(f"created queue {resources.dead_letter_queue} (the approval events' "
                       "dead letters)")
    return changes


def event_problems(events_client, sqs_client, dynamodb_client, stage: Stage) -> list[str]:
    """What a deploy of the stage's event publishing relies on and does not find: the stream
    named in the stage (and still the table's), the bus, the archive, the dead-letter queue."""
    problems = []
    resources = EventResources.of(stage)
    table = stage.setting(settings.APPROVALS_TABLE)
    named = stage.setting(settings.APPROVALS_STREAM_ARN)
    try:
        current = dynamodb_client.describe_table(TableName=table)["Table"].get("LatestStreamArn")
    except Exception as exc:
        if error_code(exc) != "ResourceNotFoundException":
            raise
        current = None  # reported with the tables
    how = f"`python -m ops config fill-stream --stage {stage.name}` writes it"
    if not named:
        problems.append(f"{settings.APPROVALS_STREAM_ARN} is not set: chalice deploy subscribes "
                        f"{events.FUNCTION_NAME} to that stream ({how})")
    elif current and named != current:
        problems.append(f"{settings.APPROVALS_STREAM_ARN} names {named}, but table {table}'s "
                        f"stream is {current} ({how})")
    if _bus_missing(events_client, resources.bus):
        problems.append(f"event bus {resources.bus} does not exist")
    elif _archive_missing(events_client, resources.archive):
        problems.append(f"archive {resources.archive} does not exist")
    if _queue_missing(sqs_client, resources.dead_letter_queue):
        problems.append(f"queue {resources.dead_letter_queue} does not exist")
    return problems


def write_stream_arn(stage: Stage, stream_arn: str) -> bool:
    """Name the approvals table's stream in the stage in config.json (chalice reads it when it
    imports app.py); True when the file changed."""
    config = json.loads(stage.path.read_text(encoding="utf-8"))
    env = config["stages"][stage.name].setdefault("environment_variables", {})
    if env.get(settings.APPROVALS_STREAM_ARN) == stream_arn:
        return False
    env[settings.APPROVALS_STREAM_ARN] = stream_arn
    stage.path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n",
                          encoding="utf-8")
    return True


def fill_stream_command(args) -> int:
    """``config fill-stream``: name the approvals table's current stream in the stage."""
    stage = load_stage(args.stage, args.config)
    if stage.name in LOCAL_STAGES:
        raise OpsError(f"stage {stage.name} runs locally: the sandbox finds its stream itself")
    session = aws_session(args.region)
    table = stage.setting(settings.APPROVALS_TABLE)
    try:
        stream = client(session, "dynamodb").describe_table(TableName=table)["Table"].get(
            "LatestStreamArn")
    except Exception as exc:
        if error_code(exc) == "ResourceNotFoundException":
            raise OpsError(f"table {table} does not exist in {session.region_name}: create it "
                           f"with `python -m ops.bootstrap --stage {stage.name}`") from None
        raise
    if not stream:
        raise OpsError(f"table {table} has no stream: `python -m ops.bootstrap --stage "
                       f"{stage.name}` turns it on")
    changed = write_stream_arn(stage, stream)
    print(f"stage {stage.name}: {'set' if changed else 'already had'} "
          f"{settings.APPROVALS_STREAM_ARN} {stream} in {stage.path} (commit it: chalice deploy "
          f"subscribes {events.FUNCTION_NAME} to it)")
    return 0


# -- the event source mapping -------------------------------------------------------------------

def queue_url_and_arn(sqs_client, name: str) -> tuple[str, str]:
    try:
        url = sqs_client.get_queue_url(QueueName=name)["QueueUrl"]
    except Exception as exc:
        if error_code(exc) in ("AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"):
            raise OpsError(f"queue {name} does not exist: create it with `python -m "
                           "ops.bootstrap`") from None
        raise
    arn = sqs_client.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])[
        "Attributes"]["QueueArn"]
    return url, arn


def wanted_mapping(dead_letter_arn: str) -> dict:
    return {**events.STREAM_MAPPING,
            "DestinationConfig": {"OnFailure": {"Destination": dead_letter_arn}}}


def stream_mappings(lambda_client, stage: Stage) -> list[dict]:
    """The events function's subscriptions to the stage's stream. Listed by the stream and
    matched on the function's ARN: chalice creates them with the function's ARN, and moto
    filters a FunctionName only by the form the mapping was created with (AWS takes either)."""
    function = stage.function_name(events.FUNCTION_NAME)
    stream = stage.setting(settings.APPROVALS_STREAM_ARN)
    found = []
    for page in lambda_client.get_paginator("list_event_source_mappings").paginate(
            EventSourceArn=stream):
        found += [mapping for mapping in page["EventSourceMappings"]
                  if mapping.get("FunctionArn", "").split(":")[6:7] == [function]]
    return found


def configure_mapping(lambda_client, sqs_client, stage: Stage) -> list[str]:
    """Give the publishing function's stream subscription the failure handling of
    ``events.STREAM_MAPPING`` and the stage's dead-letter queue. Raises OpsError when the
    function has no subscription to the stage's stream (not deployed yet)."""
    function = stage.function_name(events.FUNCTION_NAME)
    stream = stage.setting(settings.APPROVALS_STREAM_ARN)
    if not stream:
        raise OpsError(f"stage {stage.name} names no {settings.APPROVALS_STREAM_ARN}: run "
                       f"`python -m ops config fill-stream --stage {stage.name}` first")
    _, dead_letter_arn = queue_url_and_arn(sqs_client, EventResources.of(stage).dead_letter_queue)
    mappings = stream_mappings(lambda_client, stage)
    if not mappings:
        raise OpsError(f"{function} is not subscribed to {stream}: deploy the stage first "
                       f"(`python -m ops deploy --stage {stage.name}`)")
    wanted = wanted_mapping(dead_letter_arn)
    lines = []
    for mapping in mappings:
        current = {name: mapping.get(name) for name in wanted}
        if current == wanted:
            lines.append(f"{function}: its stream subscription {mapping['UUID']} already "
                         "reports partial failures, bisects, retries "
                         f"{wanted['MaximumRetryAttempts']} times and sends what fails to "
                         f"{EventResources.of(stage).dead_letter_queue}")
            continue
        lambda_client.update_event_source_mapping(UUID=mapping["UUID"], **wanted)
        lines.append(f"{function}: its stream subscription {mapping['UUID']} now reports "
                     f"partial failures, bisects, retries {wanted['MaximumRetryAttempts']} "
                     f"times and sends what fails to {EventResources.of(stage).dead_letter_queue}")
    return lines


# -- replaying the dead-letter queue ---------------------------------------------------------------

def lambda_record(record: dict, stream_arn: str) -> dict:
    """A record as the DynamoDB Streams API returns it (boto3), in the shape Lambda hands the
    function: the stream's ARN on it, the creation time in epoch seconds."""
    shaped = json.loads(json.dumps(record, default=str))
    created = record.get("dynamodb", {}).get("ApproximateCreationDateTime")
    if isinstance(created, datetime):
        shaped["dynamodb"]["ApproximateCreationDateTime"] = created.timestamp()
    shaped["eventSourceARN"] = stream_arn
    return shaped


@dataclass(frozen=True)
class FailedBatch:
    """Lambda's on-failure record of a stream batch: where the records are."""

    stream_arn: str
    shard_id: str
    start: str
    end: str
    size: int

    @classmethod
    def parse(cls, body: str) -> FailedBatch | None:
        try:
            info = json.loads(body)["DDBStreamBatchInfo"]
            return cls(info["streamArn"], info["shardId"], str(info["startSequenceNumber"]),
                       str(info["endSequenceNumber"]), int(info.get("batchSize", 0)))
        except (ValueError, KeyError, TypeError):
            return None

    def describe(self) -> str:
        span = self.start if self.start == self.end else f"{self.start}..{self.end}"
        return f"shard {self.shard_id} records {span}"


def read_batch(streams_client, batch: FailedBatch) -> list[dict]:
    """The records of ``batch``, read back from the stream, in Lambda's shape. Raises OpsError
    when the stream no longer has them."""
    try:
        iterator = streams_client.get_shard_iterator(
            StreamArn=batch.stream_arn, ShardId=batch.shard_id,
            ShardIteratorType="AT_SEQUENCE_NUMBER", SequenceNumber=batch.start)["ShardIterator"]
    except Exception as exc:
        if error_code(exc) in ("TrimmedDataAccessException", "ResourceNotFoundException"):
            raise OpsError(f"the stream no longer holds {batch.describe()} (it keeps records "
                           "24 hours)") from None
        raise
    records: list[dict] = []
    for _ in range(_MAX_PAGES):
        if not iterator:  # a closed shard, read to its end
            break
        page = streams_client.get_records(ShardIterator=iterator, Limit=1000)
        for record in page.get("Records", []):
            sequence = int(record["dynamodb"]["SequenceNumber"])
            if sequence > int(batch.end):
                return records
            records.append(lambda_record(record, batch.stream_arn))
            if sequence == int(batch.end):
                return records
        iterator = page.get("NextShardIterator")
    # The dead letter is the only pointer to its records: deleting it now would lose the ones
    # not read yet for good.
    raise OpsError(f"the stream did not reach the end of {batch.describe()} (read"
                   f" {len(records)} record(s) in {_MAX_PAGES} pages, or its shard ended"
                   " before it); run the replay again")


def replay_dead_letters(sqs_client, streams_client, events_client, *, queue_url: str,
                        bus_name: str, max_messages: int, dry_run: bool = False,
                        out: Callable[[str], None] = print) -> tuple[int, int]:
    """Publish again the events of each failed batch in the dead-letter queue, deleting each
    message once every event of its batch is published. Returns (replayed, left) messages."""
    replayed, kept = 0, []
    # Each message received stays invisible while the run lasts, so none is seen twice; the ones
    # kept become visible again at the end.
    try:
        while replayed + len(kept) < max_messages:
            wanted = min(10, max_messages - replayed - len(kept))
            page = sqs_client.receive_message(
                QueueUrl=queue_url, MaxNumberOfMessages=wanted,
                VisibilityTimeout=_REPLAY_VISIBILITY_SECONDS, WaitTimeSeconds=1)
            messages = page.get("Messages", [])
            if not messages:
                break
            for message in messages:
                ok = _replay_one(message, streams_client, events_client, bus_name=bus_name,
                                 dry_run=dry_run, out=out)
                if ok:
                    sqs_client.delete_message(QueueUrl=queue_url,
                                              ReceiptHandle=message["ReceiptHandle"])
                    replayed += 1
                else:
                    kept.append(message["ReceiptHandle"])
    finally:
        for handle in kept:
            sqs_client.change_message_visibility(QueueUrl=queue_url, ReceiptHandle=handle,
                                                 VisibilityTimeout=0)
    return replayed, len(kept)


def _replay_one(message: dict, streams_client, events_client, *, bus_name: str, dry_run: bool,
                out: Callable[[str], None]) -> bool:
    """True when every event of the message's batch is published again (never in a dry run)."""
    batch = FailedBatch.parse(message.get("Body", ""))
    where = f"message {message['MessageId']}"
    if batch is None:
        out(f"{where}: not a stream batch failure record; left in the queue")
        return False
    try:
        records = read_batch(streams_client, batch)
    except OpsError as exc:
        out(f"{where}: {exc}; left in the queue (`python -m ops approvals show CODE` shows "
            "what each approval is now)")
        return False
    lost = f" (the failure record counted {batch.size})" if batch.size and len(records) < \
        batch.size else ""
    if dry_run:
        codes = sorted({r["dynamodb"]["Keys"]["code"]["S"] for r in records
                        if "code" in r.get("dynamodb", {}).get("Keys", {})})
        out(f"{where}: {batch.describe()}: {len(records)} record(s){lost} of "
            f"{', '.join(codes) or 'no code'}; would publish their events again")
        return False
    outcome = events.handle_batch(records, client=events_client, bus_name=bus_name)
    if outcome.failed:
        out(f"{where}: {batch.describe()}: {len(outcome.failed)} of {len(records)} record(s) "
            "still fail (see the function's log line 'approval event not published' for why); "
            "left in the queue")
        return False
    out(f"{where}: {batch.describe()}: {len(records)} record(s){lost}, {outcome.published} "
        "event(s) published again")
    return True


# -- commands -------------------------------------------------------------------------------------

def configure_mapping_command(args) -> int:
    stage = load_stage(args.stage, args.config)
    session = aws_session(args.region)
    for line in configure_mapping(client(session, "lambda"), client(session, "sqs"), stage):
        print(line)
    return 0


def replay_dlq_command(args) -> int:
    stage = load_stage(args.stage, args.config)
    session = aws_session(args.region)
    if args.max_messages < 1:
        raise OpsError("--max-messages must be at least 1")
    resources = EventResources.of(stage)
    sqs_client = client(session, "sqs")
    queue_url, _ = queue_url_and_arn(sqs_client, resources.dead_letter_queue)
    replayed, left = replay_dead_letters(
        sqs_client, client(session, "dynamodbstreams"), client(session, "events"),
        queue_url=queue_url, bus_name=resources.bus, max_messages=args.max_messages,
        dry_run=args.dry_run)
    if not replayed and not left:
        print(f"{resources.dead_letter_queue} is empty: nothing to replay")
        return NOTHING_TO_DO
    # The events go back on the bus: every rule that takes approval events sees them.
    print(f"consumers that {'would see' if args.dry_run else 'see'} the replayed events (rules"
          f" on {resources.bus}):"
          f" {describe_consumers(consumers(client(session, 'events'), resources.bus))}")
    if args.dry_run:
        print(f"{left} message(s) in {resources.dead_letter_queue} looked at; nothing published"
              " (--dry-run)")
        return ACTED
    print(f"{replayed} message(s) replayed and removed from {resources.dead_letter_queue}; "
          f"{left} left in it")
    return FAILED if left else ACTED


# -- replaying the archive to one consumer -------------------------------------------------------

def _takes_approval_events(rule: dict) -> bool:
    """Whether a rule's pattern lets the approval events through by their source (a rule that
    filters on more, such as a detail-type, may take fewer of them)."""
    try:
        pattern = json.loads(rule.get("EventPattern") or "null")
    except ValueError:
        return False
    if not isinstance(pattern, dict):
        return False
    sources = pattern.get("source")
    return sources is None or (isinstance(sources, list) and events.SOURCE in sources)


def consumers(events_client, bus_name: str) -> list[dict]:
    """The rules on the bus that take approval events: who sees an event published on it.
    Each: ``Name``, ``Arn``, ``State``, and ``ManagedBy`` (the archive's own rule)."""
    found, token = [], None
    while True:
        page = events_client.list_rules(EventBusName=bus_name,
                                        **({"NextToken": token} if token else {}))
        found += [rule for rule in page.get("Rules", []) if _takes_approval_events(rule)]
        token = page.get("NextToken")
        if not token:
            return sorted(found, key=lambda rule: rule["Name"])


def describe_consumers(rules: list[dict]) -> str:
    names = [rule["Name"] + ("" if rule.get("State", "ENABLED") == "ENABLED" else " (disabled)")
             for rule in rules if not rule.get("ManagedBy")]
    return ", ".join(names) if names else "none"


def parse_moment(text: str) -> datetime:
    """An ISO 8601 time (``2026-01-31T00:00:00Z``; UTC when no offset is given) or epoch ms."""
    from datetime import UTC

    try:
        if text.isdigit():
            return datetime.fromtimestamp(int(text) / 1000, UTC)
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (ValueError, OverflowError, OSError):
        raise OpsError(f"{text!r} is not a time: use ISO 8601 (2026-01-31T00:00:00Z) or epoch"
                       " ms") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def replay_name(rule: str, since: datetime) -> str:
    """EventBridge's replay name: at most 64 of [.-_A-Za-z0-9], unique per start."""
    import re

    stem = re.sub(r"[^.\-_A-Za-z0-9]", "-", rule)[:40]
    return f"{stem}-{since:%Y%m%dT%H%M%S}-{datetime.now():%H%M%S}"[:64]


def replay_to_rule(events_client, resources: EventResources, *, rule: str, since: datetime,
                   until: datetime, name: str | None = None) -> dict:
    """Start an archive replay of [since, until) to the one rule ``rule`` (StartReplay's
    ``FilterArns``): only its targets see the events again. Returns StartReplay's answer with
    ``ReplayName``. Raises OpsError for a rule that is not on the bus or takes no approval
    events, or a window that is empty."""
    if since >= until:
        raise OpsError("--since must be before --until")
    known = consumers(events_client, resources.bus)
    chosen = [found for found in known if found["Name"] == rule and not found.get("ManagedBy")]
    if not chosen:
        raise OpsError(f"no rule {rule!r} on {resources.bus} takes approval events; the rules"
                       f" that do: {describe_consumers(known)}")
    archive_arn = events_client.describe_archive(ArchiveName=resources.archive)["ArchiveArn"]
    bus_arn = events_client.describe_event_bus(Name=resources.bus)["Arn"]
    name = name or replay_name(rule, since)
    answer = events_client.start_replay(
        ReplayName=name, EventSourceArn=archive_arn, EventStartTime=since, EventEndTime=until,
        Destination={"Arn": bus_arn, "FilterArns": [chosen[0]["Arn"]]},
        Description=f"approval events {since:%Y-%m-%dT%H:%M:%SZ} to "
                    f"{until:%Y-%m-%dT%H:%M:%SZ} for rule {rule} only")
    return {**answer, "ReplayName": name}


def wait_for_replay(events_client, name: str, *, seconds: float, sleep=None,
                    clock=None) -> str:
    """The replay's state once it ends (COMPLETED, FAILED, CANCELLED), or its state when
    ``seconds`` have passed."""
    import time

    sleep = sleep or time.sleep
    clock = clock or time.monotonic
    deadline = clock() + seconds
    while True:
        state = events_client.describe_replay(ReplayName=name)["State"]
        if state in ("COMPLETED", "FAILED", "CANCELLED") or clock() >= deadline:
            return state
        sleep(2.0)


def replay_command(args) -> int:
    stage = load_stage(args.stage, args.config)
    session = aws_session(args.region)
    resources = EventResources.of(stage)
    events_client = client(session, "events")
    since, until = parse_moment(args.since), parse_moment(args.until)
    started = replay_to_rule(events_client, resources, rule=args.rule, since=since,
                             until=until)
    print(f"replay {started['ReplayName']} started: approval events from"
          f" {since:%Y-%m-%dT%H:%M:%SZ} to {until:%Y-%m-%dT%H:%M:%SZ} from the archive"
          f" {resources.archive}, to rule {args.rule} only; no other consumer sees them")
    if args.wait <= 0:
        return ACTED
    state = wait_for_replay(events_client, started["ReplayName"], seconds=args.wait)
    print(f"replay {started['ReplayName']}: {state}")
    if state == "COMPLETED":
        return ACTED
    return FAILED if state in ("FAILED", "CANCELLED") else WAIT
