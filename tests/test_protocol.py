"""The protocol core against Zeyi's own Java SDK vectors, plus properties that must hold for any
input: round trips, and any change to any signed byte failing verification."""
from __future__ import annotations

import base64
import json
import pathlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chalicelib.errors import (
    BodyInvalidError,
    ConfigError,
    NonceInvalidError,
    SignInvalidError,
    TimestampInvalidError,
    TimestampOutOfWindowError,
)
from chalicelib.protocol import signing
from chalicelib.protocol.aes import AesCodec
from tests.conftest import examples

VECTORS = json.loads((pathlib.Path(__file__).resolve().parent / "data" / "zeyi_sdk_vectors.json")
                     .read_text(encoding="utf-8"))
NOW = 1764057600.0
KEY = b"5f1c9a2b7e3d4c6a8b0e1f2a3c4d5e6f"
IV = b"0102030405060708"


@pytest.mark.parametrize("vector", VECTORS["sign"], ids=lambda v: v["nonce"])
def test_sign_reproduces_the_sdk(vector):
    args = (vector["appKey"], vector["appSecret"], vector["timestamp"], vector["nonce"],
            vector["body"].encode("utf-8"))
    assert signing.sign(*args) == vector["sign"]
    assert signing.sign(*args, legacy=True) == vector["legacy_header_only_sign"]
    signing.verify(*args, vector["sign"])
    signing.verify(*args, vector["sign"].upper())
    signing.verify(*args, vector["legacy_header_only_sign"], legacy=True)


def test_legacy_sign_ignores_the_body_and_is_off_by_default():
    vector = VECTORS["sign"][0]
    args = (vector["appKey"], vector["appSecret"], vector["timestamp"], vector["nonce"])
    signing.verify(*args, b"anything", vector["legacy_header_only_sign"], legacy=True)
    with pytest.raises(SignInvalidError):
        signing.verify(*args, vector["body"].encode(), vector["legacy_header_only_sign"])


@pytest.mark.parametrize("vector", VECTORS["aes"], ids=lambda v: f"{len(v['key'])}-{v['plaintext'][:8]}")
def test_aes_reproduces_the_sdk(vector):
    codec = AesCodec(vector["key"].encode(), vector["iv"].encode())
    assert codec.encrypt(vector["plaintext"]) == vector["ciphertext_b64"]
    assert codec.decrypt(vector["ciphertext_b64"]) == vector["plaintext"]


def test_sdk_nonces_are_accepted_and_ours_are_valid_and_distinct():
    for nonce in VECTORS["nonces"]:
        signing.check_nonce(nonce)
    ours = {signing.new_nonce() for _ in range(200)}
    assert len(ours) > 190
    for nonce in ours:
        signing.check_nonce(nonce)


@pytest.mark.parametrize("nonce", ["abc12", "abc1234", "abc12!", "abc 12", "ａbc123", "abc12\n", ""])
def test_malformed_nonces_are_rejected(nonce):
    with pytest.raises(NonceInvalidError):
        signing.check_nonce(nonce)


@pytest.mark.parametrize("sign", ["", "0" * 31, "0" * 33, "g" * 32, "０" * 32, "é" * 32])
def test_malformed_signs_are_rejected_before_comparing(sign):
    with pytest.raises(SignInvalidError):
        signing.verify("k", "s", "1764057600000", "abc123", b"{}", sign)


def test_timestamp_window_is_exact_on_both_sides():
    clock = lambda: NOW  # noqa: E731
    inside_past = str(int((NOW - 300) * 1000))
    inside_future = str(int((NOW + 300) * 1000))
    signing.check_timestamp(inside_past, 300, clock)
    signing.check_timestamp(inside_future, 300, clock)
    with pytest.raises(TimestampOutOfWindowError, match="too old"):
        signing.check_timestamp(str(int((NOW - 301) * 1000)), 300, clock)
    with pytest.raises(TimestampOutOfWindowError, match="future"):
        signing.check_timestamp(str(int((NOW + 301) * 1000)), 300, clock)


