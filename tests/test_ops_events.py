"""The approval events' operator side against moto server: the bootstrap creates the bus, its
archive and the dead-letter queue; ``config fill-stream`` names the approvals stream where
chalice deploy reads it; ``config check`` refuses a stage whose stream or event resources are
missing; ``events configure-mapping`` (run by ``ops deploy``) gives chalice's stream subscription
its failure handling. (Replaying the dead-letter queue: tests/test_events_delivery.py.)"""
from __future__ import annotations

import io
import json
import zipfile

import pytest

from chalicelib.approvals import events
from chalicelib.runtime import aws
from ops.bootstrap import main as bootstrap_main
from ops.events import EventResources
from ops.stage_config import load_stage
from tests.test_ops_cli import run_ops, stage_config
from tests.test_ops_config import VPC, bootstrapped, problems_of

BUS = "jinrun-approval-events-dev"


def stream_of(table: str) -> str:
    return aws.client("dynamodb").describe_table(TableName=table)["Table"]["LatestStreamArn"]


def test_the_bootstrap_creates_the_bus_its_archive_and_the_dead_letter_queue(empty_aws, capsys,
                                                                              tmp_path):
    config = stage_config(tmp_path)
    assert bootstrap_main(["--stage", "dev", "--config", str(config), "--token-key",
                           "generate"]) == 1  # the Zeyi secrets are still missing
    out = capsys.readouterr().out
    assert f"created event bus {BUS}" in out
    assert f"created archive {BUS} of every approval event (365 days)" in out
    assert f"created queue {BUS}-dlq (the approval events' dead letters)" in out
    bridge, sqs = aws.client("events"), aws.client("sqs")
    bus = bridge.describe_event_bus(Name=BUS)
    archive = bridge.describe_archive(ArchiveName=BUS)
    assert archive["EventSourceArn"] == bus["Arn"] and archive["RetentionDays"] == 365
    assert json.loads(archive["EventPattern"]) == {"source": [events.SOURCE]}
    url = sqs.get_queue_url(QueueName=f"{BUS}-dlq")["QueueUrl"]
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert attributes["MessageRetentionPeriod"] == str(14 * 24 * 3600)
    assert sqs.list_queue_tags(QueueUrl=url)["Tags"] == {"app": "jinrun-approval-gateway",
                                                         "stage": "dev"}
    # A second run finds them.
    bootstrap_main(["--stage", "dev", "--config", str(config)])
    assert "created" not in capsys.readouterr().out


def test_fill_stream_names_the_tables_stream_in_the_stage(empty_aws, capsys, tmp_path):
    config = stage_config(tmp_path)
    status, _, err = run_ops(capsys, "config", "fill-stream", "--stage", "dev", "--config", config)
    assert status == 1
    assert err == ("error: table test-approvals does not exist in us-east-1: create it with "
                   "`python -m ops.bootstrap --stage dev`\n")
    bootstrap_main(["--stage", "dev", "--config", str(config)])
    capsys.readouterr()
    stream = stream_of("test-approvals")
    # The bootstrap names it already; fill-stream alone does the same (a stream turned off and
    # on again).
    assert load_stage("dev", config).setting("APPROVALS_STREAM_ARN") == stream
    from ops.events import write_stream_arn

    write_stream_arn(load_stage("dev", config), "")
    status, out, _ = run_ops(capsys, "config", "fill-stream", "--stage", "dev", "--config", config)
    assert status == 0 and out.startswith(f"stage dev: set APPROVALS_STREAM_ARN {stream} in ")
    assert load_stage("dev", config).setting("APPROVALS_STREAM_ARN") == stream
    # What chalice deploy then subscribes the function to: it imports app.py with the stage's
    # environment.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("APPROVALS_STREAM_ARN", stream)
        from chalicelib.runtime.settings import approvals_stream_arn

        assert approvals_stream_arn() == stream
    status, out, _ = run_ops(capsys, "config", "fill-stream", "--stage", "dev", "--config", config)
    assert status == 0 and out.startswith("stage dev: already had APPROVALS_STREAM_ARN")
    status, _, err = run_ops(capsys, "config", "fill-stream", "--stage", "local")
    assert status == 1 and "the sandbox finds its stream itself" in err


def test_config_check_wants_the_current_stream_and_the_event_resources(empty_aws, capsys,
                                                                      tmp_path):
    config = bootstrapped(tmp_path, stage_settings=VPC)
    capsys.readouterr()
    status, out, _ = run_ops(capsys, "config", "check", "--stage", "dev", "--config", config)
    assert status == 0, out
    # The stream was turned off and on again (its ARN changed), and the bus was deleted.
    stage = load_stage("dev", config)
    stale = stage.setting("APPROVALS_STREAM_ARN")
    from ops.events import write_stream_arn

    write_stream_arn(stage, stale + "-old")
    aws.client("events").delete_archive(ArchiveName=BUS)
    aws.client("events").delete_event_bus(Name=BUS)
    status, out, _ = run_ops(capsys, "config", "check", "--stage", "dev", "--config", config)
    assert status == 1
    assert problems_of(out) == [
        f"APPROVALS_STREAM_ARN names {stale}-old, but table test-approvals's stream is {stale} "
        "(`python -m ops config fill-stream --stage dev` writes it)",
        f"event bus {BUS} does not exist"]


def _function(name: str) -> str:
    lambda_client = aws.client("lambda")
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("app.py", "def handler(event, context):\n    return None\n")
    role = aws.client("iam").create_role(RoleName="events-role", AssumeRolePolicyDocument="{}")
    return lambda_client.create_function(
        FunctionName=name, Runtime="python3.11", Role=role["Role"]["Arn"], Handler="app.handler",
        Code={"ZipFile": archive.getvalue()})["FunctionArn"]


