"""Deployability: the IAM policy of every deployed stage allows exactly the AWS operations the code
calls, on exactly that stage's tables and secrets; ``chalice package`` works for every stage and
its templates (merged with infra/resources.yaml) and infra/vpc-egress.yaml pass cfn-lint for the
global and the China regions.

No AWS account is needed: ``chalice package`` and ``cfn-lint`` are offline (chalice may download
Lambda-platform wheels from PyPI on a cold cache)."""
from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
import zipfile
from functools import cache
from pathlib import Path

import botocore.session
import pytest
import yaml
from botocore import xform_name

from chalicelib import settings
from ops.package import PackageError, package

ROOT = Path(__file__).resolve().parent.parent
CONFIG = json.loads((ROOT / ".chalice" / "config.json").read_text(encoding="utf-8"))
APP_NAME = CONFIG["app_name"]
DEPLOYED_STAGES = ["dev", "prod"]
LINT_REGIONS = ["us-east-1", "cn-north-1", "cn-northwest-1"]
CFN_LINT = Path(sys.executable).with_name("cfn-lint")

# Services the Lambda code may call, with the IAM prefix of each. A new service in the code fails
# test_code_calls_only_known_services until it is added here and to the policy files.
KNOWN_SERVICES = {"dynamodb": "dynamodb", "secretsmanager": "secretsmanager"}
# Functions that exist in chalicelib but never run in Lambda (operator and test tooling). Their
# AWS calls (CreateTable, ...) are the operator's, not the function role's.
OPERATOR_ONLY = {("tables.py", "ensure_tables")}
# TransactWriteItems / TransactGetItems have no IAM action of their own: each element is
# authorised as the underlying item action.
TRANSACT_ELEMENTS = {"Put": "PutItem", "Update": "UpdateItem", "Delete": "DeleteItem",
                     "ConditionCheck": "ConditionCheckItem", "Get": "GetItem"}
# What a Lambda function in a VPC needs to manage its network interfaces (the actions of the AWS
# managed policy AWSLambdaVPCAccessExecutionRole). They support no resource-level restriction.
VPC_ENI_ACTIONS = {"ec2:CreateNetworkInterface", "ec2:DescribeNetworkInterfaces",
                   "ec2:DescribeSubnets", "ec2:DeleteNetworkInterface",
                   "ec2:AssignPrivateIpAddresses", "ec2:UnassignPrivateIpAddresses"}
LAYER_PREFIX = re.compile(r"^python/(lib/python[^/]+/site-packages/)?")
LOG_ACTIONS = {"logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"}


# --- what the code calls -----------------------------------------------------------------------

def lambda_sources() -> list[Path]:
    return [ROOT / "app.py", *sorted((ROOT / "chalicelib").glob("*.py"))]


@cache
def _operation_names(service: str) -> dict[str, str]:
    model = botocore.session.get_session().get_service_model(service)
    return {xform_name(name): name for name in model.operation_names}


class _Scanner(ast.NodeVisitor):
    def __init__(self, filename: str):
        self.filename = filename
        self.services: set[str] = set()
        self.names: set[str] = set()  # attribute calls and string arguments of calls
        self.dict_keys: set[str] = set()

    def visit_FunctionDef(self, node):
        if (self.filename, node.name) in OPERATOR_ONLY:
            return
        self.generic_visit(node)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Call(self, node):
        func = node.func
        func_name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if isinstance(func, ast.Attribute):
            self.names.add(func.attr)
        strings = [arg.value for arg in node.args
                   if isinstance(arg, ast.Constant) and isinstance(arg.value, str)]
        if func_name in {"client", "resource"} and strings:
            self.services.add(strings[0])
        self.names.update(strings)
        self.generic_visit(node)

    def visit_Dict(self, node):
        for key in node.keys:
            if isinstance(key, ast.Constant) and isinstance(key.value, str):
                self.dict_keys.add(key.value)
        self.generic_visit(node)


