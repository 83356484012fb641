"""What an internal app learns when its send or cancel body is wrong: every bad field, by name."""
from __future__ import annotations

import json

import pytest

from chalicelib.errors import BodyTooLargeError, ValidationError
from chalicelib.protocol.payloads import (
    SEND_BODY_MAX_BYTES,
    to_wire,
    validate_cancel,
    validate_code,
    validate_send,
)


def send_body(**overrides) -> dict:
    body = {
        "code": "PO-2026-0001",
        "auditType": "purchase",
        "originatorUsername": "E1001",
        "orgCode": "JR01",
        "auditFormList": [
            {"type": "text", "key": "金额", "value": "1200.00"},
            {"type": "file", "key": "合同", "value": "https://files.example/c.pdf",
             "extendValue": "c.pdf"},
        ],
        "conditionParamList": [{"name": "amount", "value": "1200"}],
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not _DROP}


def cancel_body(**overrides) -> dict:
    body = {"code": "PO-2026-0001", "type": "purchase", "remark": "wrong amount",
            "username": "E1001"}
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not _DROP}


_DROP = object()


def problems_of(call, payload) -> str:
    with pytest.raises(ValidationError) as caught:
        call(payload)
    assert caught.value.error_code == "VALIDATION_ERROR"
    assert caught.value.status == 400
    return caught.value.message


def test_a_valid_send_body_is_returned_unchanged():
    body = send_body()
    assert validate_send(body) is body
    assert validate_send(body) == send_body()


def test_optional_fields_may_be_absent_or_null():
    validate_send(send_body(conditionParamList=_DROP))
    validate_send(send_body(conditionParamList=None))
    validate_send(send_body(conditionParamList=[]))
    validate_send(send_body(auditFormList=[{"type": "text", "key": "k", "value": "",
                                            "extendValue": None}]))


@pytest.mark.parametrize("payload", [None, [], "text", 3, True])
def test_a_body_that_is_not_an_object_is_refused(payload):
    assert problems_of(validate_send, payload) == "body must be a JSON object"
    assert problems_of(validate_cancel, payload) == "body must be a JSON object"


def test_every_bad_field_is_named_in_one_message():
    message = problems_of(validate_send, send_body(
        orgCode=_DROP, auditType="", originatorUsername=7,
        auditFormList=[{"type": "video", "key": "k", "value": "v"}, "x",
                       {"type": "file", "key": " ", "value": "ftp://host/f"}],
        conditionParamList=[{"name": "n"}]))
    for expected in [
        "auditType must not be empty",
        "originatorUsername must be a string",
        "orgCode is required",
        "auditFormList[0].type must be text or file",
        "auditFormList[1] must be an object",
        "auditFormList[2].key must not be empty",
        "auditFormList[2].value must be a fileId from POST /files, s3://<bucket>/<key>"
        " or an https URL for a file",
        "conditionParamList[0].value is required",
    ]:
        assert expected in message
    assert message.count(";") == 7


def test_the_problems_are_also_a_list_in_the_result():
    with pytest.raises(ValidationError) as caught:
        validate_send(send_body(orgCode=None, auditFormList=[]))
    assert caught.value.result == {"problems": ["orgCode is required",
                                                "auditFormList must not be empty"]}


def test_unknown_fields_are_refused_by_name_not_dropped():
    message = problems_of(validate_send, send_body(
        conditionParamsList=[], auditFormList=[{"type": "text", "key": "k", "value": "v",
                                                "label": "x"}]))
    assert "conditionParamsList is not a field of a send request" in message
    assert "auditFormList[0].label is not a field of a form item" in message
    assert "extra is not a field of a cancel request" in problems_of(
        validate_cancel, cancel_body(extra=1))


@pytest.mark.parametrize("code", ["", "a/b", "../x", ".hidden", "有中文", "a b", "x" * 65, 12,
                                  "a#b"])
