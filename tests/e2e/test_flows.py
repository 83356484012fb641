"""Every flow of ``make demo`` and the failure cases, through the three real processes."""
from __future__ import annotations

import json
import threading
import time

import pytest

from sandbox.stack import SandboxStack, free_port
from tests.e2e.client import Sandbox, applied_callbacks, run_all, send_body

WRONG_SECRET = "wrongWrongWrongWrongWrongWrong00"


def assert_ok(response):
    assert response.status_code == 200, response.text
    assert response.json()["success"] is True, response.text


def test_send_agree_callback_agreed(sandbox: Sandbox):
    code = sandbox.new_code()
    assert_ok(sandbox.send(code))
    assert sandbox.status(code) == "PENDING"
    # Zeyi received exactly the internal app's body, signed, and accepted it.
    (received,) = sandbox.zeyi_requests(code, "send")
    assert received["verdict"] == "OK"
    assert received["json"] == send_body(code)

    sandbox.decide(code, "agree")
    delivery = sandbox.zeyi_approval(code, wait_seconds=20)["callbacks"][0]
    assert delivery["status"] == "delivered"
    assert delivery["tries"][-1]["response"]["success"] is True
    result = sandbox.wait_status(code, "AGREED")
    assert result["status"] == "AGREED"
    assert len(result["attempts"]) == 1
    assert len(applied_callbacks(result)) == 1


def test_send_refuse(sandbox: Sandbox):
    code = sandbox.new_code()
    assert_ok(sandbox.send(code))
    sandbox.decide(code, "refuse")
    assert sandbox.wait_status(code, "REFUSED")["status"] == "REFUSED"


def test_send_terminate_at_zeyi(sandbox: Sandbox):
    code = sandbox.new_code()
    assert_ok(sandbox.send(code))
    sandbox.decide(code, "terminate")
    assert sandbox.wait_status(code, "TERMINATED")["status"] == "TERMINATED"


def test_cancel_cancelling_then_terminated(sandbox: Sandbox):
    code = sandbox.new_code()
    assert_ok(sandbox.send(code))
    cancelled = sandbox.cancel(code)
    assert_ok(cancelled)
    # The cancel's own answer says CANCELLING (a GET would race the simulator's terminate
    # callback, 0.5 s later); the history keeps the step.
    assert cancelled.json()["result"]["status"] == "CANCELLING"
    (received,) = sandbox.zeyi_requests(code, "cancel")
    assert received["verdict"] == "OK"
    assert received["json"]["username"] == "E1001"
    result = sandbox.wait_status(code, "TERMINATED")
    assert result["status"] == "TERMINATED"
    assert len(applied_callbacks(result)) == 1


def test_second_send_for_an_active_code_is_refused(sandbox: Sandbox):
    code = sandbox.new_code()
    assert_ok(sandbox.send(code))
    again = sandbox.send(code)
    assert again.status_code == 409
    assert again.json()["errorCode"] == "APPROVAL_ACTIVE"
    sandbox.decide(code, "agree")
    sandbox.wait_status(code, "AGREED")
    again = sandbox.send(code)
    assert again.status_code == 409
    assert again.json()["errorCode"] == "APPROVAL_ACTIVE"
    # Only the first send ever reached Zeyi: the gateway refused the others itself.
    assert len(sandbox.zeyi_requests(code, "send")) == 1


def test_a_new_send_after_a_refusal_is_a_new_attempt(sandbox: Sandbox):
    code = sandbox.new_code()
    assert_ok(sandbox.send(code))
    sandbox.decide(code, "refuse")
    sandbox.wait_status(code, "REFUSED")
    assert_ok(sandbox.send(code))
    result = sandbox.get(code)
    assert result["status"] == "PENDING"
    assert len(result["attempts"]) == 2


def test_a_callback_delivered_twice_is_applied_once(sandbox: Sandbox):
    code = sandbox.new_code()
    assert_ok(sandbox.send(code))
    sandbox.decide(code, "agree")
    sandbox.zeyi_approval(code, wait_seconds=20)
    sandbox.redeliver(code)
    deliveries = sandbox.zeyi_approval(code, wait_seconds=20)["callbacks"]
    assert [d["status"] for d in deliveries] == ["delivered", "delivered"]
    result = sandbox.get(code)
    assert result["status"] == "AGREED"
    assert len(applied_callbacks(result)) == 1


