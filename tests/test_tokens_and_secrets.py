"""Access tokens, credentials parsing and the secrets cache, with injected clocks."""
from __future__ import annotations

import json

import pytest

from chalicelib.errors import ConfigError, TokenInvalidError
from chalicelib.protocol import tokens
from chalicelib.protocol.credentials import parse_inbound, parse_outbound, parse_token_keys
from chalicelib.runtime.secrets_cache import SecretsCache

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
    forged_payload = tokens.b64url_encode(json.dumps({"k": "app", "exp": NOW + 10**6}).encode())
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
    assert "0102030405060708" not in repr(credential)  # the iv is key material too


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
    from chalicelib.runtime import aws
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


# -- token payloads: only a holder of the key can mint one, but a bad one is still a refusal -----

def _minted(payload: bytes, keys=KEYS) -> str:
    signed_part = f"v1.{tokens.b64url_encode(payload)}" if payload else "v1.abcde"
    return f"{signed_part}.{tokens.b64url_encode(tokens.mac(keys.signing_key, signed_part))}"


@pytest.mark.parametrize("payload", [b'["app", 1]', b"not json", b"\xff\xfe", b"1", b'"app"',
                                     b"null", b""], ids=["array", "not json", "not utf-8",
                                                         "number", "string", "null", "5 chars"])
def test_a_token_with_claims_that_are_not_an_object_is_token_invalid(payload):
    with pytest.raises(TokenInvalidError, match="not valid"):
        tokens.verify_authorization(KEYS, f"Bearer {_minted(payload)}", "app", clock=lambda: NOW)


@pytest.mark.parametrize("claims", [{"k": "app"}, {"k": "app", "exp": "9999999999"},
                                    {"k": "app", "exp": 1.8e9 + 60}])
def test_claims_without_an_integer_expiry_are_expired(claims):
    token = _minted(json.dumps(claims).encode())
    with pytest.raises(TokenInvalidError, match="expired"):
        tokens.verify_authorization(KEYS, f"Bearer {token}", "app", clock=lambda: NOW)


def test_the_scheme_is_case_insensitive_and_the_header_trimmed():
    token = tokens.issue_token(KEYS, "app", 60, clock=lambda: NOW)
    tokens.verify_authorization(KEYS, f"  bearer {token} ", "app", clock=lambda: NOW)
    tokens.verify_authorization(KEYS, f"BEARER {token}", "app", clock=lambda: NOW)


@pytest.mark.parametrize(("header", "why"), [
    ("", "required"), ("Bearer " + "v1." + "a" * 513 + "." + "b" * 43, "malformed"),
    ("Bearer " + "v1." + "a" * 20 + "." + "b" * 42, "malformed"),
    ("Bearer " + "v1." + "a" * 20 + "." + "b" * 44, "malformed"),
    ("Bearer " + "v2." + "a" * 20 + "." + "b" * 43, "malformed"),
    ("Bearer " + "v1." + "a" * 512 + "." + "b" * 43, "not valid"),
    ("Bearer v1.a+b." + "b" * 43, "malformed"), ("Bearer v1.." + "b" * 43, "malformed"),
    ("Bearer v1.a." + "b" * 43, "not valid"),
])
def test_token_formats_at_their_edges(header, why):
    with pytest.raises(TokenInvalidError, match=why):
        tokens.verify_authorization(KEYS, header, "app", clock=lambda: NOW)


def test_a_token_is_version_one_with_a_32_byte_mac():
    token = tokens.issue_token(KEYS, "app", 60, clock=lambda: NOW)
    version, payload, mac = token.split(".")
    assert version == "v1" and len(tokens.b64url_decode(mac)) == 32
    claims = json.loads(tokens.b64url_decode(payload))
    assert claims["k"] == "app" and claims["exp"] == int(NOW) + 60
    assert tokens.TOKEN_TYPE == "Bearer"


def test_new_tokens_are_signed_with_the_first_key_and_every_key_verifies():
    new, old = "n" * 32, "o" * 32
    rotating = parse_token_keys("t", json.dumps({"keys": [new, old]}))
    token = tokens.issue_token(rotating, "app", 60, clock=lambda: NOW)
    only_new = parse_token_keys("t", json.dumps({"keys": [new]}))
    only_old = parse_token_keys("t", json.dumps({"keys": [old]}))
    tokens.verify_authorization(only_new, f"Bearer {token}", "app", clock=lambda: NOW)
    with pytest.raises(TokenInvalidError, match="not valid"):
        tokens.verify_authorization(only_old, f"Bearer {token}", "app", clock=lambda: NOW)
    old_token = tokens.issue_token(only_old, "app", 60, clock=lambda: NOW)
    tokens.verify_authorization(rotating, f"Bearer {old_token}", "app", clock=lambda: NOW)


