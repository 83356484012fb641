"""The first deploy, rehearsed against moto server as an operator runs it (docs/operations.md,
"First deploy"): bootstrap, inbound credential, VPC settings, config check, ``python -m ops
deploy --stage prod`` (the real ``chalice deploy``, in a copy of the project), as far as moto
goes; then a rerun after the failure, which must converge.

moto cannot import a REST API (chalice's ImportRestApi answers 500), so every deploy here stops
there, after the functions, roles, policies, layer, stream subscription and schedule: exactly the
half-finished first deploy docs/operations.md tells the operator how to finish. Nor can moto run
infra/vpc-egress.yaml (``Fn::Select`` of ``Fn::GetAZs``), so the egress stack is a stand-in with
the same outputs over a VPC made with EC2 calls. What a rehearsal cannot prove is listed in
docs/operations.md.

Starts chalice processes (``e2e``); about 20 s with chalice's dependency cache in .chalice.
"""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import boto3
import pytest

from ops.bootstrap import main as bootstrap_main
from ops.cli import main as ops_main
from ops.stage_config import load_stage
from tests.conftest import OUTBOUND

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
STAGE = "prod"
FUNCTIONS = ["api_handler", "send_approval", "cancel_approval", "get_approval",
             "publish_approval_events", "find_stuck_approvals"]
IN_VPC = {"api_handler", "send_approval", "cancel_approval"}


def _project(tmp_path: Path) -> Path:
    """What a fresh clone holds, plus chalice's cache of built dependencies when there is one
    (chalice would otherwise download the Lambda wheels again)."""
    project = tmp_path / "clone"
    project.mkdir()
    shutil.copy(ROOT / "app.py", project / "app.py")
    shutil.copy(ROOT / "requirements.txt", project / "requirements.txt")
    shutil.copytree(ROOT / "chalicelib", project / "chalicelib",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / ".chalice", project / ".chalice",
                    ignore=shutil.ignore_patterns("deployed"))
    return project / ".chalice" / "config.json"


def _client(service: str):
    return boto3.client(service)


def _egress_stack_stand_in() -> None:
    """infra/vpc-egress.yaml's outputs over a VPC made directly (moto cannot run the template)."""
    ec2 = _client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.40.0.0/16")["Vpc"]["VpcId"]
    subnets = [ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.40.{i}.0/24")["Subnet"]["SubnetId"]
               for i in (1, 2)]
    group = ec2.create_security_group(GroupName="egress", Description="egress",
                                      VpcId=vpc)["GroupId"]
    allocation = ec2.allocate_address(Domain="vpc")["AllocationId"]
    template = {"Resources": {"Nothing": {"Type": "AWS::CloudFormation::WaitConditionHandle"}},
                "Outputs": {"PrivateSubnetIds": {"Value": ",".join(subnets)},
                            "SecurityGroupId": {"Value": group},
                            "EgressAllocationIds": {"Value": allocation}}}
    _client("cloudformation").create_stack(StackName=f"jinrun-gateway-egress-{STAGE}",
                                           TemplateBody=json.dumps(template))


def _ops(capfd, *argv) -> tuple[int, str]:
    capfd.readouterr()
    status = ops_main([str(a) for a in argv])
    out, err = capfd.readouterr()
    return status, out + err


def walk_to_ready(config: Path, capfd, monkeypatch) -> None:
    """docs/operations.md's checklist up to "ready to deploy", each step's last line checked."""
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(OUTBOUND)))
    assert bootstrap_main(["--stage", STAGE, "--config", str(config), "--token-key", "generate",
                           "--outbound-secret-file", "-"]) == 1  # the inbound secret is Jinrun's
    status, out = _ops(capfd, "secrets", "add-inbound", "--stage", STAGE, "--config", config)
    assert status == 0, out
    assert _ops(capfd, "config", "check", "--stage", STAGE, "--config", config)[0] == 1  # VPC
    _egress_stack_stand_in()
    status, out = _ops(capfd, "config", "fill-vpc", "--stage", STAGE, "--config", config)
    assert status == 0 and "egress IPs for Zeyi's whitelist: " in out, out
    status, out = _ops(capfd, "config", "check", "--stage", STAGE, "--config", config)
    assert status == 0 and "ready to deploy by the chalice path" in out, out


def deployed_state(stage) -> dict:
    lambda_client, iam = _client("lambda"), _client("iam")
    functions = {f["FunctionName"]: f for f in lambda_client.list_functions()["Functions"]}
    roles = {r["RoleName"] for r in iam.list_roles()["Roles"]}
    mappings = lambda_client.list_event_source_mappings()["EventSourceMappings"]
    return {"functions": functions, "roles": roles, "mappings": mappings}


