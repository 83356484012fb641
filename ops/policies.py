"""The IAM policies the gateway runs with, rendered for one account and region.

The functions' policy files (``.chalice/policy-<stage>-<function>.json``) are static JSON that
chalice copies as they are, so their ARNs name no partition, region or account
(``arn:*:…:*:*:``; docs/operations.md, "Least privilege"). Rendering fills those in, for reading
a policy as IAM will apply it, and for attaching it to an IAM user in the rehearsal
(tests/test_iam_sufficiency.py). The
operators' policy (``infra/operator-policy.json``) is rendered the same way.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from ops.stage_config import PROJECT_DIR, Stage

OPERATOR_POLICY = PROJECT_DIR / "infra" / "operator-policy.json"
_UNPINNED_ARN = re.compile(r"^arn:\*:([a-z0-9-]+):\*:\*:")


def function_policy(stage: Stage, function: str) -> dict:
    name = stage.function_setting(function, "iam_policy_file")
    return json.loads((stage.path.parent / name).read_text(encoding="utf-8"))


def operator_policy(stage: Stage, path: Path = OPERATOR_POLICY) -> dict:
    """The operators' policy for the stage: ``<stage>`` in the file is the stage's name."""
    return json.loads(path.read_text(encoding="utf-8").replace("<stage>", stage.name))


def render(policy: dict, *, partition: str, region: str, account: str) -> dict:
    """The policy with each ``arn:*:<service>:*:*:`` prefix pinned to the partition, region
    and account."""
    def pin(resource: str) -> str:
        return _UNPINNED_ARN.sub(lambda m: f"arn:{partition}:{m.group(1)}:{region}:{account}:",
                                 resource)

    rendered = json.loads(json.dumps(policy))
    for statement in rendered["Statement"]:
        for key in ("Resource", "NotResource"):
            value = statement.get(key)
            if isinstance(value, str):
                statement[key] = pin(value)
            elif isinstance(value, list):
                statement[key] = [pin(item) for item in value]
    return rendered


def without_action(policy: dict, action: str) -> dict:
    """The policy with one action taken out of every statement (a statement left with none
    goes): what a forgotten line in a policy file does."""
    trimmed = json.loads(json.dumps(policy))
    statements = []
    for statement in trimmed["Statement"]:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [
            statement["Action"]]
        kept = [item for item in actions if item != action]
        if kept:
            statements.append({**statement, "Action": kept})
    trimmed["Statement"] = statements
    return trimmed
