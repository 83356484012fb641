"""The two DynamoDB tables, defined once: the tests, the sandbox and the deploy bootstrap all
create them from here, so their schemas cannot drift apart.

- approvals: ``code`` (partition) + ``sk`` (sort). One ``HEAD`` item per code for the uniqueness
  rule and current status, one ``ATTEMPT#...`` item per send, one ``CALLBACK#...`` per callback.
  Every read of one code is a single Query. Its stream (new and old images) feeds the events
  that report approval changes.
- nonces: ``pk`` = appKey + ":" + nonce, with the TTL attribute ``expiresAt`` (epoch seconds).

Both have point-in-time recovery and deletion protection. ``reconcile_tables`` creates a missing
table and turns on whatever an existing one lacks, so a half-finished bootstrap is completed by
the next run; ``table_problems`` reports the same differences without changing anything. Both are
operator tooling (ops/): the Lambda functions never call them.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from chalicelib.runtime.table_keys import (  # noqa: F401 - re-exported for ops and tests
    APPROVALS_STREAM_VIEW_TYPE,
    NONCE_TTL_ATTRIBUTE,
    OPEN_INDEX,
    OPEN_SINCE_ATTRIBUTE,
    OPEN_STATUS_ATTRIBUTE,
)

_WAITER = {"Delay": 1, "MaxAttempts": 120}
_PITR_TRIES = 10


def approvals_table_definition(name: str) -> dict:
    return {
        "TableName": name,
        "AttributeDefinitions": [
            {"AttributeName": "code", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
            {"AttributeName": OPEN_STATUS_ATTRIBUTE, "AttributeType": "S"},
            {"AttributeName": OPEN_SINCE_ATTRIBUTE, "AttributeType": "N"},
        ],
        "KeySchema": [
            {"AttributeName": "code", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
        "GlobalSecondaryIndexes": [open_index_definition()],
        "BillingMode": "PAY_PER_REQUEST",
        "SSESpecification": {"Enabled": True},
        "StreamSpecification": {"StreamEnabled": True,
                                "StreamViewType": APPROVALS_STREAM_VIEW_TYPE},
        "DeletionProtectionEnabled": True,
    }


def open_index_definition() -> dict:
    return {
        "IndexName": OPEN_INDEX,
        "KeySchema": [{"AttributeName": OPEN_STATUS_ATTRIBUTE, "KeyType": "HASH"},
                      {"AttributeName": OPEN_SINCE_ATTRIBUTE, "KeyType": "RANGE"}],
        "Projection": {"ProjectionType": "ALL"},  # a HEAD is small
    }


def nonces_table_definition(name: str) -> dict:
    return {
        "TableName": name,
        "AttributeDefinitions": [{"AttributeName": "pk", "AttributeType": "S"}],
        "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}],
        "BillingMode": "PAY_PER_REQUEST",
        "SSESpecification": {"Enabled": True},
        "DeletionProtectionEnabled": True,
    }


def _table_specs(approvals_table: str, nonces_table: str) -> list[tuple[dict, str | None]]:
    """Each table's definition with its TTL attribute (None: no TTL)."""
    return [(approvals_table_definition(approvals_table), None),
            (nonces_table_definition(nonces_table), NONCE_TTL_ATTRIBUTE)]


@dataclass(frozen=True)
class Fix:
    """One difference between a table and its definition: what is wrong, what fixing it did,
    and how to fix it (None when it needs a person: the fix would break something)."""

    problem: str
    done: str
    apply: Callable[[], None] | None = field(default=None, compare=False)


@dataclass
class TablesReport:
    changes: list[str] = field(default_factory=list)   # what was done, one line each
    problems: list[str] = field(default_factory=list)  # what still needs a person


def _describe(dynamodb, name: str) -> dict | None:
    try:
        return dynamodb.describe_table(TableName=name)["Table"]
    except dynamodb.exceptions.ResourceNotFoundException:
        return None


def _wait_active(dynamodb, name: str) -> None:
    dynamodb.get_waiter("table_exists").wait(TableName=name, WaiterConfig=_WAITER)


