"""Every route, every method, every content type answers Zeyi's envelope under one status policy:
on Zeyi's routes every refusal is HTTP 400 (its Java HTTP stack reads no other 4xx body) and our
own faults stay 5xx; the internal routes keep REST statuses. Through Chalice's test client with
moto server behind it; tests/e2e/test_contract_fuzz.py repeats the method checks over real HTTP.
"""
from __future__ import annotations

import json

import pytest

from chalicelib.runtime import aws
from tests import peer
from tests.test_callback_route import CALLBACK, stored_items, token_for

ENVELOPE_KEYS = {"success", "businessException", "errorCode", "message", "result"}
ALL_METHODS = ("GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE")
# path, the one method it takes, the status of a refusal there
ROUTES = [("/auth/token", "POST", 400), (CALLBACK, "POST", 400),
          ("/audit/send", "POST", 405), ("/audit/cancel", "POST", 405),
          ("/audit/PO-1", "GET", 405), ("/files", "POST", 405)]
WRONG = [(path, method, allowed, status) for path, allowed, status in ROUTES
         for method in ALL_METHODS if method != allowed]


def envelope_of(response) -> dict:
    assert response.headers["Content-Type"].startswith("application/json")
    body = json.loads(response.body)
    assert set(body) == ENVELOPE_KEYS, body
    return body


@pytest.mark.parametrize(("path", "method", "allowed", "status"), WRONG,
                         ids=[f"{m} {p}" for p, m, _, _ in WRONG])
def test_every_other_method_gets_the_envelope_and_an_allow_header(gateway, zeyi, path, method,
                                                                   allowed, status):
    body = peer.callback_body()
    response = gateway.http.request(method, path, body=body,
                                     headers=peer.signed_headers(body, token="x"))
    answer = envelope_of(response)
    assert response.status_code == status
    assert (answer["success"], answer["errorCode"]) == (False, "METHOD_NOT_ALLOWED")
    assert method in answer["message"] and allowed in answer["message"]
    assert response.headers["Allow"] == allowed
    assert stored_items() == ([], []) and zeyi.requests_log() == []


@pytest.mark.parametrize("content_type", ["text/plain", "multipart/form-data; boundary=x",
                                          "application/xml", "application/json"])
def test_a_get_with_any_content_type_reaches_the_lookup(gateway, content_type):
    response = gateway.http.get("/audit/NEVER-SENT", headers={"Content-Type": content_type})
    answer = envelope_of(response)
    assert (response.status_code, answer["errorCode"]) == (404, "APPROVAL_NOT_FOUND")


