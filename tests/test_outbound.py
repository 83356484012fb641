"""Send, cancel and status for internal apps, end to end below the routes: a real
DynamoDBApprovalStore on moto server, a real ZeyiClient built from the settings, and the Zeyi
simulator on 127.0.0.1, which checks every signature with its own code. Asserted: what the app is
told, what the store shows, what Zeyi received, and how many AWS calls each use case costs."""
from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest

from chalicelib.approvals import outbound
from chalicelib.approvals.store import CallbackRecord
from chalicelib.errors import (
    ApprovalActiveError,
    ApprovalNotCancellableError,
    ApprovalNotFoundError,
    ConfigError,
    ValidationError,
)
from chalicelib.errors import (
    UpstreamOutcomeUnknownError as Unknown,
)
from chalicelib.errors import (
    UpstreamRejectedError as Rejected,
)
from chalicelib.errors import (
    UpstreamUnavailableError as Unavailable,
)
from chalicelib.protocol.credentials import parse_outbound
from chalicelib.protocol.zeyi_client import ZeyiClient
from chalicelib.runtime import aws
from chalicelib.runtime.secrets_cache import SecretsCache
from chalicelib.runtime.settings import load_settings
from sandbox.zeyi_protocol import Credential as ZeyiCredential
from sandbox.zeyi_simulator import SimulatorConfig, ZeyiSimulator
from tests.conftest import (
    INBOUND,
    OUTBOUND,
    retry_once_after_success,
    simulator,
)
from tests.moto_server import free_port
from tests.peer import cancel_body, send_body

LEASE_SECONDS = 120
CANCEL_LEASE_SECONDS = 600


@pytest.fixture
def secrets(aws_env):
    return SecretsCache(lambda: aws.client("secretsmanager"))


@pytest.fixture
def client_for(secrets, monkeypatch):
    """A ZeyiClient to ``url`` built from the settings, the way app.py builds it."""
    def build(url: str, **overrides) -> ZeyiClient:
        monkeypatch.setenv("ZEYI_BASE_URL", url)
        settings = load_settings()
        options = {"connect_timeout_seconds": settings.zeyi_connect_timeout_seconds,
                   "read_timeout_seconds": settings.zeyi_read_timeout_seconds,
                   "encrypt": settings.zeyi_encrypt, "sleep": lambda seconds: None, **overrides}
        return ZeyiClient(settings.zeyi_base_url,
                          lambda: secrets.get(settings.outbound_secret_id, parse_outbound,
                                              settings.secrets_cache_seconds), **options)
    return build


def send(store, client, code="PO-1", **overrides):
    return outbound.send_approval(send_body(code, **overrides), store=store, zeyi=client,
                                  lease_seconds=LEASE_SECONDS)


def cancel(store, client, code="PO-1"):
    return outbound.cancel_approval(cancel_body(code), store=store, zeyi=client,
                                    lease_seconds=CANCEL_LEASE_SECONDS)


def status_of(store, code="PO-1") -> str:
    return store.get_head(code)["status"]


def callback(code="PO-1", type_="finish", result="agree", business_id="proc-1", nonce="n0nce1"):
    body = {"code": code, "auditType": "purchase", "businessId": business_id, "type": type_,
            "result": result, "auditUser": "M01", "remark": "ok"}
    return CallbackRecord(code=code, business_id=business_id, type=type_, result=result,
                          audit_type="purchase", audit_user="M01", remark="ok",
                          body=json.dumps(body), app_key=INBOUND["appKey"], nonce=nonce)


# -- send ---------------------------------------------------------------------------------------

def test_an_accepted_send_answers_where_it_stands_and_keeps_zeyis_answer(store, zeyi,
                                                                          client_for):
    answer = send(store, client_for(zeyi.url))

    assert answer["success"] is True and answer["businessException"] is False
    [received] = zeyi.requests_log(kind="send")
    assert (received["verdict"], received["json"]) == ("OK", send_body())
    history = outbound.get_approval("PO-1", store=store)["result"]
    assert history["status"] == "PENDING"
    [attempt] = history["attempts"]
    assert answer["result"] == {"code": "PO-1", "status": "PENDING",
                                "attemptId": attempt["attemptId"]}
    assert attempt["request"] == send_body()
    assert attempt["outcome"]["kind"] == "accepted"
    assert json.loads(attempt["outcome"]["answer"])["success"] is True


