"""``python -m ops secrets ...`` against moto server and the gateway itself: a credential added
without a plaintext file is accepted by the gateway, a retired one is refused, last-seen reads
what the gateway really logs, and the token key rotates with no token refused before its time.
No secret value is ever printed without --show, nor logged."""
from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import time

import pytest

from chalicelib.protocol.credentials import parse_inbound, parse_token_keys
from chalicelib.runtime import aws
from ops.bootstrap import DENY_DELETION_SID
from ops.secret_rotation import KEY_ADDED, KEY_PROMOTED, rotate_token_key
from tests import peer
from tests.conftest import (
    INBOUND,
    INBOUND_ROTATED,
    INBOUND_SECRET_ID,
    TOKEN_KEYS,
    TOKEN_SECRET_ID,
)
from tests.test_ops_cli import run_ops, stage_config

LOG_GROUP = "/aws/lambda/jinrun-approval-gateway-dev"  # the dev stage's API handler


def inbound_credentials() -> list[dict]:
    raw = aws.client("secretsmanager").get_secret_value(SecretId=INBOUND_SECRET_ID)["SecretString"]
    parse_inbound(INBOUND_SECRET_ID, raw)
    return json.loads(raw)["credentials"]


def token_status(gateway, credential) -> tuple[int, dict]:
    """What the gateway answers a signed token request made with ``credential``."""
    import app as gateway_app

    gateway_app._secrets = None  # a container that fetched the secret after the change
    body = b"{}"
    response = gateway.http.post("/auth/token", body=body,
                                 headers=peer.signed_headers(body, credential=credential))
    return response.status_code, json.loads(response.body)


# -- add-inbound ----------------------------------------------------------------------------------

def test_a_generated_credential_is_stored_never_shown_and_accepted(gateway, capsys, caplog,
                                                                   tmp_path):
    caplog.set_level(logging.DEBUG)  # botocore would log request bodies at DEBUG
    status, out, err = run_ops(capsys, "secrets", "add-inbound", "--stage", "dev",
                               "--config", stage_config(tmp_path))
    logged = caplog.text  # what the command logged (the test's own reads below log too)
    assert status == 0 and err == ""
    assert "DEBUG    botocore" in logged  # debug logging was on around the command
    credentials = inbound_credentials()
    assert [c["appKey"] for c in credentials[:2]] == [INBOUND["appKey"], INBOUND_ROTATED["appKey"]]
    new = credentials[2]
    assert re.fullmatch(r"jinrun-dev-\d{8}-[0-9a-f]{6}", new["appKey"])
    assert re.fullmatch(r"[0-9a-f]{32}", new["appSecret"])
    assert out.splitlines()[0] == (f"added inbound credential {new['appKey']} to "
                                   f"{INBOUND_SECRET_ID}; it now accepts: {INBOUND['appKey']}, "
                                   f"{INBOUND_ROTATED['appKey']}, {new['appKey']}")
    assert "within 300 s" in out and "--show" in out
    assert new["appSecret"] not in out + err + logged
    assert token_status(gateway, new)[0] == 200
    assert token_status(gateway, INBOUND)[0] == 200  # the old one still works: an overlap


def test_show_prints_the_secret_once(aws_env, capsys, tmp_path):
    status, out, _ = run_ops(capsys, "secrets", "add-inbound", "--stage", "dev", "--show",
                             "--app-key", "zeyi-2026", "--config", stage_config(tmp_path))
    assert status == 0
    new = inbound_credentials()[-1]
    assert new["appKey"] == "zeyi-2026"
    assert out.count(new["appSecret"]) == 1 and f"appSecret: {new['appSecret']}" in out


def test_the_secret_can_come_from_stdin(gateway, monkeypatch, capsys, caplog, tmp_path):
    caplog.set_level(logging.DEBUG)
    chosen = "0123456789abcdefFEDCBA9876543210"
    monkeypatch.setattr("sys.stdin", io.StringIO(chosen + "\n"))
    status, out, err = run_ops(capsys, "secrets", "add-inbound", "--stage", "dev",
                               "--from-stdin", "--app-key", "zeyi-stdin",
                               "--config", stage_config(tmp_path))
    logged = caplog.text
    assert status == 0
    assert inbound_credentials()[-1] == {"appKey": "zeyi-stdin", "appSecret": chosen}
    assert chosen not in out + err + logged
    assert token_status(gateway, {"appKey": "zeyi-stdin", "appSecret": chosen})[0] == 200


