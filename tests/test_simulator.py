"""The Zeyi simulator on its own, on free loopback ports: what it accepts and refuses, and what a
gateway receives from it. Requests are signed here with hashlib and pycryptodome directly, never
with the simulator's or the gateway's code, so each side checks the other."""
from __future__ import annotations

import base64
import hashlib
import json
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from Crypto.Cipher import AES
from Crypto.Util.Padding import pad, unpad

from sandbox import zeyi_protocol
from sandbox.zeyi import SimulatorConfig, ZeyiSimulator, load_credentials
from sandbox.zeyi_protocol import Credential

OUT = Credential("zeyi-out-key", "0123456789abcdef0123456789abcdef", "0102030405060708")
IN = Credential("jinrun-in-key", "fedcba9876543210fedcba9876543210", "0102030405060708")
SEND = "/tms-service-api/audit/send"
CANCEL = "/tms-service-api/audit/cancel"
VECTORS = json.loads((Path(__file__).resolve().parent / "data" / "zeyi_sdk_vectors.json")
                     .read_text(encoding="utf-8"))


def md5_sign(credential: Credential, timestamp: str, nonce: str, body: bytes) -> str:
    return hashlib.md5((credential.app_key + credential.app_secret + timestamp + nonce).encode()
                       + body).hexdigest()


_nonce_counter = iter(range(10**6))


def fresh_nonce() -> str:
    return f"T{next(_nonce_counter):05d}"


def send_body(code: str = "HT-1", **overrides) -> dict:
    body = {"code": code, "auditType": "CONTRACT", "originatorUsername": "E1001",
            "orgCode": "ORG-9",
            "auditFormList": [{"type": "text", "key": "金额", "value": "100.00"},
                              {"type": "file", "key": "合同", "value": "https://x/y.pdf",
                               "extendValue": "y.pdf"}],
            "conditionParamList": [{"name": "amount", "value": "100"}]}
    body.update(overrides)
    return body


def cancel_body(code: str = "HT-1") -> dict:
    return {"code": code, "type": "CONTRACT", "remark": "录入错误", "username": "E1001"}


def call(base: str, path: str, body, *, credential: Credential = OUT, encrypt: bool = False,
         **header_overrides) -> requests.Response:
    """A signed call with valid defaults; each override changes exactly one header or the body."""
    raw = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False).encode()
    timestamp = header_overrides.pop("timestamp", str(int(time.time() * 1000)))
    nonce = header_overrides.pop("nonce", fresh_nonce())
    if encrypt:
        cipher = AES.new(credential.app_secret.encode(), AES.MODE_CBC, credential.iv.encode())
        plain = (credential.app_key + timestamp + nonce).encode() + raw
        raw = base64.b64encode(cipher.encrypt(pad(plain, 16)))
    headers = {"appKey": credential.app_key, "timestamp": timestamp, "nonce": nonce,
               "sign": md5_sign(credential, timestamp, nonce, raw),
               "Content-Type": "application/json"}
    headers.update(header_overrides)
    return requests.post(base + path, data=raw, headers=headers, timeout=10)


class FakeGateway:
    """A tiny Jinrun stand-in that records every request and answers from a script."""

    def __init__(self, callback_statuses: list[int] | None = None,
                 callback_answer: dict | None = None):
        self.received: list[dict] = []
        self.callback_statuses = list(callback_statuses or [])
        self.callback_answer = callback_answer
        self.tokens_issued = 0
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                gateway.received.append({"path": self.path, "headers": dict(self.headers.items()),
                                         "raw": b""})
                self._answer(200, {"success": True, "businessException": False,
                                   "errorCode": None, "message": None,
                                   "result": {"code": "X", "status": "PENDING", "attempts": []}})

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                gateway.received.append({"path": self.path, "headers": dict(self.headers.items()),
                                         "raw": raw})
                if self.path == "/auth/token":
                    gateway.tokens_issued += 1
                    self._answer(200, {"success": True, "businessException": False,
                                       "errorCode": None, "message": None,
                                       "result": {"accessToken": f"tok-{gateway.tokens_issued}",
                                                  "tokenType": "Bearer", "expiresIn": 7200}})
                    return
                status = gateway.callback_statuses.pop(0) if gateway.callback_statuses else 200
                answer = gateway.callback_answer or {
                    "success": status == 200, "businessException": False,
                    "errorCode": None if status == 200 else "BOOM", "message": None,
                    "result": None}
                self._answer(status, answer)

            def _answer(self, status, payload):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def callbacks(self) -> list[dict]:
        return [r for r in self.received if r["path"] == "/dingtalkAudit/callback"]

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def make_simulator():
    started: list[ZeyiSimulator] = []

    def make(**overrides) -> ZeyiSimulator:
        options = {"outbound": OUT, "inbound": IN, "port": 0,
                   "callback_first_backoff_seconds": 0.05, "callback_max_backoff_seconds": 0.2,
                   "callback_timeout_seconds": 5.0}
        options.update(overrides)
        simulator = ZeyiSimulator(SimulatorConfig(**options)).start()
        started.append(simulator)
        return simulator

    yield make
    for simulator in started:
        simulator.stop()