@cache
def scan_code() -> tuple[frozenset[str], frozenset[str], frozenset[str]]:
    services, names, keys = set(), set(), set()
    for path in lambda_sources():
        scanner = _Scanner(path.name)
        scanner.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        services |= scanner.services
        names |= scanner.names
        keys |= scanner.dict_keys
    return frozenset(services), frozenset(names), frozenset(keys)


def required_actions() -> set[str]:
    """IAM actions for every operation of a known service that the Lambda code calls."""
    services, names, keys = scan_code()
    actions = set()
    for service in services & KNOWN_SERVICES.keys():
        prefix = KNOWN_SERVICES[service]
        for snake, operation in _operation_names(service).items():
            if snake not in names:
                continue
            if operation in {"TransactWriteItems", "TransactGetItems"}:
                elements = {TRANSACT_ELEMENTS[key] for key in keys & TRANSACT_ELEMENTS.keys()}
                if operation == "TransactGetItems":
                    elements = {"GetItem"}
                actions |= {f"{prefix}:{element}" for element in elements}
            else:
                actions.add(f"{prefix}:{operation}")
    return actions


def test_code_calls_only_known_services():
    services, _, _ = scan_code()
    assert services, "found no boto3 client in the Lambda code: the scanner is broken"
    unknown = services - KNOWN_SERVICES.keys()
    assert not unknown, (f"the Lambda code creates clients for {sorted(unknown)}: add the actions "
                         "to .chalice/policy-*.json and the service to KNOWN_SERVICES")


def test_scanner_finds_the_calls_the_architecture_describes():
    # A guard on the scanner itself: these are known to be called (architecture.md).
    assert {"dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:Query",
            "secretsmanager:GetSecretValue"} <= required_actions()


def test_operator_only_functions_are_not_called_by_the_lambda_code():
    for path in lambda_sources():
        text = path.read_text(encoding="utf-8")
        for filename, function in OPERATOR_ONLY:
            if path.name != filename:
                assert not re.search(rf"\b{function}\b", text), (
                    f"{path.name} uses {function}: its AWS calls would need the function role")


# --- what each stage's policy allows -------------------------------------------------------------

def stage_config(stage: str) -> dict:
    return CONFIG["stages"][stage]


def stage_env(stage: str) -> dict[str, str]:
    return {**CONFIG.get("environment_variables", {}),
            **stage_config(stage).get("environment_variables", {})}


def policy_files(stage: str) -> set[str]:
    stage_cfg = stage_config(stage)
    names = {stage_cfg.get("iam_policy_file") or CONFIG.get("iam_policy_file")
             or f"policy-{stage}.json"}
    for function_cfg in stage_cfg.get("lambda_functions", {}).values():
        if "iam_policy_file" in function_cfg:
            names.add(function_cfg["iam_policy_file"])
    return names


def load_policy(name: str) -> dict:
    return json.loads((ROOT / ".chalice" / name).read_text(encoding="utf-8"))


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def table_arns(stage: str) -> set[str]:
    env = stage_env(stage)
    return {f"arn:*:dynamodb:*:*:table/{env[name]}"
            for name in (settings.APPROVALS_TABLE, settings.NONCES_TABLE)}


def secret_arns(stage: str) -> set[str]:
    env = stage_env(stage)
    return {f"arn:*:secretsmanager:*:*:secret:{env[name]}-??????"
            for name in (settings.OUTBOUND_SECRET_ID, settings.INBOUND_SECRET_ID,
                         settings.TOKEN_SECRET_ID)}


@pytest.mark.parametrize("stage", DEPLOYED_STAGES)
def test_stage_uses_hand_written_policy(stage):
    stage_cfg = stage_config(stage)
    autogen = stage_cfg.get("autogen_policy", CONFIG.get("autogen_policy", True))
    assert autogen is False, f"stage {stage}: autogen_policy must be false"
    assert stage_cfg.get("manage_iam_role", CONFIG.get("manage_iam_role", True)) is True


