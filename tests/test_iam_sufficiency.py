"""IAM proven sufficient: each function's policy file, attached to an IAM user of a moto server
that enforces IAM (``INITIAL_NO_AUTH_ACTION_COUNT``), lets that function's code run every one of
its flows under the user's keys; and one action taken out of a policy makes its flow fail.

The flows are tests/test_deploy.py's ``FUNCTIONS`` entries (send, cancel, status, token,
callbacks, a stream batch to EventBridge, the stuck search), whose setup runs as an admin and whose
recorded part runs as the function. For the events function, what the Lambda service does with
its role is run too: read the approvals stream, and put a failed batch on the dead-letter queue.

What moto cannot tell: it compares the action with the caller's policies, but for DynamoDB,
Secrets Manager and EventBridge it evaluates every request against the resource ``*`` (only SQS,
IAM, STS and S3 name their resource), so those statements are checked here for their actions
only (their resources widened to ``*``) and their resources by tests/test_deploy.py. Conditions
other than ``StringEquals`` are ignored by moto (docs/operations.md, "What a rehearsal cannot
prove").

Starts its own moto server process (enforcement must not reach the other tests): ``e2e``.
"""
from __future__ import annotations

import contextlib
import json
import os
import urllib.request
from pathlib import Path

import boto3
import pytest

from chalicelib.runtime import aws, settings
from ops.policies import function_policy, render, without_action
from ops.stage_config import REQUIRED_NAMES, load_stage
from tests.conftest import INBOUND, INBOUND_ROTATED, OUTBOUND, TOKEN_KEYS, simulator
from tests.moto_server import MotoServer
from tests.test_deploy import FUNCTIONS, ROOT

pytestmark = pytest.mark.e2e