@pytest.fixture
def gateway():
    fake = FakeGateway()
    yield fake
    fake.stop()


def control(simulator: ZeyiSimulator, method: str, path: str, body=None) -> requests.Response:
    return requests.request(method, f"{simulator.url}/_control/{path}", json=body, timeout=30)


def assert_refused(response: requests.Response, error_code: str, *, business: bool = False):
    assert response.status_code == 200
    answer = response.json()
    assert answer["success"] is False
    assert answer["businessException"] is business
    assert answer["errorCode"] == error_code
    assert answer["message"]


# ----- Zeyi's API ---------------------------------------------------------------------------

def test_accepts_a_correctly_signed_send(make_simulator):
    simulator = make_simulator()
    response = call(simulator.url, SEND, send_body())
    assert response.json() == {"success": True, "businessException": False, "errorCode": None,
                               "message": None, "result": None}
    approval = control(simulator, "GET", "approvals/HT-1").json()
    assert approval["status"] == "PENDING"
    assert approval["auditType"] == "CONTRACT"
    assert approval["businessId"]
    logged = control(simulator, "GET", "requests?path=send").json()["requests"]
    assert [entry["verdict"] for entry in logged] == ["OK"]
    assert logged[0]["json"]["code"] == "HT-1"
    assert logged[0]["headers"]["appKey"] == OUT.app_key


def test_accepts_upper_case_sign_and_sdk_style_nonce(make_simulator):
    simulator = make_simulator()
    timestamp, nonce = str(int(time.time() * 1000)), "AB12CD"
    raw = json.dumps(send_body()).encode()
    response = call(simulator.url, SEND, raw, timestamp=timestamp, nonce=nonce,
                    sign=md5_sign(OUT, timestamp, nonce, raw).upper())
    assert response.json()["success"] is True


@pytest.mark.parametrize(("overrides", "error_code"), [
    ({"sign": "0" * 32}, "SIGN_INVALID"),
    ({"sign": "not-hex"}, "SIGN_INVALID"),
    ({"appKey": "someone-else"}, "APP_KEY_UNKNOWN"),
    ({"timestamp": -301_000}, "TIMESTAMP_OUT_OF_WINDOW"),
    ({"timestamp": +301_000}, "TIMESTAMP_OUT_OF_WINDOW"),
    ({"timestamp": "1700000000"}, "TIMESTAMP_INVALID"),
    ({"nonce": "abc"}, "NONCE_INVALID"),
    ({"nonce": "abc-de"}, "NONCE_INVALID"),
])
def test_rejects_bad_security_headers(make_simulator, overrides, error_code):
    simulator = make_simulator()
    if isinstance(overrides.get("timestamp"), int):  # an offset from now, in ms
        overrides = {"timestamp": str(int(time.time() * 1000) + overrides["timestamp"])}
    assert_refused(call(simulator.url, SEND, send_body(), **overrides), error_code)
    assert control(simulator, "GET", "approvals/HT-1").status_code == 404


def test_timestamp_at_the_edge_of_the_window_is_accepted(make_simulator):
    simulator = make_simulator()
    timestamp = str(int(time.time() * 1000) - 295_000)
    assert call(simulator.url, SEND, send_body(), timestamp=timestamp).json()["success"] is True


def test_rejects_a_body_changed_after_signing(make_simulator):
    simulator = make_simulator()
    timestamp, nonce = str(int(time.time() * 1000)), fresh_nonce()
    signed = md5_sign(OUT, timestamp, nonce, json.dumps(send_body()).encode())
    response = call(simulator.url, SEND, send_body(code="HT-2"), timestamp=timestamp, nonce=nonce,
                    sign=signed)
    assert_refused(response, "SIGN_INVALID")


def test_rejects_a_replayed_nonce(make_simulator):
    simulator = make_simulator()
    raw = json.dumps(send_body()).encode()
    timestamp, nonce = str(int(time.time() * 1000)), "R3PLAY"
    first = call(simulator.url, SEND, raw, timestamp=timestamp, nonce=nonce)
    assert first.json()["success"] is True
    assert_refused(call(simulator.url, SEND, raw, timestamp=timestamp, nonce=nonce),
                   "NONCE_REPLAYED")


@pytest.mark.parametrize("body", [
    b"not json",
    b"\xff\xfe{}",
    b'{"code": "HT-1"} trailing',
    b"[]",
    json.dumps({k: v for k, v in send_body().items() if k != "auditFormList"}).encode(),
    json.dumps(send_body(auditFormList=[])).encode(),
    json.dumps(send_body(auditFormList=[{"type": "image", "key": "k", "value": "v"}])).encode(),
    json.dumps(send_body(auditFormList=[{"type": "text", "value": "v"}])).encode(),
    json.dumps(send_body(orgCode="")).encode(),
    json.dumps(send_body(code=12)).encode(),
    json.dumps(send_body(conditionParamList=[{"value": "1"}])).encode(),
    json.dumps(send_body(conditionParamList="x")).encode(),
])
def test_rejects_a_bad_send_body(make_simulator, body):
    simulator = make_simulator()
    assert_refused(call(simulator.url, SEND, body), "BODY_INVALID")
    assert control(simulator, "GET", "approvals").json()["approvals"] == []


