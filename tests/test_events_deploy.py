"""The approval events as deployed: infra/resources.yaml, the bootstrap (ops/events.py) and the
stage config name the same bus, archive and dead-letter queue; the stream subscription's failure
handling is the same in the merge template, in ``ops events configure-mapping`` and in the
sandbox's poller (all from chalicelib.approvals.events.STREAM_MAPPING); app.py subscribes the function as
chalicelib.approvals.events says. (``chalice package`` + cfn-lint of the merged template, and the
function's policy: tests/test_deploy.py.)"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from chalice.utils import to_cfn_resource_name

from chalicelib.approvals import events
from chalicelib.runtime import settings
from ops import events as ops_events
from ops.stage_config import load_stage
from tests.test_deploy import load_cfn

ROOT = Path(__file__).resolve().parent.parent
RESOURCES = load_cfn(ROOT / "infra" / "resources.yaml")["Resources"]


def _sub(value, stage: str) -> str:
    return (value["Fn::Sub"] if isinstance(value, dict) else value).replace("${Stage}", stage)


@pytest.mark.parametrize("stage_name", ["dev", "prod"])
def test_the_template_names_what_the_stage_and_the_bootstrap_name(stage_name):
    stage = load_stage(stage_name)
    names = ops_events.EventResources.of(stage)
    bus = RESOURCES["ApprovalEventBus"]
    archive = RESOURCES["ApprovalEventArchive"]["Properties"]
    queue = RESOURCES["ApprovalEventsDeadLetterQueue"]["Properties"]
    assert bus["Type"] == "AWS::Events::EventBus"
    assert _sub(bus["Properties"]["Name"], stage_name) == names.bus == stage.setting(
        settings.EVENT_BUS_NAME)
    assert _sub(archive["ArchiveName"], stage_name) == names.archive
    assert archive["SourceArn"] == {"Fn::GetAtt": "ApprovalEventBus.Arn"}
    assert archive["EventPattern"] == ops_events.ARCHIVE_PATTERN
    assert archive["RetentionDays"] == ops_events.ARCHIVE_RETENTION_DAYS
    assert _sub(queue["QueueName"], stage_name) == names.dead_letter_queue
    assert queue["MessageRetentionPeriod"] == ops_events.DEAD_LETTER_RETENTION_SECONDS
    policy = json.loads((ROOT / ".chalice" / f"policy-{stage_name}-{events.FUNCTION_NAME}.json")
                        .read_text(encoding="utf-8"))
    resources = {r for statement in policy["Statement"] for r in statement["Resource"]}
    assert f"arn:*:events:*:*:event-bus/{names.bus}" in resources
    assert f"arn:*:sqs:*:*:{names.dead_letter_queue}" in resources


def test_the_merge_template_gives_chalices_subscription_the_stream_and_its_failure_handling():
    function = RESOURCES[to_cfn_resource_name(events.FUNCTION_NAME)]
    assert "Type" not in function  # merged into the function chalice package writes
    (name, subscription), = function["Properties"]["Events"].items()
    assert name == to_cfn_resource_name(f"{events.FUNCTION_NAME}-dynamodb-event-source")
    properties = subscription["Properties"]
    assert properties.pop("Stream") == {"Fn::GetAtt": "ApprovalsTable.StreamArn"}
    assert properties.pop("DestinationConfig") == {
        "OnFailure": {"Destination": {"Fn::GetAtt": "ApprovalEventsDeadLetterQueue.Arn"}}}
    assert properties == events.STREAM_MAPPING


def test_the_function_reads_the_stream_as_the_mapping_and_the_poller_expect():
    import app

    (source,) = [s for s in app.app.event_sources if s.name == events.FUNCTION_NAME]
    assert (source.batch_size, source.starting_position) == (events.STREAM_BATCH_SIZE,
                                                            "TRIM_HORIZON")
    assert source.maximum_batching_window_in_seconds == 0
    wanted = ops_events.wanted_mapping("arn:aws:sqs:cn-north-1:1:q")
    assert wanted["DestinationConfig"] == {"OnFailure": {"Destination": "arn:aws:sqs:cn-north-1:1:q"}}
    assert {k: v for k, v in wanted.items() if k != "DestinationConfig"} == events.STREAM_MAPPING


def test_without_a_stream_in_the_stage_the_handler_still_registers_with_a_stand_in(monkeypatch):
    monkeypatch.delenv(settings.APPROVALS_STREAM_ARN, raising=False)
    assert settings.approvals_stream_arn() == settings.STREAM_ARN_UNSET
    monkeypatch.setenv(settings.APPROVALS_STREAM_ARN, "  ")
    assert settings.approvals_stream_arn() == settings.STREAM_ARN_UNSET
