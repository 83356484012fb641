"""Access tokens, credentials parsing and the secrets cache, with injected clocks."""
from __future__ import annotations

import json

import pytest

from chalicelib import tokens
from chalicelib.credentials import parse_inbound, parse_outbound, parse_token_keys
from chalicelib.errors import ConfigError, TokenInvalidError
from chalicelib.secrets_cache import SecretsCache

KEYS = parse_token_keys("t", json.dumps({"keys": ["k" * 32, "old-" + "o" * 32]}))
NOW = 1_800_000_000.0


def test_token_is_valid_until_the_second_it_expires():
    token = tokens.issue_token(KEYS, "app", 7200, clock=lambda: NOW)
    tokens.verify_authorization(KEYS, f"Bearer {token}", "app", clock=lambda: NOW + 7199)
    with pytest.raises(TokenInvalidError, match="expired"):
        tokens.verify_authorization(KEYS, f"Bearer {token}", "app", clock=lambda: NOW + 7200)


def test_tokens_are_unique_and_bound_to_their_app_key():
    first = tokens.issue_token(KEYS, "app", 60, clock=lambda: NOW)
    assert first != tokens.issue_token(KEYS, "app", 60, clock=lambda: NOW)
    with pytest.raises(TokenInvalidError, match="another appKey"):
        tokens.verify_authorization(KEYS, f"Bearer {first}", "other", clock=lambda: NOW)


def test_a_token_signed_by_a_retired_key_still_verifies_and_a_foreign_key_does_not():
    old_only = parse_token_keys("t", json.dumps({"keys": ["old-" + "o" * 32]}))
    token = tokens.issue_token(old_only, "app", 60, clock=lambda: NOW)
    tokens.verify_authorization(KEYS, f"Bearer {token}", "app", clock=lambda: NOW)
    foreign = parse_token_keys("t", json.dumps({"keys": ["f" * 32]}))
    with pytest.raises(TokenInvalidError, match="not valid"):
        tokens.verify_authorization(foreign, f"Bearer {token}", "app", clock=lambda: NOW)


def test_tampered_claims_are_refused():
    token = tokens.issue_token(KEYS, "app", 60, clock=lambda: NOW)
    version, payload, mac = token.split(".")
    forged_payload = tokens._b64encode(json.dumps({"k": "app", "exp": NOW + 10**6}).encode())
    with pytest.raises(TokenInvalidError):
        tokens.verify_authorization(KEYS, f"Bearer {version}.{forged_payload}.{mac}", "app",
                                    clock=lambda: NOW)


@pytest.mark.parametrize(("raw", "field"), [
    ("not json", "not JSON"),
    ('{"appSecret": "0123456789abcdef", "iv": "0102030405060708"}', "appKey"),
    ('{"appKey": "k", "iv": "0102030405060708"}', "appSecret"),
    ('{"appKey": "k", "appSecret": "0123456789abcdef"}', "iv"),
    ('{"appKey": "k", "appSecret": "short", "iv": "0102030405060708"}', "appSecret must be 16"),
    ('{"appKey": "k", "appSecret": "0123456789abcdef", "iv": "0102"}', "iv must be 16"),
    ('{"appKey": "k", "appSecret": "0123456789abcdef", "iv": "0102030405060708",'
     ' "legacySign": "yes"}', "legacySign"),
])
def test_broken_outbound_secret_names_the_secret_and_field_not_the_value(raw, field):
    with pytest.raises(ConfigError) as caught:
        parse_outbound("jinrun/dev/zeyi-outbound", raw)
    assert "jinrun/dev/zeyi-outbound" in caught.value.message and field in caught.value.message
    assert "0123456789abcdef" not in caught.value.message


def test_inbound_secret_accepts_one_credential_or_a_list_and_rejects_repeats():
    one = parse_inbound("s", json.dumps({"appKey": "a", "appSecret": "x"}))
    assert one.get("a").app_secret == "x"
    two = parse_inbound("s", json.dumps({"credentials": [{"appKey": "a", "appSecret": "x"},
                                                         {"appKey": "b", "appSecret": "y"}]}))
    assert two.get("b") is not None and two.get("c") is None
    with pytest.raises(ConfigError, match="listed twice"):
        parse_inbound("s", json.dumps({"credentials": [{"appKey": "a", "appSecret": "x"}] * 2}))
    with pytest.raises(ConfigError, match="credentials"):
        parse_inbound("s", json.dumps({"credentials": []}))


def test_token_keys_must_be_long_enough():
    with pytest.raises(ConfigError, match="at least 32 bytes"):
        parse_token_keys("s", json.dumps({"keys": ["short"]}))


def test_credentials_never_show_their_secret_in_repr():
    credential = parse_outbound("s", json.dumps(
        {"appKey": "k", "appSecret": "0123456789abcdef", "iv": "0102030405060708"}))
    assert "0123456789abcdef" not in repr(credential)


class FakeSecretsManager:
    def __init__(self, value: str):
        self.value = value
        self.calls = 0

    def get_secret_value(self, SecretId):  # noqa: N803 - boto3's parameter name
        self.calls += 1
        return {"SecretString": self.value}


def test_secrets_cache_fetches_again_only_after_max_age():
    fake = FakeSecretsManager(json.dumps({"keys": ["k" * 32]}))
    now = [100.0]
    cache = SecretsCache(lambda: fake, clock=lambda: now[0])
    first = cache.get("id", parse_token_keys, 300)
    now[0] += 299
    assert cache.get("id", parse_token_keys, 300) is first and fake.calls == 1
    now[0] += 1
    cache.get("id", parse_token_keys, 300)
    assert fake.calls == 2
    cache.clear()
    cache.get("id", parse_token_keys, 300)
    assert fake.calls == 3


def test_broken_secret_in_secrets_manager_becomes_config_error_envelope(gateway, monkeypatch):
    from chalicelib import aws
    from tests import peer
    from tests.conftest import INBOUND_SECRET_ID

    aws.client("secretsmanager").put_secret_value(
        SecretId=INBOUND_SECRET_ID, SecretString=json.dumps({"credentials": [{"appKey": "k"}]}))
    response = gateway.http.post("/auth/token", body=b"{}", headers=peer.signed_headers(b"{}"))
    envelope = json.loads(response.body)
    assert response.status_code == 500 and envelope["errorCode"] == "CONFIG_ERROR"
    assert INBOUND_SECRET_ID in envelope["message"] and "appSecret" in envelope["message"]
    assert "Traceback" not in response.body.decode()


def test_missing_secret_is_a_config_error_naming_it(gateway, monkeypatch):
    from tests import peer

    monkeypatch.setenv("INBOUND_SECRET_ID", "no/such/secret")
    response = gateway.http.post("/auth/token", body=b"{}", headers=peer.signed_headers(b"{}"))
    envelope = json.loads(response.body)
    assert envelope["errorCode"] == "CONFIG_ERROR" and "no/such/secret" in envelope["message"]