def test_rejects_a_bad_cancel_body(make_simulator):
    simulator = make_simulator()
    body = cancel_body()
    del body["username"]
    assert_refused(call(simulator.url, CANCEL, body), "BODY_INVALID")


def test_rejects_a_caller_outside_the_ip_whitelist(make_simulator):
    outside = make_simulator(ip_whitelist=("10.20.30.40", "192.168.0.0/16"))
    assert_refused(call(outside.url, SEND, send_body()), "IP_NOT_WHITELISTED")
    inside = make_simulator(ip_whitelist=("127.0.0.0/8",))
    assert call(inside.url, SEND, send_body()).json()["success"] is True


def test_one_active_approval_per_code(make_simulator):
    simulator = make_simulator()
    assert call(simulator.url, SEND, send_body()).json()["success"] is True
    assert_refused(call(simulator.url, SEND, send_body()), "APPROVAL_ACTIVE", business=True)
    control(simulator, "POST", "approvals/HT-1/agree")
    assert_refused(call(simulator.url, SEND, send_body()), "APPROVAL_ACTIVE", business=True)
    assert call(simulator.url, SEND, send_body(code="HT-2")).json()["success"] is True
    control(simulator, "POST", "approvals/HT-2/refuse")
    assert call(simulator.url, SEND, send_body(code="HT-2")).json()["success"] is True
    approval = control(simulator, "GET", "approvals/HT-2").json()
    assert approval["status"] == "PENDING"
    assert [earlier["status"] for earlier in approval["history"]] == ["REFUSED"]


def test_cancel_only_a_pending_approval(make_simulator):
    simulator = make_simulator()
    assert_refused(call(simulator.url, CANCEL, cancel_body("NOPE")), "APPROVAL_NOT_PENDING",
                   business=True)
    call(simulator.url, SEND, send_body())
    assert call(simulator.url, CANCEL, cancel_body()).json()["success"] is True
    assert control(simulator, "GET", "approvals/HT-1").json()["status"] == "TERMINATED"
    assert_refused(call(simulator.url, CANCEL, cancel_body()), "APPROVAL_NOT_PENDING",
                   business=True)
    assert call(simulator.url, SEND, send_body()).json()["success"] is True


def test_encrypted_requests(make_simulator):
    simulator = make_simulator(encrypt_requests=True)
    response = call(simulator.url, SEND, send_body(), encrypt=True)
    assert response.json()["success"] is True
    logged = control(simulator, "GET", "requests").json()["requests"][0]
    assert json.loads(logged["plaintext"])["code"] == "HT-1"
    # A plaintext body is not what an encrypting peer sends.
    assert_refused(call(simulator.url, SEND, send_body(code="HT-2")), "BODY_INVALID")
    # The ciphertext must carry this request's appKey + timestamp + nonce.
    timestamp, nonce = str(int(time.time() * 1000)), fresh_nonce()
    cipher = AES.new(OUT.app_secret.encode(), AES.MODE_CBC, OUT.iv.encode())
    wire = base64.b64encode(cipher.encrypt(pad(
        (OUT.app_key + timestamp + "XXXXXX").encode() + json.dumps(send_body("HT-3")).encode(),
        16)))
    assert_refused(call(simulator.url, SEND, wire, timestamp=timestamp, nonce=nonce),
                   "BODY_INVALID")


# ----- callbacks ----------------------------------------------------------------------------

def test_a_decision_calls_the_gateway_back_like_zeyi(make_simulator, gateway):
    simulator = make_simulator(gateway_url=gateway.url)
    call(simulator.url, SEND, send_body())
    decided = control(simulator, "POST", "approvals/HT-1/agree",
                      {"auditUser": "张三", "remark": "同意 <ok> & 'fine' = yes"})
    assert decided.status_code == 200
    approval = control(simulator, "GET", "approvals/HT-1?waitSeconds=10").json()
    assert approval["settled"] is True
    assert approval["callbacks"][0]["status"] == "delivered"

    token_request, callback = gateway.received
    assert token_request["path"] == "/auth/token"  # the token is fetched first
    headers = token_request["headers"]
    assert headers["appKey"] == IN.app_key
    assert headers["sign"] == md5_sign(IN, headers["timestamp"], headers["nonce"],
                                       token_request["raw"])

    headers = callback["headers"]
    assert headers["authorization"] == "Bearer tok-1"
    assert headers["appKey"] == IN.app_key
    assert len(headers["timestamp"]) == 13
    assert abs(int(headers["timestamp"]) - time.time() * 1000) < 60_000
    assert len(headers["nonce"]) == 6 and headers["nonce"].isalnum()
    assert headers["nonce"] != token_request["headers"]["nonce"]
    assert headers["sign"] == md5_sign(IN, headers["timestamp"], headers["nonce"], callback["raw"])
    text = callback["raw"].decode("utf-8")
    assert '": ' not in text and '", "' not in text  # compact, like Gson
    assert "张三" in text  # Chinese kept as UTF-8, like Gson
    for escaped in ("\\u003cok\\u003e", "\\u0026", "\\u0027fine\\u0027", "\\u003d"):
        assert escaped in text
    assert json.loads(text) == {
        "code": "HT-1", "auditType": "CONTRACT", "businessId": approval["businessId"],
        "type": "finish", "result": "agree", "auditUser": "张三",
        "remark": "同意 <ok> & 'fine' = yes"}