def test_zeyi_refusing_a_send_fails_the_attempt(sandbox: Sandbox):
    code = sandbox.new_code()
    sandbox.add_fault("send", "refuse")
    response = sandbox.send(code)
    assert response.status_code != 200
    answer = response.json()
    assert answer["success"] is False
    assert answer["errorCode"] == "SIMULATED_REFUSAL"
    assert sandbox.status(code) == "FAILED"
    assert_ok(sandbox.send(code))  # FAILED does not block a new attempt
    assert sandbox.status(code) == "PENDING"


def test_a_callback_outlives_a_gateway_restart(sandbox: Sandbox, stack: SandboxStack):
    code = sandbox.new_code()
    assert_ok(sandbox.send(code))
    stack.stop_gateway()
    try:
        sandbox.decide(code, "agree")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            tries = sandbox.zeyi_approval(code)["callbacks"][0]["tries"]
            if len(tries) >= 2:
                break
            time.sleep(0.1)
        assert len(tries) >= 2 and all("error" in t for t in tries)  # the gateway was down
    finally:
        stack.start_gateway()  # same port
    delivery = sandbox.zeyi_approval(code, wait_seconds=30)["callbacks"][0]
    assert delivery["status"] == "delivered"
    result = sandbox.wait_status(code, "AGREED")
    assert result["status"] == "AGREED"
    assert len(result["attempts"]) == 1
    assert len(result["callbacks"]) == 1
    assert len(applied_callbacks(result)) == 1
    assert len(sandbox.zeyi_requests(code, "send")) == 1


def test_zeyi_rejects_a_gateway_with_a_wrong_outbound_secret(sandbox: Sandbox, stack, tmp_path):
    credentials = json.loads(stack.credentials_path.read_text(encoding="utf-8"))
    misconfigured = SandboxStack(
        gateway_port=free_port(), aws_port=free_port(), log_dir=tmp_path,
        zeyi_url_override=stack.zeyi_url, aws_request_log=False,
        outbound_secret_override={**credentials["outbound"], "appSecret": WRONG_SECRET})
    with misconfigured:
        wrong = Sandbox(misconfigured.gateway_url, stack.zeyi_url)
        code = wrong.new_code()
        response = wrong.send(code)
        assert response.status_code == 502
        answer = response.json()
        assert answer["success"] is False
        assert answer["errorCode"] == "SIGN_INVALID"  # Zeyi's own code, passed on
        # Zeyi's failure is not a business refusal: its envelope does not say nothing was
        # created, so the attempt stays open until its lease ends or a callback comes.
        assert wrong.status(code) == "SUBMITTING"
    (received,) = sandbox.zeyi_requests(code, "send")
    assert received["verdict"] == "SIGN_INVALID"
    assert sandbox.http.get(f"{stack.zeyi_url}/_control/approvals/{code}",
                            timeout=10).status_code == 404


@pytest.mark.timeout(360)
def test_a_burst_of_200_approvals(sandbox: Sandbox, approval_events):
    codes = [sandbox.new_code(f"BURST{i:03d}") for i in range(200)]
    actions = {code: ("agree", "refuse", "terminate")[i % 3] for i, code in enumerate(codes)}
    expected = {"agree": "AGREED", "refuse": "REFUSED", "terminate": "TERMINATED"}
    # One client (one connection pool) per worker thread, as 16 separate apps would have: a
    # requests.Session is not meant to be shared between threads. The gateway's listen backlog
    # takes the burst of connections (sandbox.gateway; see test_run_and_demo).
    local = threading.local()

    def client() -> Sandbox:
        if not hasattr(local, "sandbox"):
            local.sandbox = Sandbox(sandbox.gateway, sandbox.zeyi)
        return local.sandbox

    sends = run_all(lambda code: client().send(code), codes)
    assert [r.status_code for r in sends] == [200] * 200, [r.text for r in sends
                                                           if r.status_code != 200][:3]
    run_all(lambda code: client().decide(code, actions[code]), codes)

    def settled(code):
        delivery = client().zeyi_approval(code, wait_seconds=60)["callbacks"][0]
        assert delivery["status"] == "delivered", delivery
        return client().wait_status(code, expected[actions[code]])

    results = run_all(settled, codes)
    assert {r["code"]: r["status"] for r in results} == {
        code: expected[actions[code]] for code in codes}
    assert all(len(applied_callbacks(r)) == 1 for r in results)
    # Each approval's three changes (the send, Zeyi's answer, the decision) are exactly three
    # distinct events on the bus, none missing (tests/e2e/test_events.py has the details).
    events = approval_events.wait_all(codes, lambda code: 3, timeout_seconds=180)
    assert {code: [(e["detail"]["sequence"], e["detail"]["status"]) for e in found]
            for code, found in events.items()} == {
        code: [(1, "SUBMITTING"), (2, "PENDING"), (3, expected[actions[code]])] for code in codes}
    assert sum(map(len, events.values())) == 600


