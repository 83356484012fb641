"""What an internal app receives, through the sandbox's real processes: the gateway writes
DynamoDB (moto server), the events poller hands the stream to app.py's handler as Lambda would,
the handler puts the events on the stage's bus, and a rule delivers them to the internal app's
queue. For each flow, exactly the expected events, valid against docs/events/; PutEvents
failing for a while, for some entries, or for good on one record loses nothing."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from chalicelib.approvals import events
from sandbox.stack import PROJECT_DIR, REGION
from tests.e2e.client import Sandbox
from tests.events_support import assert_valid, summary

SUBMITTED = ("Approval Submitted", "SUBMITTING", None, 1)
PENDING = ("Approval Pending", "PENDING", "SUBMITTING", 2)


@pytest.fixture
def faults(stack):
    from tests.events_support import injected_faults

    with injected_faults(stack.aws_url) as injector:
        yield injector


def assert_ok(response):
    assert response.status_code == 200, response.text
    assert response.json()["success"] is True, response.text
    return response.json()["result"]


def received_exactly(approval_events, code: str, expected: list[tuple]) -> list[dict]:
    """The events of ``code``: exactly ``expected``, in that order, each delivered once (no
    fault was injected), each valid."""
    found = approval_events.wait(code, len(expected))
    assert [summary(event) for event in found] == expected
    deliveries = approval_events.received(code)
    assert [summary(event) for event in deliveries] == expected  # once each, in order
    for event in deliveries:
        assert_valid(event)
        assert event["detail"]["eventId"] == events.event_id(code, event["detail"]["sequence"])
    return found


@pytest.mark.parametrize("action, status", [("agree", "AGREED"), ("refuse", "REFUSED"),
                                            ("terminate", "TERMINATED")])
def test_a_decision_is_three_events(sandbox: Sandbox, approval_events, action, status):
    code = sandbox.new_code("EVT")
    answer = assert_ok(sandbox.send(code))
    assert answer == {"code": code, "status": "PENDING", "attemptId": answer["attemptId"]}
    sandbox.decide(code, action)
    sandbox.wait_status(code, status)

    found = received_exactly(approval_events, code, [
        SUBMITTED, PENDING, (f"Approval {status.title()}", status, "PENDING", 3)])
    decided = found[2]["detail"]
    zeyi = sandbox.zeyi_approval(code)
    assert {event["detail"]["attemptId"] for event in found} == {answer["attemptId"]}
    assert (decided["businessId"], decided["auditType"], decided["auditUser"],
            decided["remark"]) == (zeyi["businessId"], "CONTRACT", "王经理", f"e2e {action}")
    assert decided["result"] == {"agree": "agree", "refuse": "refuse"}.get(action)
    assert decided["callback"]["disposition"] == "applied"


def test_a_cancel_is_cancelling_then_terminated(sandbox: Sandbox, approval_events):
    code = sandbox.new_code("EVT")
    sent = assert_ok(sandbox.send(code))
    cancelled = assert_ok(sandbox.cancel(code))
    assert cancelled == {"code": code, "status": "CANCELLING", "attemptId": sent["attemptId"]}
    sandbox.wait_status(code, "TERMINATED")
    found = received_exactly(approval_events, code, [
        SUBMITTED, PENDING, ("Approval Cancelling", "CANCELLING", "PENDING", 3),
        ("Approval Terminated", "TERMINATED", "CANCELLING", 4)])
    assert found[2]["detail"]["changedBy"] == "cancel"
    assert found[3]["detail"]["callback"]["type"] == "terminate"


def test_a_send_zeyi_refuses_is_submitted_then_failed(sandbox: Sandbox, approval_events):
    code = sandbox.new_code("EVT")
    sandbox.add_fault("send", "refuse")
    assert sandbox.send(code).json()["errorCode"] == "SIMULATED_REFUSAL"
    received_exactly(approval_events, code, [
        SUBMITTED, ("Approval Failed", "FAILED", "SUBMITTING", 2)])


def test_an_unknown_outcome_then_zeyis_callback(sandbox: Sandbox, approval_events):
    code = sandbox.new_code("EVT")
    sandbox.add_fault("send", "accept_then_drop")  # created at Zeyi, the answer lost
    response = sandbox.send(code)
    assert response.json()["errorCode"] == "UPSTREAM_OUTCOME_UNKNOWN", response.text
    sandbox.decide(code, "agree")
    sandbox.wait_status(code, "AGREED")
    received_exactly(approval_events, code, [
        SUBMITTED, ("Approval Agreed", "AGREED", "SUBMITTING", 2)])


def test_a_callback_of_an_older_instance(sandbox: Sandbox, approval_events):
    code = sandbox.new_code("EVT")
    first = assert_ok(sandbox.send(code))
    sandbox.decide(code, "refuse")
    sandbox.wait_status(code, "REFUSED")
    old_instance = sandbox.zeyi_approval(code)["businessId"]
    second = assert_ok(sandbox.send(code))
    # DingTalk revokes the first, refused, instance; Zeyi calls back a terminate for it.
    response = sandbox.http.post(f"{sandbox.zeyi}/_control/approvals/{code}/terminate",
                                 json={"businessId": old_instance, "auditUser": "admin"},
                                 timeout=30)
    assert response.status_code == 200, response.text
    sandbox.zeyi_approval(code, wait_seconds=20)

    found = received_exactly(approval_events, code, [
        SUBMITTED, PENDING, ("Approval Refused", "REFUSED", "PENDING", 3),
        ("Approval Submitted", "SUBMITTING", "REFUSED", 4),
        ("Approval Pending", "PENDING", "SUBMITTING", 5),
        ("Approval Callback Recorded", "PENDING", "PENDING", 6)])
    recorded = found[5]["detail"]
    assert (recorded["attemptId"], recorded["businessId"], recorded["callback"]["disposition"]) \
        == (first["attemptId"], old_instance, "ignored")
    assert found[3]["detail"]["attemptId"] == second["attemptId"]


# -- faults ------------------------------------------------------------------------------------

def test_a_bus_failing_for_a_while_delays_the_events_and_loses_none(sandbox, approval_events,
                                                                    faults, stack):
    before = stack.poller_status()["batchesFailed"]
    # More failures than the function's own three rounds: the stream subscription retries.
    faults.add(mode="error", times=10, status=500, errorCode="InternalException")
    code = sandbox.new_code("EVT")
    assert_ok(sandbox.send(code))
    sandbox.decide(code, "agree")
    found = approval_events.wait(code, 3, timeout_seconds=90)
    assert [summary(event) for event in found] == [
        SUBMITTED, PENDING, ("Approval Agreed", "AGREED", "PENDING", 3)]
    assert stack.poller_status()["batchesFailed"] > before
    # Whatever was delivered twice was the same event.
    assert {e["detail"]["eventId"] for e in approval_events.received(code)} == {
        events.event_id(code, n) for n in (1, 2, 3)}


def test_only_the_failed_entries_are_put_again(sandbox, approval_events, faults):
    codes = [sandbox.new_code("EVT") for _ in range(3)]
    faults.add(mode="fail_entries", every=2, times=1, errorCode="ThrottlingException")
    for code in codes:
        assert_ok(sandbox.send(code))
    for code in codes:
        assert [summary(e) for e in approval_events.wait(code, 2, settle_seconds=0)] == [
            SUBMITTED, PENDING]
    calls = faults.calls()
    failing = next(index for index, call in enumerate(calls) if call["failed"])
    failed = [calls[failing]["entries"][i]["eventId"] for i in calls[failing]["failed"]]
    # The function's next call puts exactly the entries PutEvents reported failed, and they go
    # through; nothing is delivered twice.
    assert [entry["eventId"] for entry in calls[failing + 1]["entries"]] == failed
    assert calls[failing + 1]["failed"] == []
    time.sleep(1)
    for code in codes:
        assert len(approval_events.received(code)) == 2


def _dead_letters(stack) -> list[dict]:
    sqs = stack.aws_client("sqs")
    url = sqs.get_queue_url(QueueName="jinrun-approval-events-local-dlq")["QueueUrl"]
    messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10,
                                   VisibilityTimeout=0).get("Messages", [])
    return [json.loads(message["Body"]) for message in messages]


def _wait_for_dead_letters(stack, count: int, timeout_seconds: float = 90) -> list[dict]:
    deadline = time.monotonic() + timeout_seconds
    letters = _dead_letters(stack)
    while len(letters) < count and time.monotonic() < deadline:
        time.sleep(0.5)
        letters = _dead_letters(stack)
    return letters


@pytest.mark.timeout(240)
def test_a_poison_record_lands_in_the_dlq_and_the_operator_replays_it(sandbox, approval_events,
                                                                      faults, stack):
    assert _dead_letters(stack) == []
    poison, other = sandbox.new_code("EVT-POISON"), sandbox.new_code("EVT")
    faults.add(mode="fail_entries", match=f'"code":"{poison}"', errorCode="MalformedDetail")
    assert_ok(sandbox.send(poison))
    assert_ok(sandbox.send(other))
    # The others are not held up: they are published while the poison record's batch is
    # retried (each retry costs the function's own three rounds, under a second).
    found = approval_events.wait(other, 2, timeout_seconds=90, settle_seconds=0)
    assert [summary(e) for e in found] == [SUBMITTED, PENDING], stack.poller_status()
    letters = _wait_for_dead_letters(stack, 1)
    assert letters, "nothing reached the dead-letter queue"
    assert approval_events.received(poison) == []
    info = letters[0]["DDBStreamBatchInfo"]
    assert info["streamArn"].split("/")[1] == "jinrun-approvals-local"

    faults.clear()
    env = dict(os.environ, AWS_ENDPOINT_URL=stack.aws_url, AWS_ACCESS_KEY_ID="testing",
               AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION=REGION)
    env.pop("AWS_PROFILE", None)
    # Every failed batch of the poison code is in the queue once the subscription gave up on
    # each (its second change may reach it a little after the first).
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        replay = subprocess.run([sys.executable, "-m", "ops", "events", "replay-dlq",
                                 "--stage", "local"], cwd=PROJECT_DIR, env=env,
                                capture_output=True, text=True, timeout=120, check=False)
        assert replay.returncode == 0, replay.stdout + replay.stderr
        if len(approval_events.distinct(poison)) >= 2:
            break
        time.sleep(1)
    assert "replayed and removed from jinrun-approval-events-local-dlq; 0 left" in replay.stdout
    found = approval_events.wait(poison, 2, settle_seconds=0.5)
    assert [summary(e) for e in found] == [SUBMITTED, PENDING]
    for event in approval_events.received(poison) + approval_events.received(other):
        assert_valid(event)
    assert {e["detail"]["eventId"] for e in approval_events.received(other)} == {
        events.event_id(other, 1), events.event_id(other, 2)}
    assert _dead_letters(stack) == []
