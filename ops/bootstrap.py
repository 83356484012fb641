"""Create or complete what ``chalice deploy`` does not: the two DynamoDB tables and the three
secrets of a stage, set up the way the gateway and the operators rely on, and the approval
events' bus, archive and dead-letter queue (``ops.events``).

It reconciles rather than skips: a table that exists gets whatever it lacks (point-in-time
recovery, TTL on nonces, deletion protection, the approvals stream, tags), a secret that exists
gets its tags and the resource policy that denies deleting it. So a half-finished run is finished
by the next one. Idempotent: a run with nothing to do says ``nothing changed``. Existing secret
values are never overwritten (rotation: ``python -m ops secrets ...``, docs/operations.md), and
secret values are never printed, logged or returned.

Usage::

    python -m ops.bootstrap --stage dev \\
        --outbound-secret-file outbound.json --inbound-secret-file inbound.json \\
        --token-key generate

Table names, secret ids and tags come from ``.chalice/config.json`` for the stage. Credentials
come from the usual chain (``AWS_PROFILE``...), the region from ``--region``, ``AWS_REGION`` or
``AWS_DEFAULT_REGION``; ``AWS_ENDPOINT_URL`` points it at moto server in the sandbox.
"""
from __future__ import annotations

import argparse
import json
import secrets as secrets_module
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from chalicelib.errors import ConfigError
from chalicelib.protocol.credentials import parse_inbound, parse_outbound, parse_token_keys
from chalicelib.runtime import settings
from chalicelib.runtime.tables import reconcile_tables
from ops.common import OpsError, aws_session, client, run
from ops.stage_config import CONFIG_PATH, LOCAL_STAGES, load_stage

GENERATE = "generate"
SECRET_IDS = (settings.OUTBOUND_SECRET_ID, settings.INBOUND_SECRET_ID, settings.TOKEN_SECRET_ID)
DENY_DELETION_SID = "DenySecretDeletion"
DENY_DELETION = {
    "Sid": DENY_DELETION_SID, "Effect": "Deny", "Principal": "*",
    "Action": "secretsmanager:DeleteSecret", "Resource": "*",
}


@dataclass
class Report:
    changes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _secret_description(secrets_client, secret_id: str) -> dict | None:
    try:
        return secrets_client.describe_secret(SecretId=secret_id)
    except secrets_client.exceptions.ResourceNotFoundException:
        return None


def _secret_exists(secrets_client, secret_id: str) -> bool:
    return _secret_description(secrets_client, secret_id) is not None


def reconcile_secret(secrets_client, secret_id: str, tags: dict[str, str],
                     description: dict | None = None) -> list[str]:
    """Give an existing secret its tags and the resource policy that denies deleting it; return
    what changed."""
    description = description or secrets_client.describe_secret(SecretId=secret_id)
    changes = []
    raw_policy = secrets_client.get_resource_policy(SecretId=secret_id).get("ResourcePolicy")
    policy = json.loads(raw_policy) if raw_policy else {"Version": "2012-10-17", "Statement": []}
    statements = policy.get("Statement", [])
    if isinstance(statements, dict):
        statements = [statements]
    if not any(s.get("Sid") == DENY_DELETION_SID for s in statements):
        policy["Statement"] = [*statements, DENY_DELETION]
        secrets_client.put_resource_policy(SecretId=secret_id, ResourcePolicy=json.dumps(policy),
                                           BlockPublicPolicy=True)
        changes.append(f"secret {secret_id}: denied its deletion (resource policy "
                       f"{DENY_DELETION_SID})")
    current = {tag["Key"]: tag["Value"] for tag in description.get("Tags", [])}
    missing = {key: value for key, value in tags.items() if current.get(key) != value}
    if missing:
        secrets_client.tag_resource(SecretId=secret_id, Tags=[
            {"Key": key, "Value": value} for key, value in missing.items()])
        changes.append(f"secret {secret_id}: tagged "
                       + ", ".join(f"{key}={value}" for key, value in missing.items()))
    return changes