ACCOUNT = "123456789012"  # moto's default account
REGION = "us-east-1"
STAGE = "dev"
# The requests moto answers before it enforces IAM: CreateUser, PutUserPolicy, CreateAccessKey
# of the admin who sets up each test's world.
ADMIN_SETUP_REQUESTS = 3
ALLOW_ALL = {"Version": "2012-10-17",
             "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
# Services whose requests moto authorizes against their real resource ARN; every other one it
# authorizes against "*".
RESOURCE_AWARE = {"sqs", "iam", "sts", "s3"}
# Their actions that moto still authorizes against "*": it finds the queue only from a QueueUrl,
# and GetQueueUrl names the queue by QueueName.
AUTHORIZED_AGAINST_STAR = {"sqs:GetQueueUrl"}


def as_moto_checks_it(policy: dict) -> dict:
    """The policy as moto can evaluate it: a statement on a service moto authorizes against "*"
    gets the resource "*" (its actions unchanged), or it would never match anything."""
    checked = json.loads(json.dumps(policy))
    for statement in list(checked["Statement"]):
        actions = statement["Action"] if isinstance(statement["Action"], list) else [
            statement["Action"]]
        if {action.split(":")[0] for action in actions} - RESOURCE_AWARE:
            statement["Resource"] = "*"
        elif set(actions) & AUTHORIZED_AGAINST_STAR:
            checked["Statement"].append({**statement, "Sid": f"{statement.get('Sid', '')}Star",
                                         "Action": sorted(set(actions)
                                                          & AUTHORIZED_AGAINST_STAR),
                                         "Resource": "*"})
    return checked


@pytest.fixture(scope="module")
def enforcing_moto():
    server = MotoServer(env={"INITIAL_NO_AUTH_ACTION_COUNT": str(ADMIN_SETUP_REQUESTS)}).start()
    yield server
    server.stop()


class IamWorld:
    """One test's moto: an admin (set up in the requests moto answers unauthenticated), the
    stage's tables, secrets and dead-letter queue, and IAM users made on request."""

    def __init__(self, url: str, monkeypatch):
        self.url = url
        self._monkeypatch = monkeypatch
        self.admin = self._first_user()
        self.use(self.admin)

    def _post(self, path: str, body: bytes = b"") -> None:
        request = urllib.request.Request(f"{self.url}{path}", data=body, method="POST",
                                         headers={"Content-Type": "text/plain"})
        with urllib.request.urlopen(request, timeout=10):
            pass

    def _first_user(self) -> dict:
        self._post("/moto-api/reset")
        self._post("/moto-api/reset-auth", str(ADMIN_SETUP_REQUESTS).encode())
        return self.user("admin", ALLOW_ALL, keys={"aws_access_key_id": "testing",
                                                   "aws_secret_access_key": "testing"})

    def user(self, name: str, policy: dict, keys: dict | None = None) -> dict:
        iam = boto3.client("iam", endpoint_url=self.url, region_name=REGION,
                           **(keys or self.admin))
        iam.create_user(UserName=name)
        iam.put_user_policy(UserName=name, PolicyName=name, PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return {"aws_access_key_id": key["AccessKeyId"],
                "aws_secret_access_key": key["SecretAccessKey"]}

    def use(self, keys: dict) -> None:
        """Every client made from now on (the app's, the tests') signs with ``keys``; nothing
        cached from before is used (a fresh container)."""
        import app as gateway_app

        self._monkeypatch.setenv("AWS_ACCESS_KEY_ID", keys["aws_access_key_id"])
        self._monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", keys["aws_secret_access_key"])
        aws.reset()
        gateway_app._secrets = None
        gateway_app._zeyi.clear()

    @contextlib.contextmanager
    def as_user(self, keys: dict):
        self.use(keys)
        try:
            yield
        finally:
            self.use(self.admin)


@pytest.fixture
def world(enforcing_moto, monkeypatch):
    """The dev stage's names, on the enforcing moto server, set up by its admin."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", enforcing_moto.url)
    stage = load_stage(STAGE, ROOT / ".chalice" / "config.json")
    for name in REQUIRED_NAMES:
        monkeypatch.setenv(name, stage.setting(name))
    world = IamWorld(enforcing_moto.url, monkeypatch)
    from chalicelib.runtime.tables import ensure_tables

    ensure_tables(aws.client("dynamodb"), stage.setting(settings.APPROVALS_TABLE),
                  stage.setting(settings.NONCES_TABLE))
    for name, value in {settings.OUTBOUND_SECRET_ID: OUTBOUND,
                        settings.INBOUND_SECRET_ID: {"credentials": [INBOUND, INBOUND_ROTATED]},
                        settings.TOKEN_SECRET_ID: TOKEN_KEYS}.items():
        aws.client("secretsmanager").create_secret(Name=stage.setting(name),
                                                   SecretString=json.dumps(value))
    monkeypatch.setenv(settings.ATTACHMENTS_BUCKET, stage.setting(settings.ATTACHMENTS_BUCKET))
    monkeypatch.setenv(settings.PUBLIC_BASE_URL, "https://approvals.jinrun.example")
    aws.client("s3").create_bucket(Bucket=stage.setting(settings.ATTACHMENTS_BUCKET))
    world.dead_letters = aws.client("sqs").create_queue(
        QueueName=f"{stage.setting(settings.EVENT_BUS_NAME)}-dlq")["QueueUrl"]
    world.stage = stage
    yield world
    aws.reset()


@pytest.fixture
def gateway(world, tmp_path):
    from chalice.test import Client

    import app as gateway_app

    project = tmp_path / "project"
    (project / ".chalice").mkdir(parents=True)
    (project / ".chalice" / "config.json").write_text(json.dumps(
        {"version": "2.0", "app_name": "jinrun-approval-gateway", "stages": {"test": {}}}))
    with Client(gateway_app.app, stage_name="test", project_dir=str(project)) as client:
        yield client
    world.use(world.admin)


def run_as_function(world, gateway, monkeypatch, function: str, policy: dict) -> None:
    """The function's flows, its own part under a user holding ``policy`` as moto checks it."""
    import tests.test_deploy

    monkeypatch.setattr(tests.test_deploy, "UPLOAD_AS", world.admin)
    keys = world.user(f"fn-{function}", as_moto_checks_it(render(
        policy, partition="aws", region=REGION, account=ACCOUNT)))
    with simulator() as zeyi:
        monkeypatch.setenv("ZEYI_BASE_URL", zeyi.url)
        FUNCTIONS[function].exercise(gateway, zeyi, lambda: world.as_user(keys))
        if function == "publish_approval_events":
            with world.as_user(keys):
                lambda_service_with_the_role(world)


def lambda_service_with_the_role(world) -> None:
    """What Lambda does with the events function's role: read the approvals stream (the
    subscription), and put a batch that failed for good on the dead-letter queue."""
    with world.as_user(world.admin):
        arn = aws.client("dynamodb").describe_table(
            TableName=os.environ[settings.APPROVALS_TABLE])["Table"]["LatestStreamArn"]
    streams = aws.client("dynamodbstreams")
    assert arn in {s["StreamArn"] for s in streams.list_streams()["Streams"]}
    shard = streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"][0]
    iterator = streams.get_shard_iterator(StreamArn=arn, ShardId=shard["ShardId"],
                                          ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
    assert streams.get_records(ShardIterator=iterator)["Records"]
    aws.client("sqs").send_message(QueueUrl=world.dead_letters, MessageBody=json.dumps(
        {"requestContext": {"condition": "RetryAttemptsExhausted"}}))


@pytest.mark.parametrize("function", sorted(FUNCTIONS))
def test_each_function_runs_every_flow_under_its_own_policy(function, world, gateway,
                                                            monkeypatch):
    run_as_function(world, gateway, monkeypatch, function,
                    function_policy(world.stage, function))


def test_the_enforcement_has_teeth_a_missing_action_fails_its_flow(world, gateway, monkeypatch,
                                                                   logs):
    """get_approval without dynamodb:Query: the status flow fails, as it would in AWS."""
    policy = without_action(function_policy(world.stage, "get_approval"), "dynamodb:Query")
    with pytest.raises(AssertionError) as failed:
        run_as_function(world, gateway, monkeypatch, "get_approval", policy)
    assert "INTERNAL_ERROR" in str(failed.value)
    assert any("not authorized to perform: dynamodb:Query" in line.get("exception", "")
               for line in logs())


def test_a_transaction_is_authorized_as_each_of_its_elements(world):
    """As in AWS, a TransactWriteItems needs the action of each element (IAM has no
    TransactWriteItems action): Put and Update allowed, it goes through; Update missing, denied."""
    table = os.environ[settings.NONCES_TABLE]
    both = world.user("both", as_moto_checks_it({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["dynamodb:PutItem", "dynamodb:UpdateItem"],
         "Resource": "arn:aws:dynamodb:us-east-1:123456789012:table/x"}]}))
    put_only = world.user("put-only", as_moto_checks_it({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["dynamodb:PutItem"], "Resource": "*"}]}))
    key = next(iter(aws.client("dynamodb").describe_table(TableName=table)["Table"][
        "KeySchema"]))["AttributeName"]

    def transaction(suffix: str) -> None:
        aws.client("dynamodb").transact_write_items(TransactItems=[
            {"Put": {"TableName": table, "Item": {key: {"S": f"put-{suffix}"}}}},
            {"Update": {"TableName": table, "Key": {key: {"S": f"update-{suffix}"}},
                        "UpdateExpression": "SET n = :n",
                        "ExpressionAttributeValues": {":n": {"N": "1"}}}}])

    with world.as_user(both):
        transaction("a")
    with world.as_user(put_only), pytest.raises(Exception) as denied:
        transaction("b")
    assert "not authorized to perform: dynamodb:UpdateItem" in str(denied.value)