def test_a_code_outside_the_safe_charset_or_length_is_refused(code):
    assert "code must be 1 to 64 characters" in problems_of(validate_send, send_body(code=code))


@pytest.mark.parametrize("code", ["", "x" * 129, "a\nb", 12, None])
def test_a_lookup_code_must_be_printable_and_at_most_128_characters(code):
    with pytest.raises(ValidationError, match="code must be 1 to 128 printable"):
        validate_code(code)


@pytest.mark.parametrize("code", ["有中文", "../x", "a b", "x" * 128])
def test_a_code_a_callback_could_record_can_be_looked_up(code):
    assert validate_code(code) == code


@pytest.mark.parametrize("code", ["A", "x" * 64, "PO_2026.01:7-a", "0"])
def test_codes_inside_the_rule_pass(code):
    assert validate_code(code) == code
    validate_send(send_body(code=code))


def test_a_missing_code_says_it_is_required():
    assert problems_of(validate_send, send_body(code=_DROP)).startswith("code is required")


def test_length_limits():
    assert "auditType must be at most 2000 characters" in problems_of(
        validate_send, send_body(auditType="x" * 2001))
    validate_send(send_body(auditType="x" * 2000))
    long_value = [{"type": "text", "key": "k", "value": "v" * 10_001}]
    assert "auditFormList[0].value must be at most 10000 characters" in problems_of(
        validate_send, send_body(auditFormList=long_value))
    validate_send(send_body(auditFormList=[{"type": "text", "key": "k", "value": "v" * 10_000}]))
    many = [{"type": "text", "key": "k", "value": "v"}] * 101
    assert "auditFormList must have at most 100 items" in problems_of(
        validate_send, send_body(auditFormList=many))
    validate_send(send_body(auditFormList=many[:100]))


def test_a_body_too_big_for_one_stored_attempt_is_refused():
    forms = [{"type": "text", "key": f"k{i}", "value": "值" * 10_000} for i in range(10)]
    assert len(to_wire(send_body(auditFormList=forms))) > SEND_BODY_MAX_BYTES
    with pytest.raises(BodyTooLargeError) as caught:
        validate_send(send_body(auditFormList=forms))
    assert caught.value.status == 413


def test_many_problems_are_capped_in_the_message():
    forms = [{"type": "x", "key": "k", "value": "v"}] * 100
    with pytest.raises(ValidationError) as caught:
        validate_send(send_body(auditFormList=forms))
    assert caught.value.message.endswith("; and 80 more problems")
    assert len(caught.value.result["problems"]) == 20


def test_a_lone_surrogate_is_refused_rather_than_crashing_the_serializer():
    payload = json.loads('{"code": "A1", "auditType": "\\ud800", "originatorUsername": "u",'
                         ' "orgCode": "o", "auditFormList": [{"type": "text", "key": "k",'
                         ' "value": "v"}]}')
    assert "auditType must be valid Unicode text" in problems_of(validate_send, payload)


@pytest.mark.parametrize("url", ["https://h/f.pdf", "HTTP://h:8080/a?b=c", "http://1.2.3.4/x"])
def test_file_urls_that_pass(url):
    validate_send(send_body(auditFormList=[{"type": "file", "key": "f", "value": url}]))


@pytest.mark.parametrize("url", ["", "/relative", "https://", "file:///etc/passwd",
                                 "javascript:alert(1)", "https://h/a b", "https://[::1"])
def test_file_urls_that_fail(url):
    message = problems_of(validate_send, send_body(
        auditFormList=[{"type": "file", "key": "f", "value": url}]))
    assert "auditFormList[0].value" in message


def test_a_valid_cancel_body_is_returned_unchanged():
    body = cancel_body()
    assert validate_cancel(body) is body


def test_every_bad_cancel_field_is_named():
    message = problems_of(validate_cancel, cancel_body(code=_DROP, type="", remark=None,
                                                       username=["E1"]))
    assert message == ("code is required; type must not be empty; remark is required;"
                       " username must be a string")