def test_legacy_sign_leaves_the_body_out_like_zeyi_sdk_1_0_0(make_simulator, gateway):
    simulator = make_simulator(gateway_url=gateway.url, legacy_sign=True)
    call(simulator.url, SEND, send_body())
    control(simulator, "POST", "approvals/HT-1/agree")
    assert control(simulator, "GET", "approvals/HT-1?waitSeconds=10").json()["settled"] is True
    token_request, callback = gateway.received
    for request in (token_request, callback):
        headers = request["headers"]
        assert request["raw"]  # there was a body, and the sign does not cover it
        assert headers["sign"] == md5_sign(IN, headers["timestamp"], headers["nonce"], b"")


def test_refuse_terminate_and_cancel_callbacks(make_simulator, gateway):
    simulator = make_simulator(gateway_url=gateway.url)
    for code in ("C-R", "C-T", "C-C"):
        call(simulator.url, SEND, send_body(code=code))
    control(simulator, "POST", "approvals/C-R/refuse")
    control(simulator, "POST", "approvals/C-T/terminate")
    call(simulator.url, CANCEL, cancel_body("C-C"))
    assert simulator.wait_idle(10)
    bodies = {body["code"]: body for body in
              (json.loads(r["raw"]) for r in gateway.callbacks())}
    assert (bodies["C-R"]["type"], bodies["C-R"]["result"]) == ("finish", "refuse")
    assert bodies["C-T"]["type"] == "terminate" and "result" not in bodies["C-T"]
    assert bodies["C-C"]["type"] == "terminate"
    assert (bodies["C-C"]["auditUser"], bodies["C-C"]["remark"]) == ("E1001", "录入错误")
    assert gateway.tokens_issued == 1  # the token is cached while it is valid


def test_deciding_twice_or_an_unknown_code_is_refused_by_the_control_api(make_simulator):
    simulator = make_simulator()
    assert control(simulator, "POST", "approvals/NOPE/agree").status_code == 404
    call(simulator.url, SEND, send_body())
    assert control(simulator, "POST", "approvals/HT-1/agree").status_code == 200
    again = control(simulator, "POST", "approvals/HT-1/refuse")
    assert again.status_code == 409
    assert again.json()["errorCode"] == "APPROVAL_NOT_PENDING"
    assert control(simulator, "GET", "approvals/HT-1").json()["status"] == "AGREED"


def test_retries_while_the_gateway_fails(make_simulator):
    gateway = FakeGateway(callback_statuses=[500, 502, 500])
    try:
        simulator = make_simulator(gateway_url=gateway.url)
        call(simulator.url, SEND, send_body())
        control(simulator, "POST", "approvals/HT-1/agree")
        approval = control(simulator, "GET", "approvals/HT-1?waitSeconds=10").json()
        delivery = approval["callbacks"][0]
        assert delivery["status"] == "delivered"
        assert [t["httpStatus"] for t in delivery["tries"]] == [500, 502, 500, 200]
        callbacks = gateway.callbacks()
        assert len(callbacks) == 4
        assert len({c["headers"]["nonce"] for c in callbacks}) == 4  # a fresh nonce per try
        assert len({c["raw"] for c in callbacks}) == 1  # the same body every time
        for c in callbacks:
            h = c["headers"]
            assert h["sign"] == md5_sign(IN, h["timestamp"], h["nonce"], c["raw"])
    finally:
        gateway.stop()


def test_stops_retrying_on_a_business_refusal(make_simulator):
    gateway = FakeGateway(callback_statuses=[409], callback_answer={
        "success": False, "businessException": True, "errorCode": "NOPE", "message": "no",
        "result": None})
    try:
        simulator = make_simulator(gateway_url=gateway.url)
        call(simulator.url, SEND, send_body())
        control(simulator, "POST", "approvals/HT-1/agree")
        approval = control(simulator, "GET", "approvals/HT-1?waitSeconds=10").json()
        assert approval["callbacks"][0]["status"] == "rejected"
        assert len(gateway.callbacks()) == 1
    finally:
        gateway.stop()


def test_gives_up_after_the_last_try_when_the_gateway_is_down(make_simulator):
    gateway = FakeGateway()
    down_url = gateway.url
    gateway.stop()
    simulator = make_simulator(gateway_url=down_url, callback_max_tries=3)
    call(simulator.url, SEND, send_body())
    started = time.monotonic()
    control(simulator, "POST", "approvals/HT-1/agree")
    assert time.monotonic() - started < 2  # the control API does not wait for delivery
    approval = control(simulator, "GET", "approvals/HT-1?waitSeconds=10").json()
    delivery = approval["callbacks"][0]
    assert delivery["status"] == "failed"
    assert len([t for t in delivery["tries"] if "ConnectionError" in t.get("error", "")]) == 3


