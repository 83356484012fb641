"""X-Ray subsegments: what chalicelib.runtime.tracing sends to the daemon Lambda runs, checked on a UDP
socket on loopback standing in for the daemon, and held to what the X-Ray SDK itself sends
(the SDK is a test dependency only: the gateway does not ship it, see chalicelib/runtime/tracing.py)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

from chalicelib.runtime import correlation, tracing
from tests import peer
from tests.conftest import APPROVALS_TABLE
from tests.test_callback_route import post_callback, seed_pending, token_for

TRACE_ID = "1-5759e988-bd862e3fe1be46a994272793"
PARENT_ID = "53995c3f42cd8ad8"


class Daemon:
    """A UDP socket on 127.0.0.1 that collects what an X-Ray daemon would receive."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.5)
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"

    def documents(self) -> list[dict]:
        """Every document received so far; each datagram must be the daemon's framing."""
        found = []
        while True:
            try:
                data, _ = self.sock.recvfrom(65536)
            except TimeoutError:
                return found
            header, _, body = data.partition(b"\n")
            assert json.loads(header) == {"format": "json", "version": 1}
            found.append(json.loads(body))


@pytest.fixture
def daemon(monkeypatch):
    listener = Daemon()
    monkeypatch.setenv(tracing.DAEMON_ENV, listener.address)
    monkeypatch.setenv(tracing.TRACE_ENV, f"Root={TRACE_ID};Parent={PARENT_ID};Sampled=1")
    yield listener
    listener.sock.close()
    monkeypatch.setattr(tracing, "_trace", None)


def _check_subsegment(document: dict) -> None:
    assert document["type"] == "subsegment"
    assert (document["trace_id"], document["parent_id"]) == (TRACE_ID, PARENT_ID)
    assert len(document["id"]) == 16 and int(document["id"], 16) >= 0
    assert document["start_time"] <= document["end_time"]


def test_a_warm_callback_records_its_one_dynamodb_call(gateway, daemon):
    token = token_for(gateway)
    seed_pending("TR-1")
    post_callback(gateway, peer.callback_body(code="TR-2"), token=token)  # warm the caches
    daemon.documents()
    status, _ = post_callback(gateway, peer.callback_body(code="TR-1"), token=token)
    assert status == 200
    (document,) = daemon.documents()
    _check_subsegment(document)
    assert (document["name"], document["namespace"]) == ("DynamoDB", "aws")
    assert document["aws"]["operation"] == "TransactWriteItems"
    assert document["aws"]["region"] == "us-east-1"
    assert document["http"]["response"]["status"] == 200
    assert not {"error", "fault"} & document.keys()


def test_a_cold_token_request_records_each_secret_and_the_nonce(gateway, daemon):
    token_for(gateway)
    calls = [(d["name"], d["aws"]["operation"], d["aws"].get("table_name"))
             for d in daemon.documents()]
    assert sorted(calls) == [("DynamoDB", "PutItem", "test-nonces"),
                             ("Secrets Manager", "GetSecretValue", None),
                             ("Secrets Manager", "GetSecretValue", None)]


def test_a_send_records_the_zeyi_call_with_its_correlation_id(gateway, daemon, zeyi):
    body = json.dumps(peer.send_body("TR-S")).encode()
    gateway.http.post("/audit/send", body=body, headers={
        "Content-Type": "application/json", correlation.HEADER: "trace-me"})
    documents = daemon.documents()
    for document in documents:
        _check_subsegment(document)
    (call,) = [d for d in documents if d["name"] == "Zeyi"]
    assert call["namespace"] == "remote"
    assert call["http"]["request"] == {"method": "POST",
                                       "url": zeyi.url + "/tms-service-api/audit/send"}
    assert call["http"]["response"] == {"status": 200}
    assert call["annotations"] == {"correlation_id": "trace-me"}
    operations = sorted(d["aws"]["operation"] for d in documents if d["name"] == "DynamoDB")
    assert operations == ["GetItem", "TransactWriteItems", "TransactWriteItems"]
    assert {d["aws"].get("table_name") for d in documents if d["name"] == "DynamoDB"} == {
        APPROVALS_TABLE, None}  # a transaction names its tables inside; GetItem names it


