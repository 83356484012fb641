"""ops.bootstrap against moto server: creates, or completes what a half-finished run left,
says what it changed, then says nothing changed; never shows a secret value; one-line errors."""
from __future__ import annotations

import io
import json

import boto3
import pytest

from chalicelib.protocol.credentials import parse_inbound, parse_outbound, parse_token_keys
from chalicelib.runtime import aws
from chalicelib.runtime.tables import approvals_table_definition, nonces_table_definition
from ops import bootstrap as bootstrap_module
from ops.bootstrap import DENY_DELETION_SID, bootstrap, main, stage_environment
from tests.conftest import INBOUND, INBOUND_ROTATED, OUTBOUND, TOKEN_KEYS

TAGS = {"app": "jinrun-approval-gateway", "stage": "t"}


@pytest.fixture(autouse=True)
def _config_copy(tmp_path, monkeypatch):
    """The bootstrap names the approvals stream in the stage: in a copy of .chalice, never in
    the repository's config.json."""
    import shutil

    copy = tmp_path / "project" / ".chalice"
    shutil.copytree(bootstrap_module.CONFIG_PATH.parent, copy,
                    ignore=shutil.ignore_patterns("deployed"))
    monkeypatch.setattr(bootstrap_module, "CONFIG_PATH", copy / "config.json")
    return copy / "config.json"


def _values() -> dict[str, str]:
    return {
        "t/outbound": json.dumps(OUTBOUND),
        "t/inbound": json.dumps({"credentials": [INBOUND, INBOUND_ROTATED]}),
        "t/token": json.dumps(TOKEN_KEYS),
    }


def _secret_strings() -> list[str]:
    return [OUTBOUND["appSecret"], INBOUND["appSecret"], INBOUND_ROTATED["appSecret"],
            TOKEN_KEYS["keys"][0]]


def table_state(name: str) -> dict:
    """What an operator would check on a table: the settings bootstrap is responsible for."""
    dynamodb = aws.client("dynamodb")
    table = dynamodb.describe_table(TableName=name)["Table"]
    backups = dynamodb.describe_continuous_backups(TableName=name)["ContinuousBackupsDescription"]
    ttl = dynamodb.describe_time_to_live(TableName=name)["TimeToLiveDescription"]
    tags = dynamodb.list_tags_of_resource(ResourceArn=table["TableArn"])["Tags"]
    stream = table.get("StreamSpecification") or {}
    return {
        "pitr": backups["PointInTimeRecoveryDescription"]["PointInTimeRecoveryStatus"],
        "ttl": (ttl["TimeToLiveStatus"], ttl.get("AttributeName")),
        "deletion_protection": table.get("DeletionProtectionEnabled", False),
        "stream": stream.get("StreamViewType") if stream.get("StreamEnabled") else None,
        "indexes": sorted(index["IndexName"] for index in table.get("GlobalSecondaryIndexes", [])),
        "tags": {tag["Key"]: tag["Value"] for tag in tags},
    }


def secret_state(secret_id: str) -> dict:
    secrets = aws.client("secretsmanager")
    description = secrets.describe_secret(SecretId=secret_id)
    policy = secrets.get_resource_policy(SecretId=secret_id).get("ResourcePolicy")
    statements = json.loads(policy)["Statement"] if policy else []
    return {
        "tags": {tag["Key"]: tag["Value"] for tag in description.get("Tags", [])},
        "deny_delete": [s for s in statements if s.get("Sid") == DENY_DELETION_SID
                        and s["Effect"] == "Deny" and s["Action"] == "secretsmanager:DeleteSecret"],
    }


COMPLETE_APPROVALS = {"pitr": "ENABLED", "ttl": ("DISABLED", None), "deletion_protection": True,
                      "stream": "NEW_AND_OLD_IMAGES", "indexes": ["open-approvals"],
                      "tags": TAGS}
COMPLETE_NONCES = {"pitr": "ENABLED", "ttl": ("ENABLED", "expiresAt"),
                   "deletion_protection": True, "stream": None, "indexes": [], "tags": TAGS}