def test_redeliver_sends_the_same_callback_again(make_simulator, gateway):
    simulator = make_simulator(gateway_url=gateway.url)
    call(simulator.url, SEND, send_body())
    control(simulator, "POST", "approvals/HT-1/refuse")
    assert simulator.wait_idle(10)
    control(simulator, "POST", "approvals/HT-1/redeliver")
    assert simulator.wait_idle(10)
    first, second = gateway.callbacks()
    assert first["raw"] == second["raw"]
    assert first["headers"]["nonce"] != second["headers"]["nonce"]


def test_encrypted_callbacks(make_simulator, gateway):
    simulator = make_simulator(gateway_url=gateway.url, encrypt_callbacks=True)
    call(simulator.url, SEND, send_body())
    control(simulator, "POST", "approvals/HT-1/agree")
    assert simulator.wait_idle(10)
    token_request = gateway.received[0]
    assert token_request["raw"] == b"{}"  # the token request is signed, never encrypted
    callback = gateway.callbacks()[0]
    headers = callback["headers"]
    assert headers["sign"] == md5_sign(IN, headers["timestamp"], headers["nonce"], callback["raw"])
    cipher = AES.new(IN.app_secret.encode(), AES.MODE_CBC, IN.iv.encode())
    plain = unpad(cipher.decrypt(base64.b64decode(callback["raw"], validate=True)), 16).decode()
    prefix = IN.app_key + headers["timestamp"] + headers["nonce"]
    assert plain.startswith(prefix)
    assert json.loads(plain[len(prefix):])["result"] == "agree"


def test_auto_decide_by_suffix(make_simulator, gateway):
    simulator = make_simulator(gateway_url=gateway.url, auto_decide="by-suffix",
                               auto_decide_delay_seconds=0.05)
    for code in ("A-1", "A-2-R", "A-3-T"):
        call(simulator.url, SEND, send_body(code=code))
    deadline = time.monotonic() + 10
    while len(gateway.callbacks()) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    statuses = {code: control(simulator, "GET", f"approvals/{code}?waitSeconds=5").json()["status"]
                for code in ("A-1", "A-2-R", "A-3-T")}
    assert statuses == {"A-1": "AGREED", "A-2-R": "REFUSED", "A-3-T": "TERMINATED"}


# ----- faults and control -------------------------------------------------------------------

def test_fault_status503_then_normal(make_simulator):
    simulator = make_simulator()
    assert control(simulator, "POST", "faults",
                   {"path": "send", "mode": "status503", "count": 2}).status_code == 200
    for _ in range(2):
        response = call(simulator.url, SEND, send_body())
        assert response.status_code == 503
    assert call(simulator.url, SEND, send_body()).json()["success"] is True
    verdicts = [e["verdict"] for e in control(simulator, "GET", "requests").json()["requests"]]
    assert verdicts == ["fault:status503", "fault:status503", "OK"]


def test_fault_not_json_and_refuse(make_simulator):
    simulator = make_simulator()
    control(simulator, "POST", "faults", {"path": "send", "mode": "not_json"})
    control(simulator, "POST", "faults", {"path": "cancel", "mode": "refuse"})
    response = call(simulator.url, SEND, send_body())
    assert response.status_code == 200
    with pytest.raises(ValueError):
        response.json()
    call(simulator.url, SEND, send_body())
    assert_refused(call(simulator.url, CANCEL, cancel_body()), "SIMULATED_REFUSAL",
                   business=True)
    assert control(simulator, "GET", "approvals/HT-1").json()["status"] == "PENDING"


def test_fault_drop_closes_without_answering(make_simulator):
    simulator = make_simulator()
    control(simulator, "POST", "faults", {"path": "send", "mode": "drop"})
    with pytest.raises(requests.ConnectionError):
        call(simulator.url, SEND, send_body())
    assert control(simulator, "GET", "approvals/HT-1").status_code == 404


def test_fault_slow_delays_but_still_creates_the_approval(make_simulator):
    simulator = make_simulator()
    control(simulator, "POST", "faults", {"path": "send", "mode": "slow", "seconds": 1.0})
    with pytest.raises(requests.ReadTimeout):
        raw = json.dumps(send_body()).encode()
        timestamp, nonce = str(int(time.time() * 1000)), fresh_nonce()
        requests.post(simulator.url + SEND, data=raw, timeout=0.3, headers={
            "appKey": OUT.app_key, "timestamp": timestamp, "nonce": nonce,
            "sign": md5_sign(OUT, timestamp, nonce, raw)})
    deadline = time.monotonic() + 5
    while control(simulator, "GET", "approvals/HT-1").status_code == 404:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert control(simulator, "GET", "approvals/HT-1").json()["status"] == "PENDING"


def test_bad_fault_and_reset(make_simulator):
    simulator = make_simulator()
    assert control(simulator, "POST", "faults", {"path": "send", "mode": "odd"}).status_code == 400
    assert control(simulator, "POST", "faults", {"path": "elsewhere",
                                                 "mode": "drop"}).status_code == 400
    control(simulator, "POST", "faults", {"path": "send", "mode": "drop"})
    call(simulator.url, CANCEL, cancel_body())
    assert control(simulator, "POST", "reset").json() == {"ok": True}
    assert control(simulator, "GET", "faults").json() == {"faults": []}
    assert control(simulator, "GET", "requests").json() == {"requests": []}
    assert call(simulator.url, SEND, send_body()).json()["success"] is True