@pytest.mark.parametrize("stage", DEPLOYED_STAGES)
def test_policy_allows_exactly_what_the_code_calls(stage):
    required = required_actions()
    for name in policy_files(stage):
        policy = load_policy(name)
        allowed: dict[str, set[str]] = {}
        for statement in policy["Statement"]:
            assert statement["Effect"] == "Allow"
            assert not {"NotAction", "NotResource", "NotPrincipal"} & statement.keys()
            actions = set(_as_list(statement["Action"]))
            resources = set(_as_list(statement["Resource"]))
            for action in actions:
                assert "*" not in action and "?" not in action, f"{name}: wildcard {action}"
                allowed.setdefault(action, set()).update(resources)
            for resource in resources - {"*"}:
                assert resource.startswith("arn:*:"), (
                    f"{name}: {resource} names a partition: it must work in aws and aws-cn")
            prefixes = {action.split(":")[0] for action in actions}
            assert len(prefixes) == 1, f"{name}: one service per statement, got {prefixes}"
            prefix = prefixes.pop()
            if prefix == "dynamodb":
                assert resources <= table_arns(stage), f"{name}: {resources}"
            elif prefix == "secretsmanager":
                assert resources <= secret_arns(stage), f"{name}: {resources}"
            elif prefix == "logs":
                assert actions <= LOG_ACTIONS
                group = f"arn:*:logs:*:*:log-group:/aws/lambda/{APP_NAME}-{stage}"
                assert resources <= {group, f"{group}:*", f"{group}-*"}, resources
            elif prefix == "ec2":
                assert actions <= VPC_ENI_ACTIONS, f"{name}: {actions - VPC_ENI_ACTIONS}"
            else:
                pytest.fail(f"{name}: unexpected service {prefix}")
            if "*" in resources:
                assert prefix == "ec2", f"{name}: Resource * is only for the VPC ENI actions"

        data_actions = {a for a in allowed if a.split(":")[0] in KNOWN_SERVICES.values()}
        assert data_actions == required, (
            f"{name}: missing {sorted(required - data_actions)}, "
            f"more than needed {sorted(data_actions - required)}")
        for action in required:
            expected = table_arns(stage) if action.startswith("dynamodb:") else secret_arns(stage)
            assert allowed[action] == expected, f"{name}: {action} on {allowed[action]}"
        assert allowed.keys() >= LOG_ACTIONS, f"{name}: the functions could not write logs"
        assert allowed.keys() >= VPC_ENI_ACTIONS, (
            f"{name}: functions in the VPC (subnet_ids) need the ENI actions")


# --- chalice package + cfn-lint ------------------------------------------------------------------

def cfn_lint(*templates: Path) -> None:
    completed = subprocess.run(
        [str(CFN_LINT), "--regions", *LINT_REGIONS, "--", *map(str, templates)],
        capture_output=True, text=True, timeout=120, check=False)
    assert completed.returncode == 0, completed.stdout + completed.stderr


def _functions(template: dict) -> dict[str, dict]:
    return {name: resource for name, resource in template["Resources"].items()
            if resource["Type"] in {"AWS::Serverless::Function", "AWS::Lambda::Function"}}


@pytest.fixture(autouse=True)
def _region_for_chalice(monkeypatch):
    # chalice package needs a region; the template it writes is region-independent.
    monkeypatch.setenv("AWS_DEFAULT_REGION", "cn-north-1")