def test_encrypted_callbacks_get_an_iv_the_gateway_can_use(aws_env, capsys, tmp_path):
    config = stage_config(tmp_path, CALLBACK_ENCRYPTED="true")
    status, out, _ = run_ops(capsys, "secrets", "add-inbound", "--stage", "dev", "--show",
                             "--config", config)
    # conftest's second credential has no iv: with encrypted callbacks the list is unusable,
    # so nothing is stored.
    assert status == 1
    assert len(inbound_credentials()) == 2
    aws.client("secretsmanager").put_secret_value(
        SecretId=INBOUND_SECRET_ID, SecretString=json.dumps({"credentials": [INBOUND]}))
    status, out, _ = run_ops(capsys, "secrets", "add-inbound", "--stage", "dev", "--show",
                             "--config", config)
    assert status == 0
    new = inbound_credentials()[-1]
    assert re.fullmatch(r"[A-Za-z0-9]{16}", new["iv"]) and f"iv:        {new['iv']}" in out
    raw = json.dumps({"credentials": inbound_credentials()})
    parse_inbound(INBOUND_SECRET_ID, raw).get(new["appKey"]).codec()  # a usable AES key and iv


def test_the_first_credential_creates_the_secret_with_its_protection(moto_server, monkeypatch,
                                                                     capsys, tmp_path):
    moto_server.reset()
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server.url)
    status, out, _ = run_ops(capsys, "secrets", "add-inbound", "--stage", "dev",
                             "--app-key", "first", "--config", stage_config(tmp_path))
    assert status == 0 and "it now accepts: first" in out
    secrets = aws.client("secretsmanager")
    policy = secrets.get_resource_policy(SecretId=INBOUND_SECRET_ID)["ResourcePolicy"]
    assert DENY_DELETION_SID in policy
    tags = {t["Key"]: t["Value"] for t in secrets.describe_secret(SecretId=INBOUND_SECRET_ID)["Tags"]}
    assert tags == {"app": "jinrun-approval-gateway", "stage": "dev"}


def test_the_placeholder_of_the_cloudformation_path_is_replaced(aws_env, capsys, tmp_path):
    aws.client("secretsmanager").put_secret_value(
        SecretId=INBOUND_SECRET_ID,
        SecretString='{"placeholder": "set the real value with put-secret-value"}')
    status, _, _ = run_ops(capsys, "secrets", "add-inbound", "--stage", "dev",
                           "--app-key", "first", "--config", stage_config(tmp_path))
    assert status == 0
    assert [c["appKey"] for c in inbound_credentials()] == ["first"]


def test_an_appkey_already_there_is_refused(aws_env, capsys, tmp_path):
    status, _, err = run_ops(capsys, "secrets", "add-inbound", "--stage", "dev",
                             "--app-key", INBOUND["appKey"], "--config", stage_config(tmp_path))
    assert status == 1
    assert err == f"error: appKey {INBOUND['appKey']} is already in {INBOUND_SECRET_ID}\n"
    assert len(inbound_credentials()) == 2


# -- last-seen and retire-inbound -----------------------------------------------------------------

def gateway_log_lines(gateway, capsys, credential) -> list[str]:
    """The JSON lines the gateway writes for a token request with ``credential``, formatted by
    its own logger: exactly what CloudWatch Logs would hold."""
    from chalicelib.runtime.logs import logger

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logger.registered_formatter)
    logger.addHandler(handler)
    try:
        assert token_status(gateway, credential)[0] == 200
    finally:
        logger.removeHandler(handler)
    lines = [line for line in stream.getvalue().splitlines() if line.startswith("{")]
    assert any(json.loads(line).get("appKey") == credential["appKey"] for line in lines)
    return lines


def put_logs(lines_with_times: list[tuple[str, float]]) -> None:
    logs = aws.client("logs")
    with contextlib.suppress(logs.exceptions.ResourceAlreadyExistsException):
        logs.create_log_group(logGroupName=LOG_GROUP)
    stream = f"2026/01/01/[$LATEST]{time.monotonic_ns()}"
    logs.create_log_stream(logGroupName=LOG_GROUP, logStreamName=stream)
    logs.put_log_events(logGroupName=LOG_GROUP, logStreamName=stream, logEvents=[
        {"timestamp": int(at * 1000), "message": line}
        for line, at in sorted(lines_with_times, key=lambda pair: pair[1])])