def _fixes(dynamodb, table: dict, definition: dict, ttl_attribute: str | None,
           tags: dict[str, str] | None, sleep) -> list[Fix]:
    name = table["TableName"]
    fixes = []
    if definition.get("DeletionProtectionEnabled") and not table.get("DeletionProtectionEnabled"):
        def protect():
            dynamodb.update_table(TableName=name, DeletionProtectionEnabled=True)
            _wait_active(dynamodb, name)
        fixes.append(Fix("deletion protection is off", "turned on deletion protection", protect))

    wanted_stream = definition.get("StreamSpecification")
    stream = table.get("StreamSpecification") or {}
    if wanted_stream:
        view = wanted_stream["StreamViewType"]
        if not stream.get("StreamEnabled"):
            def enable_stream():
                dynamodb.update_table(TableName=name, StreamSpecification=wanted_stream)
                _wait_active(dynamodb, name)
            fixes.append(Fix(f"stream is off (needs {view})", f"turned on its {view} stream",
                             enable_stream))
        elif stream.get("StreamViewType") != view:
            # Changing the view type replaces the stream (a new ARN): its consumer must move too.
            fixes.append(Fix(
                f"stream is {stream.get('StreamViewType')}, needs {view}: turn it off by hand"
                f" (aws dynamodb update-table --table-name {name} --stream-specification"
                " StreamEnabled=false), then run the bootstrap again; the stream ARN changes",
                ""))

    for index in definition.get("GlobalSecondaryIndexes", ()):
        if all(existing["IndexName"] != index["IndexName"]
               for existing in table.get("GlobalSecondaryIndexes", ())):
            def create_index(index=index):
                keys = {key["AttributeName"] for key in index["KeySchema"]}
                dynamodb.update_table(
                    TableName=name,
                    AttributeDefinitions=[attribute for attribute
                                          in definition["AttributeDefinitions"]
                                          if attribute["AttributeName"] in keys],
                    GlobalSecondaryIndexUpdates=[{"Create": index}])
                _wait_active(dynamodb, name)
            fixes.append(Fix(f"index {index['IndexName']} is missing",
                             f"created index {index['IndexName']} (it fills in the background)",
                             create_index))

    backups = dynamodb.describe_continuous_backups(TableName=name)["ContinuousBackupsDescription"]
    pitr = backups.get("PointInTimeRecoveryDescription", {}).get("PointInTimeRecoveryStatus")
    if pitr != "ENABLED":
        def enable_pitr():
            _enable_pitr(dynamodb, name, sleep)
        fixes.append(Fix("point-in-time recovery is off", "turned on point-in-time recovery",
                         enable_pitr))

    if ttl_attribute is not None:
        ttl = dynamodb.describe_time_to_live(TableName=name).get("TimeToLiveDescription", {})
        status = ttl.get("TimeToLiveStatus", "DISABLED")
        if status in ("DISABLED", "DISABLING"):
            def enable_ttl():
                dynamodb.update_time_to_live(TableName=name, TimeToLiveSpecification={
                    "Enabled": True, "AttributeName": ttl_attribute})
            fixes.append(Fix("TTL is off", f"turned on TTL on {ttl_attribute}", enable_ttl))
        elif ttl.get("AttributeName") != ttl_attribute:
            fixes.append(Fix(
                f"TTL is on attribute {ttl.get('AttributeName')}, not {ttl_attribute}: turn it"
                " off by hand, wait an hour (DynamoDB's limit), and run the bootstrap again", ""))

    if tags:
        arn = table["TableArn"]
        current = {tag["Key"]: tag["Value"]
                   for page in _tag_pages(dynamodb, arn) for tag in page}
        missing = {key: value for key, value in tags.items() if current.get(key) != value}
        if missing:
            def tag():
                dynamodb.tag_resource(ResourceArn=arn, Tags=[
                    {"Key": key, "Value": value} for key, value in missing.items()])
            listed = ", ".join(f"{key}={value}" for key, value in missing.items())
            fixes.append(Fix(f"tags {listed} are missing", f"tagged {listed}", tag))
    return fixes


def _tag_pages(dynamodb, arn: str):
    kwargs = {"ResourceArn": arn}
    while True:
        page = dynamodb.list_tags_of_resource(**kwargs)
        yield page.get("Tags", [])
        if not page.get("NextToken"):
            return
        kwargs["NextToken"] = page["NextToken"]


def _enable_pitr(dynamodb, name: str, sleep) -> None:
    # Right after CreateTable, DynamoDB may still be setting up backups for a few seconds.
    for attempt in range(_PITR_TRIES):
        try:
            dynamodb.update_continuous_backups(
                TableName=name,
                PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True})
            return
        except dynamodb.exceptions.ContinuousBackupsUnavailableException:
            if attempt == _PITR_TRIES - 1:
                raise
            sleep(2)


def reconcile_tables(dynamodb, approvals_table: str, nonces_table: str, *,
                     tags: dict[str, str] | None = None, sleep=time.sleep) -> TablesReport:
    """Create whichever table is missing and turn on what an existing one lacks: point-in-time
    recovery, TTL on nonces, deletion protection, the approvals stream, ``tags``. Idempotent.

    Returns what it changed and what needs a person (a stream or TTL set up differently, which
    cannot be changed without breaking its users). Raises botocore's errors unchanged.
    """
    report = TablesReport()
    for definition, ttl_attribute in _table_specs(approvals_table, nonces_table):
        name = definition["TableName"]
        table = _describe(dynamodb, name)
        if table is None:
            create = dict(definition)
            if tags:
                create["Tags"] = [{"Key": key, "Value": value} for key, value in tags.items()]
            dynamodb.create_table(**create)
            _wait_active(dynamodb, name)
            report.changes.append(f"created table {name}")
            table = _describe(dynamodb, name)
        for fix in _fixes(dynamodb, table, definition, ttl_attribute, tags, sleep):
            if fix.apply is None:
                report.problems.append(f"table {name}: {fix.problem}")
            else:
                fix.apply()
                report.changes.append(f"table {name}: {fix.done}")
    return report


def table_problems(dynamodb, approvals_table: str, nonces_table: str) -> list[str]:
    """What ``reconcile_tables`` would change or cannot fix, as one line per problem; changes
    nothing."""
    problems = []
    for definition, ttl_attribute in _table_specs(approvals_table, nonces_table):
        name = definition["TableName"]
        table = _describe(dynamodb, name)
        if table is None:
            problems.append(f"table {name} does not exist")
            continue
        problems += [f"table {name}: {fix.problem}"
                     for fix in _fixes(dynamodb, table, definition, ttl_attribute, None, None)]
    return problems


def ensure_tables(dynamodb, approvals_table: str, nonces_table: str) -> list[str]:
    """Create or complete both tables (see ``reconcile_tables``); return the names of the tables
    it created (empty when both existed)."""
    report = reconcile_tables(dynamodb, approvals_table, nonces_table)
    return [line.removeprefix("created table ") for line in report.changes
            if line.startswith("created table ")]