def test_the_sqs_statement_is_checked_with_its_resource(world):
    """moto evaluates SQS requests against the queue's ARN: the events function's dead-letter
    statement lets it send to its own queue and to no other."""
    keys = world.user("fn-events", render(function_policy(world.stage,
                                                          "publish_approval_events"),
                                          partition="aws", region=REGION, account=ACCOUNT))
    other = aws.client("sqs").create_queue(QueueName="someone-elses-queue")["QueueUrl"]
    with world.as_user(keys):
        aws.client("sqs").send_message(QueueUrl=world.dead_letters, MessageBody="{}")
        with pytest.raises(Exception) as denied:
            aws.client("sqs").send_message(QueueUrl=other, MessageBody="{}")
    assert "AccessDenied" in str(denied.value)


# -- the operators' policy (infra/operator-policy.json, docs/operations.md) ------------------------

def _operator_world(world, tmp_path, monkeypatch) -> tuple[Path, str]:
    """As an admin: the dev stage bootstrapped (in a copy of .chalice, with VPC settings) and
    an approval."""
    import shutil

    from ops.bootstrap import main as bootstrap_main

    copy = tmp_path / "project" / ".chalice"
    shutil.copytree(ROOT / ".chalice", copy, ignore=shutil.ignore_patterns("deploy*"))
    config = json.loads((copy / "config.json").read_text(encoding="utf-8"))
    config["stages"][STAGE].update(subnet_ids=["subnet-0123456789abcdef0"],
                                   security_group_ids=["sg-0123456789abcdef0"])
    (copy / "config.json").write_text(json.dumps(config), encoding="utf-8")
    monkeypatch.setenv("AWS_REGION", REGION)
    assert bootstrap_main(["--stage", STAGE, "--config", str(copy / "config.json")]) == 0
    stage = load_stage(STAGE, copy / "config.json")
    from chalicelib.approvals.store import DynamoDBApprovalStore

    store = DynamoDBApprovalStore(aws.client("dynamodb"), stage.setting(
        settings.APPROVALS_TABLE), stage.setting(settings.NONCES_TABLE))
    store.claim("OPS-1", {"code": "OPS-1"}, 120)
    return copy / "config.json", "OPS-1"


