"""Create what ``chalice deploy`` does not: the two DynamoDB tables and the three secrets.

Idempotent: a second run creates nothing and says so. Existing secrets are never overwritten —
rotating a credential is a manual, documented step (docs/operations.md). Secret values are never
printed, logged or returned.

Usage::

    python -m ops.bootstrap --stage dev \\
        --outbound-secret-file outbound.json --inbound-secret-file inbound.json \\
        --token-key generate

Table names and secret ids come from ``.chalice/config.json`` for the stage. AWS credentials and
region come from the usual boto3 chain (``AWS_PROFILE``, ``AWS_REGION``...); ``AWS_ENDPOINT_URL``
points it at moto server in the sandbox.
"""
from __future__ import annotations

import argparse
import json
import secrets as secrets_module
import sys
from collections.abc import Callable
from pathlib import Path

from chalicelib import settings
from chalicelib.credentials import parse_inbound, parse_outbound, parse_token_keys
from chalicelib.errors import ConfigError
from chalicelib.tables import ensure_tables

CONFIG_PATH = Path(__file__).resolve().parent.parent / ".chalice" / "config.json"
GENERATE = "generate"


def _secret_exists(secrets_client, secret_id: str) -> bool:
    try:
        secrets_client.describe_secret(SecretId=secret_id)
    except secrets_client.exceptions.ResourceNotFoundException:
        return False
    return True


def bootstrap(dynamodb_client, secrets_client, *, approvals_table: str, nonces_table: str,
              secrets: dict[str, str]) -> list[str]:
    """Create the two tables (via chalicelib.tables.ensure_tables) and every secret in `secrets`
    (secret id -> JSON string value) that does not exist yet. Idempotent: returns human-readable
    lines saying what it created, or that nothing changed. Never prints or returns secret values."""
    lines = []
    for name in ensure_tables(dynamodb_client, approvals_table, nonces_table):
        lines.append(f"created table {name}")
    for secret_id, value in secrets.items():
        if _secret_exists(secrets_client, secret_id):
            continue
        try:
            secrets_client.create_secret(
                Name=secret_id, SecretString=value,
                Description="Jinrun approval gateway credential (see docs/operations.md)")
        except secrets_client.exceptions.ResourceExistsException:
            continue  # created concurrently: still never overwritten
        lines.append(f"created secret {secret_id}")
    if not lines:
        lines.append(f"nothing changed: tables {approvals_table}, {nonces_table} and "
                     f"{len(secrets)} secret(s) already exist")
    return lines


def stage_environment(stage: str, config_path: Path = CONFIG_PATH) -> dict[str, str]:
    """The environment variables a stage's Lambda functions get (top level, then the stage)."""
    config = json.loads(config_path.read_text(encoding="utf-8"))
    stages = config.get("stages", {})
    if stage not in stages:
        raise ConfigError(f"stage {stage!r} is not in {config_path} (have: {', '.join(stages)})")
    env = dict(config.get("environment_variables", {}))
    env.update(stages[stage].get("environment_variables", {}))
    for name in (settings.APPROVALS_TABLE, settings.NONCES_TABLE, settings.OUTBOUND_SECRET_ID,
                 settings.INBOUND_SECRET_ID, settings.TOKEN_SECRET_ID):
        if not env.get(name):
            raise ConfigError(f"stage {stage!r}: {name} is not set in {config_path}")
    return env


def _read_secret_file(path: str, secret_id: str,
                      parse: Callable[[str, str], object]) -> str:
    try:
        raw = Path(path).read_text(encoding="utf-8")
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
        description="Create the gateway's DynamoDB tables and Secrets Manager secrets for a "
                    "stage. Idempotent; never overwrites an existing secret.")
    parser.add_argument("--stage", required=True, help="stage in .chalice/config.json")
    parser.add_argument("--config", default=str(CONFIG_PATH), help=argparse.SUPPRESS)
    parser.add_argument("--outbound-secret-file", metavar="FILE",
                        help='JSON {"appKey", "appSecret", "iv"} issued by Zeyi')
    parser.add_argument("--inbound-secret-file", metavar="FILE",
                        help='JSON {"credentials": [{"appKey", "appSecret"}, ...]} Jinrun issues '
                             "to Zeyi")
    token = parser.add_mutually_exclusive_group()
    token.add_argument("--token-key", choices=[GENERATE],
                       help="generate a random access-token signing key")
    token.add_argument("--token-key-file", metavar="FILE", help='JSON {"keys": ["...", ...]}')
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        env = stage_environment(args.stage, Path(args.config))
        values = collect_secrets(env, outbound_file=args.outbound_secret_file,
                                 inbound_file=args.inbound_secret_file,
                                 token_key=args.token_key, token_key_file=args.token_key_file)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    import boto3

    session = boto3.session.Session()
    lines = bootstrap(session.client("dynamodb"), session.client("secretsmanager"),
                      approvals_table=env[settings.APPROVALS_TABLE],
                      nonces_table=env[settings.NONCES_TABLE], secrets=values)
    for line in lines:
        print(line)
    missing = [env[name] for name in (settings.OUTBOUND_SECRET_ID, settings.INBOUND_SECRET_ID,
                                      settings.TOKEN_SECRET_ID)
               if env[name] not in values and not _secret_exists(
                   session.client("secretsmanager"), env[name])]
    for secret_id in missing:
        print(f"warning: secret {secret_id} does not exist yet; the gateway cannot start "
              "without it (pass its file or --token-key generate)", file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