def test_last_seen_finds_the_latest_use_of_that_appkey_only(gateway, capsys, tmp_path):
    old_use = gateway_log_lines(gateway, capsys, INBOUND)
    other_use = gateway_log_lines(gateway, capsys, INBOUND_ROTATED)
    now = time.time()
    put_logs([(line, now - 3 * 86400) for line in old_use]
             + [(line, now - 3600) for line in other_use])
    config = stage_config(tmp_path)
    status, out, _ = run_ops(capsys, "secrets", "last-seen", INBOUND["appKey"], "--stage", "dev",
                             "--config", config)
    assert status == 0
    expected = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(int(now - 3 * 86400)))
    assert out.startswith(f"{INBOUND['appKey']}: last seen {expected} (2592")
    assert f"in {LOG_GROUP}" in out
    status, out, _ = run_ops(capsys, "secrets", "last-seen", INBOUND["appKey"], "--days", "1",
                             "--stage", "dev", "--config", config)
    assert out == f"{INBOUND['appKey']}: not seen in {LOG_GROUP} in the last 1 day(s)\n"


def test_last_seen_without_a_log_group_says_so(aws_env, capsys, tmp_path):
    status, _, err = run_ops(capsys, "secrets", "last-seen", "k1", "--stage", "dev",
                             "--config", stage_config(tmp_path))
    assert status == 1
    assert err == (f"error: log group {LOG_GROUP} does not exist: the gateway has not logged in "
                   "this region yet (wrong region?)\n")


def test_retire_refuses_a_key_in_use_then_retires_it_and_the_gateway_refuses_it(gateway, capsys,
                                                                                tmp_path):
    put_logs([(line, time.time() - 600) for line in gateway_log_lines(gateway, capsys, INBOUND)])
    config = stage_config(tmp_path)
    status, _, err = run_ops(capsys, "secrets", "retire-inbound", INBOUND["appKey"],
                             "--stage", "dev", "--config", config)
    assert status == 1 and f"Zeyi used {INBOUND['appKey']} at " in err and "--force" in err
    assert len(inbound_credentials()) == 2

    status, out, _ = run_ops(capsys, "secrets", "retire-inbound", INBOUND["appKey"],
                             "--idle-days", "0.001", "--stage", "dev", "--config", config)
    assert status == 0
    assert out.startswith(f"retired {INBOUND['appKey']} from {INBOUND_SECRET_ID}; it now "
                          f"accepts: {INBOUND_ROTATED['appKey']}")
    assert [c["appKey"] for c in inbound_credentials()] == [INBOUND_ROTATED["appKey"]]
    status, answer = token_status(gateway, INBOUND)
    assert (status, answer["errorCode"]) == (400, "APP_KEY_UNKNOWN")  # Zeyi reads only 400s
    assert token_status(gateway, INBOUND_ROTATED)[0] == 200


def test_retire_never_removes_the_last_credential(aws_env, capsys, tmp_path):
    config = stage_config(tmp_path)
    assert run_ops(capsys, "secrets", "retire-inbound", INBOUND["appKey"], "--force",
                   "--stage", "dev", "--config", config)[0] == 0
    status, _, err = run_ops(capsys, "secrets", "retire-inbound", INBOUND_ROTATED["appKey"],
                             "--force", "--stage", "dev", "--config", config)
    assert status == 1 and "is the only inbound credential: add its successor first" in err
    status, _, err = run_ops(capsys, "secrets", "retire-inbound", "nobody", "--force",
                             "--stage", "dev", "--config", config)
    assert status == 1
    assert err == (f"error: appKey nobody is not in {INBOUND_SECRET_ID} (it has: "
                   f"{INBOUND_ROTATED['appKey']})\n")


def test_retire_without_logs_to_check_asks_for_force(aws_env, capsys, tmp_path):
    status, _, err = run_ops(capsys, "secrets", "retire-inbound", INBOUND["appKey"],
                             "--stage", "dev", "--config", stage_config(tmp_path))
    assert status == 1 and f"log group {LOG_GROUP} does not exist" in err


# -- rotate-token-key -----------------------------------------------------------------------------

def token_keys() -> tuple[list[str], list[str]]:
    current = aws.client("secretsmanager").get_secret_value(SecretId=TOKEN_SECRET_ID)
    keys = parse_token_keys(TOKEN_SECRET_ID, current["SecretString"]).keys
    return [key.decode() for key in keys], current["VersionStages"]


def new_token(gateway) -> str:
    status, answer = token_status(gateway, INBOUND)
    assert status == 200
    return answer["result"]["accessToken"]


