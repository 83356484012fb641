"""``python -m ops config check``, ``config fill-vpc`` and ``deploy`` against moto server: a stage
is ready, or every reason it is not is listed; the VPC settings come from the egress stack; the
deploy path refuses a stage whose calls to Zeyi would leave from IPs off the whitelist."""
from __future__ import annotations

import json

import boto3
import pytest

from chalicelib.runtime import aws
from ops import stage_config as stage_config_module
from ops.bootstrap import main as bootstrap_main
from ops.stage_config import load_stage, vpc_problems
from tests.conftest import INBOUND, OUTBOUND
from tests.test_ops_cli import run_ops, stage_config

VPC = {"subnet_ids": ["subnet-0123456789abcdef0", "subnet-0123456789abcdef1"],
       "security_group_ids": ["sg-0123456789abcdef0"]}


def bootstrapped(tmp_path, **changes):
    """A config copy whose dev stage uses conftest's names, after the bootstrap an operator runs."""
    config = stage_config(tmp_path, **changes)
    outbound, inbound = tmp_path / "outbound.json", tmp_path / "inbound.json"
    outbound.write_text(json.dumps(OUTBOUND), encoding="utf-8")
    inbound.write_text(json.dumps({"credentials": [INBOUND]}), encoding="utf-8")
    assert bootstrap_main(["--stage", "dev", "--config", str(config), "--outbound-secret-file",
                           str(outbound), "--inbound-secret-file", str(inbound),
                           "--token-key", "generate"]) == 0
    # The bootstrap alone (no `config fill-stream`) names the approvals stream in the stage.
    return config


def problems_of(out: str) -> list[str]:
    return [line[4:] for line in out.splitlines() if line.startswith("  - ")]


# -- config check ----------------------------------------------------------------------------------

def test_a_bootstrapped_stage_with_vpc_settings_is_ready(empty_aws, capsys, tmp_path):
    config = bootstrapped(tmp_path, stage_settings=VPC)
    capsys.readouterr()
    status, out, _ = run_ops(capsys, "config", "check", "--stage", "dev", "--config", config)
    assert (status, out) == (0, "stage dev in us-east-1: ready to deploy by the chalice path "
                                "(VPC settings, Zeyi URL, policy files, secrets, tables, stream, "
                                "bus, archive, dead-letter queue, log groups)\n")


def test_an_empty_account_gets_the_whole_list(empty_aws, capsys, tmp_path):
    status, out, err = run_ops(capsys, "config", "check", "--stage", "dev",
                               "--config", stage_config(tmp_path))
    assert status == 1 and err == ""
    assert out.splitlines()[0] == ("stage dev in us-east-1: 16 problem(s) before a deploy by the "
                                   "chalice path")
    problems = problems_of(out)
    assert problems[0].startswith("stage dev has no VPC settings")
    # Each missing thing names the command that creates it.
    bootstrap = "`python -m ops.bootstrap --stage dev"
    assert problems[1:6] == [
        f"secret test/zeyi-outbound does not exist ({bootstrap} --outbound-secret-file -` "
        "stores Zeyi's credential)",
        "secret test/zeyi-inbound does not exist (`python -m ops secrets add-inbound --stage dev "
        "--show` creates it)",
        f"secret test/token-key does not exist ({bootstrap} --token-key generate` creates it)",
        f"table test-approvals does not exist ({bootstrap}` creates or completes it)",
        f"table test-nonces does not exist ({bootstrap}` creates or completes it)"]
    # The approval events' (tests/test_ops_events.py).
    assert problems[6].startswith("APPROVALS_STREAM_ARN is not set")
    assert problems[7:9] == ["event bus jinrun-approval-events-dev does not exist",
                             "queue jinrun-approval-events-dev-dlq does not exist"]
    assert problems[9:] == [
        f"log group /aws/lambda/jinrun-approval-gateway-dev{suffix} does not exist "
        f"({bootstrap}` creates it with 30 days)"
        for suffix in ("", "-send_approval", "-cancel_approval", "-request_file_upload",
                       "-get_approval", "-find_stuck_approvals", "-publish_approval_events")]