def test_token_keys_never_show_in_a_repr():
    keys = parse_token_keys("t", json.dumps({"keys": ["secret-key-" + "x" * 30]}))
    assert "secret-key" not in repr(keys) and "secret-key" not in str(keys)


# -- secrets: every field checked when loaded -----------------------------------------------------

@pytest.mark.parametrize("raw", ['{"keys": []}', '{"keys": "k"}', '{"keys": [42]}', '{}',
                                 '[]', '"keys"', "5", "null", '{"keys": ["' + "k" * 31 + '"]}',
                                 '{"keys": ["' + "k" * 32 + '", "short"]}'])
def test_a_token_key_secret_without_usable_keys_is_a_config_error(raw):
    with pytest.raises(ConfigError, match="secret s: "):
        parse_token_keys("s", raw)


def test_token_keys_are_counted_in_bytes_and_32_are_enough():
    assert parse_token_keys("s", json.dumps({"keys": ["k" * 32]})).keys == (b"k" * 32,)
    assert parse_token_keys("s", json.dumps({"keys": ["é" * 16]})).signing_key == "é".encode() * 16
    with pytest.raises(ConfigError):
        parse_token_keys("s", json.dumps({"keys": ["é" * 15 + "k"]}))


@pytest.mark.parametrize(("field", "value"), [
    ("appKey", ""), ("appKey", 7), ("appKey", None), ("appSecret", ""), ("appSecret", ["x"]),
    ("iv", ""), ("iv", 1234567890123456), ("legacySign", "true"), ("legacySign", 1),
])
def test_an_outbound_secret_field_that_is_empty_or_not_a_string_is_a_config_error(field, value):
    data = {"appKey": "k", "appSecret": "0123456789abcdef", "iv": "0102030405060708", field: value}
    with pytest.raises(ConfigError, match=f"secret o: field {field}"):
        parse_outbound("o", json.dumps(data))


@pytest.mark.parametrize(("field", "value"), [
    ("appKey", ""), ("appKey", 7), ("appSecret", ""), ("appSecret", None), ("appSecret", 5),
    ("iv", ""), ("iv", 5), ("legacySign", "no"),
])
def test_an_empty_inbound_secret_would_let_anyone_sign_and_is_refused(field, value):
    data = {"appKey": "k", "appSecret": "fedcba9876543210", field: value}
    with pytest.raises(ConfigError, match=f"secret i: field {field}"):
        parse_inbound("i", json.dumps({"credentials": [data]}))


@pytest.mark.parametrize("raw", ['[]', '"credentials"', "5", "null", '{"credentials": {}}',
                                 '{"credentials": "x"}', '{"credentials": [7]}'])
def test_an_inbound_secret_of_the_wrong_shape_is_a_config_error(raw):
    with pytest.raises(ConfigError, match="secret i: "):
        parse_inbound("i", raw)


@pytest.mark.parametrize("raw", ['[]', '"appKey"', "5", "null"])
def test_an_outbound_secret_that_is_not_an_object_is_a_config_error(raw):
    with pytest.raises(ConfigError, match="must be a JSON object"):
        parse_outbound("o", raw)


def test_inbound_credentials_default_to_the_full_sign_and_an_iv_is_optional():
    credentials = parse_inbound("i", json.dumps({"appKey": "a", "appSecret": "x"}))
    assert credentials.get("a").legacy_sign is False and credentials.get("a").iv is None
    legacy = parse_inbound("i", json.dumps({"appKey": "a", "appSecret": "x", "legacySign": True}))
    assert legacy.get("a").legacy_sign is True
    with pytest.raises(ConfigError, match="no iv"):
        credentials.get("a").codec()


