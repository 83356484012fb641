"""The checks that guard the gateway, each at its edge, without AWS: the strict JSON parse, the
inbound header and body checks in protocol order, the timestamp window to the millisecond, the
IP allowlist and the state names. `make mutation` (tools/mutation.py) runs these first: each test
here exists because a mutant of that check went unnoticed without it."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import struct

import pytest

from chalicelib.approvals import inbound, states
from chalicelib.errors import (
    AppKeyUnknownError,
    BodyInvalidError,
    BodyTooLargeError,
    ConfigError,
    HeaderMissingError,
    IpNotAllowedError,
    NonceInvalidError,
    SignInvalidError,
    TimestampInvalidError,
    TimestampOutOfWindowError,
    ValidationError,
)
from chalicelib.protocol import json_body, signing
from chalicelib.protocol.credentials import parse_inbound, parse_token_keys
from chalicelib.protocol.ip_allowlist import check_source_ip
from chalicelib.runtime.settings import load_settings

NOW = 1_764_057_600.0
NOW_MS = 1_764_057_600_000
APP_KEY, SECRET = "app-key-1", "s" * 32
CREDENTIALS = parse_inbound("s", json.dumps({"appKey": APP_KEY, "appSecret": SECRET}))


def clock():
    return NOW


# -- json_body: the one strict parse -------------------------------------------------------------

def parse(text: str) -> dict:
    return json_body.parse_object(text, error=BodyInvalidError)


def refusal(text: str) -> str:
    with pytest.raises(BodyInvalidError) as caught:
        parse(text)
    return caught.value.message


def nested(levels: int) -> str:
    return '{"a":' * (levels - 1) + "{}" + "}" * (levels - 1)


def test_exactly_the_depth_limit_parses_and_one_more_is_refused():
    assert json_body.MAX_DEPTH == 16
    parse(nested(16))
    parse('{"a":' + "[" * 15 + "]" * 15 + "}")
    assert refusal(nested(17)) == "body nests deeper than 16 levels"
    assert "deeper" in refusal('{"a":' + "[" * 16 + "]" * 16 + "}")


def test_brackets_inside_strings_and_escaped_quotes_do_not_count():
    value = parse('{"a":"' + "[{" * 40 + '\\"[[[[[[[[[[[[[[[[[[[["}')
    assert value["a"].startswith("[{[{")
    parse('{"a":' * 15 + '"\\\\"' + "}" * 15)  # an escaped backslash ends the string


def test_depth_is_counted_from_the_first_bracket_wherever_it_starts():
    parse(" \n" + nested(16))
    assert "deeper" in refusal(" \n" + nested(17))


def test_a_closed_sibling_gives_back_exactly_its_own_level():
    # {"x":[], "y": 16 levels}: the list closes to depth 1, then 16 more make 17.
    assert "deeper" in refusal('{"x":[],"y":' + nested(16) + "}")
    parse('{"x":[],"y":' + nested(15) + "}")


def test_closing_brackets_bring_the_depth_back_down():
    # 40 sibling objects, each one level deep: never deeper than 2.
    parse('{"a":[' + ",".join(["{}"] * 40) + "]}")
    parse('{"a":' + "[[]]," * 0 + "[" + ",".join(["[[[[[[[[[[]]]]]]]]]]"] * 5) + "]}")


def test_an_unterminated_string_is_invalid_json_not_a_crash():
    assert refusal('{"a":"' + "[" * 100) == "body is not valid JSON"
    assert refusal('{"a":"\u0001"}') == "body is not valid JSON"  # raw control character


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_standard_constants_are_refused(constant):
    assert refusal('{"a":' + constant + "}") == f"body is not strict JSON: {constant} is not allowed"


def test_a_key_given_twice_is_refused_at_any_depth():
    assert refusal('{"a":1,"a":1}') == "body repeats the field a"
    assert "repeats the field b" in refusal('{"a":[{"b":1,"b":2}]}')


@pytest.mark.parametrize("text", ['{"\\ud800":1}', '{"a":"x\\udfff"}', '{"a":["\\ud800"]}',
                                  '{"a":{"b":"\\ud83d"}}'])
def test_a_lone_surrogate_anywhere_is_refused(text):
    assert "not a whole Unicode character" in refusal(text)


def test_a_surrogate_pair_is_one_character():
    assert parse('{"a":"\\ud83d\\ude00"}') == {"a": "😀"}


@pytest.mark.parametrize("text", ["[]", '"x"', "1", "null", "true"])
def test_only_an_object_is_a_body(text):
    assert refusal(text) == "body must be a JSON object"


def test_each_caller_gets_its_own_error_class():
    with pytest.raises(ValidationError):
        json_body.parse_object("[]", error=ValidationError)
    with pytest.raises(ValidationError, match="UTF-8"):
        json_body.decode_utf8(b"\xff", error=ValidationError)
    assert json_body.decode_utf8("金".encode(), error=ValidationError) == "金"


def test_field_labels_are_escaped_and_cut_to_64_characters():
    assert json_body.field_label("x" * 64) == "x" * 64
    assert json_body.field_label("x" * 65) == "x" * 61 + "..."
    assert json_body.field_label("\ud800a\x00") == "\\ud800a\\x00"
    assert json_body.field_label("\ud800" * 20) == ("\\ud800" * 11)[:61] + "..."
    assert json_body.field_label(7) == "7"
    assert json_body.field_label("金润") == "金润"
    assert len(json_body.field_label("é" * 10, max_chars=5)) == 5


# -- inbound: header checks in protocol order ----------------------------------------------------

def headers(body: bytes = b"{}", **overrides) -> dict:
    values = {"appKey": APP_KEY, "timestamp": str(NOW_MS), "nonce": "abc123"}
    values.update(overrides)
    values.setdefault("sign", signing.sign(values["appKey"] or "", SECRET,
                                           values["timestamp"] or "", values["nonce"] or "", body))
    return {k: v for k, v in values.items() if v is not None}


def verify(body: bytes = b"{}", **overrides):
    request = inbound.InboundRequest(headers=headers(body, **overrides), body=body)
    return inbound.verify_signature(request, CREDENTIALS, skew_seconds=300, clock=clock)


def test_a_good_call_verifies_and_names_its_credential():
    call = verify()
    assert (call.credential.app_key, call.timestamp, call.nonce) == (APP_KEY, str(NOW_MS), "abc123")


@pytest.mark.parametrize(("overrides", "error"), [
    ({"appKey": "nobody", "timestamp": "x", "nonce": "!", "sign": "?"}, AppKeyUnknownError),
    ({"timestamp": "x", "nonce": "!", "sign": "?"}, TimestampInvalidError),
    ({"timestamp": str(NOW_MS - 300_001), "nonce": "!", "sign": "?"}, TimestampOutOfWindowError),
    ({"nonce": "!", "sign": "?"}, NonceInvalidError),
    ({"sign": "?"}, SignInvalidError),
    ({"appKey": None, "timestamp": "x"}, HeaderMissingError),
    ({"timestamp": None, "nonce": "!"}, HeaderMissingError),
    ({"nonce": None, "sign": "?"}, HeaderMissingError),
    ({"sign": None}, HeaderMissingError),
    ({"sign": "  "}, HeaderMissingError),
])
def test_the_first_failing_check_in_protocol_order_is_reported(overrides, error):
    with pytest.raises(error):
        verify(**overrides)


def test_a_body_over_256_kib_is_refused_before_any_header_is_read():
    with pytest.raises(BodyTooLargeError):
        inbound.verify_signature(inbound.InboundRequest({}, b"x" * (256 * 1024 + 1)), CREDENTIALS,
                                 skew_seconds=300, clock=clock)
    verify(b" " * (256 * 1024))  # exactly 256 KiB passes the size check


def test_header_names_are_case_insensitive_and_values_trimmed():
    request = inbound.InboundRequest({"APPKEY": " k ", "sign": "s"}, b"")
    assert request.header("appKey") == "k"
    assert request.optional_header("Sign") == "s"
    assert request.optional_header("nonce") is None


# -- the timestamp window, to the millisecond ------------------------------------------------------

@pytest.mark.parametrize("drift_ms", [-300_000, 300_000, 0, -1, 1])
def test_the_window_includes_its_edges(drift_ms):
    signing.check_timestamp(str(NOW_MS + drift_ms), 300, clock)


@pytest.mark.parametrize(("drift_ms", "word"), [(-300_001, "too old"), (300_001, "in the future")])
def test_one_millisecond_outside_the_window_is_refused(drift_ms, word):
    with pytest.raises(TimestampOutOfWindowError) as caught:
        signing.check_timestamp(str(NOW_MS + drift_ms), 300, clock)
    assert caught.value.message == f"timestamp is {word}: allowed skew is 300 s"


def test_the_window_follows_the_setting():
    signing.check_timestamp(str(NOW_MS + 10_000), 10, clock)
    with pytest.raises(TimestampOutOfWindowError, match="10 s"):
        signing.check_timestamp(str(NOW_MS + 10_001), 10, clock)


def test_a_clock_with_milliseconds_is_compared_to_the_millisecond():
    signing.check_timestamp(str(NOW_MS + 300_999), 300, lambda: NOW + 0.999)
    with pytest.raises(TimestampOutOfWindowError):
        signing.check_timestamp(str(NOW_MS - 299_002), 300, lambda: NOW + 0.999)


def test_new_timestamps_are_epoch_milliseconds():
    assert signing.new_timestamp(lambda: NOW + 0.123) == "1764057600123"


def test_new_nonces_use_lower_case_letters_and_digits_only():
    drawn = "".join(signing.new_nonce() for _ in range(300))
    assert set(drawn) <= set("abcdefghijklmnopqrstuvwxyz0123456789")
    assert len(set(drawn)) > 30  # the whole alphabet is in use


# -- the token endpoint's body ---------------------------------------------------------------------

class FakeNonceStore:
    def __init__(self):
        self.used = []

    def use_nonce(self, app_key, nonce, ttl_seconds):
        self.used.append((app_key, nonce, ttl_seconds))


def issue(body: bytes, **overrides):
    store = FakeNonceStore()
    keys = parse_token_keys("t", json.dumps({"keys": ["k" * 32]}))
    settings = dataclasses.replace(load_settings(), token_ttl_seconds=600)
    request = inbound.InboundRequest(headers(body, **overrides), body)
    result = inbound.issue_access_token(request, credentials=CREDENTIALS, token_keys=keys,
                                        store=store, settings=settings, clock=clock)
    return result, store


@pytest.mark.parametrize("body", [b"", b"  \n", b"{}", b'{"grant_type":"client_credentials"}'])
def test_the_token_endpoint_takes_an_empty_body_or_a_json_object(body):
    result, store = issue(body)
    assert result["tokenType"] == "Bearer" and result["expiresIn"] == 600
    assert store.used == [(APP_KEY, "abc123", 1200)]


def _md5_padding(message_length: int) -> bytes:
    return b"\x80" + b"\x00" * ((55 - message_length) % 64) + struct.pack("<Q", message_length * 8)


@pytest.mark.parametrize("body", [b"[]", b"null", b"{} {}", b'{"a":1,"a":2}', b"\xff{}",
                                  b'{"a":NaN}', b"{" * 20 + b"}" * 20])
def test_the_token_endpoint_refuses_any_other_body_and_spends_no_nonce(body):
    with pytest.raises(BodyInvalidError):
        issue(body)


def test_a_length_extended_token_request_is_refused_and_spends_no_nonce():
    # The attacker's md5 continuation of a seen `{}` request, computed here with the secret.
    prefix = (APP_KEY + SECRET + str(NOW_MS) + "abc123").encode() + b"{}"
    forged_body = b"{}" + _md5_padding(len(prefix)) + b'{"x":1}'
    forged_sign = hashlib.md5(prefix + _md5_padding(len(prefix)) + b'{"x":1}').hexdigest()
    store = FakeNonceStore()
    with pytest.raises(BodyInvalidError):
        keys = parse_token_keys("t", json.dumps({"keys": ["k" * 32]}))
        request = inbound.InboundRequest(headers(forged_body, sign=forged_sign), forged_body)
        inbound.issue_access_token(request, credentials=CREDENTIALS, token_keys=keys,
                                   store=store, settings=load_settings(), clock=clock)
    assert store.used == []


# -- the callback body, field by field ------------------------------------------------------------

def callback(**fields) -> str:
    body = {"code": "HT-1", "auditType": "CONTRACT", "businessId": "bid-1", "type": "finish",
            "result": "agree", "auditUser": "张三", "remark": "同意"}
    body.update(fields)
    return json.dumps({k: v for k, v in body.items() if v is not ...}, ensure_ascii=False)


def callback_problems(**fields) -> str:
    with pytest.raises(BodyInvalidError) as caught:
        inbound.parse_callback(callback(**fields))
    return caught.value.message


@pytest.mark.parametrize("fields", [
    {}, {"result": "refuse"}, {"type": "terminate", "result": ...},
    {"type": "terminate", "result": ""}, {"type": "terminate", "result": None},
    {"type": "terminate", "result": "agree"}, {"auditType": ..., "auditUser": ..., "remark": ...},
    {"auditUser": None, "remark": ""}, {"code": "x" * 128}, {"businessId": "b" * 128},
    {"code": "合同 2019/07"}, {"unknownField": [1, 2]},
])
def test_callbacks_that_are_accepted(fields):
    assert inbound.parse_callback(callback(**fields))["code"]


@pytest.mark.parametrize(("fields", "problem"), [
    ({"code": ...}, "code is required"),
    ({"businessId": ...}, "businessId is required"),
    ({"type": ...}, "type is required"),
    ({"code": " "}, "code is required"),
    ({"businessId": 7}, "businessId is required"),
    ({"code": "x" * 129}, "code is longer than 128"),
    ({"businessId": "b" * 129}, "businessId is longer than 128"),
    ({"businessId": "a\u0007b"}, "businessId must be printable"),
    ({"code": "a\nb"}, "code must be printable"),
    ({"code": "a\u200bb"}, "code must be printable: no control, format, separator"),
    ({"businessId": "a\u2028b"}, "businessId must be printable"),
    ({"result": 1}, "result must be a string"),
    ({"auditType": ["x"]}, "auditType must be a string"),
    ({"auditUser": {"name": "x"}}, "auditUser must be a string"),
    ({"remark": False}, "remark must be a string"),
    ({"type": "approve"}, "type must be one of finish, terminate"),
    ({"result": "maybe"}, "result must be one of agree, refuse when type is finish"),
    ({"result": ...}, "when type is finish"),
    ({"type": "terminate", "result": "maybe"}, "result must be one of agree, refuse or empty"),
])
def test_callbacks_that_are_refused_name_the_field(fields, problem):
    assert problem in callback_problems(**fields)


def test_every_bad_callback_field_is_named_at_once():
    message = callback_problems(code=..., businessId=..., remark=3)
    assert message.count(";") == 2


# -- what a verified callback stores and logs ------------------------------------------------------

class FakeCallbackStore:
    def __init__(self):
        self.records = []

    def record_callback(self, record, ttl_seconds):
        from chalicelib.approvals.store import CallbackOutcome

        self.records.append((record, ttl_seconds))
        return CallbackOutcome("applied", "AGREED")


@pytest.fixture
def logged(logs):
    return logs


def test_a_callback_is_recorded_as_sent_and_logged_by_its_identity(logged):
    body = callback(auditUser="李四", auditType="PAYMENT", remark="同意").encode("utf-8")
    settings = dataclasses.replace(load_settings(), callback_require_token=False)
    store = FakeCallbackStore()
    outcome = inbound.handle_callback(inbound.InboundRequest(headers(body), body),
                                      credentials=CREDENTIALS, token_keys=None, store=store,
                                      settings=settings, clock=clock)
    assert (outcome.disposition, outcome.status) == ("applied", "AGREED")
    ((record, ttl_seconds),) = store.records
    assert (record.code, record.business_id, record.type, record.result) == (
        "HT-1", "bid-1", "finish", "agree")
    assert (record.audit_type, record.audit_user, record.remark) == ("PAYMENT", "李四", "同意")
    assert (record.body, record.app_key, record.nonce) == (body.decode(), APP_KEY, "abc123")
    assert ttl_seconds == settings.nonce_ttl_seconds
    line = next(line for line in logged() if line["message"] == "callback applied")
    assert {k: line[k] for k in ("appKey", "nonce", "code", "businessId", "type", "result",
                                 "status")} == {
        "appKey": APP_KEY, "nonce": "abc123", "code": "HT-1", "businessId": "bid-1",
        "type": "finish", "result": "agree", "status": "AGREED"}


def test_a_refused_callback_is_logged_with_its_call_but_no_code(logged):
    body = b'{"code": 1}'
    settings = dataclasses.replace(load_settings(), callback_require_token=False)
    with pytest.raises(BodyInvalidError):
        inbound.handle_callback(inbound.InboundRequest(headers(body), body),
                                credentials=CREDENTIALS, token_keys=None,
                                store=FakeCallbackStore(), settings=settings, clock=clock)
    from chalicelib.runtime.logs import logger

    logger.warning("probe")
    probe = next(line for line in logged() if line["message"] == "probe")
    assert (probe["appKey"], probe["nonce"]) == (APP_KEY, "abc123") and "code" not in probe


def test_an_issued_token_is_logged_with_its_call(logged):
    issue(b"{}")
    line = next(line for line in logged() if line["message"] == "access token issued")
    assert (line["appKey"], line["nonce"]) == (APP_KEY, "abc123")


# -- IP allowlist ----------------------------------------------------------------------------------

def test_no_allowlist_lets_everyone_in():
    check_source_ip(None, ())
    check_source_ip("198.51.100.1", ())


@pytest.mark.parametrize("ip", ["203.0.113.7", "203.0.113.255", "2001:db8::1", "192.0.2.1"])
def test_addresses_inside_the_allowlist_pass(ip):
    check_source_ip(ip, ("203.0.113.9/24", "2001:db8::/32", "192.0.2.1"))


@pytest.mark.parametrize("ip", ["203.0.114.1", "192.0.2.2", "2001:db9::1"])
def test_addresses_outside_the_allowlist_are_refused_by_name(ip):
    with pytest.raises(IpNotAllowedError, match=f"source IP {ip} is not allowed"):
        check_source_ip(ip, ("203.0.113.0/24", "2001:db8::/32", "192.0.2.1"))


@pytest.mark.parametrize("ip", [None, "", "unknown", "999.1.1.1"])
def test_an_unknown_source_is_refused_not_a_crash(ip):
    with pytest.raises(IpNotAllowedError, match="source IP is unknown"):
        check_source_ip(ip, ("203.0.113.0/24",))


@pytest.mark.parametrize("entry", ["203.0.113.0/33", "not-an-ip", "203.0.113.1 203.0.113.2",
                                   "10.0.0.0/8/8"])
def test_a_malformed_allowlist_entry_is_a_config_error_naming_it(entry):
    with pytest.raises(ConfigError, match="ALLOWED_SOURCE_IPS") as caught:
        check_source_ip("203.0.113.1", ("203.0.113.1", entry))
    assert repr(entry) in caught.value.message


# -- state names, as the API shows them ------------------------------------------------------------

def test_the_state_names_and_sets_are_the_documented_ones():
    assert (states.SUBMITTING, states.PENDING, states.CANCELLING, states.AGREED, states.REFUSED,
            states.TERMINATED, states.FAILED) == ("SUBMITTING", "PENDING", "CANCELLING",
                                                  "AGREED", "REFUSED", "TERMINATED", "FAILED")
    assert {"SUBMITTING", "PENDING", "CANCELLING"} == states.OPEN
