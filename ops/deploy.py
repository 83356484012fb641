"""``python -m ops deploy --stage S``: ``chalice deploy``, but only for a stage that is ready.

Runs ``config check`` first and refuses on any problem: above all empty VPC settings, with which
the deploy would succeed and every call to Zeyi would then leave from an IP off its whitelist.
It also hands chalice the region from ``AWS_REGION`` (chalice's botocore reads only
``AWS_DEFAULT_REGION`` and the profile), and once chalice has deployed, gives the approval
events function's stream subscription the failure handling chalice cannot set
(``ops.events.configure_mapping``).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

from ops.common import OpsError, chalice_build_lock, region_from_environment
from ops.config_commands import CHALICE, check_stage, public_url_problem
from ops.package import chalice_command
from ops.stage_config import PROJECT_DIR, load_stage


def remove_orphaned_subscription(lambda_client, stage, *, clock=time.monotonic,
                                 sleep=time.sleep, timeout_seconds: float = 120) -> list[str]:
    """Before a deploy without ``.chalice/deployed/<stage>.json`` (a first deploy, or one that
    stopped half way, after the functions and before the REST API): remove the events function's
    stream subscription such a stopped run left. chalice, knowing nothing of it, would create it
    again, and Lambda refuses a second mapping of one function on one stream (409), so every rerun
    would stop there. The new subscription reads the stream from TRIM_HORIZON again: events
    already published go out again with the same eventId, which consumers drop."""
    from chalicelib.approvals import events
    from ops.common import error_code
    from ops.events import stream_mappings

    mappings = stream_mappings(lambda_client, stage)
    lines = []
    for mapping in mappings:
        lambda_client.delete_event_source_mapping(UUID=mapping["UUID"])
        deadline = clock() + timeout_seconds
        while True:  # Lambda deletes it in the background; a create before then conflicts
            try:
                lambda_client.get_event_source_mapping(UUID=mapping["UUID"])
            except Exception as exc:
                if error_code(exc) == "ResourceNotFoundException":
                    break
                raise
            if clock() > deadline:
                raise OpsError(f"stream subscription {mapping['UUID']} is still being deleted "
                               f"after {timeout_seconds:.0f} s; run the deploy again in a "
                               "minute")
            sleep(2)
        lines.append(f"removed the stream subscription {mapping['UUID']} of "
                     f"{events.FUNCTION_NAME} that a deploy which stopped half way left "
                     f"(no {stage.path.parent / 'deployed' / (stage.name + '.json')}): chalice "
                     "deploy creates it again")
    return lines


def deploy_command(args) -> int:
    stage = load_stage(args.stage, args.config)
    problems, region = check_stage(stage, args.region, CHALICE)
    if problems:
        raise OpsError(f"stage {stage.name} is not ready to deploy: " + "; ".join(problems)
                       + f" (see `python -m ops config check --stage {stage.name}`)")
    command = chalice_command() + ["--project-dir", str(stage.path.parent.parent), "deploy",
                                   "--stage", stage.name, *args.chalice_args]
    env = dict(os.environ, AWS_DEFAULT_REGION=region or region_from_environment(args.region))
    if args.dry_run:
        print(f"stage {stage.name} in {region}: checks passed; dry run, so chalice deploy "
              f"--stage {stage.name} and events configure-mapping were NOT run")
        return 0
    deployed = stage.path.parent / "deployed" / f"{stage.name}.json"
    if not deployed.exists():
        from ops.common import aws_session, client

        lambda_client = client(aws_session(region or args.region), "lambda")
        for line in remove_orphaned_subscription(lambda_client, stage):
            print(line, flush=True)
    print(f"stage {stage.name} in {region}: checks passed; running chalice deploy --stage "
          f"{stage.name}", flush=True)
    with chalice_build_lock(stage.path.parent.parent):
        status = subprocess.run(command, cwd=PROJECT_DIR, env=env, check=False).returncode
    if status != 0:
        print(f"error: chalice deploy failed (exit {status}); "
              + ("" if deployed.exists() else f"{deployed} was not written; ")
              + "what it created stays and is reused: fix the cause and run this command again "
              "(docs/operations.md, \"A deploy that stopped half way\")", file=sys.stderr)
    if status == 0:
        # chalice cannot set the events function's stream failure handling: set it every time
        # (a new subscription, after a changed stream, starts without it).
        from ops.common import aws_session, client
        from ops.events import configure_mapping

        session = aws_session(region or args.region)
        for line in configure_mapping(client(session, "lambda"), client(session, "sqs"), stage):
            print(line)
        problem = public_url_problem(stage)
        if problem:
            print(f"next: {problem}")
    return status