def test_the_first_deploy_rehearsed_as_far_as_moto_goes_and_a_rerun_converges(
        empty_aws, tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    config = _project(tmp_path)
    walk_to_ready(config, capfd, monkeypatch)
    stage = load_stage(STAGE, config)

    status, out = _ops(capfd, "deploy", "--stage", STAGE, "--config", config)
    assert status != 0
    assert "ImportRestApi" in out, out  # where moto stops (docs: what a rehearsal cannot prove)
    assert "was not written; what it created stays and is reused" in out
    assert not (config.parent / "deployed" / f"{STAGE}.json").exists()

    first = deployed_state(stage)
    names = {stage.function_name(function): function for function in FUNCTIONS}
    assert set(first["functions"]) == set(names)
    iam = _client("iam")
    for name, function in names.items():
        deployed = first["functions"][name]
        # Its own role, holding exactly its policy file.
        role = deployed["Role"].rsplit("/", 1)[1]
        (policy_name,) = iam.list_role_policies(RoleName=role)["PolicyNames"]
        document = iam.get_role_policy(RoleName=role, PolicyName=policy_name)["PolicyDocument"]
        expected = json.loads((config.parent / stage.function_setting(
            function, "iam_policy_file")).read_text(encoding="utf-8"))
        assert document == expected, name
        subnets = deployed.get("VpcConfig", {}).get("SubnetIds") or []
        assert subnets == (stage.settings["subnet_ids"] if function in IN_VPC else []), name
        assert deployed["Environment"]["Variables"]["ZEYI_BASE_URL"] == "https://gw.shjiuze.cn"
        assert deployed["TracingConfig"]["Mode"] == "Active", name
        reserved = _client("lambda").get_function_concurrency(FunctionName=name)
        assert reserved["ReservedConcurrentExecutions"] == stage.function_setting(
            function, "reserved_concurrency"), name
    # The events function on the stream the bootstrap named, from the start of the stream.
    (mapping,) = first["mappings"]
    assert mapping["EventSourceArn"] == stage.setting("APPROVALS_STREAM_ARN")
    assert mapping["FunctionArn"].endswith(":" + stage.function_name("publish_approval_events"))
    assert (mapping["StartingPosition"], mapping["BatchSize"]) == ("TRIM_HORIZON", 100)
    # The stuck search every 5 minutes.
    rule = _client("events").describe_rule(
        Name=f"{stage.function_name('find_stuck_approvals')}-event")
    assert rule["ScheduleExpression"] == "rate(5 minutes)"
    targets = _client("events").list_targets_by_rule(Rule=rule["Name"])["Targets"]
    assert [t["Arn"].rsplit(":", 1)[1] for t in targets] == [
        stage.function_name("find_stuck_approvals")]
    # What the bootstrap made: the events' bus, archive and dead-letter queue, the log groups.
    assert _client("events").describe_archive(ArchiveName=f"jinrun-approval-events-{STAGE}")
    _client("sqs").get_queue_url(QueueName=f"jinrun-approval-events-{STAGE}-dlq")
    groups = {g["logGroupName"]: g.get("retentionInDays") for g in _client(
        "logs").describe_log_groups(logGroupNamePrefix="/aws/lambda/")["logGroups"]}
    assert {stage.log_group(f): 365 for f in FUNCTIONS}.items() <= groups.items()

    # The rerun after the failure: it reuses everything, and the stream subscription the stopped
    # run left, which AWS would refuse to create twice, is replaced rather than duplicated.
    status, out = _ops(capfd, "deploy", "--stage", STAGE, "--config", config)
    assert status != 0 and "ImportRestApi" in out, out
    assert f"removed the stream subscription {mapping['UUID']}" in out
    again = deployed_state(stage)
    assert set(again["functions"]) == set(first["functions"])
    assert again["roles"] == first["roles"]
    assert len(again["mappings"]) == 1
    # Once chalice has finished, ops deploy gives the subscription its failure handling; the
    # command alone does the same.
    status, out = _ops(capfd, "events", "configure-mapping", "--stage", STAGE, "--config", config)
    assert status == 0 and "now reports partial failures" in out, out


def test_aws_refuses_a_second_subscription_of_one_function_to_one_stream(empty_aws, tmp_path,
                                                                          capfd, monkeypatch):
    """Why the rerun must remove the stopped run's subscription: Lambda answers 409 (moto is
    made to, sandbox.moto_server), so chalice's create would stop every rerun there."""
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    dynamodb, lambda_client = _client("dynamodb"), _client("lambda")
    stream = dynamodb.create_table(
        TableName="t", KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
    )["TableDescription"]["LatestStreamArn"]
    role = _client("iam").create_role(RoleName="r", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    lambda_client.create_function(FunctionName="f", Runtime="python3.11", Role=role,
                                  Handler="app.handler", Code={"ZipFile": _zip()})
    lambda_client.create_event_source_mapping(FunctionName="f", EventSourceArn=stream,
                                              StartingPosition="TRIM_HORIZON")
    with pytest.raises(lambda_client.exceptions.ResourceConflictException):
        lambda_client.create_event_source_mapping(FunctionName="f", EventSourceArn=stream,
                                                  StartingPosition="TRIM_HORIZON")


def _zip() -> bytes:
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("app.py", "def handler(event, context):\n    return None\n")
    return buffer.getvalue()