@pytest.mark.parametrize("timestamp", ["176405760000", "17640576000000", "1764057600.00",
                                       "-764057600000", "abc", "１７６４０５７６０００００"])
def test_timestamps_that_are_not_13_digits_are_rejected(timestamp):
    with pytest.raises(TimestampInvalidError):
        signing.check_timestamp(timestamp, 300, lambda: NOW)


@given(body=st.binary(max_size=512), position=st.integers(min_value=0), flip=st.integers(1, 255))
@settings(max_examples=examples(200), deadline=None)
def test_any_change_to_any_signed_byte_fails(body, position, flip):
    fields = ["0867ef5f23ef446483749e19e1692b40", "1764057600000", "q7w8e9"]
    secret = "ea29cb560a574c488700634b3318d204"
    good = signing.sign(fields[0], secret, fields[1], fields[2], body)
    signing.verify(fields[0], secret, fields[1], fields[2], body, good)
    signed = "".join(fields).encode() + body
    index = position % len(signed)
    tampered = bytearray(signed)
    tampered[index] ^= flip
    key_len, ts_len = len(fields[0]), len(fields[1])
    parts = [bytes(tampered[:key_len]), bytes(tampered[key_len:key_len + ts_len]),
             bytes(tampered[key_len + ts_len:key_len + ts_len + 6]),
             bytes(tampered[key_len + ts_len + 6:])]
    try:
        header_parts = [p.decode("utf-8") for p in parts[:3]]
    except UnicodeDecodeError:
        return  # not representable as a header at all: nothing to forge
    with pytest.raises(SignInvalidError):
        signing.verify(header_parts[0], secret, header_parts[1], header_parts[2], parts[3], good)


@given(plaintext=st.text(max_size=300))
@settings(max_examples=examples(200), deadline=None)
def test_aes_round_trip(plaintext):
    codec = AesCodec(KEY, IV)
    assert codec.decrypt(codec.encrypt(plaintext)) == plaintext


@given(data=st.text(max_size=200), nonce=st.from_regex(r"[A-Za-z0-9]{6}", fullmatch=True))
@settings(max_examples=examples(100), deadline=None)
def test_seal_open_round_trip_and_prefix_check(data, nonce):
    codec = AesCodec(KEY, IV)
    sealed = codec.seal("app", "1764057600000", nonce, data)
    assert codec.open("app", "1764057600000", nonce, sealed) == data
    with pytest.raises(BodyInvalidError):
        codec.open("app", "1764057600001", nonce, sealed)


@pytest.mark.parametrize("ciphertext", [
    "not base64!", "QUJD", base64.b64encode(b"x" * 16).decode(), "", "URpHB6DLOfQvH8HqoGV4Iv4H/eKE\n",
])
def test_undecryptable_bodies_are_one_generic_error(ciphertext):
    with pytest.raises(BodyInvalidError, match="could not be decrypted"):
        AesCodec(KEY, IV).decrypt(ciphertext)


@pytest.mark.parametrize(("key", "iv", "field"), [
    (b"short", IV, "appSecret"), (b"k" * 33, IV, "appSecret"), (KEY, b"0102", "iv")])
def test_bad_key_material_is_a_config_error_naming_the_field(key, iv, field):
    with pytest.raises(ConfigError, match=field):
        AesCodec(key, iv, where="secret x")


def test_gson_body_verifies_byte_for_byte_and_not_after_reserialization():
    body = VECTORS["gson_body"]
    assert "\\u003c" in body
    args = ("0867ef5f23ef446483749e19e1692b40", "ea29cb560a574c488700634b3318d204",
            "1764057600000", "q7w8e9")
    good = signing.sign(*args, body.encode("utf-8"))
    assert good == VECTORS["sign"][0]["sign"]
    reserialized = json.dumps(json.loads(body), ensure_ascii=False, separators=(",", ":"))
    with pytest.raises(SignInvalidError):
        signing.verify(*args, reserialized.encode("utf-8"), good)
