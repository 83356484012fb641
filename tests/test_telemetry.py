"""What an operator gets from every request: a correlation id that reaches the caller, the logs,
the Zeyi call and the record; log lines that name the request; EMF metrics with low-cardinality
dimensions. Through app.py (Chalice's test client), moto server and the Zeyi simulator."""
from __future__ import annotations

import json
import uuid

import pytest

import app as gateway_app
from chalicelib.runtime import aws, correlation, telemetry
from tests import peer
from tests.conftest import APPROVALS_TABLE
from tests.test_callback_route import CALLBACK, post_callback, seed_pending, token_for

NAMESPACE = "jinrun-approval-gateway/test"
# Every dimension a metric may have, and where its values come from: all bounded sets.
DIMENSIONS = {"service", "disposition", "errorCode", "outcome", "operation", "status", "function"}


@pytest.fixture(autouse=True)
def _namespace(monkeypatch):
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", NAMESPACE)


@pytest.fixture
def emf(capsys):
    """The EMF metrics written to stdout so far, as (name, dimensions, values, unit) tuples;
    every blob is checked against the EMF shape and the dimension rule on the way."""
    def read():
        found = []
        for line in capsys.readouterr().out.splitlines():
            if not line.startswith('{"_aws"'):
                continue
            blob = json.loads(line)
            (directive,) = blob["_aws"]["CloudWatchMetrics"]
            assert directive["Namespace"] == NAMESPACE
            (dimension_names,) = directive["Dimensions"]
            assert set(dimension_names) <= DIMENSIONS, dimension_names
            assert "service" in dimension_names and len(dimension_names) <= 2
            dimensions = {name: blob[name] for name in dimension_names if name != "service"}
            for metric in directive["Metrics"]:
                values = blob[metric["Name"]]
                found.append((metric["Name"], dimensions,
                              values if isinstance(values, list) else [values], metric["Unit"]))
        return found
    return read


def counts(found, name: str) -> dict:
    """{dimension value (or None): summed count} of one metric."""
    totals: dict = {}
    for metric, dimensions, values, _ in found:
        if metric == name:
            key = next(iter(dimensions.values()), None)
            totals[key] = totals.get(key, 0) + sum(values)
    return totals


def _head(code: str) -> dict:
    item = aws.client("dynamodb").get_item(TableName=APPROVALS_TABLE,
                                           Key={"code": {"S": code}, "sk": {"S": "HEAD"}})
    return item["Item"]


def _attempts(code: str) -> list[dict]:
    items = aws.client("dynamodb").query(
        TableName=APPROVALS_TABLE, KeyConditionExpression="code = :c",
        ExpressionAttributeValues={":c": {"S": code}})["Items"]
    return [item for item in items if item["sk"]["S"].startswith("ATTEMPT#")]


def _post(gateway, path: str, payload, headers: dict | None = None):
    raw = json.dumps(payload, ensure_ascii=False).encode()
    response = gateway.http.post(path, body=raw, headers={"Content-Type": "application/json",
                                                          **(headers or {})})
    return response, json.loads(response.body)


def _is_uuid(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


# -- correlation ids -------------------------------------------------------------------------------

@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/auth/token"), ("POST", CALLBACK), ("GET", CALLBACK), ("OPTIONS", "/auth/token"),
    ("POST", "/audit/send"), ("POST", "/audit/cancel"), ("GET", "/audit/NOPE"),
    ("PUT", "/audit/send"), ("DELETE", "/audit/NOPE")])
def test_every_answer_returns_the_callers_correlation_id_or_a_new_one(gateway, method, path):
    given = gateway.http.request(method, path, body=b"{}",
                                 headers={correlation.HEADER: "app-42:req/7"})
    assert given.headers[correlation.HEADER] == "app-42:req/7"
    made = gateway.http.request(method, path, body=b"{}")
    assert _is_uuid(made.headers[correlation.HEADER])
    again = gateway.http.request(method, path, body=b"{}")
    assert again.headers[correlation.HEADER] != made.headers[correlation.HEADER]