def test_what_a_half_set_up_stage_lacks_is_named(empty_aws, capsys, tmp_path):
    """Tables created by hand without their settings, the placeholder secrets of the
    CloudFormation path, the wrong Zeyi environment, a missing policy file."""
    from chalicelib.runtime.tables import approvals_table_definition, nonces_table_definition

    config = stage_config(tmp_path, ZEYI_BASE_URL="https://gw.shjiuze.cn", stage_settings=VPC)
    (config.parent / "policy-dev-get_approval.json").unlink()
    dynamodb, secrets = aws.client("dynamodb"), aws.client("secretsmanager")
    for definition in (approvals_table_definition("test-approvals"),
                       nonces_table_definition("test-nonces")):
        dynamodb.create_table(**{k: v for k, v in definition.items()
                                 if k not in {"StreamSpecification", "DeletionProtectionEnabled"}})
    placeholder = '{"placeholder": "set the real value with put-secret-value"}'
    for secret_id in ("test/zeyi-outbound", "test/zeyi-inbound", "test/token-key"):
        secrets.create_secret(Name=secret_id, SecretString=placeholder)
    status, out, _ = run_ops(capsys, "config", "check", "--stage", "dev", "--config", config)
    assert status == 1
    problems = problems_of(out)
    assert problems[:2] == [
        "ZEYI_BASE_URL is https://gw.shjiuze.cn; stage dev calls https://test.shjiuze.cn",
        "policy file policy-dev-get_approval.json of get_approval: [Errno 2] No such file or "
        f"directory: '{config.parent / 'policy-dev-get_approval.json'}'",
    ]
    assert "secret test/zeyi-outbound: field appKey is missing or not a non-empty string" in problems
    assert ("secret test/zeyi-inbound: field appKey is missing or not a non-empty string"
            in problems)
    assert "secret test/token-key: field keys must be a non-empty list" in problems
    assert ("secret test/token-key: nothing denies its deletion (`python -m ops.bootstrap "
            "--stage dev` adds the policy)") in problems
    fix = " (`python -m ops.bootstrap --stage dev` creates or completes it)"
    assert [p for p in problems if p.startswith("table test-approvals")] == [
        "table test-approvals: deletion protection is off" + fix,
        "table test-approvals: stream is off (needs NEW_AND_OLD_IMAGES)",
        "table test-approvals: point-in-time recovery is off" + fix]
    assert [p for p in problems if p.startswith("table test-nonces")] == [
        "table test-nonces: deletion protection is off" + fix,
        "table test-nonces: point-in-time recovery is off" + fix,
        "table test-nonces: TTL is off" + fix]
    assert "set the real value" not in out


def test_encrypted_callbacks_need_an_iv_on_every_inbound_credential(empty_aws, capsys,
                                                                    tmp_path):
    config = bootstrapped(tmp_path, CALLBACK_ENCRYPTED="true", stage_settings=VPC)
    aws.client("secretsmanager").put_secret_value(
        SecretId="test/zeyi-inbound", SecretString=json.dumps(
            {"credentials": [{"appKey": "no-iv", "appSecret": "0123456789abcdef"}]}))
    capsys.readouterr()
    status, out, _ = run_ops(capsys, "config", "check", "--stage", "dev", "--config", config)
    assert status == 1
    assert problems_of(out) == ["credential no-iv: encryption is on but it has no iv"]


# -- the VPC guard ---------------------------------------------------------------------------------

def _stage_with(tmp_path, stage: str = "prod", **settings):
    config = stage_config(tmp_path, stage=stage, stage_settings=settings)
    return load_stage(stage, config)


@pytest.mark.parametrize("settings, problem", [
    ({}, "stage prod has no VPC settings"),
    ({"subnet_ids": VPC["subnet_ids"]}, "stage prod has no VPC settings"),
    ({**VPC, "subnet_ids": ["subnet-aaaa"]}, "subnet id 'subnet-aaaa' in stages.prod"),
    ({**VPC, "security_group_ids": ["sg cccc"]}, "security group id 'sg cccc' in stages.prod"),
    ({"vpc_opt_out": " "}, "vpc_opt_out must say why"),
    ({**VPC, "vpc_opt_out": "why"}, "vpc_opt_out is set but so are subnet_ids"),
])
def test_the_vpc_guard_refuses(tmp_path, settings, problem):
    stage = _stage_with(tmp_path, **settings)
    problems = vpc_problems(stage)
    assert len(problems) == 1 and problems[0].startswith(problem), problems


@pytest.mark.parametrize("settings", [VPC, {"vpc_opt_out": "this account's IPs are whitelisted"}])
def test_the_vpc_guard_accepts_settings_or_an_explicit_opt_out(tmp_path, settings):
    stage = _stage_with(tmp_path, subnet_ids=[], security_group_ids=[])
    config = json.loads(stage.path.read_text(encoding="utf-8"))
    config["stages"]["prod"].pop("subnet_ids")
    config["stages"]["prod"].pop("security_group_ids")
    config["stages"]["prod"].update(settings)
    stage.path.write_text(json.dumps(config), encoding="utf-8")
    assert vpc_problems(load_stage("prod", stage.path)) == []