def test_the_wire_form_is_compact_utf8_json_with_non_ascii_kept():
    assert to_wire({"a": "金润 <&>", "b": [1]}) == '{"a":"金润 <&>","b":[1]}'.encode()


def _send_of_size(size: int) -> dict:
    """A valid send body whose wire form is exactly ``size`` bytes (ASCII padding)."""
    forms = [{"type": "text", "key": f"k{i}", "value": "v" * 10_000} for i in range(19)]
    forms.append({"type": "text", "key": "pad", "value": ""})
    body = send_body(auditFormList=forms)
    forms[-1]["value"] = "p" * (size - len(to_wire(body)))
    assert len(to_wire(body)) == size
    return body


def test_the_send_size_limit_is_exact():
    assert SEND_BODY_MAX_BYTES == 200_000
    validate_send(_send_of_size(200_000))
    with pytest.raises(BodyTooLargeError, match="200001 bytes"):
        validate_send(_send_of_size(200_001))


@pytest.mark.parametrize(("overrides", "problem"), [
    ({"auditFormList": _DROP}, "auditFormList is required"),
    ({"auditFormList": {"type": "text"}}, "auditFormList must be a list"),
    ({"auditFormList": "x"}, "auditFormList must be a list"),
    ({"auditFormList": [{"key": "k", "value": "v"}]}, "auditFormList[0].type is required"),
    ({"conditionParamList": ["x"]}, "conditionParamList[0] must be an object"),
    ({"conditionParamList": [{"name": "n", "value": "v", "op": "="}]},
     "conditionParamList[0].op is not a field of a condition parameter"),
    ({"conditionParamList": [{"value": "v"}]}, "conditionParamList[0].name is required"),
    ({"conditionParamList": {"name": "n"}}, "conditionParamList must be a list"),
    ({"auditFormList": [{"type": "text", "key": "k", "value": "v", "extendValue": 3}]},
     "auditFormList[0].extendValue must be a string"),
    ({"auditFormList": [{"type": "text", "key": "k", "value": "v", "extendValue": "e" * 10_001}]},
     "auditFormList[0].extendValue must be at most 10000 characters"),
])
def test_each_send_finding_is_refused_by_name(overrides, problem):
    assert problem in problems_of(validate_send, send_body(**overrides))


def test_extend_value_may_be_empty_null_or_up_to_10000_characters():
    for extend in ("", None, "e" * 10_000):
        validate_send(send_body(auditFormList=[{"type": "text", "key": "k", "value": "v",
                                                "extendValue": extend}]))


def problem_list(call, payload) -> list[str]:
    with pytest.raises(ValidationError) as caught:
        call(payload)
    return caught.value.result["problems"]


def test_unknown_fields_are_named_exactly():
    assert problem_list(validate_send, send_body(extra=1)) == [
        "extra is not a field of a send request"]
    assert problem_list(validate_cancel, cancel_body(extra=1)) == [
        "extra is not a field of a cancel request"]


NOT_A_FILE_VALUE = ("auditFormList[0].value must be a fileId from POST /files,"
                    " s3://<bucket>/<key> or an https URL for a file")


@pytest.mark.parametrize(("value", "problem"), [
    ("", "auditFormList[0].value must not be empty"),
    (" ", "auditFormList[0].value must not be empty"),
    ("https://h/a\x7fb", NOT_A_FILE_VALUE),
    ("https://h/a\u200bb", NOT_A_FILE_VALUE),
    ("https://h/a\x1fb", NOT_A_FILE_VALUE),
    ("https://h/a\x01b", NOT_A_FILE_VALUE),
])
def test_a_file_value_must_be_a_printable_url(value, problem):
    assert problem_list(validate_send, send_body(
        auditFormList=[{"type": "file", "key": "f", "value": value}])) == [problem]


def test_a_text_value_may_hold_anything_printable_or_not():
    validate_send(send_body(auditFormList=[{"type": "text", "key": "k", "value": "a\x7f\x01 b"}]))