@pytest.mark.parametrize("stage", DEPLOYED_STAGES)
def test_chalice_package_builds_every_stage(stage, tmp_path):
    result = package(stage, tmp_path / "out")
    template = json.loads(result.template.read_text(encoding="utf-8"))
    functions = _functions(template)
    assert {"APIHandler", "SendApproval", "CancelApproval", "GetApproval"} <= functions.keys()
    env = stage_env(stage)
    policy = load_policy(f"policy-{stage}.json")
    for name, function in functions.items():
        properties = function["Properties"]
        assert re.fullmatch(r"python3\.\d+", properties["Runtime"])
        assert properties["MemorySize"] == CONFIG["lambda_memory_size"]
        # Above Zeyi's connect + read timeouts, under API Gateway's 29 s integration limit.
        connect = float(env[settings.ZEYI_CONNECT_TIMEOUT_SECONDS])
        read = float(env[settings.ZEYI_READ_TIMEOUT_SECONDS])
        assert connect + read + 5 <= properties["Timeout"] < 29, name
        assert properties["Environment"]["Variables"] == env
        role = template["Resources"][properties["Role"]["Fn::GetAtt"][0]]
        documents = [p["PolicyDocument"] for p in role["Properties"]["Policies"]]
        assert documents == [policy], f"{name} runs with another policy"
    # boto3/botocore come from the Lambda runtime: never bundled, in the function zip or a layer.
    for zip_name in result.zips:
        with zipfile.ZipFile(result.out_dir / zip_name) as archive:
            tops = {LAYER_PREFIX.sub("", entry).split("/")[0] for entry in archive.namelist()}
        assert "requests" in tops or zip_name == "deployment.zip", zip_name
        assert not {"boto3", "botocore"} & tops, zip_name
    with zipfile.ZipFile(result.out_dir / "deployment.zip") as archive:
        assert {"chalicelib", "app.py"} <= {e.split("/")[0] for e in archive.namelist()}


@pytest.mark.parametrize("stage", DEPLOYED_STAGES)
def test_merged_template_passes_cfn_lint(stage, tmp_path):
    result = package(stage, tmp_path / "out", merge_template=ROOT / "infra" / "resources.yaml")
    assert result.template.suffix == ".yaml"
    cfn_lint(result.template)


def _resolve_stage(value, stage: str) -> str:
    template = value["Fn::Sub"] if isinstance(value, dict) else value
    return template.replace("${Stage}", stage)


class _CfnLoader(yaml.SafeLoader):
    pass


_CfnLoader.add_multi_constructor(
    "!", lambda loader, suffix, node: {f"Fn::{suffix}": loader.construct_scalar(node)}
    if isinstance(node, yaml.ScalarNode) else {f"Fn::{suffix}": loader.construct_sequence(node)})


def load_cfn(path: Path) -> dict:
    return yaml.load(path.read_text(encoding="utf-8"), Loader=_CfnLoader)  # noqa: S506


@pytest.mark.parametrize("stage", DEPLOYED_STAGES)
def test_resources_template_names_match_the_stage_config(stage):
    resources = load_cfn(ROOT / "infra" / "resources.yaml")["Resources"]
    env = stage_env(stage)
    names = {_resolve_stage(r["Properties"]["TableName"], stage) for r in resources.values()
             if r["Type"] == "AWS::DynamoDB::Table"}
    assert names == {env[settings.APPROVALS_TABLE], env[settings.NONCES_TABLE]}
    secrets = {_resolve_stage(r["Properties"]["Name"], stage) for r in resources.values()
               if r["Type"] == "AWS::SecretsManager::Secret"}
    assert secrets == {env[settings.OUTBOUND_SECRET_ID], env[settings.INBOUND_SECRET_ID],
                       env[settings.TOKEN_SECRET_ID]}
    for resource in resources.values():
        assert resource.get("DeletionPolicy") == "Retain"