def test_bootstrap_creates_everything_then_changes_nothing(empty_aws):
    dynamodb, secrets = aws.client("dynamodb"), aws.client("secretsmanager")
    first = bootstrap(dynamodb, secrets, approvals_table="a-approvals", nonces_table="a-nonces",
                      secrets=_values(), tags=TAGS)
    assert first == [
        "created table a-approvals", "table a-approvals: turned on point-in-time recovery",
        "created table a-nonces", "table a-nonces: turned on point-in-time recovery",
        "table a-nonces: turned on TTL on expiresAt",
        "created secret t/outbound", f"secret t/outbound: denied its deletion (resource policy {DENY_DELETION_SID})",
        "created secret t/inbound", f"secret t/inbound: denied its deletion (resource policy {DENY_DELETION_SID})",
        "created secret t/token", f"secret t/token: denied its deletion (resource policy {DENY_DELETION_SID})",
    ]
    assert table_state("a-approvals") == COMPLETE_APPROVALS
    assert table_state("a-nonces") == COMPLETE_NONCES
    for secret_id in _values():
        assert secret_state(secret_id)["tags"] == TAGS
        assert len(secret_state(secret_id)["deny_delete"]) == 1
    assert dynamodb.describe_table(TableName="a-nonces")["Table"][
        "BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    stored = secrets.get_secret_value(SecretId="t/inbound")["SecretString"]
    assert set(parse_inbound("t/inbound", stored).by_app_key) == {INBOUND["appKey"],
                                                                   INBOUND_ROTATED["appKey"]}

    changed = dict(_values(), **{"t/outbound": json.dumps(dict(OUTBOUND, appSecret="x" * 32))})
    second = bootstrap(dynamodb, secrets, approvals_table="a-approvals",
                       nonces_table="a-nonces", secrets=changed, tags=TAGS)
    assert len(second) == 1 and second[0].startswith("nothing changed")
    # An existing secret is never overwritten.
    kept = secrets.get_secret_value(SecretId="t/outbound")["SecretString"]
    assert parse_outbound("t/outbound", kept).app_secret == OUTBOUND["appSecret"]
    for line in first + second:
        for value in _secret_strings():
            assert value not in line


def table_stream(name: str) -> str:
    return aws.client("dynamodb").describe_table(TableName=name)["Table"]["LatestStreamArn"]


def test_a_half_finished_setup_is_completed_and_each_change_named(empty_aws, capsys,
                                                                  _config_copy):
    """What an interrupted first run (or a table made by hand) leaves: bare tables without
    recovery, TTL, protection, stream or tags, and a secret without tags or deletion policy."""
    env = stage_environment("dev")
    dynamodb, secrets = aws.client("dynamodb"), aws.client("secretsmanager")
    for definition in (approvals_table_definition(env["APPROVALS_TABLE"]),
                       nonces_table_definition(env["NONCES_TABLE"])):
        bare = {k: v for k, v in definition.items()
                if k not in {"StreamSpecification", "DeletionProtectionEnabled",
                             "GlobalSecondaryIndexes"}}
        bare["AttributeDefinitions"] = [a for a in definition["AttributeDefinitions"]
                                        if a["AttributeName"] in {"code", "sk", "pk"}]
        dynamodb.create_table(**bare)
    secrets.create_secret(Name=env["TOKEN_SECRET_ID"], SecretString=json.dumps(TOKEN_KEYS))
    approvals, nonces = env["APPROVALS_TABLE"], env["NONCES_TABLE"]
    assert table_state(nonces)["pitr"] == "DISABLED"

    assert main(["--stage", "dev"]) == 1  # two secrets still missing
    out, err = capsys.readouterr()
    tags = "app=jinrun-approval-gateway, stage=dev"
    token = env["TOKEN_SECRET_ID"]
    assert out.splitlines() == [
        f"table {approvals}: turned on deletion protection",
        f"table {approvals}: turned on its NEW_AND_OLD_IMAGES stream",
        f"table {approvals}: created index open-approvals (it fills in the background)",
        f"table {approvals}: turned on point-in-time recovery",
        f"table {approvals}: tagged {tags}",
        f"table {nonces}: turned on deletion protection",
        f"table {nonces}: turned on point-in-time recovery",
        f"table {nonces}: turned on TTL on expiresAt",
        f"table {nonces}: tagged {tags}",
        f"secret {token}: denied its deletion (resource policy {DENY_DELETION_SID})",
        f"secret {token}: tagged {tags}",
        # The approval events' resources (tests/test_ops_events.py).
        f"created event bus {env['EVENT_BUS_NAME']}",
        f"created archive {env['EVENT_BUS_NAME']} of every approval event (365 days)",
        f"created queue {env['EVENT_BUS_NAME']}-dlq (the approval events' dead letters)",
        # The attachments bucket (tests/test_files_bucket.py).
        *(f"bucket {env['ATTACHMENTS_BUCKET']}: {change}" for change in (
            "created", "blocked all public access",
            "objects owned by the bucket owner (ACLs off)", "encrypted at rest (SSE-S3)",
            "refuses every request not made over TLS",
            "unused uploads expire after 2 days, sent files after 90", "tagged app, stage")),
        # Each function's log group with the stage's retention, before any function exists.
        *[f"created log group /aws/lambda/jinrun-approval-gateway-dev{suffix} (30 days)"
          for suffix in ("", "-send_approval", "-cancel_approval",
                         "-request_file_upload", "-get_approval", "-find_stuck_approvals",
                         "-publish_approval_events")],
        f"set APPROVALS_STREAM_ARN {table_stream(approvals)} in {_config_copy} (commit it)",
    ]
    assert err.count("warning: secret") == 2 and "secrets add-inbound --stage dev" in err
    dev_tags = {"app": "jinrun-approval-gateway", "stage": "dev"}
    assert table_state(approvals) == dict(COMPLETE_APPROVALS, tags=dev_tags)
    assert table_state(nonces) == dict(COMPLETE_NONCES, tags=dev_tags)
    assert secret_state(token) == {"tags": dev_tags, "deny_delete": [secret_state(token)["deny_delete"][0]]}

    assert main(["--stage", "dev"]) == 1
    out, _ = capsys.readouterr()
    assert out.startswith("nothing changed in us-east-1")


def test_a_stream_of_another_kind_is_reported_not_replaced(empty_aws, capsys):
    env = stage_environment("dev")
    definition = approvals_table_definition(env["APPROVALS_TABLE"])
    definition["StreamSpecification"] = {"StreamEnabled": True, "StreamViewType": "KEYS_ONLY"}
    aws.client("dynamodb").create_table(**definition)

    assert main(["--stage", "dev", "--token-key", "generate"]) == 1
    _, err = capsys.readouterr()
    assert (f"needs a person: table {env['APPROVALS_TABLE']}: stream is KEYS_ONLY, needs "
            "NEW_AND_OLD_IMAGES") in err
    assert table_state(env["APPROVALS_TABLE"])["stream"] == "KEYS_ONLY"  # left for a person
    assert table_state(env["NONCES_TABLE"])["pitr"] == "ENABLED"  # the rest was still done


def _write(tmp_path, name, value) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(value), encoding="utf-8")
    return str(path)