def test_the_local_stage_needs_no_vpc():
    assert vpc_problems(load_stage("local")) == []


def test_the_committed_deployed_stages_are_guarded():
    for stage in ("dev", "prod"):
        assert vpc_problems(load_stage(stage)), f"{stage} would deploy without a VPC"


# -- fill-vpc --------------------------------------------------------------------------------------

def cloudformation():
    # moto's first CreateStack can take longer than the gateway clients' 3 s read timeout.
    return boto3.client("cloudformation", region_name="us-east-1")


def egress_stack(name: str = "jinrun-gateway-egress-dev") -> str:
    """A stack with the outputs of infra/vpc-egress.yaml around a real Elastic IP (moto cannot
    run the real template: it lacks Fn::Cidr and Fn::GetAZs)."""
    template = {
        "Resources": {"EgressIpA": {"Type": "AWS::EC2::EIP", "Properties": {"Domain": "vpc"}}},
        "Outputs": {
            "PrivateSubnetIds": {"Value": ",".join(VPC["subnet_ids"])},
            "SecurityGroupId": {"Value": VPC["security_group_ids"][0]},
            "EgressAllocationIds": {"Value": {"Fn::GetAtt": ["EgressIpA", "AllocationId"]}},
        },
    }
    cloudformation().create_stack(StackName=name, TemplateBody=json.dumps(template))
    (address,) = aws.client("ec2").describe_addresses()["Addresses"]
    return address["PublicIp"]


def test_fill_vpc_writes_the_stack_outputs_and_prints_the_egress_ip(empty_aws, capsys,
                                                                    tmp_path):
    public_ip = egress_stack()
    config = stage_config(tmp_path)
    status, out, _ = run_ops(capsys, "config", "fill-vpc", "--stage", "dev", "--config", config)
    assert status == 0
    assert out.splitlines() == [
        f"stage dev: set subnet_ids {', '.join(VPC['subnet_ids'])} and security_group_ids "
        f"{VPC['security_group_ids'][0]} (from stack jinrun-gateway-egress-dev) in {config}",
        f"egress IPs for Zeyi's whitelist: {public_ip}"]
    stage = load_stage("dev", config)
    assert {k: stage.settings[k] for k in VPC} == VPC
    assert vpc_problems(stage) == []
    # The read-only function stays out of the VPC; the rest of the file is untouched.
    assert stage.settings["lambda_functions"]["get_approval"]["subnet_ids"] == []
    before = json.loads(stage_config_module.CONFIG_PATH.read_text(encoding="utf-8"))
    after = json.loads(config.read_text(encoding="utf-8"))
    assert after["stages"]["prod"]["environment_variables"] == \
        before["stages"]["prod"]["environment_variables"]
    status, out, _ = run_ops(capsys, "config", "fill-vpc", "--stage", "dev", "--config", config)
    assert status == 0 and out.startswith("stage dev: already had subnet_ids")


def test_fill_vpc_replaces_an_opt_out(empty_aws, capsys, tmp_path):
    egress_stack()
    config = stage_config(tmp_path, stage_settings={"vpc_opt_out": "no whitelist yet"})
    assert run_ops(capsys, "config", "fill-vpc", "--stage", "dev", "--config", config)[0] == 0
    assert "vpc_opt_out" not in load_stage("dev", config).settings


def test_fill_vpc_without_the_stack_is_one_line(empty_aws, capsys, tmp_path):
    status, _, err = run_ops(capsys, "config", "fill-vpc", "--stage", "dev",
                             "--config", stage_config(tmp_path))
    assert status == 1
    assert err == ("error: stack jinrun-gateway-egress-dev does not exist in us-east-1 (deploy "
                   "infra/vpc-egress.yaml first, or pass --stack)\n")


def test_fill_vpc_refuses_a_stack_that_is_not_the_egress_template(empty_aws, capsys, tmp_path):
    template = {"Resources": {"Ip": {"Type": "AWS::EC2::EIP", "Properties": {"Domain": "vpc"}}},
                "Outputs": {"SecurityGroupId": {"Value": "sg-0123456789abcdef0"}}}
    cloudformation().create_stack(StackName="other", TemplateBody=json.dumps(template))
    status, _, err = run_ops(capsys, "config", "fill-vpc", "--stage", "dev", "--stack", "other",
                             "--config", stage_config(tmp_path))
    assert status == 1
    assert err == ("error: stack other has no output PrivateSubnetIds, EgressAllocationIds: is "
                   "it infra/vpc-egress.yaml?\n")


# -- deploy ----------------------------------------------------------------------------------------