def reconcile(dynamodb_client, secrets_client, *, approvals_table: str, nonces_table: str,
              secrets: dict[str, str], existing_secrets: tuple[str, ...] = (),
              tags: dict[str, str] | None = None) -> Report:
    """Create or complete both tables, create every secret in ``secrets`` (id -> JSON value)
    that does not exist, and give every secret in ``secrets`` or ``existing_secrets`` that exists
    its tags and deletion policy. Never overwrites a secret value, never returns one."""
    tags = tags or {}
    tables = reconcile_tables(dynamodb_client, approvals_table, nonces_table, tags=tags)
    report = Report(list(tables.changes), list(tables.problems))
    for secret_id in dict.fromkeys([*secrets, *existing_secrets]):
        description = _secret_description(secrets_client, secret_id)
        if description is None and secret_id in secrets:
            try:
                secrets_client.create_secret(
                    Name=secret_id, SecretString=secrets[secret_id],
                    Description="Jinrun approval gateway credential (see docs/operations.md)",
                    Tags=[{"Key": key, "Value": value} for key, value in tags.items()])
                report.changes.append(f"created secret {secret_id}")
            except secrets_client.exceptions.ResourceExistsException:
                pass  # created concurrently: still never overwritten
            description = _secret_description(secrets_client, secret_id)
        if description is not None:
            report.changes += reconcile_secret(secrets_client, secret_id, tags, description)
    return report


def bootstrap(dynamodb_client, secrets_client, *, approvals_table: str, nonces_table: str,
              secrets: dict[str, str], tags: dict[str, str] | None = None) -> list[str]:
    """``reconcile`` as human-readable lines: what it changed, what needs a person, or that
    nothing changed."""
    report = reconcile(dynamodb_client, secrets_client, approvals_table=approvals_table,
                       nonces_table=nonces_table, secrets=secrets, tags=tags)
    lines = report.changes + [f"needs a person: {problem}" for problem in report.problems]
    if not lines:
        lines.append(f"nothing changed: tables {approvals_table}, {nonces_table} and "
                     f"{len(secrets)} secret(s) are as they should be")
    return lines


def stage_environment(stage: str, config_path: Path = CONFIG_PATH) -> dict[str, str]:
    """The environment variables a stage's Lambda functions get (top level, then the stage).
    Raises ConfigError when the stage or one of its names is missing."""
    try:
        return load_stage(stage, config_path).environment
    except OpsError as exc:
        raise ConfigError(str(exc)) from None


def _read_secret_file(path: str, secret_id: str,
                      parse: Callable[[str, str], object]) -> str:
    try:
        # '-' reads stdin, so a credential can be piped in without a plaintext file on disk.
        raw = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the file for secret {secret_id}: {exc.strerror}") from None
    parse(secret_id, raw)  # raises ConfigError naming the field, never the value
    return raw.strip()


