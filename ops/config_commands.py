"""``python -m ops config check`` and ``config fill-vpc``: a stage is ready to deploy, or a list of
what is not.

``check`` looks at everything a deploy relies on and nothing fails loudly without: the VPC
settings (or an explicit opt-out), Zeyi's base URL for the stage, a policy file per function,
each secret (exists, parses with the gateway's own parser, cannot be deleted), each table
(point-in-time recovery, TTL, deletion protection, the stream), the approval events' stream,
bus, archive and dead-letter queue. ``fill-vpc`` copies the subnets
and security group from the egress stack's outputs into the stage and prints the egress IPs Zeyi
must whitelist.
"""
from __future__ import annotations

import json

from chalicelib.errors import ConfigError
from chalicelib.protocol.credentials import parse_inbound, parse_outbound, parse_token_keys
from chalicelib.runtime import settings
from chalicelib.runtime.tables import table_problems
from ops.common import OpsError, aws_session, client, describe_failure, error_code
from ops.stage_config import (
    LOCAL_STAGES,
    ZEYI_BASE_URLS,
    Stage,
    app_functions,
    egress_stack_name,
    load_stage,
    vpc_problems,
    write_vpc_settings,
)

# The egress stack's outputs fill-vpc reads (infra/vpc-egress.yaml).
VPC_STACK_OUTPUTS = ("PrivateSubnetIds", "SecurityGroupId", "EgressAllocationIds")


def local_problems(stage: Stage) -> list[str]:
    """What is wrong in config.json for the stage, without asking AWS."""
    problems = list(vpc_problems(stage))
    url = stage.setting(settings.ZEYI_BASE_URL).rstrip("/")
    expected = ZEYI_BASE_URLS.get(stage.name)
    if expected and url != expected:
        problems.append(f"ZEYI_BASE_URL is {url or 'not set'}; stage {stage.name} calls "
                        f"{expected}")
    elif not expected and stage.name not in LOCAL_STAGES and url not in ZEYI_BASE_URLS.values():
        problems.append(f"ZEYI_BASE_URL is {url or 'not set'}: neither of Zeyi's environments "
                        f"({', '.join(ZEYI_BASE_URLS.values())})")
    if stage.name in LOCAL_STAGES:
        return problems
    for function in app_functions():
        name = stage.function_setting(function, "iam_policy_file")
        if not name:
            problems.append(f"function {function} has no iam_policy_file in stages.{stage.name}"
                            ".lambda_functions")
            continue
        path = stage.path.parent / name
        try:
            policy = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            problems.append(f"policy file {path.name} of {function}: {exc}")
            continue
        if policy.get("Version") != "2012-10-17" or not policy.get("Statement"):
            problems.append(f"policy file {path.name} of {function}: no Version 2012-10-17 or "
                            "no Statement")
    problem = public_url_problem(stage)
    if problem:
        problems.append(problem)
    return problems


def deployed_api_url(stage: Stage) -> str | None:
    """The REST API's URL chalice recorded for the stage (``.chalice/deployed/<stage>.json``), or
    None before the first complete deploy."""
    path = stage.path.parent / "deployed" / f"{stage.name}.json"
    try:
        deployed = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for resource in deployed.get("resources", []) if isinstance(deployed, dict) else []:
        if isinstance(resource, dict) and resource.get("rest_api_url"):
            return str(resource["rest_api_url"]).rstrip("/")
    return None


def public_url_problem(stage: Stage) -> str | None:
    """PUBLIC_BASE_URL (file links are built on it) can only be known once the API exists, so it
    is a problem only once the stage is deployed: then every send with a file field answers
    500 CONFIG_ERROR until it is set."""
    url = deployed_api_url(stage)
    if url is None or stage.setting(settings.PUBLIC_BASE_URL).strip():
        return None
    return (f"PUBLIC_BASE_URL is not set, though the stage is deployed: every send with a file "
            f"field answers 500 CONFIG_ERROR; set it in stages.{stage.name}.environment_variables"
            f" to the public API's URL ({url}, or its custom domain) and deploy again")


# The two deploy paths (docs/operations.md, "First deploy"): `python -m ops deploy` (chalice
# deploy, after the bootstrap), and the packaged CloudFormation stack of infra/resources.yaml,
# which creates the tables, secrets, bus, queue and log groups itself.
CHALICE, CLOUDFORMATION = "chalice", "cloudformation"
PATHS = (CHALICE, CLOUDFORMATION)


def _secret_problems(secrets_client, stage: Stage, *, missing_ok: bool = False) -> list[str]:
    problems = []
    parsers = ((settings.OUTBOUND_SECRET_ID, parse_outbound),
               (settings.INBOUND_SECRET_ID, parse_inbound),
               (settings.TOKEN_SECRET_ID, parse_token_keys))
    creates = {
        settings.OUTBOUND_SECRET_ID: f"`python -m ops.bootstrap --stage {stage.name} "
                                     "--outbound-secret-file -` stores Zeyi's credential",
        settings.INBOUND_SECRET_ID: f"`python -m ops secrets add-inbound --stage {stage.name} "
                                    "--show` creates it",
        settings.TOKEN_SECRET_ID: f"`python -m ops.bootstrap --stage {stage.name} --token-key "
                                  "generate` creates it",
    }
    for name, parse in parsers:
        secret_id = stage.setting(name)
        try:
            raw = secrets_client.get_secret_value(SecretId=secret_id)["SecretString"]
        except Exception as exc:
            if error_code(exc) == "ResourceNotFoundException":
                if not missing_ok:
                    problems.append(f"secret {secret_id} does not exist ({creates[name]})")
                continue
            raise
        try:
            parsed = parse(secret_id, raw)
            if name == settings.INBOUND_SECRET_ID and stage.flag(settings.CALLBACK_ENCRYPTED):
                for credential in parsed.by_app_key.values():
                    credential.codec()  # each needs an iv and an AES-sized appSecret
        except ConfigError as exc:
            problems.append(exc.message)  # names the field, never the value
        policy = secrets_client.get_resource_policy(SecretId=secret_id).get("ResourcePolicy")
        if "secretsmanager:DeleteSecret" not in (policy or ""):
            problems.append(f"secret {secret_id}: nothing denies its deletion (`python -m "
                            f"ops.bootstrap --stage {stage.name}` adds the policy)")
    return problems