def test_deploy_refuses_a_stage_without_vpc_settings(empty_aws, capsys, tmp_path):
    config = bootstrapped(tmp_path)
    capsys.readouterr()
    status, out, err = run_ops(capsys, "deploy", "--stage", "dev", "--config", config)
    assert status == 1 and out == ""
    assert err.startswith("error: stage dev is not ready to deploy: stage dev has no VPC "
                          "settings") and err.count("\n") == 1


def test_deploy_runs_chalice_once_the_stage_is_ready(empty_aws, capsys, tmp_path):
    config = bootstrapped(tmp_path, stage_settings=VPC)
    capsys.readouterr()
    status, out, _ = run_ops(capsys, "deploy", "--stage", "dev", "--dry-run", "--config", config)
    assert (status, out) == (0, "stage dev in us-east-1: checks passed; dry run, so chalice "
                                "deploy --stage dev and events configure-mapping were NOT run\n")


LOCAL_REFUSED = ("error: stage local runs only in the sandbox (`make run`, chalice local): it is "
                 "never deployed; check or deploy dev or prod\n")


def test_deploy_never_deploys_the_local_stage(capsys):
    status, _, err = run_ops(capsys, "deploy", "--stage", "local")
    assert status == 1 and err == LOCAL_REFUSED


def test_config_check_never_calls_the_local_stage_ready(capsys):
    status, out, err = run_ops(capsys, "config", "check", "--stage", "local")
    assert (status, out, err) == (1, "", LOCAL_REFUSED)


# -- the CloudFormation path -----------------------------------------------------------------------

def test_the_cloudformation_path_is_ready_before_its_stack_exists(empty_aws, capsys, tmp_path):
    """The stack creates the tables, secrets, stream, bus, queue and log groups: an empty
    account with the VPC settings is ready for it (and not for the chalice path)."""
    config = stage_config(tmp_path, stage_settings=VPC)
    status, out, _ = run_ops(capsys, "config", "check", "--stage", "dev", "--path",
                             "cloudformation", "--config", config)
    assert (status, out) == (0, "stage dev in us-east-1: ready to deploy by the cloudformation "
                                "path (VPC settings, Zeyi URL, policy files, secrets, tables)\n")
    status, out, _ = run_ops(capsys, "config", "check", "--stage", "dev", "--config", config)
    assert status == 1 and "APPROVALS_STREAM_ARN is not set" in out


def test_the_cloudformation_path_checks_what_its_stack_made(empty_aws, capsys, tmp_path):
    """After the first stack deploy its secrets hold placeholders until the operator sets
    them: named, as for the chalice path."""
    config = stage_config(tmp_path, stage_settings=VPC)
    aws.client("secretsmanager").create_secret(Name="test/token-key",
                                               SecretString='{"placeholder": "x"}')
    status, out, _ = run_ops(capsys, "config", "check", "--stage", "dev", "--path",
                             "cloudformation", "--config", config)
    assert status == 1
    assert "secret test/token-key: field keys must be a non-empty list" in problems_of(out)


def test_a_deployed_stage_without_its_public_url_is_not_ready(empty_aws, capsys, tmp_path):
    # File links are built on PUBLIC_BASE_URL, which exists only once the API does: before the
    # first deploy its absence is no problem, after it every send with a file would answer 500.
    config = bootstrapped(tmp_path, stage_settings=VPC)
    capsys.readouterr()
    assert run_ops(capsys, "config", "check", "--stage", "dev", "--config", config)[0] == 0
    url = "https://abc123.execute-api.us-east-1.amazonaws.com/api"
    (config.parent / "deployed").mkdir()
    (config.parent / "deployed" / "dev.json").write_text(json.dumps({"resources": [
        {"name": "rest_api", "resource_type": "rest_api", "rest_api_id": "abc123",
         "rest_api_url": url + "/"}], "schema_version": "2.0"}), encoding="utf-8")
    status, out, _ = run_ops(capsys, "config", "check", "--stage", "dev", "--config", config)
    assert status == 1
    assert problems_of(out) == [
        "PUBLIC_BASE_URL is not set, though the stage is deployed: every send with a file field"
        " answers 500 CONFIG_ERROR; set it in stages.dev.environment_variables to the public"
        f" API's URL ({url}, or its custom domain) and deploy again"]
    configured = json.loads(config.read_text(encoding="utf-8"))
    configured["stages"]["dev"]["environment_variables"]["PUBLIC_BASE_URL"] = url
    config.write_text(json.dumps(configured), encoding="utf-8")
    assert run_ops(capsys, "config", "check", "--stage", "dev", "--config", config)[0] == 0