def callback_status(gateway, token: str) -> tuple[int, str | None]:
    import app as gateway_app

    gateway_app._secrets = None
    body = peer.callback_body(code="ROT-1", businessId=f"b-{time.monotonic_ns()}")
    response = gateway.http.post("/dingtalkAudit/callback", body=body,
                                 headers=peer.signed_headers(body, token=token))
    return response.status_code, json.loads(response.body)["errorCode"]


def test_token_key_rotation_never_refuses_a_valid_token_early(gateway, capsys, caplog, tmp_path):
    caplog.set_level(logging.DEBUG)
    old_key = TOKEN_KEYS["keys"][0]
    old_token = new_token(gateway)
    status, out, _ = run_ops(capsys, "secrets", "rotate-token-key", "--stage", "dev",
                             "--config", stage_config(tmp_path))
    logged = caplog.text
    assert status == 0 and out.startswith("step 1 of 3: added a new key")
    keys, stages = token_keys()
    assert keys[0] == old_key and len(keys) == 2 and KEY_ADDED in stages
    new_key = keys[1]
    assert len(new_key) >= 64 and new_key not in out + logged
    assert callback_status(gateway, old_token)[0] == 200  # tokens are still signed by old

    # Too early for step 2: nothing changes.
    status, out, _ = run_ops(capsys, "secrets", "rotate-token-key", "--stage", "dev",
                             "--config", stage_config(tmp_path))
    assert status == 4 and out.startswith("step 1 of 3 done: the new key verifies; wait ")
    assert token_keys()[0] == [old_key, new_key]

    secrets = aws.client("secretsmanager")
    now = time.time()
    lines = rotate_token_key(secrets, TOKEN_SECRET_ID, cache_seconds=300, ttl_seconds=7200,
                             clock=lambda: now + 301)
    assert lines[0] == "step 2 of 3: the new key signs every new token now"
    assert token_keys() == ([new_key, old_key], ["AWSCURRENT", KEY_PROMOTED])
    fresh_token = new_token(gateway)
    assert callback_status(gateway, fresh_token)[0] == 200
    assert callback_status(gateway, old_token)[0] == 200  # still valid until the TTL has run

    # The promotion's version was written at `now` (real time): its wait is TTL + cache from then.
    lines = rotate_token_key(secrets, TOKEN_SECRET_ID, cache_seconds=300, ttl_seconds=7200,
                             clock=lambda: now + 7200 + 300 - 5)
    assert lines[0].startswith("step 2 of 3 done: tokens signed by the old key may still be "
                               "valid; wait ")
    lines = rotate_token_key(secrets, TOKEN_SECRET_ID, cache_seconds=300, ttl_seconds=7200,
                             clock=lambda: now + 7200 + 300 + 30)
    assert lines == ["step 3 of 3: retired the old key; the rotation is complete"]
    assert token_keys()[0] == [new_key]
    assert callback_status(gateway, fresh_token)[0] == 200
    assert callback_status(gateway, old_token) == (400, "TOKEN_INVALID")


def test_a_hand_edited_key_list_is_not_guessed_at(aws_env, capsys, tmp_path):
    aws.client("secretsmanager").put_secret_value(
        SecretId=TOKEN_SECRET_ID, SecretString=json.dumps({"keys": ["a" * 40, "b" * 40]}))
    status, _, err = run_ops(capsys, "secrets", "rotate-token-key", "--stage", "dev",
                             "--config", stage_config(tmp_path))
    assert status == 1 and "holds 2 keys and no rotation of this command is in progress" in err
    assert "a" * 40 not in err


@pytest.mark.parametrize("command", [["retire-inbound", "k"], ["rotate-token-key"]])
def test_a_missing_secret_is_one_line(moto_server, monkeypatch, capsys, tmp_path, command):
    moto_server.reset()
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server.url)
    status, _, err = run_ops(capsys, "secrets", *command, "--stage", "dev",
                             "--config", stage_config(tmp_path))
    assert status == 1 and err.count("\n") == 1 and "does not exist" in err


def test_list_inbound_prints_the_appkeys_oldest_first_and_no_secret(aws_env, capsys, tmp_path):
    status, out, err = run_ops(capsys, "secrets", "list-inbound", "--stage", "dev",
                               "--config", stage_config(tmp_path))
    assert (status, err) == (0, "")
    assert out.splitlines() == [INBOUND["appKey"], INBOUND_ROTATED["appKey"]]
    assert INBOUND["appSecret"] not in out