def test_an_answer_chalice_makes_itself_carries_the_correlation_id_too(gateway, monkeypatch):
    def explode(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(gateway_app, "_envelope_of", explode)
    response = gateway.http.post("/audit/send", body=b"{}", headers={correlation.HEADER: "c-1"})
    assert response.status_code == 500 and response.headers[correlation.HEADER] == "c-1"


@pytest.mark.parametrize("bad", ["has space", "x" * 129, "tab\there", "é"])
def test_a_malformed_correlation_id_is_replaced_never_refused(gateway, logs, bad):
    response = gateway.http.request("GET", "/audit/NOPE", headers={correlation.HEADER: bad})
    assert response.status_code == 404  # the request itself is served as usual
    replaced = response.headers[correlation.HEADER]
    assert _is_uuid(replaced)
    warning = next(line for line in logs() if line["message"] == "correlation id replaced")
    assert warning["correlationId"] == replaced and bad not in json.dumps(warning)


def test_a_send_and_its_cancel_keep_their_correlation_ids_on_the_record(gateway, zeyi, logs):
    response, answer = _post(gateway, "/audit/send", peer.send_body("CORR-1"),
                             {correlation.HEADER: "order-42"})
    assert answer["success"] is True and response.headers[correlation.HEADER] == "order-42"
    head = _head("CORR-1")
    assert head["correlationId"]["S"] == "order-42"
    (attempt,) = _attempts("CORR-1")
    assert attempt["correlationId"]["S"] == "order-42"
    # GET /audit/{code} shows it on the attempt.
    history = json.loads(gateway.http.get("/audit/CORR-1").body)["result"]
    assert history["attempts"][0]["correlationId"] == "order-42"
    # The Zeyi call's log line, like every line of the request, names the request and the code.
    lines = [line for line in logs() if line.get("correlationId") == "order-42"]
    zeyi_line = next(line for line in lines if line["message"] == "zeyi send accepted")
    assert zeyi_line["code"] == "CORR-1" and zeyi_line["httpStatus"] == 200
    assert zeyi_line["function"] == "api_handler"
    assert isinstance(zeyi_line["elapsedMs"], int)

    response, answer = _post(gateway, "/audit/cancel", peer.cancel_body("CORR-1"),
                             {correlation.HEADER: "cancel-7"})
    assert answer["result"]["status"] == "CANCELLING"
    assert _head("CORR-1")["correlationId"]["S"] == "cancel-7"
    (attempt,) = _attempts("CORR-1")
    assert attempt["correlationId"]["S"] == "order-42"
    assert attempt["cancel"]["M"]["correlationId"]["S"] == "cancel-7"
    # The terminate that ends it keeps the cancel's id on the HEAD: its event carries it.
    business_id = zeyi.requests_log(kind="send", code="CORR-1")[0]
    assert business_id  # the simulator saw the send
    status, envelope = post_callback(gateway, peer.callback_body(
        code="CORR-1", businessId="proc-corr-1", type="terminate", result=None))
    assert (status, envelope["result"]["status"]) == (200, "TERMINATED")
    head = _head("CORR-1")
    assert head["correlationId"]["S"] == "cancel-7" and head["changedBy"]["S"] == "callback"
    # And so do the approval events the stream makes of these changes.
    from chalicelib.approvals.events import event_of
    from tests.events_support import stream_records

    told = [(event.detail["status"], event.detail.get("correlationId"))
            for event in map(event_of, stream_records(APPROVALS_TABLE)) if event]
    assert told == [("SUBMITTING", "order-42"), ("PENDING", "order-42"),
                    ("CANCELLING", "cancel-7"), ("TERMINATED", "cancel-7")]


def test_a_new_send_does_not_inherit_the_previous_attempts_correlation_id(aws_env):
    from chalicelib.approvals.states import FAILED
    from chalicelib.approvals.store import DynamoDBApprovalStore

    store = DynamoDBApprovalStore(aws.client("dynamodb"), APPROVALS_TABLE, "unused")
    attempt = store.claim("CORR-2", {"code": "CORR-2"}, 120, correlation_id="first")
    store.settle_send("CORR-2", attempt, FAILED, {"kind": "rejected"}, correlation_id="first")
    store.claim("CORR-2", {"code": "CORR-2"}, 120)
    assert "correlationId" not in _head("CORR-2")


def test_a_lambda_payloads_correlation_id_is_used_and_never_sent_to_zeyi(gateway, zeyi):
    payload = {**peer.send_body("CORR-L"), "correlationId": "batch-9"}
    answer = gateway.lambda_.invoke("send_approval", payload).payload
    assert answer["success"] is True
    assert answer["result"] == {"code": "CORR-L", "status": "PENDING",
                                "attemptId": answer["result"]["attemptId"],
                                "correlationId": "batch-9"}
    (sent,) = zeyi.requests_log(kind="send", code="CORR-L")
    assert "correlationId" not in sent["json"] and "batch-9" not in sent["body"]
    assert _head("CORR-L")["correlationId"]["S"] == "batch-9"
    looked_up = gateway.lambda_.invoke("get_approval", {"code": "CORR-L",
                                                        "correlationId": "look-1"}).payload
    assert looked_up["result"]["correlationId"] == "look-1"
    assert looked_up["result"]["attempts"][0]["correlationId"] == "batch-9"


def test_a_lambda_answer_always_carries_a_correlation_id(gateway):
    refused = gateway.lambda_.invoke("send_approval", ["not", "an", "object"]).payload
    assert refused["errorCode"] == "VALIDATION_ERROR"
    assert set(refused["result"]) == {"correlationId"} and _is_uuid(
        refused["result"]["correlationId"])
    replaced = gateway.lambda_.invoke("get_approval", {"code": "NOPE", "correlationId": 7}).payload
    assert replaced["errorCode"] == "APPROVAL_NOT_FOUND"
    assert _is_uuid(replaced["result"]["correlationId"])
    assert set(replaced) == {"success", "businessException", "errorCode", "message", "result"}


# -- log lines ---------------------------------------------------------------------------------------

class _Context:
    aws_request_id = "lambda-req-1"
    function_name = "jinrun-approval-gateway-test"
    memory_limit_in_mb = 512
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:x"


def _api_gateway_event(method: str, path: str, resource: str, body: str, headers: dict) -> dict:
    return {"resource": resource, "path": path, "httpMethod": method, "headers": headers,
            "multiValueHeaders": {k: [v] for k, v in headers.items()},
            "queryStringParameters": None, "multiValueQueryStringParameters": None,
            "pathParameters": {"code": path.rsplit("/", 1)[1]} if "{" in resource else None,
            "stageVariables": None, "body": body, "isBase64Encoded": False,
            "requestContext": {"resourcePath": resource, "httpMethod": method,
                               "requestId": "api-req-1", "path": f"/api{path}",
                               "identity": {"sourceIp": "203.0.113.9"}, "stage": "api"}}


def test_every_log_line_of_a_request_names_the_request_and_the_code(gateway, zeyi, logs):
    # As API Gateway and Lambda call the handler: both request ids are in the event/context.
    seed_pending("LOG-C1")
    event = _api_gateway_event("POST", "/audit/send", "/audit/send",
                               json.dumps(peer.send_body("LOG-C1")),
                               {"Content-Type": "application/json"})
    answer = gateway_app.app(event, _Context())
    assert answer["statusCode"] == 409
    correlation_id = answer["headers"][correlation.HEADER]
    lines = logs()
    assert lines, "the refusal was not logged"
    for line in lines:
        assert line["lambdaRequestId"] == "lambda-req-1", line
        assert line["apiRequestId"] == "api-req-1", line
        assert line["correlationId"] == correlation_id and line["function"] == "api_handler"
    refusal = next(line for line in lines if line.get("errorCode") == "APPROVAL_ACTIVE")
    assert refusal["code"] == "LOG-C1"


def test_a_lambda_functions_log_lines_name_its_invocation(gateway, logs):
    gateway.lambda_.invoke("get_approval", {"code": "LOG-L1", "correlationId": "look-2"})
    refusal = next(line for line in logs() if line.get("errorCode") == "APPROVAL_NOT_FOUND")
    assert refusal["correlationId"] == "look-2" and refusal["function"] == "get_approval"
    assert refusal["code"] == "LOG-L1" and refusal["lambdaRequestId"]


def test_log_keys_of_one_request_do_not_leak_into_the_next(gateway, logs):
    post_callback(gateway, peer.callback_body(code="LEAK-1"))
    gateway.http.get("/audit/NOPE-2")
    last = [line for line in logs() if line.get("errorCode") == "APPROVAL_NOT_FOUND"][-1]
    assert last["code"] == "NOPE-2" and "businessId" not in last and "nonce" not in last


# -- metrics -----------------------------------------------------------------------------------------

def test_a_callback_writes_one_metric_line_its_disposition(gateway, emf, capsys):
    token = token_for(gateway)
    seed_pending("MET-1")
    emf()
    status, _ = post_callback(gateway, peer.callback_body(code="MET-1"), token=token)
    assert status == 200
    out = capsys.readouterr().out
    assert len([line for line in out.splitlines() if line.startswith('{"_aws"')]) == 1
    post_callback(gateway, peer.callback_body(code="MET-1"), token=token)  # a redelivery
    assert counts(emf(), "Callbacks") == {"duplicate": 1}
    seed_pending("MET-1B")
    post_callback(gateway, peer.callback_body(code="MET-1B"), token=token)
    found = emf()
    assert counts(found, "Callbacks") == {"applied": 1}
    assert [m[3] for m in found] == ["Count"]


def test_refusals_count_their_errorcode_on_every_route(gateway, emf):
    token = token_for(gateway)
    emf()
    body = peer.callback_body(code="MET-2")
    gateway.http.post(CALLBACK, body=body, headers=peer.signed_headers(body, token=token,
                                                                         sign="0" * 32))
    gateway.http.post(CALLBACK, body=body, headers=peer.signed_headers(body, token="v1.x.y"))
    gateway.http.post("/auth/token", body=b"{}", headers=peer.signed_headers(b"{}", sign="1" * 32))
    gateway.http.get("/audit/NOPE-3")
    gateway.http.put("/audit/send", body=b"{}")
    found = emf()
    assert counts(found, "Errors") == {"SIGN_INVALID": 2, "TOKEN_INVALID": 1,
                                       "APPROVAL_NOT_FOUND": 1, "METHOD_NOT_ALLOWED": 1}
    assert "Callbacks" not in {m[0] for m in found}


def test_tokens_issued_are_counted(gateway, emf):
    emf()
    token_for(gateway)
    assert counts(emf(), "TokensIssued") == {None: 1}


@pytest.mark.parametrize(("fault", "outcome", "error_code"), [
    (None, "PENDING", None),
    ("refuse", "FAILED", "UPSTREAM_REJECTED"),
    ("status503", "UPSTREAM_OUTCOME_UNKNOWN", "UPSTREAM_OUTCOME_UNKNOWN"),
    ("system_error", "UPSTREAM_OUTCOME_UNKNOWN", "UPSTREAM_SYSTEM_ERROR"),
])
def test_sends_count_their_outcome_and_zeyis_latency(gateway, zeyi, emf, fault, outcome,
                                                     error_code):
    if fault:
        zeyi.add_fault("send", fault)
    emf()
    _post(gateway, "/audit/send", peer.send_body(f"MET-S-{fault}"))
    found = emf()
    assert counts(found, "Sends") == {outcome: 1}
    assert counts(found, "Errors") == ({error_code: 1} if error_code else {})
    (latency,) = [m for m in found if m[0] == "ZeyiLatency"]
    assert latency[1] == {"operation": "send"} and latency[3] == "Milliseconds"


def test_zeyi_out_of_reach_is_counted_as_such(gateway, emf, monkeypatch):
    from tests.moto_server import free_port

    monkeypatch.setenv("ZEYI_BASE_URL", f"http://127.0.0.1:{free_port()}")
    emf()
    gateway.lambda_.invoke("send_approval", peer.send_body("MET-DOWN"))
    found = emf()
    assert counts(found, "Sends") == {"UPSTREAM_UNAVAILABLE": 1}
    assert counts(found, "Errors") == {"UPSTREAM_UNAVAILABLE": 1}


def test_cancels_count_their_outcome_and_a_refused_send_before_zeyi_counts_no_outcome(
        gateway, zeyi, emf):
    _post(gateway, "/audit/send", peer.send_body("MET-C"))
    emf()
    _post(gateway, "/audit/cancel", peer.cancel_body("MET-C"))
    found = emf()
    assert counts(found, "Cancels") == {"CANCELLING": 1}
    assert [m[1] for m in found if m[0] == "ZeyiLatency"] == [{"operation": "cancel"}]
    _post(gateway, "/audit/send", peer.send_body("MET-C"))  # active: Zeyi is not called
    found = emf()
    assert "Sends" not in {m[0] for m in found}
    assert counts(found, "Errors") == {"APPROVAL_ACTIVE": 1}


def test_a_cold_start_is_counted_once_per_container_and_function(gateway, emf, monkeypatch):
    monkeypatch.setattr(telemetry, "_cold", True)
    emf()
    gateway.http.get("/audit/NOPE-4")
    gateway.http.get("/audit/NOPE-5")
    gateway.lambda_.invoke("get_approval", {"code": "NOPE-6"})
    assert counts(emf(), "ColdStart") == {"api_handler": 1}


def test_a_metric_that_cannot_be_written_never_fails_the_request(gateway, logs, monkeypatch):
    from chalicelib.runtime import metrics

    def broken(found):
        raise ValueError("no namespace")

    monkeypatch.setattr(metrics, "emit", broken)
    response = gateway.http.get("/audit/NOPE-7")
    assert response.status_code == 404 and json.loads(response.body)["errorCode"]
    assert any(line["message"] == "metrics could not be written" for line in logs())


def test_zeyis_own_error_codes_are_folded_into_one_dimension_value(gateway, zeyi, emf):
    # Zeyi chooses its errorCodes: each would otherwise make a metric of its own.
    from chalicelib import errors

    assert telemetry.error_code_of(errors.UpstreamRejectedError("x", error_code="ZEYI_123")) \
        == "UPSTREAM_REJECTED"
    assert telemetry.error_code_of(errors.UpstreamSystemError("x", error_code="E9")) \
        == "UPSTREAM_SYSTEM_ERROR"
    assert telemetry.error_code_of(None) == "INTERNAL_ERROR"
    zeyi.add_fault("send", "refuse")
    emf()
    response, answer = _post(gateway, "/audit/send", peer.send_body("MET-Z"))
    assert answer["errorCode"] == "SIMULATED_REFUSAL"  # the caller gets Zeyi's own code
    assert counts(emf(), "Errors") == {"UPSTREAM_REJECTED": 1}
