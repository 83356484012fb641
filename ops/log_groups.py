"""Each function's CloudWatch log group, created with its retention before the function exists.

On the chalice path nothing else creates them: Lambda would create a group at the first
invocation and keep it forever. ``python -m ops.bootstrap`` creates them (and sets a retention
that differs), ``config check`` names any that is missing or kept too long or forever. The
CloudFormation path declares the same groups in infra/resources.yaml (``StageObservability``),
whose retention ``LOG_RETENTION_DAYS`` must match (tests/test_bootstrap.py).
"""
from __future__ import annotations

from ops.stage_config import Stage, app_functions

LOG_RETENTION_DAYS = {"dev": 30, "prod": 365}
DEFAULT_RETENTION_DAYS = 30


def retention_days(stage: Stage) -> int:
    return LOG_RETENTION_DAYS.get(stage.name, DEFAULT_RETENTION_DAYS)


def _groups(logs_client, stage: Stage) -> dict[str, dict]:
    prefix = f"/aws/lambda/{stage.app_name}-{stage.name}"
    found = {}
    for page in logs_client.get_paginator("describe_log_groups").paginate(
            logGroupNamePrefix=prefix):
        found.update({group["logGroupName"]: group for group in page["logGroups"]})
    return found


def reconcile_log_groups(logs_client, stage: Stage) -> list[str]:
    """Create each function's group that is missing and set the stage's retention where it
    differs; return what changed."""
    days = retention_days(stage)
    existing = _groups(logs_client, stage)
    changes = []
    for function in app_functions():
        name = stage.log_group(function)
        if name not in existing:
            logs_client.create_log_group(logGroupName=name, tags=stage.tags)
            logs_client.put_retention_policy(logGroupName=name, retentionInDays=days)
            changes.append(f"created log group {name} ({days} days)")
        elif existing[name].get("retentionInDays") != days:
            logs_client.put_retention_policy(logGroupName=name, retentionInDays=days)
            before = existing[name].get("retentionInDays")
            changes.append(f"log group {name}: retention "
                           f"{f'{before} days' if before else 'forever'} -> {days} days")
    return changes


def log_group_problems(logs_client, stage: Stage) -> list[str]:
    days = retention_days(stage)
    existing = _groups(logs_client, stage)
    how = f"(`python -m ops.bootstrap --stage {stage.name}` creates it with {days} days)"
    problems = []
    for function in app_functions():
        name = stage.log_group(function)
        if name not in existing:
            problems.append(f"log group {name} does not exist {how}")
        elif existing[name].get("retentionInDays") != days:
            kept = existing[name].get("retentionInDays")
            problems.append(f"log group {name} keeps logs "
                            f"{f'{kept} days' if kept else 'forever'}, not {days} {how}")
    return problems
