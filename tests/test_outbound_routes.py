"""The internal surface through app.py: HTTP routes and Lambda functions answer the envelope with
the right status, against the Zeyi simulator on 127.0.0.1 and moto server."""
from __future__ import annotations

import json

import pytest

from tests.conftest import post
from tests.peer import cancel_body, send_body


def test_send_then_status_then_cancel_over_http(gateway, zeyi):
    status, answer = post(gateway, "/audit/send", send_body("HTTP-1"))
    assert status == 200 and answer["success"] is True
    status, again = post(gateway, "/audit/send", send_body("HTTP-1"))
    assert (status, again["errorCode"], again["businessException"]) == (409, "APPROVAL_ACTIVE", True)
    assert "PENDING" in again["message"]
    record = json.loads(gateway.http.get("/audit/HTTP-1").body)["result"]
    assert record["status"] == "PENDING" and len(record["attempts"]) == 1
    status, cancelled = post(gateway, "/audit/cancel", cancel_body("HTTP-1"))
    assert status == 200 and cancelled["success"] is True
    assert json.loads(gateway.http.get("/audit/HTTP-1").body)["result"]["status"] == "CANCELLING"
    # The refused second send never left the gateway: Zeyi saw one send and one cancel.
    assert [r["kind"] for r in zeyi.requests_log()] == ["send", "cancel"]


@pytest.mark.parametrize("raw", [b"", b"not json", b"\xff\xfe", b"[1, 2]", b"null"])
def test_a_body_that_is_not_a_json_object_is_400(gateway, zeyi, raw):
    status, answer = post(gateway, "/audit/send", raw)
    assert (status, answer["errorCode"]) == (400, "VALIDATION_ERROR")
    assert zeyi.requests_log() == []


def test_invalid_fields_are_all_named(gateway, zeyi):
    body = send_body("HTTP-2", orgCode=None, auditFormList=[{"type": "pdf", "key": "k",
                                                              "value": "v"}])
    status, answer = post(gateway, "/audit/send", body)
    assert (status, answer["errorCode"]) == (400, "VALIDATION_ERROR")
    assert "orgCode" in answer["message"] and "auditFormList[0].type" in answer["message"]
    assert gateway.http.get("/audit/HTTP-2").status_code == 404


def test_unknown_code_is_404_envelope(gateway):
    response = gateway.http.get("/audit/NEVER")
    answer = json.loads(response.body)
    assert (response.status_code, answer["errorCode"]) == (404, "APPROVAL_NOT_FOUND")


def test_zeyi_down_is_502_over_http(gateway, monkeypatch):
    from tests.moto_server import free_port

    monkeypatch.setenv("ZEYI_BASE_URL", f"http://127.0.0.1:{free_port()}")
    status, answer = post(gateway, "/audit/send", send_body("HTTP-DOWN"))
    assert (status, answer["errorCode"]) == (502, "UPSTREAM_UNAVAILABLE")


def test_lambda_functions_answer_the_same_envelopes(gateway, zeyi):
    answer = gateway.lambda_.invoke("send_approval", send_body("FN-1")).payload
    assert answer["success"] is True
    got = gateway.lambda_.invoke("get_approval", {"code": "FN-1"}).payload
    assert got["result"]["status"] == "PENDING"
    refused = gateway.lambda_.invoke("send_approval", send_body("FN-1")).payload
    assert refused["errorCode"] == "APPROVAL_ACTIVE"
    bad = gateway.lambda_.invoke("get_approval", {"nope": 1}).payload
    assert bad["errorCode"] == "VALIDATION_ERROR"
    cancelled = gateway.lambda_.invoke("cancel_approval", cancel_body("FN-1")).payload
    assert cancelled["success"] is True