def test_cli_dev_stage_twice_never_echoes_values(empty_aws, tmp_path, capsys):
    env = stage_environment("dev")
    outbound = _write(tmp_path, "outbound.json", OUTBOUND)
    inbound = _write(tmp_path, "inbound.json", {"credentials": [INBOUND]})
    args = ["--stage", "dev", "--outbound-secret-file", outbound,
            "--inbound-secret-file", inbound, "--token-key", "generate"]

    assert main(args) == 0
    first = capsys.readouterr()
    assert f"created table {env['APPROVALS_TABLE']}" in first.out
    assert f"created table {env['NONCES_TABLE']}" in first.out
    for name in ("OUTBOUND_SECRET_ID", "INBOUND_SECRET_ID", "TOKEN_SECRET_ID"):
        assert f"created secret {env[name]}" in first.out

    secrets = aws.client("secretsmanager")
    token_raw = secrets.get_secret_value(SecretId=env["TOKEN_SECRET_ID"])["SecretString"]
    generated = parse_token_keys(env["TOKEN_SECRET_ID"], token_raw)
    assert len(generated.keys) == 1 and len(generated.signing_key) >= 32

    assert main(args) == 0
    second = capsys.readouterr()
    assert "nothing changed" in second.out and "created" not in second.out
    # The second run generated a fresh key but must not have replaced the stored one.
    assert secrets.get_secret_value(SecretId=env["TOKEN_SECRET_ID"])["SecretString"] == token_raw

    shown = first.out + first.err + second.out + second.err
    for value in _secret_strings() + [generated.signing_key.decode()]:
        assert value not in shown


def test_the_outbound_credential_can_come_from_stdin(empty_aws, monkeypatch, capsys):
    env = stage_environment("dev")
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(OUTBOUND) + "\n"))
    assert main(["--stage", "dev", "--outbound-secret-file", "-"]) == 1  # two still missing
    stored = aws.client("secretsmanager").get_secret_value(
        SecretId=env["OUTBOUND_SECRET_ID"])["SecretString"]
    assert parse_outbound("o", stored).app_secret == OUTBOUND["appSecret"]
    assert OUTBOUND["appSecret"] not in "".join(capsys.readouterr())


def test_aws_region_is_honoured_like_the_aws_cli_does(empty_aws, monkeypatch, capsys):
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    assert main(["--stage", "dev", "--token-key", "generate"]) == 1
    env = stage_environment("dev")

    def tables(region):
        return boto3.client("dynamodb", region_name=region).list_tables()["TableNames"]
    assert env["APPROVALS_TABLE"] in tables("eu-west-1")
    assert tables("us-east-1") == []
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")  # AWS_REGION still wins, as in the CLI
    capsys.readouterr()
    assert main(["--stage", "dev"]) == 1
    assert "nothing changed in eu-west-1" in capsys.readouterr().out