def test_unknown_routes(make_simulator):
    simulator = make_simulator()
    assert requests.post(simulator.url + "/elsewhere", timeout=5).status_code == 404
    assert control(simulator, "GET", "nothing").status_code == 404
    assert control(simulator, "GET", "health").json()["ok"] is True


# ----- the protocol module against Zeyi's own SDK vectors -----------------------------------

def test_protocol_module_matches_the_sdk_vectors():
    for vector in VECTORS["sign"]:
        assert zeyi_protocol.sign(vector["appKey"], vector["appSecret"], vector["timestamp"],
                                  vector["nonce"], vector["body"].encode()) == vector["sign"]
    for vector in VECTORS["aes"]:
        credential = Credential("k", vector["key"], vector["iv"])
        assert zeyi_protocol.aes_encrypt(credential, vector["plaintext"]) \
            == vector["ciphertext_b64"]
        assert zeyi_protocol.aes_decrypt(credential, vector["ciphertext_b64"]) \
            == vector["plaintext"]
    gson = VECTORS["gson_body"]
    assert zeyi_protocol.gson_dumps(json.loads(gson)) == gson


@pytest.mark.process
def test_simulator_is_independent_of_the_gateway_code():
    code = ("import sys, sandbox.zeyi, sandbox.zeyi.cli, sandbox.zeyi.server;"
            "sys.exit(1 if any(m.split('.')[0] == 'chalicelib' for m in sys.modules) else 0)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60,
                   cwd=Path(__file__).resolve().parents[1])


def test_sandbox_credentials_are_usable_aes_material():
    outbound, inbound = load_credentials()
    for credential in (outbound, inbound):
        assert len(credential.app_secret.encode()) in (16, 24, 32)
        assert len(credential.iv.encode()) == 16
    raw = json.loads((Path(__file__).resolve().parents[1] / "sandbox" / "credentials.json")
                     .read_text(encoding="utf-8"))
    assert "TEST-ONLY" in raw["_comment"]


# ----- one instance among several, and terminate after the end -------------------------------

def test_a_decision_can_name_an_earlier_instance_by_business_id(make_simulator, gateway):
    simulator = make_simulator(gateway_url=gateway.url)
    call(simulator.url, SEND, send_body())
    first = control(simulator, "POST", "approvals/HT-1/refuse?waitSeconds=10").json()
    call(simulator.url, SEND, send_body())
    second = control(simulator, "GET", "approvals/HT-1").json()
    assert second["businessId"] != first["businessId"] and second["status"] == "PENDING"

    # The old, REFUSED instance is revoked in DingTalk: Zeyi reports terminate for it...
    revoked = control(simulator, "POST", "approvals/HT-1/terminate?waitSeconds=10",
                      {"businessId": first["businessId"], "auditUser": "李四", "remark": "作废"})
    assert revoked.status_code == 200, revoked.text
    answer = revoked.json()
    assert answer["businessId"] == first["businessId"]
    assert answer["status"] == "REFUSED"  # Zeyi keeps its decision
    assert answer["decision"]["action"] == "refuse"
    assert [r["auditUser"] for r in answer["revocations"]] == ["李四"]
    assert [d["status"] for d in answer["callbacks"]] == ["delivered", "delivered"]
    last = json.loads(gateway.callbacks()[-1]["raw"])
    assert last == {"code": "HT-1", "auditType": "CONTRACT", "businessId": first["businessId"],
                    "type": "terminate", "auditUser": "李四", "remark": "作废"}
    # ...and the current instance is untouched.
    assert control(simulator, "GET", "approvals/HT-1").json()["status"] == "PENDING"
    earlier = control(simulator, "GET",
                      f"approvals/HT-1?businessId={first['businessId']}").json()
    assert earlier["current"] is False and earlier["status"] == "REFUSED"


def test_terminate_after_agree_on_the_current_instance(make_simulator, gateway):
    simulator = make_simulator(gateway_url=gateway.url)
    call(simulator.url, SEND, send_body())
    control(simulator, "POST", "approvals/HT-1/agree?waitSeconds=10")
    answer = control(simulator, "POST", "approvals/HT-1/terminate?waitSeconds=10").json()
    assert answer["status"] == "AGREED"
    assert [json.loads(c["raw"])["type"] for c in gateway.callbacks()] == ["finish", "terminate"]
    # Zeyi keeps its decision, but a revoked agreement no longer holds the code (at most one
    # agreed-or-in-progress approval per code): the code may be sent again, as the gateway's
    # REVOKED allows.
    assert call(simulator.url, SEND, send_body()).json()["success"] is True


@pytest.mark.parametrize(("first", "then"), [
    ("agree", "refuse"), ("refuse", "agree"), ("terminate", "terminate"), ("terminate", "agree")])
def test_decisions_an_ended_instance_cannot_take(make_simulator, first, then):
    simulator = make_simulator()
    call(simulator.url, SEND, send_body())
    control(simulator, "POST", f"approvals/HT-1/{first}")
    refused = control(simulator, "POST", f"approvals/HT-1/{then}")
    assert refused.status_code == 409
    assert refused.json()["errorCode"] == "APPROVAL_NOT_PENDING"
    approval = control(simulator, "GET", "approvals/HT-1").json()
    assert approval["revocations"] == [] and len(approval["callbacks"]) == 1