def test_a_request_chalice_answers_itself_becomes_the_envelope(gateway, monkeypatch):
    # An exception escaping a view is answered by Chalice, not by our mapping: the middleware
    # turns it into the envelope, with the status policy of the route.
    import app

    def explode(*args, **kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(app, "_envelope_of", explode)
    for path, method in [("/auth/token", "POST"), ("/audit/send", "POST"), ("/audit/X", "GET")]:
        response = gateway.http.request(method, path, body=b"{}")
        answer = envelope_of(response)
        assert (response.status_code, answer["errorCode"]) == (500, "INTERNAL_ERROR")
        assert "secret internals" not in response.body.decode()


# -- bodies: one strict parse, one depth limit, on every route ---------------------------------

DEEP = b'{"a":' * 10_000 + b"1" + b"}" * 10_000  # 110 KB; RecursionError in json.loads


def _zeyi_post(gateway, path: str, body: bytes, token: str | None = None):
    response = gateway.http.post(path, body=body, headers=peer.signed_headers(body, token=token))
    return response.status_code, envelope_of(response)


@pytest.mark.parametrize("path", ["/auth/token", CALLBACK])
@pytest.mark.parametrize("body", [DEEP, b"[" * 10_000 + b"]" * 10_000,
                                  b'{"a":' + b"[" * 17 + b"]" * 17 + b"}"],
                         ids=["10000 objects", "10000 lists", "17 levels"])
def test_deeply_nested_zeyi_bodies_are_body_invalid(gateway, path, body):
    token = token_for(gateway)
    _, nonces_before = stored_items()
    status, answer = _zeyi_post(gateway, path, body, token)
    assert (status, answer["errorCode"]) == (400, "BODY_INVALID")
    assert stored_items() == ([], nonces_before)


@pytest.mark.parametrize("path", ["/audit/send", "/audit/cancel"])
def test_deeply_nested_internal_bodies_are_validation_errors(gateway, zeyi, path):
    response = gateway.http.post(path, body=DEEP, headers={"Content-Type": "application/json"})
    answer = envelope_of(response)
    assert (response.status_code, answer["errorCode"]) == (400, "VALIDATION_ERROR")
    assert "deeper than" in answer["message"]
    assert zeyi.requests_log() == [] and stored_items() == ([], [])


def test_sixteen_levels_still_parse(gateway):
    body = b'{"a":' + b"[" * 15 + b"]" * 15 + b"}"  # the object and 15 lists
    status, answer = _zeyi_post(gateway, "/auth/token", body)
    assert (status, answer["success"]) == (200, True)


@pytest.mark.parametrize(("path", "body"), [
    ("/audit/send", b'{"code":"DUP-1","code":"DUP-2"}'),
    ("/audit/cancel", b'{"code":"DUP-1","type":"t","remark":"r","username":"u","type":"x"}'),
])
def test_internal_bodies_refuse_a_key_given_twice(gateway, zeyi, path, body):
    response = gateway.http.post(path, body=body, headers={"Content-Type": "application/json"})
    answer = envelope_of(response)
    assert (response.status_code, answer["errorCode"]) == (400, "VALIDATION_ERROR")
    assert "repeats the field" in answer["message"]
    assert zeyi.requests_log() == [] and stored_items() == ([], [])


def test_a_send_whose_last_duplicate_is_valid_is_still_refused(gateway, zeyi):
    # The finding: the last value won, and that was stored and sent to Zeyi.
    good = json.dumps(peer.send_body("DUP-3"), ensure_ascii=False)
    body = ('{"orgCode":"SOMEWHERE-ELSE",' + good[1:]).encode("utf-8")
    response = gateway.http.post("/audit/send", body=body)
    assert json.loads(response.body)["errorCode"] == "VALIDATION_ERROR"
    assert zeyi.requests_log() == [] and stored_items() == ([], [])


@pytest.mark.parametrize("field", ["remark", "auditUser"])
def test_a_lone_surrogate_in_a_callback_is_body_invalid_and_stores_nothing(gateway, field):
    body = peer.callback_body(code="SURR-1").replace(
        b'"' + field.encode() + b'":"', b'"' + field.encode() + b'":"\\ud800')
    assert b"\\ud800" in body
    token = token_for(gateway)
    _, nonces_before = stored_items()
    status, answer = _zeyi_post(gateway, CALLBACK, body, token)
    assert (status, answer["errorCode"]) == (400, "BODY_INVALID")
    assert stored_items() == ([], nonces_before)


def test_a_surrogate_pair_escape_is_one_character_and_accepted(gateway):
    body = peer.callback_body(code="SURR-2").replace(b'"remark":"', b'"remark":"\\ud83d\\ude00')
    status, answer = _zeyi_post(gateway, CALLBACK, body, token_for(gateway))
    assert (status, answer["success"]) == (200, True)


def test_a_lone_surrogate_in_an_internal_field_name_is_refused_and_the_answer_encodes(gateway):
    response = gateway.http.post("/audit/send", body=b'{"\\ud800x":1}')
    answer = envelope_of(response)
    assert (response.status_code, answer["errorCode"]) == (400, "VALIDATION_ERROR")
    response.body.decode("utf-8")


def test_a_lone_surrogate_field_name_by_lambda_invoke_is_named_escaped_and_cut(gateway):
    # The Lambda runtime parses the event itself, so this name reaches the validation.
    answer = gateway.lambda_.invoke("send_approval", {"\ud800" + "x" * 500: 1}).payload
    assert answer["errorCode"] == "VALIDATION_ERROR"
    named = next(p for p in answer["result"]["problems"] if "is not a field" in p)
    assert named.startswith("\\ud800xxx") and "..." in named and len(named) < 120
    json.dumps(answer, ensure_ascii=False).encode("utf-8")


def test_an_upstream_message_with_a_lone_surrogate_still_encodes():
    from chalicelib.protocol import envelope

    text = envelope.to_json(envelope.failure("X", "Zeyi said \ud800", result={"\udfff": 1}))
    assert json.loads(text.encode("utf-8")) == {
        "success": False, "businessException": False, "errorCode": "X",
        "message": "Zeyi said \\ud800", "result": {"\\udfff": 1}}


# -- the status policy in one place -------------------------------------------------------------

def test_our_own_faults_stay_5xx_on_zeyi_routes(gateway, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    aws.reset()
    response = gateway.http.post("/auth/token", body=b"{}", headers=peer.signed_headers(b"{}"))
    answer = envelope_of(response)
    assert (response.status_code, answer["errorCode"]) == (503, "SERVICE_UNAVAILABLE")


def test_the_status_policy_maps_every_refusal_on_zeyi_routes_to_400():
    import inspect
    from types import SimpleNamespace

    import app
    from chalicelib import errors

    statuses = {cls.status for _, cls in inspect.getmembers(errors, inspect.isclass)
                if issubclass(cls, errors.GatewayError)}
    assert statuses >= {400, 401, 403, 405, 409, 413, 422, 500, 502, 503, 504}
    for status in statuses:
        error = SimpleNamespace(status=status)  # http_status reads nothing else
        assert app.http_status(error, zeyi_route=False) == status
        assert app.http_status(error, zeyi_route=True) == (400 if status < 500 else status)