def test_configure_mapping_gives_chalices_subscription_its_failure_handling(empty_aws, capsys,
                                                                            tmp_path):
    config = bootstrapped(tmp_path, stage_settings=VPC)
    stage = load_stage("dev", config)
    function = stage.function_name(events.FUNCTION_NAME)
    capsys.readouterr()
    status, _, err = run_ops(capsys, "events", "configure-mapping", "--stage", "dev",
                             "--config", config)
    assert status == 1 and err == (
        f"error: {function} is not subscribed to {stage.setting('APPROVALS_STREAM_ARN')}: deploy"
        " the stage first (`python -m ops deploy --stage dev`)\n")

    _function(function)
    lambda_client = aws.client("lambda")
    # What chalice deploy creates: batch size and starting position only.
    uuid = lambda_client.create_event_source_mapping(
        EventSourceArn=stage.setting("APPROVALS_STREAM_ARN"), FunctionName=function,
        BatchSize=events.STREAM_BATCH_SIZE,
        StartingPosition=events.STREAM_STARTING_POSITION)["UUID"]
    status, out, _ = run_ops(capsys, "events", "configure-mapping", "--stage", "dev",
                             "--config", config)
    assert status == 0
    assert out == (f"{function}: its stream subscription {uuid} now reports partial failures, "
                   f"bisects, retries 8 times and sends what fails to {BUS}-dlq\n")
    mapping = lambda_client.get_event_source_mapping(UUID=uuid)
    dead_letters = aws.client("sqs").get_queue_url(QueueName=f"{BUS}-dlq")["QueueUrl"]
    arn = aws.client("sqs").get_queue_attributes(
        QueueUrl=dead_letters, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    assert {name: mapping.get(name) for name in events.STREAM_MAPPING} == events.STREAM_MAPPING
    assert mapping["DestinationConfig"] == {"OnFailure": {"Destination": arn}}
    status, out, _ = run_ops(capsys, "events", "configure-mapping", "--stage", "dev",
                             "--config", config)
    assert status == 0 and "already reports partial failures" in out


def test_every_stage_names_its_bus_and_the_dead_letter_queue_follows(tmp_path):
    for name in ("local", "dev", "prod"):
        stage = load_stage(name)
        resources = EventResources.of(stage)
        assert resources.bus == f"jinrun-approval-events-{name}"
        assert resources.dead_letter_queue == f"jinrun-approval-events-{name}-dlq"
        assert len(resources.archive) <= 48  # EventBridge's limit on archive names


def test_ops_deploy_sets_the_failure_handling_once_chalice_has_deployed(empty_aws, capsys,
                                                                         tmp_path, monkeypatch):
    import ops.deploy as deploy_module

    config = bootstrapped(tmp_path, stage_settings=VPC)
    stage = load_stage("dev", config)
    function = stage.function_name(events.FUNCTION_NAME)
    ran = []

    class Deployed:
        returncode = 0

    def chalice_deploy(command, **kwargs):
        # What chalice deploy does for the events function: the function, and a subscription to
        # the stream the stage names, with batch size and starting position only.
        ran.append(command)
        _function(function)
        aws.client("lambda").create_event_source_mapping(
            EventSourceArn=kwargs["env"].get("APPROVALS_STREAM_ARN")
            or stage.setting("APPROVALS_STREAM_ARN"), FunctionName=function, BatchSize=100,
            StartingPosition="TRIM_HORIZON")
        return Deployed()

    monkeypatch.setattr(deploy_module.subprocess, "run", chalice_deploy)
    capsys.readouterr()
    status, out, _ = run_ops(capsys, "deploy", "--stage", "dev", "--config", config)
    assert status == 0 and ran and ran[0][-3:] == ["deploy", "--stage", "dev"]
    assert f"{function}: its stream subscription" in out and "now reports partial failures" in out
    [mapping] = aws.client("lambda").list_event_source_mappings(
        FunctionName=function)["EventSourceMappings"]
    assert mapping["BisectBatchOnFunctionError"] is True
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]


def test_replay_of_an_empty_queue_says_nothing_to_do_in_its_own_words(empty_aws, capsys,
                                                                      tmp_path):
    """Exit 3 (nothing to do), one line of its own, none of the gateway's JSON lines."""
    config = bootstrapped(tmp_path, stage_settings=VPC)
    status, out, err = run_ops(capsys, "events", "replay-dlq", "--stage", "dev",
                               "--config", config)
    assert (status, out, err) == (3, "jinrun-approval-events-dev-dlq is empty: nothing to "
                                     "replay\n", "")


def test_the_gateways_json_lines_stay_out_of_a_commands_output(capsys, logs):
    """What the chalicelib code a command runs logs or measures is for CloudWatch."""
    from chalicelib.runtime import metrics
    from chalicelib.runtime.logs import logger
    from ops.common import run

    def action():
        logger.warning("approval event not published", extra={"code": "X"})
        metrics.emit([metrics.Metric("EventsPublished", metrics.MetricUnit.Count, 1)])
        print("1 message(s) replayed")
        return 0

    capsys.readouterr()
    assert run(action) == 0
    out, err = capsys.readouterr()
    assert (out, err) == ("1 message(s) replayed\n", "")  # no EMF metric line
    assert logs() == []  # no log line
    # and only while the command runs
    logger.warning("after")
    assert [line["message"] for line in logs()] == ["after"]