@pytest.mark.parametrize("mode", ["status503", "not_json", "drop"])
def test_an_unusable_answer_from_zeyi_leaves_the_attempt_submitting(sandbox: Sandbox, mode):
    code = sandbox.new_code()
    sandbox.add_fault("send", mode)
    response = sandbox.send(code)
    assert response.status_code in (502, 504), response.text
    assert response.json()["errorCode"] == "UPSTREAM_OUTCOME_UNKNOWN"
    # The request may have reached Zeyi: the code stays blocked while the lease runs.
    assert sandbox.status(code) == "SUBMITTING"
    again = sandbox.send(code)
    assert again.status_code == 409
    assert again.json()["errorCode"] == "APPROVAL_ACTIVE"


@pytest.mark.timeout(120)
def test_a_send_whose_answer_was_lost_is_settled_by_zeyis_callback(sandbox: Sandbox):
    code = sandbox.new_code()
    # Zeyi creates the approval but answers after the gateway's read timeout (10 s).
    sandbox.add_fault("send", "slow", seconds=11)
    response = sandbox.send(code)
    assert response.status_code == 504, response.text
    assert response.json()["errorCode"] == "UPSTREAM_OUTCOME_UNKNOWN"
    assert sandbox.status(code) == "SUBMITTING"
    assert sandbox.wait_zeyi_approval(code)["status"] == "PENDING"  # it exists at Zeyi
    sandbox.decide(code, "agree")
    result = sandbox.wait_status(code, "AGREED")
    assert result["status"] == "AGREED"
    assert len(applied_callbacks(result)) == 1


def test_encryption_both_ways(tmp_path):
    """A gateway with ZEYI_ENCRYPT and CALLBACK_ENCRYPTED on, and a simulator that expects and
    sends AES bodies: the whole round trip still works, and nothing travels in clear."""
    from sandbox.run import build_stack
    from tests.e2e.conftest import SIMULATOR_ARGS

    encrypted = build_stack({"SANDBOX_ENCRYPT": "true", "SANDBOX_GATEWAY_PORT": str(free_port()),
                             "SANDBOX_ZEYI_PORT": str(free_port()),
                             "SANDBOX_AWS_PORT": str(free_port())})  # as `make run` builds it
    encrypted.log_dir = tmp_path
    encrypted.simulator_args += SIMULATOR_ARGS
    with encrypted:
        sandbox = Sandbox(encrypted.gateway_url, encrypted.zeyi_url)
        code = sandbox.new_code("ENC")
        assert_ok(sandbox.send(code))
        (received,) = sandbox.zeyi_requests(code, "send")
        assert received["verdict"] == "OK"
        assert code not in received["body"]  # on the wire: Base64 ciphertext only
        assert received["json"] == send_body(code)  # what Zeyi decrypted
        sandbox.decide(code, "agree")
        result = sandbox.wait_status(code, "AGREED")
        (callback,) = applied_callbacks(result)
        decision = sandbox.zeyi_approval(code)["decision"]
        # Stored decrypted, as verified: the approver and remark are readable.
        assert (callback["auditUser"], callback["remark"]) == (decision["auditUser"],
                                                              decision["remark"])