def test_an_invalid_body_stores_nothing_and_sends_nothing(store, zeyi, client_for):
    with pytest.raises(ValidationError) as caught:
        outbound.send_approval(send_body(orgCode=None, auditFormList=[{"type": "x"}]),
                               store=store, zeyi=client_for(zeyi.url),
                               lease_seconds=LEASE_SECONDS)
    assert "orgCode is required" in caught.value.message
    assert "auditFormList[0].type must be text or file" in caught.value.message
    assert store.get_head("PO-1") is None
    assert zeyi.requests_log() == []


def test_a_second_send_while_pending_is_409_naming_the_status(store, zeyi, client_for):
    client = client_for(zeyi.url)
    send(store, client)
    with pytest.raises(ApprovalActiveError) as caught:
        send(store, client)
    assert caught.value.status == 409
    assert "PENDING" in caught.value.message
    assert caught.value.result == {"code": "PO-1", "status": "PENDING"}
    assert len(zeyi.requests_log(kind="send")) == 1


def test_concurrent_sends_of_one_code_reach_zeyi_exactly_once(store, zeyi, client_for,
                                                               atomic_requests):
    client = client_for(zeyi.url)
    start = threading.Barrier(20)
    outcomes: list[str] = []

    def one_send():
        start.wait(timeout=10)
        try:
            send(store, client)
            outcomes.append("sent")
        except ApprovalActiveError:
            outcomes.append("active")

    threads = [threading.Thread(target=one_send) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert sorted(outcomes) == ["active"] * 19 + ["sent"]
    assert len(zeyi.requests_log(kind="send")) == 1
    assert status_of(store) == "PENDING"


def test_a_claim_resent_by_botocore_after_it_committed_is_still_ours(store, zeyi, client_for):
    fired = retry_once_after_success(aws.client("dynamodb"), "TransactWriteItems")
    assert send(store, client_for(zeyi.url))["success"] is True
    assert fired and status_of(store) == "PENDING"
    assert len(zeyi.requests_log(kind="send")) == 1


def test_zeyi_down_is_failed_and_the_code_can_be_sent_again_at_once(store, zeyi, client_for):
    with pytest.raises(Unavailable) as caught:
        send(store, client_for(f"http://127.0.0.1:{free_port()}"))
    assert (caught.value.error_code, caught.value.status) == ("UPSTREAM_UNAVAILABLE", 502)
    assert caught.value.result["status"] == "FAILED"
    assert status_of(store) == "FAILED"

    assert send(store, client_for(zeyi.url))["success"] is True
    history = outbound.get_approval("PO-1", store=store)["result"]
    assert [a["status"] for a in history["attempts"]] == ["PENDING", "FAILED"]
    assert history["attempts"][1]["outcome"]["errorCode"] == "UPSTREAM_UNAVAILABLE"


def test_zeyis_decision_counts_even_after_a_send_that_never_reached_it(store, client_for):
    # Zeyi reports a decision for the code, on an instance none of our sends created: it is
    # Zeyi's latest for that code, exactly as if our failed send had never been tried.
    with pytest.raises(Unavailable):
        send(store, client_for(f"http://127.0.0.1:{free_port()}"))
    outcome = store.record_callback(callback(business_id="someone-elses"), nonce_ttl_seconds=1200)
    assert (outcome.disposition, status_of(store)) == ("applied", "AGREED")
    history = outbound.get_approval("PO-1", store=store)["result"]
    assert [(a["origin"], a["status"]) for a in history["attempts"]] == [
        ("callback", "AGREED"), ("send", "FAILED")]


def test_a_refused_connection_is_retried_and_the_retry_is_the_one_send(store, client_for):
    port = free_port()
    started: list[ZeyiSimulator] = []

    def zeyi_comes_up(seconds):
        if not started:
            started.append(ZeyiSimulator(SimulatorConfig(
                outbound=ZeyiCredential.from_json(OUTBOUND),
                inbound=ZeyiCredential.from_json(INBOUND), port=port)).start())

    try:
        send(store, client_for(f"http://127.0.0.1:{port}", sleep=zeyi_comes_up))
        assert status_of(store) == "PENDING"
        assert [e["verdict"] for e in started[0].requests_log(kind="send")] == ["OK"]
    finally:
        for sim in started:
            sim.stop(timeout_seconds=2.0)


def test_a_business_refusal_is_failed_with_zeyis_error_code(store, zeyi, client_for):
    zeyi.add_fault("send", "refuse")
    client = client_for(zeyi.url)
    with pytest.raises(Rejected) as caught:
        send(store, client)
    error = caught.value
    assert (error.error_code, error.business) == ("SIMULATED_REFUSAL", True)
    assert 400 <= error.status < 500
    assert status_of(store) == "FAILED"
    [attempt] = outbound.get_approval("PO-1", store=store)["result"]["attempts"]
    assert attempt["outcome"]["errorCode"] == "SIMULATED_REFUSAL"
    assert attempt["outcome"]["message"] == "refused by an injected fault"
    assert send(store, client)["success"] is True  # free again at once


def test_a_slow_zeyi_leaves_the_attempt_submitting_and_a_callback_settles_it(
        store, zeyi, client_for, monkeypatch):
    monkeypatch.setenv("ZEYI_READ_TIMEOUT_SECONDS", "0.3")
    zeyi.add_fault("send", "slow", seconds=1.5)
    client = client_for(zeyi.url)
    with pytest.raises(Unknown) as caught:
        send(store, client)
    error = caught.value
    assert (error.error_code, error.status) == ("UPSTREAM_OUTCOME_UNKNOWN", 504)
    assert "did not answer within 0.3 s" in error.message
    assert "can be sent again in 120 s" in error.message
    assert error.result["status"] == "SUBMITTING"
    assert status_of(store) == "SUBMITTING"

    with pytest.raises(ApprovalActiveError) as again:
        send(store, client)
    assert "SUBMITTING" in again.value.message and "retry in 120 s" in again.value.message

    # Zeyi did create it (the simulator processes a slow request once the delay is over);
    # its callback settles the attempt whose outcome the gateway never learnt.
    business_id = zeyi.approval_json("PO-1", wait_seconds=5)["businessId"]
    store.record_callback(callback(business_id=business_id), nonce_ttl_seconds=1200)
    history = outbound.get_approval("PO-1", store=store)["result"]
    assert history["status"] == "AGREED"
    assert history["businessId"] == business_id
    assert [c["result"] for c in history["callbacks"]] == ["agree"]
    with pytest.raises(ApprovalActiveError):
        send(store, client)
    assert len(zeyi.requests_log(kind="send")) == 1


def test_the_callback_of_an_approval_zeyi_accepted_silently_is_not_lost(
        store, zeyi, client_for, clock, monkeypatch):
    monkeypatch.setenv("ZEYI_READ_TIMEOUT_SECONDS", "0.3")
    zeyi.add_fault("send", "slow", seconds=1.0)
    client = client_for(zeyi.url)
    with pytest.raises(Unknown):
        send(store, client)
    business_id = zeyi.approval_json("PO-1", wait_seconds=5)["businessId"]

    clock.skipped_seconds += LEASE_SECONDS  # no callback yet: approvers take days
    with pytest.raises(Rejected) as caught:
        send(store, client)  # as the 504 advised; Zeyi: one approval per code
    assert caught.value.error_code == "APPROVAL_ACTIVE"
    assert status_of(store) == "FAILED"

    store.record_callback(callback(business_id=business_id), nonce_ttl_seconds=1200)
    assert status_of(store) == "AGREED"


@pytest.mark.parametrize("mode", ["status503", "not_json", "drop"])
def test_a_bad_answer_blocks_the_code_until_the_lease_ends(store, zeyi, client_for, clock,
                                                           mode):
    zeyi.add_fault("send", mode)
    client = client_for(zeyi.url)
    with pytest.raises(Unknown) as caught:
        send(store, client)
    assert caught.value.status == 502
    assert status_of(store) == "SUBMITTING"

    clock.skipped_seconds += LEASE_SECONDS - 1
    with pytest.raises(ApprovalActiveError) as again:
        send(store, client)
    assert "retry in 1 s" in again.value.message

    clock.skipped_seconds += 1
    assert send(store, client)["success"] is True
    history = outbound.get_approval("PO-1", store=store)["result"]
    assert [a["status"] for a in history["attempts"]] == ["PENDING", "SUBMITTING"]
    assert len(zeyi.requests_log(kind="send")) == 2


def test_encrypted_sends_are_accepted_by_a_zeyi_that_decrypts(store, client_for, monkeypatch):
    monkeypatch.setenv("ZEYI_ENCRYPT", "true")
    with simulator(encrypt_requests=True) as sim:
        send(store, client_for(sim.url))
        [received] = sim.requests_log(kind="send")
    assert received["verdict"] == "OK"
    assert json.loads(received["plaintext"]) == send_body()
    assert status_of(store) == "PENDING"


def test_a_missing_outbound_secret_fails_the_attempt_and_sends_nothing(store, zeyi, client_for):
    aws.client("secretsmanager").delete_secret(SecretId="test/zeyi-outbound",
                                               ForceDeleteWithoutRecovery=True)
    with pytest.raises(ConfigError):
        send(store, client_for(zeyi.url))
    assert zeyi.requests_log() == []
    assert status_of(store) == "FAILED"


# -- cancel -------------------------------------------------------------------------------------

def test_a_pending_approval_is_cancelled_then_terminated_by_the_callback(store, zeyi, client_for):
    client = client_for(zeyi.url)
    send(store, client)
    answer = cancel(store, client)
    assert answer["success"] is True
    [received] = zeyi.requests_log(kind="cancel")
    assert (received["verdict"], received["json"]) == ("OK", cancel_body())
    assert status_of(store) == "CANCELLING"

    business_id = zeyi.approval_json("PO-1")["businessId"]
    store.record_callback(callback(type_="terminate", result=None, business_id=business_id),
                          nonce_ttl_seconds=1200)
    history = outbound.get_approval("PO-1", store=store)["result"]
    assert history["status"] == "TERMINATED"
    assert history["attempts"][0]["cancel"]["remark"] == "录入错误"
    send(store, client)  # a terminated approval no longer blocks its code
    assert status_of(store) == "PENDING"


def test_cancelling_a_code_never_seen_is_404(store, zeyi, client_for):
    with pytest.raises(ApprovalNotFoundError) as caught:
        cancel(store, client_for(zeyi.url), "NOPE")
    assert caught.value.status == 404
    assert zeyi.requests_log() == []


def test_only_a_pending_approval_can_be_cancelled(store, zeyi, client_for):
    client = client_for(zeyi.url)
    zeyi.add_fault("send", "status503")
    with pytest.raises(Unknown):
        send(store, client, "SUB-1")
    send(store, client, "AGR-1")
    store.record_callback(callback("AGR-1"), nonce_ttl_seconds=1200)
    send(store, client, "CAN-1")
    cancel(store, client, "CAN-1")

    for code, status in (("SUB-1", "SUBMITTING"), ("AGR-1", "AGREED"), ("CAN-1", "CANCELLING")):
        with pytest.raises(ApprovalNotCancellableError) as caught:
            cancel(store, client, code)
        assert caught.value.status == 409
        assert f"code {code} is {status} and cannot be cancelled" in caught.value.message
        assert caught.value.result == {"code": code, "status": status}
    assert len(zeyi.requests_log(kind="cancel")) == 1


def test_a_cancel_zeyi_refuses_changes_nothing(store, zeyi, client_for):
    client = client_for(zeyi.url)
    send(store, client)
    zeyi.add_fault("cancel", "refuse")
    with pytest.raises(Rejected) as caught:
        cancel(store, client)
    assert caught.value.error_code == "SIMULATED_REFUSAL"
    assert status_of(store) == "PENDING"


def test_a_cancel_that_cannot_reach_zeyi_is_502_and_changes_nothing(store, zeyi, client_for):
    send(store, client_for(zeyi.url))
    with pytest.raises(Unavailable) as caught:
        cancel(store, client_for(f"http://127.0.0.1:{free_port()}"))
    assert caught.value.status == 502
    assert status_of(store) == "PENDING"


def test_a_cancel_without_an_answer_is_504_and_changes_nothing(store, zeyi, client_for,
                                                                monkeypatch):
    send(store, client_for(zeyi.url))
    monkeypatch.setenv("ZEYI_READ_TIMEOUT_SECONDS", "0.3")
    zeyi.add_fault("cancel", "slow", seconds=1.5)
    with pytest.raises(Unknown) as caught:
        cancel(store, client_for(zeyi.url))
    assert caught.value.status == 504
    assert "check GET /audit/PO-1" in caught.value.message
    assert status_of(store) == "PENDING"


# -- status -------------------------------------------------------------------------------------

def test_status_shows_every_attempt_and_callback_newest_first_and_no_secret(store, zeyi,
                                                                            client_for):
    client = client_for(zeyi.url)
    zeyi.add_fault("send", "refuse")
    with pytest.raises(Rejected):
        send(store, client)
    send(store, client)
    business_id = zeyi.approval_json("PO-1")["businessId"]
    store.record_callback(callback(result="refuse", business_id=business_id),
                          nonce_ttl_seconds=1200)

    answer = outbound.get_approval("PO-1", store=store)
    assert (answer["success"], answer["errorCode"]) == (True, None)
    result = answer["result"]
    assert result["status"] == "REFUSED"
    assert [a["status"] for a in result["attempts"]] == ["REFUSED", "FAILED"]
    assert [c["result"] for c in result["callbacks"]] == ["refuse"]
    text = json.dumps(answer, ensure_ascii=False)
    signs = [entry["headers"]["sign"] for entry in zeyi.requests_log()]
    for secret in [OUTBOUND["appSecret"], INBOUND["appSecret"], OUTBOUND["iv"], *signs]:
        assert secret not in text


def test_status_of_a_code_never_seen_is_404_and_a_malformed_code_is_400(store):
    with pytest.raises(ApprovalNotFoundError):
        outbound.get_approval("NEVER-SENT", store=store)
    for code in ["", "x" * 129, "bell\x07"]:
        with pytest.raises(ValidationError):
            outbound.get_approval(code, store=store)


# -- cost: AWS calls per use case ------------------------------------------------------------------

@pytest.fixture
def aws_calls(aws_env):
    """Every botocore API call made from here on, as "service.Operation"."""
    calls: list[str] = []

    def count(model, **kwargs):
        calls.append(f"{model.service_model.endpoint_prefix}.{model.name}")

    for service in ("dynamodb", "secretsmanager"):
        aws.client(service).meta.events.register("before-call", count)
    return calls


def test_each_use_case_makes_the_fewest_aws_calls(store, zeyi, client_for, aws_calls):
    client = client_for(zeyi.url)
    send(store, client, "COLD-1")
    assert aws_calls.count("secretsmanager.GetSecretValue") == 1  # the cold start reads it once
    aws_calls.clear()

    send(store, client)
    # The claim reads the HEAD once (consistent) and writes once; the answer is one write.
    assert aws_calls == ["dynamodb.GetItem", "dynamodb.TransactWriteItems",
                         "dynamodb.TransactWriteItems"]
    aws_calls.clear()

    cancel(store, client)
    assert aws_calls == ["dynamodb.GetItem", "dynamodb.TransactWriteItems"]
    aws_calls.clear()

    outbound.get_approval("PO-1", store=store)
    assert aws_calls == ["dynamodb.Query"]
    aws_calls.clear()

    with pytest.raises(ValidationError):
        outbound.send_approval({"code": "PO-2"}, store=store, zeyi=client, lease_seconds=1)
    assert aws_calls == []


@pytest.mark.process
def test_importing_the_use_cases_does_not_import_requests():
    code = ("import sys, chalicelib.approvals.outbound; "
            "assert 'requests' not in sys.modules, 'requests was imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