OPERATOR_COMMANDS = [  # (argv, the exit status that says it did its work)
    (["config", "check"], 0),
    (["approvals", "list"], 0),
    (["approvals", "show", "OPS-1"], 0),
    (["secrets", "list-inbound"], 0),
    (["secrets", "add-inbound"], 0),
    (["secrets", "rotate-token-key"], 0),
    (["secrets", "last-seen", "some-key"], 0),
    # Not `events configure-mapping`: moto's signature check rejects Lambda's
    # ListEventSourceMappings with a query string (SignatureDoesNotMatch), whoever signs it.
    (["events", "replay-dlq"], 3),
    (["approvals", "resolve", "OPS-1", "--status", "FAILED", "--reason", "rehearsal", "--yes"],
     0),
]


def run_operator_commands(world, policy: dict, config: Path, capsys,
                          commands=OPERATOR_COMMANDS) -> list[tuple]:
    from ops.cli import main as ops_main

    keys = world.user("operator", as_moto_checks_it(render(
        policy, partition="aws", region=REGION, account=ACCOUNT)))
    outcomes = []
    with world.as_user(keys):
        for argv, expected in commands:
            capsys.readouterr()
            status = ops_main([*argv, "--stage", STAGE, "--config", str(config)])
            out, err = capsys.readouterr()
            outcomes.append((" ".join(argv[:2]), status, expected, out + err))
    return outcomes


def test_the_operator_commands_run_under_the_documented_operator_policy(world, tmp_path,
                                                                        monkeypatch, capsys):
    from ops.policies import operator_policy

    config, _ = _operator_world(world, tmp_path, monkeypatch)
    outcomes = run_operator_commands(world, operator_policy(world.stage), config, capsys)
    for command, status, expected, output in outcomes:
        assert "not allowed" not in output, (command, output)
        assert status == expected, (command, output)


def test_the_operator_policy_has_teeth(world, tmp_path, monkeypatch, capsys):
    """Without secretsmanager:PutSecretValue the rotation is refused, naming the call."""
    from ops.policies import operator_policy

    config, _ = _operator_world(world, tmp_path, monkeypatch)
    policy = without_action(operator_policy(world.stage), "secretsmanager:PutSecretValue")
    outcomes = {command: (status, output) for command, status, _, output
                in run_operator_commands(world, policy, config, capsys, commands=[
                    (["secrets", "rotate-token-key"], 0)])}
    status, output = outcomes["secrets rotate-token-key"]
    assert status == 1 and "not allowed: PutSecretValue was denied" in output