def test_an_inbound_iv_is_checked_with_its_secret_as_an_aes_key():
    with pytest.raises(ConfigError, match="appSecret must be 16, 24 or 32 bytes"):
        parse_inbound("i", json.dumps({"appKey": "a", "appSecret": "x", "iv": "0" * 16}))
    with pytest.raises(ConfigError, match="iv must be 16"):
        parse_inbound("i", json.dumps({"appKey": "a", "appSecret": "k" * 16, "iv": "0" * 15}))
    credential = parse_inbound("i", json.dumps({"appKey": "a", "appSecret": "k" * 24,
                                                "iv": "0" * 16})).get("a")
    assert credential.codec().decrypt(credential.codec().encrypt("金")) == "金"


@pytest.mark.parametrize("key_length", [16, 24, 32])
def test_each_aes_key_length_works(key_length):
    from chalicelib.protocol.aes import AesCodec

    codec = AesCodec(b"k" * key_length, b"0" * 16)
    assert codec.decrypt(codec.encrypt("x" * 40)) == "x" * 40


@pytest.mark.parametrize(("key_length", "iv_length"), [(15, 16), (17, 16), (23, 16), (25, 16),
                                                       (31, 16), (33, 16), (16, 15), (16, 17)])
def test_other_aes_key_and_iv_lengths_are_config_errors(key_length, iv_length):
    from chalicelib.protocol.aes import AesCodec

    with pytest.raises(ConfigError):
        AesCodec(b"k" * key_length, b"0" * iv_length)


def test_a_ciphertext_with_a_character_outside_base64_is_refused_not_skipped():
    from chalicelib.errors import BodyInvalidError
    from chalicelib.protocol.aes import AesCodec

    codec = AesCodec(b"k" * 16, b"0" * 16)
    sealed = codec.encrypt("x" * 40)
    for inserted in ("\n", "!", " "):
        with pytest.raises(BodyInvalidError, match="could not be decrypted"):
            codec.decrypt(sealed[:8] + inserted + sealed[8:])
    with pytest.raises(BodyInvalidError):
        codec.decrypt(sealed[:-4])  # not whole blocks


@pytest.mark.parametrize("app_key", ["a", "ab", "abc", "abcd", "abcde", "abcdef", "k" * 31])
def test_tokens_verify_for_every_payload_length(app_key):
    # The payload's Base64 length, and so the padding its decoder must restore, follows the
    # appKey's length: every residue modulo 4 occurs here.
    token = tokens.issue_token(KEYS, app_key, 60, clock=lambda: NOW)
    tokens.verify_authorization(KEYS, f"Bearer {token}", app_key, clock=lambda: NOW)


def _inbound(app_key: str) -> str:
    return json.dumps({"appKey": app_key, "appSecret": "s" * 16})


# The token's payload holds at most 512 characters: JSON {"k","exp","jti"} of 66 characters
# plus the appKey, in Base64 (4 characters per 3 bytes), so 318 ASCII characters at most. A
# non-ASCII character is escaped by JSON to \uXXXX, 6 characters: 53 of them fit, 54 do not.
@pytest.mark.parametrize("app_key", ["a" * 318, "é" * 53], ids=["318 ascii", "53 escaped"])
def test_the_longest_app_key_that_fits_is_loaded_and_its_tokens_verify(app_key):
    credential = parse_inbound("inbound", _inbound(app_key)).get(app_key)
    token = tokens.issue_token(KEYS, credential.app_key, 7200, clock=lambda: NOW)
    assert len(token.split(".")[1]) == 512  # the limit exactly
    tokens.verify_authorization(KEYS, f"Bearer {token}", app_key, clock=lambda: NOW)


@pytest.mark.parametrize("app_key", ["a" * 319, "é" * 54, "a" * 1000],
                         ids=["319 ascii", "54 escaped", "1000 ascii"])
def test_an_app_key_too_long_for_any_token_is_a_config_error_when_loaded(app_key):
    with pytest.raises(ConfigError) as raised:
        parse_inbound("jinrun/zeyi/inbound", _inbound(app_key))
    message = raised.value.message
    assert message.startswith("secret jinrun/zeyi/inbound: appKey ")
    assert f"({len(app_key)} characters) is too long" in message
    assert "s" * 16 not in message and app_key not in message


@pytest.mark.parametrize("app_key", ["a" * 319, "é" * 54])
def test_no_token_is_issued_that_every_callback_would_refuse(app_key):
    # The secret's check stands in front of this; issuing refuses on its own too, at the
    # latest expiry a 10-digit epoch allows.
    for now in (NOW, 9_999_990_000.0):
        with pytest.raises(ConfigError, match="too long"):
            tokens.issue_token(KEYS, app_key, 7200, clock=lambda now=now: now)