def test_zeyis_refusal_is_an_error_and_zeyi_out_of_reach_a_fault(gateway, daemon, zeyi,
                                                                 monkeypatch):
    zeyi.add_fault("send", "refuse")
    gateway.lambda_.invoke("send_approval", peer.send_body("TR-R"))
    (refused,) = [d for d in daemon.documents() if d["name"] == "Zeyi"]
    assert refused.get("error") is True and "fault" not in refused
    assert refused["http"]["response"] == {"status": 200}
    assert refused["cause"]["exceptions"][0]["type"] == "UpstreamRejectedError"
    from tests.moto_server import free_port

    monkeypatch.setenv("ZEYI_BASE_URL", f"http://127.0.0.1:{free_port()}")
    gateway.lambda_.invoke("send_approval", peer.send_body("TR-D"))
    (down,) = [d for d in daemon.documents() if d["name"] == "Zeyi"]
    assert down.get("fault") is True and "response" not in down["http"]


@pytest.mark.parametrize("header", [
    f"Root={TRACE_ID};Parent={PARENT_ID};Sampled=0",  # X-Ray did not sample this invocation
    "",  # outside Lambda, or tracing off
])
def test_nothing_is_sent_for_an_invocation_that_is_not_sampled(gateway, daemon, monkeypatch,
                                                               header):
    monkeypatch.setenv(tracing.TRACE_ENV, header)
    token_for(gateway)
    assert daemon.documents() == []


def test_a_failing_daemon_address_costs_the_request_nothing(gateway, monkeypatch):
    monkeypatch.setenv(tracing.DAEMON_ENV, "not-an-address")
    monkeypatch.setenv(tracing.TRACE_ENV, f"Root={TRACE_ID};Parent={PARENT_ID};Sampled=1")
    assert tracing.begin_invocation() is None
    monkeypatch.setenv(tracing.DAEMON_ENV, "udp:127.0.0.1:9 tcp:127.0.0.1:9")
    assert tracing.begin_invocation().daemon == ("127.0.0.1", 9)
    token_for(gateway)  # sends to a closed port: the request does not notice
    monkeypatch.setattr(tracing, "_trace", None)


# The X-Ray SDK in Lambda mode, recording one DynamoDB call (patched botocore) and one custom
# subsegment, to the same kind of socket.
SDK_SCRIPT = textwrap.dedent("""
    import boto3
    from aws_xray_sdk.core import patch, xray_recorder
    patch(["botocore"])
    client = boto3.client("dynamodb", endpoint_url="{endpoint}")
    client.get_item(TableName="{table}", Key={{"code": {{"S": "x"}}, "sk": {{"S": "HEAD"}}}})
    with xray_recorder.in_subsegment("Zeyi") as sub:
        sub.namespace = "remote"
        sub.put_http_meta("method", "POST")
        sub.put_http_meta("url", "https://zeyi.example/send")
        sub.put_http_meta("status", 200)
        sub.put_annotation("correlation_id", "c-1")
""")


def test_the_documents_have_the_shape_the_xray_sdk_gives_them(aws_env, daemon):
    env = {**os.environ, "LAMBDA_TASK_ROOT": "/tmp", "PYTHONPATH": ""}
    completed = subprocess.run(
        [sys.executable, "-c", SDK_SCRIPT.format(endpoint=os.environ["AWS_ENDPOINT_URL"],
                                                  table=APPROVALS_TABLE)],
        env=env, capture_output=True, text=True, timeout=60, check=False)
    assert completed.returncode == 0, completed.stderr
    sdk_call, sdk_zeyi = daemon.documents()

    from chalicelib.runtime import aws

    tracing.begin_invocation()
    tracing.instrument(aws.client("dynamodb")).get_item(
        TableName=APPROVALS_TABLE, Key={"code": {"S": "x"}, "sk": {"S": "HEAD"}})
    with tracing.subsegment("Zeyi", namespace="remote",
                            annotations={"correlation_id": "c-1"}) as document:
        document["http"] = {"request": {"method": "POST", "url": "https://zeyi.example/send"},
                            "response": {"status": 200}}
    ours_call, ours_zeyi = daemon.documents()

    for sdk, ours in ((sdk_call, ours_call), (sdk_zeyi, ours_zeyi)):
        _check_subsegment(sdk)
        _check_subsegment(ours)
        # Everything the SDK says, we say, with the same values where they are not per call.
        assert sdk.keys() - {"in_progress"} <= ours.keys(), sdk.keys() - ours.keys()
        for key in ("trace_id", "parent_id", "type", "namespace", "annotations"):
            assert ours.get(key) == sdk.get(key), key
    assert sdk_call["name"].lower() == ours_call["name"].lower() == "dynamodb"
    assert sdk_call["aws"].keys() == ours_call["aws"].keys()  # request_id among them
    for key in ("operation", "region", "table_name"):
        assert ours_call["aws"][key] == sdk_call["aws"][key], key
    assert ours_call["http"] == sdk_call["http"]
    assert ours_zeyi["http"] == sdk_zeyi["http"]