def test_an_unknown_business_id_is_404_and_a_bad_one_400(make_simulator):
    simulator = make_simulator()
    call(simulator.url, SEND, send_body())
    for action in ("agree", "terminate", "redeliver"):
        missing = control(simulator, "POST", f"approvals/HT-1/{action}",
                          {"businessId": "proc-nope"})
        assert missing.status_code == 404, action
        assert "proc-nope" in missing.json()["error"]
    assert control(simulator, "POST", "approvals/HT-1/agree",
                   {"businessId": 7}).status_code == 400
    assert control(simulator, "GET", "approvals/HT-1?businessId=proc-nope").status_code == 404
    assert control(simulator, "GET", "approvals/HT-1").json()["status"] == "PENDING"


def test_redeliver_a_named_instance(make_simulator, gateway):
    simulator = make_simulator(gateway_url=gateway.url)
    call(simulator.url, SEND, send_body())
    first = control(simulator, "POST", "approvals/HT-1/refuse?waitSeconds=10").json()
    call(simulator.url, SEND, send_body())
    control(simulator, "POST", "approvals/HT-1/agree?waitSeconds=10")
    again = control(simulator, "POST", "approvals/HT-1/redeliver?waitSeconds=10",
                    {"businessId": first["businessId"]})
    assert again.status_code == 200
    bodies = [json.loads(c["raw"]) for c in gateway.callbacks()]
    assert [(b["businessId"], b.get("result")) for b in bodies] == [
        (first["businessId"], "refuse"), (bodies[1]["businessId"], "agree"),
        (first["businessId"], "refuse")]


# ----- more faults --------------------------------------------------------------------------

def test_fault_system_error_creates_nothing(make_simulator):
    simulator = make_simulator()
    control(simulator, "POST", "faults", {"path": "send", "mode": "system_error"})
    assert_refused(call(simulator.url, SEND, send_body()), "SYSTEM_ERROR", business=False)
    assert control(simulator, "GET", "approvals/HT-1").status_code == 404
    (logged,) = control(simulator, "GET", "requests").json()["requests"]
    assert logged["verdict"] == "fault:system_error"


@pytest.mark.parametrize("path", ["send", "cancel"])
def test_fault_accept_then_drop_applies_the_call_and_loses_the_answer(make_simulator, path):
    simulator = make_simulator()
    if path == "cancel":
        call(simulator.url, SEND, send_body())
    control(simulator, "POST", "faults", {"path": path, "mode": "accept_then_drop"})
    with pytest.raises(requests.ConnectionError):
        call(simulator.url, SEND if path == "send" else CANCEL,
             send_body() if path == "send" else cancel_body())
    status = control(simulator, "GET", "approvals/HT-1").json()["status"]
    assert status == ("PENDING" if path == "send" else "TERMINATED")
    logged = control(simulator, "GET", f"requests?path={path}").json()["requests"][-1]
    assert (logged["verdict"], logged["fault"]) == ("OK", "accept_then_drop")


def test_fault_trickle_answers_slowly_but_completely(make_simulator):
    simulator = make_simulator()
    control(simulator, "POST", "faults", {"path": "send", "mode": "trickle", "seconds": 1.5,
                                          "count": 2})
    # Every read gets bytes well within 0.5 s, so a per-read timeout never fires...
    started = time.monotonic()
    response = call(simulator.url, SEND, send_body())
    assert time.monotonic() - started >= 1.4
    assert response.json() == {"success": True, "businessException": False, "errorCode": None,
                               "message": None, "result": None}
    assert control(simulator, "GET", "approvals/HT-1").json()["status"] == "PENDING"
    # ...while a client with a total deadline gives up, though Zeyi already acted.
    raw = json.dumps(send_body("HT-2")).encode()
    timestamp, nonce = str(int(time.time() * 1000)), fresh_nonce()
    with socket.create_connection(("127.0.0.1", simulator.port), timeout=0.5) as sock:
        sock.sendall(b"POST " + SEND.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: "
                     + str(len(raw)).encode() + b"\r\nappKey: " + OUT.app_key.encode()
                     + b"\r\ntimestamp: " + timestamp.encode() + b"\r\nnonce: " + nonce.encode()
                     + b"\r\nsign: " + md5_sign(OUT, timestamp, nonce, raw).encode()
                     + b"\r\n\r\n" + raw)
        received, reads, deadline = b"", 0, time.monotonic() + 0.6
        while time.monotonic() < deadline:
            chunk = sock.recv(64)  # each read waits at most 0.5 s
            if not chunk:
                break
            received += chunk
            reads += 1
    assert received.startswith(b"HTTP/1.1 200") and reads >= 2
    assert b'"success"' not in received  # the body had not arrived by the deadline
    assert control(simulator, "GET", "approvals/HT-2").json()["status"] == "PENDING"


def test_every_fault_mode_is_documented():
    from sandbox.zeyi.model import FAULT_MODES

    doc = (Path(__file__).resolve().parents[1] / "docs" / "sandbox.md").read_text(encoding="utf-8")
    assert sorted(FAULT_MODES) == sorted(
        {"slow", "status503", "not_json", "refuse", "system_error", "drop", "accept_then_drop",
         "trickle"})
    for mode in FAULT_MODES:
        assert f"`{mode}`" in doc, mode