def test_resources_template_matches_chalicelib_tables():
    from chalicelib.tables import (
        NONCE_TTL_ATTRIBUTE,
        approvals_table_definition,
        nonces_table_definition,
    )
    resources = load_cfn(ROOT / "infra" / "resources.yaml")["Resources"]
    for logical, definition in (("ApprovalsTable", approvals_table_definition("x")),
                                ("NoncesTable", nonces_table_definition("x"))):
        properties = resources[logical]["Properties"]
        assert properties["KeySchema"] == definition["KeySchema"]
        assert properties["AttributeDefinitions"] == definition["AttributeDefinitions"]
        assert properties["BillingMode"] == definition["BillingMode"]
        assert properties["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"]
        assert properties["SSESpecification"]["SSEEnabled"]
    ttl = resources["NoncesTable"]["Properties"]["TimeToLiveSpecification"]
    assert ttl == {"AttributeName": NONCE_TTL_ATTRIBUTE, "Enabled": True}


def test_vpc_egress_template_passes_cfn_lint():
    cfn_lint(ROOT / "infra" / "vpc-egress.yaml")
    outputs = load_cfn(ROOT / "infra" / "vpc-egress.yaml")["Outputs"]
    assert {"EgressIps", "PrivateSubnetIds", "SecurityGroupId"} <= outputs.keys()


def test_vpc_and_resource_policy_configuration_packages(tmp_path):
    """What docs/operations.md tells the operator to add once the VPC stack exists: subnets and
    security group for the stage, and optionally the API resource policy. Built on a copy."""
    project = tmp_path / "project"
    shutil.copytree(ROOT / "chalicelib", project / "chalicelib")
    shutil.copy(ROOT / "app.py", project / "app.py")
    shutil.copy(ROOT / "requirements.txt", project / "requirements.txt")
    shutil.copytree(ROOT / ".chalice", project / ".chalice",
                    ignore=shutil.ignore_patterns("deployments", "venv"))
    if (ROOT / ".chalice" / "deployments").exists():  # reuse the built dependencies
        shutil.copytree(ROOT / ".chalice" / "deployments", project / ".chalice" / "deployments")
    shutil.copy(ROOT / "infra" / "apigw-resource-policy.json",
                project / ".chalice" / "apigw-policy-dev.json")
    config = json.loads((project / ".chalice" / "config.json").read_text(encoding="utf-8"))
    config["stages"]["dev"].update({
        "subnet_ids": ["subnet-0123456789abcdef0", "subnet-0123456789abcdef1"],
        "security_group_ids": ["sg-0123456789abcdef0"],
        "api_gateway_policy_file": "apigw-policy-dev.json",
    })
    (project / ".chalice" / "config.json").write_text(json.dumps(config), encoding="utf-8")

    result = package("dev", tmp_path / "out", project_dir=project,
                     merge_template=ROOT / "infra" / "resources.yaml")
    cfn_lint(result.template)
    template = load_cfn(result.template)
    functions = _functions(template)
    in_vpc = {name for name, function in functions.items()
              if function["Properties"].get("VpcConfig")}
    # Everything that calls Zeyi leaves through the NAT; the read-only status function does not.
    assert in_vpc == {"APIHandler", "SendApproval", "CancelApproval"}
    api = next(r for r in template["Resources"].values()
               if r["Type"] == "AWS::Serverless::Api")
    policy = json.dumps(api["Properties"]["DefinitionBody"].get("x-amazon-apigateway-policy"))
    assert "dingtalkAudit/callback" in policy and "auth/token" in policy


def test_package_fails_loudly_when_dependencies_cannot_be_installed(tmp_path, monkeypatch):
    import ops.package as ops_package

    class Completed:
        returncode = 0
        stdout = "Creating deployment package.\n"
        stderr = ("Could not install dependencies:\nsomething==1.0\nYou will have to build these "
                  "yourself and vendor them in the chalice vendor folder.\n")

    monkeypatch.setattr(ops_package.subprocess, "run", lambda *a, **k: Completed())
    with pytest.raises(PackageError, match="could not install"):
        package("dev", tmp_path)


def test_package_fails_over_the_size_budget(tmp_path):
    with pytest.raises(PackageError, match="over the budget"):
        package("dev", tmp_path / "out", budget_bytes=1024)
