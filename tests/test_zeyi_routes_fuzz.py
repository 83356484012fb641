"""Hypothesis over raw headers and bodies on the two routes Zeyi calls: whatever arrives, the answer
is the envelope, never a 5xx and never another 4xx than 400, and a refused request stores nothing
(no callback, no approval, no nonce). Requests are often signed correctly, so the body checks
after the signature are reached too, not only the header checks."""
from __future__ import annotations

import json
import string
import time

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests import peer
from tests.conftest import INBOUND, INBOUND_ROTATED, examples
from tests.test_callback_route import CALLBACK, stored_items, token_for

ENVELOPE_KEYS = {"success", "businessException", "errorCode", "message", "result"}
HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=40)
ALNUM = string.ascii_letters + string.digits


# An offset from the time of the request (drawn values must not depend on when they are drawn),
# or a raw header value.
TIMESTAMPS = st.one_of(st.just(0), st.integers(-400_000, 400_000),
                       st.from_regex(r"[0-9]{12,14}", fullmatch=True), HEADER_TEXT)


FIELD_VALUES = st.one_of(
    st.text(max_size=30), st.sampled_from(["finish", "terminate", "agree", "refuse", "", " "]),
    st.integers(), st.none(), st.booleans(), st.lists(st.text(max_size=3), max_size=2),
    st.just("\\ud800"), st.just("x" * 129))


@st.composite
def callback_bodies(draw) -> bytes:
    kind = draw(st.sampled_from(["fields", "fields", "binary", "nested", "escape"]))
    if kind == "binary":
        return draw(st.binary(max_size=200))
    if kind == "nested":
        depth = draw(st.integers(1, 3000))
        return b'{"code":' * depth + b"1" + b"}" * depth
    fields = dict(json.loads(peer.callback_body(code=draw(st.from_regex(r"FZ-[A-Z0-9]{1,8}",
                                                                        fullmatch=True)))))
    for name in draw(st.lists(st.sampled_from(list(fields) + ["extra"]), max_size=3)):
        fields[name] = draw(FIELD_VALUES)
    for name in draw(st.lists(st.sampled_from(list(fields)), max_size=2)):
        fields.pop(name, None)
    text = json.dumps(fields, ensure_ascii=False)
    if kind == "escape":  # a JSON escape the serializer would not write
        text = text.replace('"remark": "', '"remark": "' + draw(st.sampled_from(
            ["\\ud800", "\\udfff\\ud800", "\\u0000", "\\ud83d\\ude00", "\\x41"])))
    return text.encode("utf-8")


@st.composite
def raw_requests(draw, path: str):
    body = draw(callback_bodies()) if path == CALLBACK else draw(st.one_of(
        st.just(b"{}"), st.just(b""), st.binary(max_size=100), callback_bodies()))
    credential = draw(st.sampled_from([INBOUND, INBOUND_ROTATED]))
    timestamp = draw(TIMESTAMPS)
    if isinstance(timestamp, int):
        timestamp = str(int(time.time() * 1000) + timestamp)
    nonce = draw(st.one_of(st.text(ALNUM, min_size=6, max_size=6),
                           st.text(ALNUM, min_size=6, max_size=6), HEADER_TEXT))
    headers = {"appKey": credential["appKey"], "timestamp": timestamp, "nonce": nonce,
               "sign": peer.md5_sign(credential["appKey"], credential["appSecret"], timestamp,
                                     nonce, body),
               "Content-Type": draw(st.sampled_from(["application/json", "text/plain",
                                                     "application/json;charset=utf-8"]))}
    tamper = draw(st.sampled_from(["none", "none", "none", "replace", "drop"]))
    if tamper != "none":
        name = draw(st.sampled_from(["appKey", "timestamp", "nonce", "sign"]))
        if tamper == "drop":
            headers.pop(name)
        else:
            headers[name] = draw(st.one_of(HEADER_TEXT, st.just("")))
    if draw(st.booleans()):
        headers = {name.lower(): value for name, value in headers.items()}
    authorization = draw(st.sampled_from(["valid", "none", "garbage", "other credential"]))
    return body, headers, credential, authorization, draw(HEADER_TEXT)


def _check(gateway, path, request, tokens):
    body, headers, credential, authorization, garbage = request
    if path == CALLBACK and authorization != "none":
        headers = dict(headers)
        headers["Authorization"] = {
            "valid": f"Bearer {tokens[credential['appKey']]}",
            "other credential": f"Bearer {tokens[INBOUND['appKey']]}"
            if credential is INBOUND_ROTATED else f"Bearer {tokens[INBOUND_ROTATED['appKey']]}",
            "garbage": f"Bearer {garbage}"}[authorization]
    before = stored_items()
    response = gateway.http.post(path, body=body, headers=headers)
    answer = json.loads(response.body)
    event(f"HTTP {response.status_code} {answer.get('errorCode')}")
    assert set(answer) == ENVELOPE_KEYS, answer
    assert response.status_code in (200, 400), (response.status_code, answer)
    if response.status_code == 400:
        assert answer["success"] is False and answer["errorCode"] and answer["message"]
        assert stored_items() == before, answer
    else:
        assert answer["success"] is True


@pytest.fixture
def tokens(gateway):
    return {credential["appKey"]: token_for(gateway, credential)
            for credential in (INBOUND, INBOUND_ROTATED)}


FUZZ = settings(max_examples=examples(60), deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow, HealthCheck.data_too_large])


@FUZZ
@given(request=raw_requests(CALLBACK))
def test_any_callback_request_gets_the_envelope_and_a_refusal_stores_nothing(gateway, tokens,
                                                                             request):
    _check(gateway, CALLBACK, request, tokens)


@FUZZ
@given(request=raw_requests("/auth/token"))
def test_any_token_request_gets_the_envelope_and_a_refusal_stores_nothing(gateway, tokens,
                                                                          request):
    _check(gateway, "/auth/token", request, tokens)