# ----- what a person at the terminal sees ---------------------------------------------------

def test_one_readable_line_per_call_decision_and_callback_try(make_simulator, capsys):
    gateway = FakeGateway(callback_statuses=[503])
    try:
        simulator = make_simulator(gateway_url=gateway.url, echo=True)
        call(simulator.url, SEND, send_body())
        assert_refused(call(simulator.url, SEND, send_body()), "APPROVAL_ACTIVE", business=True)
        control(simulator, "POST", "approvals/HT-1/agree?waitSeconds=10",
                {"auditUser": "王经理", "remark": "同意"})
    finally:
        gateway.stop()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("[zeyi]") and "send HT-1 → OK: PENDING as proc-" in lines[0]
    assert "send HT-1 → refused APPROVAL_ACTIVE" in lines[1]
    assert "agree HT-1" in lines[2] and "AGREED by 王经理: 同意" in lines[2]
    tries = [line for line in lines if "callback HT-1 finish/agree" in line]
    assert len(tries) == 2
    assert "try 1/8 → HTTP 503 BOOM" in tries[0] and "retrying" in tries[0]
    assert "try 2/8 → HTTP 200 success" in tries[1] and tries[1].endswith("(delivered)")


def test_quiet_by_default_in_process(make_simulator, gateway, capsys):
    simulator = make_simulator(gateway_url=gateway.url)
    call(simulator.url, SEND, send_body())
    control(simulator, "POST", "approvals/HT-1/agree?waitSeconds=10")
    assert capsys.readouterr().out == ""


# ----- the inbox page -----------------------------------------------------------------------

def test_the_inbox_page_is_served_at_the_root(make_simulator):
    simulator = make_simulator()
    response = requests.get(simulator.url + "/", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    assert response.headers["Cache-Control"] == "no-store"
    page = response.text
    assert "<script>" in page and "/_control/approvals?history=1" in page
    assert "/_inbox/gateway/" in page
    assert "innerHTML" not in page  # every value is set as text


def test_the_inbox_explains_every_gateway_status_and_callback_disposition_in_words():
    """The page's wording table (one line per name) keeps up with the gateway's states."""
    import re

    from chalicelib.approvals import states
    from sandbox.zeyi.inbox import PAGE_PATH

    page = PAGE_PATH.read_text(encoding="utf-8")
    table = json.loads(re.search(r'<script type="application/json" id="wording">(.*?)</script>',
                                 page, re.S).group(1))
    assert set(table["statuses"]) == set(states.STATUSES)
    assert set(table["dispositions"]) == {states.APPLIED, states.DUPLICATE, states.IGNORED,
                                          states.LATE, states.UNKNOWN_INSTANCE}
    for words in [*table["statuses"].values(), *table["dispositions"].values()]:
        assert len(words.split()) >= 3  # words, not a restated name


def test_the_inbox_reads_the_gateways_view_through_the_simulator(make_simulator, gateway):
    simulator = make_simulator(gateway_url=gateway.url)
    view = requests.get(simulator.url + "/_inbox/gateway/HT%2F1%20x", timeout=10).json()
    assert view["httpStatus"] == 200 and view["body"]["result"]["status"] == "PENDING"
    (asked,) = [r for r in gateway.received if r["path"].startswith("/audit/")]
    assert asked["path"] == "/audit/HT%2F1%20x"  # the code stays one path segment
    assert asked["headers"]["X-Sandbox-Quiet"] == "inbox"
    nowhere = make_simulator()
    assert "without --gateway-url" in requests.get(
        nowhere.url + "/_inbox/gateway/HT-1", timeout=10).json()["error"]
    down = FakeGateway()
    down.stop()
    unreachable = make_simulator(gateway_url=down.url)
    assert "did not answer" in requests.get(
        unreachable.url + "/_inbox/gateway/HT-1", timeout=10).json()["error"]


def test_control_posts_from_another_site_are_refused(make_simulator):
    simulator = make_simulator()
    call(simulator.url, SEND, send_body())
    foreign = requests.post(f"{simulator.url}/_control/approvals/HT-1/agree", timeout=10,
                            headers={"Origin": "http://evil.example"})
    assert foreign.status_code == 403
    assert requests.post(f"{simulator.url}/_control/faults", timeout=10,
                         json={"path": "send", "mode": "drop"},
                         headers={"Origin": "http://127.0.0.1:1"}).status_code == 403
    assert control(simulator, "GET", "faults").json() == {"faults": []}
    assert control(simulator, "GET", "approvals/HT-1").json()["status"] == "PENDING"
    own = requests.post(f"{simulator.url}/_control/approvals/HT-1/agree", timeout=10,
                        headers={"Origin": simulator.url})
    assert own.status_code == 200 and own.json()["status"] == "AGREED"


def test_health_names_the_gateway(make_simulator, gateway):
    simulator = make_simulator(gateway_url=gateway.url)
    assert control(simulator, "GET", "health").json()["gatewayUrl"] == gateway.url