@pytest.mark.parametrize("missing, message", [
    (("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"), "error: no AWS credentials found"),
    (("AWS_DEFAULT_REGION", "AWS_REGION"), "error: no AWS region"),
])
def test_missing_credentials_or_region_is_one_line(empty_aws, monkeypatch, capsys, missing,
                                                   message):
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name in missing:
        monkeypatch.delenv(name, raising=False)
    assert main(["--stage", "dev", "--token-key", "generate"]) == 1
    out, err = capsys.readouterr()
    assert err.startswith(message) and err.count("\n") == 1 and "Traceback" not in err
    assert out == ""


def test_unreachable_endpoint_is_one_line(monkeypatch, capsys):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    assert main(["--stage", "dev"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot reach AWS at http://127.0.0.1:9") and err.count("\n") == 1


def test_cli_rejects_an_invalid_secret_file_without_showing_it(empty_aws, tmp_path, capsys):
    bad = _write(tmp_path, "outbound.json", {"appKey": "k", "appSecret": "short-secret-value",
                                             "iv": "0102030405060708"})
    assert main(["--stage", "dev", "--outbound-secret-file", bad]) == 2
    captured = capsys.readouterr()
    assert "error:" in captured.err and "short-secret-value" not in captured.err + captured.out
    # Validation happens before any AWS call: nothing was created.
    assert aws.client("dynamodb").list_tables()["TableNames"] == []


def test_cli_warns_when_a_secret_is_still_missing(empty_aws, capsys):
    assert main(["--stage", "prod"]) == 1
    captured = capsys.readouterr()
    assert "created table" in captured.out
    assert captured.err.count("warning: secret") == 3


def test_unknown_stage_is_an_error(capsys):
    assert main(["--stage", "nope"]) == 2
    assert "nope" in capsys.readouterr().err


def test_config_path_is_the_repository_config():
    assert bootstrap_module.CONFIG_PATH.name == "config.json"
    assert bootstrap_module.CONFIG_PATH.parent.name == ".chalice"


def test_log_group_retention_matches_the_cloudformation_path():
    """Both paths keep each function's logs equally long (infra/resources.yaml)."""
    from ops.log_groups import LOG_RETENTION_DAYS
    from tests.test_deploy import ROOT, load_cfn

    mapping = load_cfn(ROOT / "infra" / "resources.yaml")["Mappings"]["StageObservability"]
    assert {stage: mapping[stage]["LogRetentionDays"] for stage in mapping} == LOG_RETENTION_DAYS


def test_a_log_group_kept_forever_gets_the_stages_retention(empty_aws, capsys):
    """A group Lambda made at a first invocation (no retention) is given the stage's."""
    aws.client("logs").create_log_group(logGroupName="/aws/lambda/jinrun-approval-gateway-prod")
    main(["--stage", "prod"])
    out, _ = capsys.readouterr()
    assert ("log group /aws/lambda/jinrun-approval-gateway-prod: retention forever -> 365 days"
            in out.splitlines())
    group = aws.client("logs").describe_log_groups(
        logGroupNamePrefix="/aws/lambda/jinrun-approval-gateway-prod")["logGroups"][0]
    assert group["retentionInDays"] == 365


def test_the_tests_fresh_tables_are_the_ones_the_bootstrap_makes(empty_aws):
    # tests/conftest.py makes each moto-server test's tables (make_tables) in five calls, not through
    # ensure_tables: they must stay the tables the bootstrap makes, whatever its definitions
    # become.
    from chalicelib.runtime.tables import ensure_tables, table_problems
    from tests.conftest import APPROVALS_TABLE, NONCES_TABLE, make_tables

    def described() -> dict:
        dynamodb = aws.client("dynamodb")
        tables = {}
        for name in (APPROVALS_TABLE, NONCES_TABLE):
            table = dynamodb.describe_table(TableName=name)["Table"]
            for made_anew in ("CreationDateTime", "LatestStreamArn", "LatestStreamLabel",
                              "TableArn", "TableId", "SSEDescription"):
                table.pop(made_anew, None)
            tables[name] = (
                table, dynamodb.describe_time_to_live(TableName=name)["TimeToLiveDescription"],
                dynamodb.describe_continuous_backups(TableName=name)[
                    "ContinuousBackupsDescription"]["PointInTimeRecoveryDescription"][
                    "PointInTimeRecoveryStatus"])
        return tables

    ensure_tables(aws.client("dynamodb"), APPROVALS_TABLE, NONCES_TABLE)
    bootstrapped = described()
    empty_aws.reset()
    aws.reset()
    make_tables(aws.client("dynamodb"))
    assert described() == bootstrapped
    assert table_problems(aws.client("dynamodb"), APPROVALS_TABLE, NONCES_TABLE) == []
