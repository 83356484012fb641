"""ops.bootstrap against an empty moto server: creates once, then says nothing changed, and never
shows a secret value."""
from __future__ import annotations

import json

import pytest

from chalicelib import aws
from chalicelib.credentials import parse_inbound, parse_outbound, parse_token_keys
from ops import bootstrap as bootstrap_module
from ops.bootstrap import bootstrap, main, stage_environment
from tests.conftest import INBOUND, INBOUND_ROTATED, OUTBOUND, TOKEN_KEYS


@pytest.fixture
def empty_aws(moto_server, monkeypatch):
    moto_server.reset()
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server.url)
    aws.reset()
    yield moto_server
    aws.reset()


def _values() -> dict[str, str]:
    return {
        "t/outbound": json.dumps(OUTBOUND),
        "t/inbound": json.dumps({"credentials": [INBOUND, INBOUND_ROTATED]}),
        "t/token": json.dumps(TOKEN_KEYS),
    }


def _secret_strings() -> list[str]:
    return [OUTBOUND["appSecret"], INBOUND["appSecret"], INBOUND_ROTATED["appSecret"],
            TOKEN_KEYS["keys"][0]]


def test_bootstrap_creates_then_changes_nothing(empty_aws):
    dynamodb, secrets = aws.client("dynamodb"), aws.client("secretsmanager")
    first = bootstrap(dynamodb, secrets, approvals_table="a-approvals", nonces_table="a-nonces",
                      secrets=_values())
    assert first == ["created table a-approvals", "created table a-nonces",
                     "created secret t/outbound", "created secret t/inbound",
                     "created secret t/token"]

    ttl = dynamodb.describe_time_to_live(TableName="a-nonces")["TimeToLiveDescription"]
    assert ttl["AttributeName"] == "expiresAt"
    for table in ("a-approvals", "a-nonces"):
        description = dynamodb.describe_table(TableName=table)["Table"]
        assert description["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
        backups = dynamodb.describe_continuous_backups(TableName=table)
        pitr = backups["ContinuousBackupsDescription"]["PointInTimeRecoveryDescription"]
        assert pitr["PointInTimeRecoveryStatus"] == "ENABLED"
    stored = secrets.get_secret_value(SecretId="t/inbound")["SecretString"]
    assert set(parse_inbound("t/inbound", stored).by_app_key) == {INBOUND["appKey"],
                                                                   INBOUND_ROTATED["appKey"]}

    changed = dict(_values(), **{"t/outbound": json.dumps(dict(OUTBOUND, appSecret="x" * 32))})
    second = bootstrap(dynamodb, secrets, approvals_table="a-approvals",
                       nonces_table="a-nonces", secrets=changed)
    assert len(second) == 1 and second[0].startswith("nothing changed")
    # An existing secret is never overwritten.
    kept = secrets.get_secret_value(SecretId="t/outbound")["SecretString"]
    assert parse_outbound("t/outbound", kept).app_secret == OUTBOUND["appSecret"]
    for line in first + second:
        for value in _secret_strings():
            assert value not in line


def test_bootstrap_adds_only_what_is_missing(empty_aws):
    dynamodb, secrets = aws.client("dynamodb"), aws.client("secretsmanager")
    bootstrap(dynamodb, secrets, approvals_table="a-approvals", nonces_table="a-nonces",
              secrets={"t/outbound": json.dumps(OUTBOUND)})
    lines = bootstrap(dynamodb, secrets, approvals_table="a-approvals", nonces_table="a-nonces",
                      secrets=_values())
    assert lines == ["created secret t/inbound", "created secret t/token"]


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