def collect_secrets(env: dict[str, str], *, outbound_file: str | None,
                    inbound_file: str | None, token_key: str | None,
                    token_key_file: str | None) -> dict[str, str]:
    """Secret id -> validated JSON value for every secret the operator supplied."""
    values: dict[str, str] = {}
    if outbound_file:
        secret_id = env[settings.OUTBOUND_SECRET_ID]
        values[secret_id] = _read_secret_file(outbound_file, secret_id, parse_outbound)
    if inbound_file:
        secret_id = env[settings.INBOUND_SECRET_ID]
        values[secret_id] = _read_secret_file(inbound_file, secret_id, parse_inbound)
    secret_id = env[settings.TOKEN_SECRET_ID]
    if token_key_file:
        values[secret_id] = _read_secret_file(token_key_file, secret_id, parse_token_keys)
    elif token_key == GENERATE:
        values[secret_id] = json.dumps({"keys": [secrets_module.token_urlsafe(48)]})
    return values


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ops.bootstrap",
        description="Create or complete the gateway's DynamoDB tables and Secrets Manager secrets "
                    "for a stage: point-in-time recovery, TTL, deletion protection, the approvals "
                    "stream, tags. Idempotent; never overwrites a secret value.")
    parser.add_argument("--stage", required=True, help="stage in .chalice/config.json")
    parser.add_argument("--region", help="AWS region (default: AWS_REGION, AWS_DEFAULT_REGION)")
    parser.add_argument("--config", default=str(CONFIG_PATH), help=argparse.SUPPRESS)
    parser.add_argument("--outbound-secret-file", metavar="FILE",
                        help='JSON {"appKey", "appSecret", "iv"} issued by Zeyi; - reads stdin')
    parser.add_argument("--inbound-secret-file", metavar="FILE",
                        help='JSON {"credentials": [{"appKey", "appSecret"}, ...]} Jinrun issues '
                             "to Zeyi (or create it with `python -m ops secrets add-inbound` "
                             "after this run)")
    token = parser.add_mutually_exclusive_group()
    token.add_argument("--token-key", choices=[GENERATE],
                       help="generate a random access-token signing key")
    token.add_argument("--token-key-file", metavar="FILE", help='JSON {"keys": ["...", ...]}')
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        stage = load_stage(args.stage, Path(args.config))
        env = stage.environment
        values = collect_secrets(env, outbound_file=args.outbound_secret_file,
                                 inbound_file=args.inbound_secret_file,
                                 token_key=args.token_key, token_key_file=args.token_key_file)
    except (OpsError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return run(lambda: _run(args, stage, env, values))


def _deployed_stage_only(session, stage, env: dict[str, str]) -> list[str]:
    """What only a deployed stage needs before chalice deploy: each function's log group with
    its retention, and the approvals stream's ARN in config.json (chalice reads it when it
    imports app.py; ``config fill-stream`` does the same alone)."""
    from ops.events import write_stream_arn
    from ops.log_groups import reconcile_log_groups

    changes = reconcile_log_groups(client(session, "logs"), stage)
    table = client(session, "dynamodb").describe_table(
        TableName=env[settings.APPROVALS_TABLE])["Table"]
    stream = table.get("LatestStreamArn")
    usable = table.get("StreamSpecification", {}).get("StreamViewType") == "NEW_AND_OLD_IMAGES"
    if stream and usable and write_stream_arn(stage, stream):
        changes.append(f"set {settings.APPROVALS_STREAM_ARN} {stream} in {stage.path} (commit "
                       "it)")
    return changes


def _run(args, stage, env: dict[str, str], values: dict[str, str]) -> int:
    from ops.events import EventResources, reconcile_event_resources

    session = aws_session(args.region)
    dynamodb, secrets_client = client(session, "dynamodb"), client(session, "secretsmanager")
    secret_ids = tuple(env[name] for name in SECRET_IDS)
    report = reconcile(dynamodb, secrets_client, approvals_table=env[settings.APPROVALS_TABLE],
                       nonces_table=env[settings.NONCES_TABLE], secrets=values,
                       existing_secrets=secret_ids, tags=stage.tags)
    # The approval events: the bus, its archive and the dead-letter queue.
    report.changes += reconcile_event_resources(client(session, "events"), client(session, "sqs"),
                                                EventResources.of(stage), stage.tags)
    # File fields: the attachments bucket (ops.files_bucket; docs/operations.md, "Attachments
    # bucket, file links").
    from ops.files_bucket import reconcile_attachments_bucket, stage_bucket

    bucket, retention_days = stage_bucket(stage)
    report.changes += reconcile_attachments_bucket(
        client(session, "s3"), bucket, region=session.region_name, tags=stage.tags,
        retention_days=retention_days)
    if stage.name not in LOCAL_STAGES:
        report.changes += _deployed_stage_only(session, stage, env)
    for line in report.changes:
        print(line)
    if not report.changes:
        print(f"nothing changed in {session.region_name}: tables {env[settings.APPROVALS_TABLE]}"
              f", {env[settings.NONCES_TABLE]} and the stage's secrets are as they should be")
    for problem in report.problems:
        print(f"needs a person: {problem}", file=sys.stderr)
    how = {
        settings.OUTBOUND_SECRET_ID: "pass --outbound-secret-file with the JSON Zeyi issued ('-' "
                                     "reads it from stdin)",
        settings.INBOUND_SECRET_ID: f"create it with `python -m ops secrets add-inbound --stage "
                                    f"{stage.name}`, or pass --inbound-secret-file",
        settings.TOKEN_SECRET_ID: "pass --token-key generate",
    }
    missing = [name for name in SECRET_IDS if not _secret_exists(secrets_client, env[name])]
    for name in missing:
        print(f"warning: secret {env[name]} does not exist yet; the gateway cannot start "
              f"without it: {how[name]}", file=sys.stderr)
    if missing or report.problems:
        return 1
    print(f"next: python -m ops config check --stage {stage.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
