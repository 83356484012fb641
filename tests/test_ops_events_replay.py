"""``python -m ops events replay --rule``: a period of the archive, sent again to one consumer's
rule only, against moto server's EventBridge (its replay made to honour the window and
FilterArns, as AWS does: sandbox/moto_server.py). ``replay-dlq`` names the consumers."""
from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from chalicelib.approvals import events
from chalicelib.runtime import aws
from ops import events as ops_events
from ops.common import OpsError
from tests.conftest import EVENT_BUS_NAME
from tests.events_support import Subscriber
from tests.test_ops_cli import run_ops
from tests.test_ops_config import VPC, bootstrapped

RESOURCES = ops_events.EventResources(EVENT_BUS_NAME)


@pytest.fixture
def bus(aws_env):
    ops_events.reconcile_event_resources(aws.client("events"), aws.client("sqs"), RESOURCES)
    return aws.client("events")


def put(bus, code: str, at: datetime) -> None:
    detail = {"code": code, "eventId": code, "status": "PENDING"}
    answer = bus.put_events(Entries=[{
        "EventBusName": EVENT_BUS_NAME, "Source": events.SOURCE, "DetailType": "Approval Pending",
        "Detail": json.dumps(detail), "Time": at}])
    assert answer["FailedEntryCount"] == 0


def codes(subscriber: Subscriber) -> list[str]:
    return sorted(event["detail"]["code"] for event in subscriber.drain(settle_seconds=0.3))


def test_a_replay_reaches_only_the_named_rule_and_only_the_period(bus):
    purchasing = Subscriber(EVENT_BUS_NAME, "purchasing")
    finance = Subscriber(EVENT_BUS_NAME, "finance")
    start = datetime(2026, 12, 1, tzinfo=UTC)
    for number in range(3):
        put(bus, f"RP-{number}", start + timedelta(hours=number))
    assert codes(purchasing) == codes(finance) == ["RP-0", "RP-1", "RP-2"]
    purchasing.received.clear()
    finance.received.clear()

    started = ops_events.replay_to_rule(bus, RESOURCES, rule="finance",
                                        since=start + timedelta(minutes=30),
                                        until=start + timedelta(hours=2))
    assert ops_events.wait_for_replay(bus, started["ReplayName"], seconds=10,
                                      sleep=lambda s: None) == "COMPLETED"
    replayed = finance.drain(settle_seconds=0.5)
    assert sorted(e["detail"]["code"] for e in replayed) == ["RP-1"]
    assert replayed[0]["replay-name"] == started["ReplayName"]
    assert purchasing.drain(settle_seconds=0.3) == []
    described = bus.describe_replay(ReplayName=started["ReplayName"])
    assert described["Destination"]["FilterArns"] == [
        bus.describe_rule(Name="finance", EventBusName=EVENT_BUS_NAME)["Arn"]]


def test_a_rule_that_is_not_a_consumer_is_refused_naming_the_consumers(bus):
    Subscriber(EVENT_BUS_NAME, "purchasing")
    Subscriber(EVENT_BUS_NAME, "ops-notices", source=events.OPERATIONS_SOURCE)
    now = datetime.now(UTC)
    with pytest.raises(OpsError) as refused:
        ops_events.replay_to_rule(bus, RESOURCES, rule="ops-notices",
                                  since=now - timedelta(days=1), until=now)
    assert "no rule 'ops-notices'" in str(refused.value)
    assert "the rules that do: purchasing" in str(refused.value)
    with pytest.raises(OpsError, match="--since must be before --until"):
        ops_events.replay_to_rule(bus, RESOURCES, rule="purchasing", since=now, until=now)
    assert bus.list_replays()["Replays"] == []


def test_the_commands_name_the_rule_and_the_consumers(empty_aws, capsys, tmp_path):
    config = bootstrapped(tmp_path, stage_settings=VPC)
    bus_name = "jinrun-approval-events-dev"
    bus = aws.client("events")
    purchasing = Subscriber(bus_name, "purchasing")
    finance = Subscriber(bus_name, "finance")
    Subscriber(bus_name, "ops-notices", source=events.OPERATIONS_SOURCE)
    capsys.readouterr()

    sqs = aws.client("sqs")
    sqs.send_message(QueueUrl=sqs.get_queue_url(QueueName=f"{bus_name}-dlq")["QueueUrl"],
                     MessageBody="{}")
    status, out, _ = run_ops(capsys, "events", "replay-dlq", "--stage", "dev",
                             "--config", config, "--dry-run")
    assert status == 0
    assert (f"consumers that would see the replayed events (rules on {bus_name}): finance,"
            " purchasing") in out

    detail = json.dumps({"code": "RP-CLI", "eventId": "RP-CLI", "status": "PENDING"})
    bus.put_events(Entries=[{"EventBusName": bus_name, "Source": events.SOURCE,
                             "DetailType": "Approval Pending", "Detail": detail,
                             "Time": datetime(2026, 12, 1, 8, tzinfo=UTC)}])
    assert codes(purchasing) == codes(finance) == ["RP-CLI"]
    purchasing.received.clear()
    finance.received.clear()
    status, out, _ = run_ops(capsys, "events", "replay", "--stage", "dev", "--config", config,
                             "--since", "2026-12-01T00:00:00Z", "--until", "2026-12-02T00:00:00Z",
                             "--rule", "purchasing", "--wait", "10")
    assert status == 0, out
    assert "to rule purchasing only; no other consumer sees them" in out
    assert out.rstrip().endswith(": COMPLETED")
    assert codes(purchasing) == ["RP-CLI"]
    assert finance.drain(settle_seconds=0.3) == []


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-01-31T00:00:00Z", datetime(2026, 1, 31, tzinfo=UTC)),
    ("2026-01-31T08:00:00+08:00", datetime(2026, 1, 31, tzinfo=UTC)),
    ("2026-01-31T00:00:00", datetime(2026, 1, 31, tzinfo=UTC)),
    ("1769817600000", datetime(2026, 1, 31, tzinfo=UTC)),
])
def test_times_are_iso_8601_or_epoch_ms(text, expected):
    assert ops_events.parse_moment(text) == expected


def test_a_time_that_is_no_time_is_a_clear_error():
    with pytest.raises(OpsError, match="is not a time"):
        ops_events.parse_moment("yesterday")