def _with_fix(problem: str, stage: Stage) -> str:
    """A table problem with the command that fixes it."""
    if "(" in problem:
        return problem
    return f"{problem} (`python -m ops.bootstrap --stage {stage.name}` creates or completes it)"


def refuse_local(stage: Stage) -> None:
    if stage.name in LOCAL_STAGES:
        raise OpsError(f"stage {stage.name} runs only in the sandbox (`make run`, chalice "
                       "local): it is never deployed; check or deploy dev or prod")


def check_stage(stage: Stage, region: str | None,
                path: str = CHALICE) -> tuple[list[str], str | None]:
    """Every problem of the stage for the deploy path, and the region checked (None when AWS
    could not be asked).

    The chalice path needs everything in place before the deploy (the bootstrap makes it). The
    CloudFormation path's stack creates the tables, secrets, bus, queue and log groups; what
    already exists (a redeploy, secrets set after the first deploy) must be right."""
    refuse_local(stage)
    problems = local_problems(stage)
    try:
        session = aws_session(region)
        dynamodb = client(session, "dynamodb")
        secrets_client = client(session, "secretsmanager")
        cloudformation = path == CLOUDFORMATION
        problems += _secret_problems(secrets_client, stage, missing_ok=cloudformation)
        problems += [_with_fix(problem, stage) for problem in table_problems(
            dynamodb, stage.setting(settings.APPROVALS_TABLE),
            stage.setting(settings.NONCES_TABLE))
            if not (cloudformation and problem.endswith("does not exist"))]
        if not cloudformation:
            from ops.events import event_problems
            from ops.log_groups import log_group_problems

            problems += event_problems(client(session, "events"), client(session, "sqs"),
                                       dynamodb, stage)
            problems += log_group_problems(client(session, "logs"), stage)
        return problems, session.region_name
    except Exception as exc:
        problems.append(f"AWS not checked: {describe_failure(exc)}")
        return problems, None


def check_command(args) -> int:
    stage = load_stage(args.stage, args.config)
    path = getattr(args, "path", CHALICE)
    problems, region = check_stage(stage, args.region, path)
    where = f"stage {stage.name}" + (f" in {region}" if region else "")
    if not problems:
        print(f"{where}: ready to deploy by the {path} path (VPC settings, Zeyi URL, policy "
              "files, secrets, tables" + (", stream, bus, archive, dead-letter queue, log groups"
                                          if path == CHALICE else "") + ")")
        return 0
    print(f"{where}: {len(problems)} problem(s) before a deploy by the {path} path")
    for problem in problems:
        print(f"  - {problem}")
    return 1


def fill_vpc_command(args) -> int:
    stage = load_stage(args.stage, args.config)
    if stage.name in LOCAL_STAGES:
        raise OpsError(f"stage {stage.name} runs locally and has no VPC")
    stack_name = args.stack or egress_stack_name(stage.name)
    session = aws_session(args.region)
    try:
        stacks = client(session, "cloudformation").describe_stacks(StackName=stack_name)["Stacks"]
    except Exception as exc:
        if error_code(exc) == "ValidationError":
            raise OpsError(f"stack {stack_name} does not exist in {session.region_name} (deploy "
                           "infra/vpc-egress.yaml first, or pass --stack)") from None
        raise
    stack = stacks[0]
    if not stack["StackStatus"].endswith("_COMPLETE") or "ROLLBACK" in stack["StackStatus"]:
        raise OpsError(f"stack {stack_name} is {stack['StackStatus']}: wait for it to finish")
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    missing = [name for name in VPC_STACK_OUTPUTS if not outputs.get(name)]
    if missing:
        raise OpsError(f"stack {stack_name} has no output {', '.join(missing)}: is it "
                       "infra/vpc-egress.yaml?")
    subnets = [s.strip() for s in outputs["PrivateSubnetIds"].split(",") if s.strip()]
    groups = [outputs["SecurityGroupId"].strip()]
    allocations = [a.strip() for a in outputs["EgressAllocationIds"].split(",") if a.strip()]
    addresses = client(session, "ec2").describe_addresses(AllocationIds=allocations)["Addresses"]
    changed = write_vpc_settings(stage, subnets, groups)
    verb = "set" if changed else "already had"
    print(f"stage {stage.name}: {verb} subnet_ids {', '.join(subnets)} and security_group_ids "
          f"{', '.join(groups)} (from stack {stack_name}) in {stage.path}")
    print("egress IPs for Zeyi's whitelist: "
          + ", ".join(a["PublicIp"] for a in addresses if a.get("PublicIp")))
    return 0
