"""The scheduled search for stuck approvals, on moto server with an injected clock: what it
reports, what it counts, that it only queries the open-approvals index, and the scheduled
function app.py deploys."""
from __future__ import annotations

import json
from collections import Counter

import pytest

from chalicelib.approvals import stuck as stuck_approvals
from chalicelib.approvals.store import DynamoDBApprovalStore
from chalicelib.runtime import aws, telemetry
from chalicelib.runtime.settings import load_settings
from tests.conftest import APPROVALS_TABLE, NONCES_TABLE, Clock

MINUTE = 60
DAY = 24 * 3600
NOW = 1_800_000_000.0  # seconds


@pytest.fixture
def clock():
    return Clock(start=NOW)  # conftest's store runs on it


def at(clock: Clock, seconds_before_now: float):
    clock.skipped_seconds = -seconds_before_now


def submitting(store, clock, code, ago, lease=120):
    at(clock, ago)
    store.claim(code, {"code": code}, lease, correlation_id=f"send-{code}")
    clock.skipped_seconds = 0


def pending(store, clock, code, ago):
    at(clock, ago)
    attempt = store.claim(code, {"code": code}, 120)
    store.settle_send(code, attempt, "PENDING", {"kind": "accepted"})
    clock.skipped_seconds = 0
    return attempt


def cancelling(store, clock, code, ago, lease=600):
    attempt = pending(store, clock, code, ago + MINUTE)
    at(clock, ago)
    assert store.mark_cancelling(code, attempt, {"code": code}, lease)
    clock.skipped_seconds = 0


@pytest.fixture
def seeded(store, clock):
    submitting(store, clock, "S-LOST", 10 * MINUTE)          # lease ran out 8 min ago
    submitting(store, clock, "S-FRESH", 30)                  # lease runs
    submitting(store, clock, "S-LONG", 10 * MINUTE, 3600)    # a longer lease of its day, runs
    cancelling(store, clock, "C-LOST", 20 * MINUTE)          # cancel lease ran out
    cancelling(store, clock, "C-FRESH", 5 * MINUTE)
    pending(store, clock, "P-OLD", 8 * DAY)
    pending(store, clock, "P-OLDER", 9 * DAY)
    pending(store, clock, "P-DAY", DAY)
    pending(store, clock, "DONE", 30 * DAY)
    from chalicelib.approvals.store import CallbackRecord

    at(clock, 29 * DAY)
    store.record_callback(CallbackRecord(
        code="DONE", business_id="b", type="finish", result="agree", audit_type=None,
        audit_user=None, remark=None, body="{}", app_key="k", nonce="done01"), 1200)
    clock.skipped_seconds = 0
    return store


def test_finds_each_kind_of_stuck_approval_oldest_first(seeded):
    found = stuck_approvals.find(seeded, settings=load_settings(), now_ms=int(NOW * 1000))
    assert {status: [a.code for a in stuck] for status, stuck in found.items()} == {
        "SUBMITTING": ["S-LOST"], "CANCELLING": ["C-LOST"], "PENDING": ["P-OLDER", "P-OLD"]}
    (lost,) = found["SUBMITTING"]
    assert lost.correlation_id == "send-S-LOST"
    assert lost.open_since_ms == int((NOW - 10 * MINUTE) * 1000)
    assert lost.lease_expires_at_ms == lost.open_since_ms + 120_000


def test_the_pending_age_is_the_stages_setting(seeded, monkeypatch):
    monkeypatch.setenv("STUCK_PENDING_SECONDS", str(12 * 3600))
    found = stuck_approvals.find(seeded, settings=load_settings(), now_ms=int(NOW * 1000))
    assert [a.code for a in found["PENDING"]] == ["P-OLDER", "P-OLD", "P-DAY"]


def test_a_run_logs_each_stuck_code_notifies_and_counts_zero_too(seeded, logs, capsys):
    notified = []
    capsys.readouterr()
    with telemetry.invocation("find_stuck_approvals"):
        counts = stuck_approvals.run(seeded, settings=load_settings(), now_ms=int(NOW * 1000),
                                     notify=[notified.append])
    assert counts == {"SUBMITTING": 1, "CANCELLING": 1, "PENDING": 2}
    assert sorted(a.code for a in notified) == ["C-LOST", "P-OLD", "P-OLDER", "S-LOST"]
    lines = [line for line in logs() if line["message"] == "approval stuck"]
    assert sorted(line["code"] for line in lines) == ["C-LOST", "P-OLD", "P-OLDER", "S-LOST"]
    lost = next(line for line in lines if line["code"] == "S-LOST")
    assert lost["status"] == "SUBMITTING" and lost["openForSeconds"] == 600
    assert lost["leaseExpiredSecondsAgo"] == 480 and lost["sentWithCorrelationId"] == "send-S-LOST"
    assert lost["level"] == "WARNING" and lost["function"] == "find_stuck_approvals"
    summary = next(line for line in logs() if line["message"] == "stuck approvals searched")
    assert summary["stuck"] == counts and "atLeast" not in summary
    emf = [json.loads(line) for line in capsys.readouterr().out.splitlines()
           if line.startswith('{"_aws"')]
    stuck = {blob["status"]: blob["StuckApprovals"] for blob in emf if "StuckApprovals" in blob}
    assert stuck == {"SUBMITTING": [1.0], "CANCELLING": [1.0], "PENDING": [2.0]}
    # Nothing stuck: the metric is still written, as zero.
    capsys.readouterr()
    with telemetry.invocation("find_stuck_approvals"):
        stuck_approvals.run(seeded, settings=load_settings(),
                            now_ms=int((NOW - 30 * DAY) * 1000))
    emf = [json.loads(line) for line in capsys.readouterr().out.splitlines()
           if line.startswith('{"_aws"')]
    assert sorted(blob["StuckApprovals"][0] for blob in emf if "StuckApprovals" in blob) == [
        0.0, 0.0, 0.0]


def test_a_run_says_when_it_reported_only_the_oldest(seeded, logs):
    stuck_approvals.run(seeded, settings=load_settings(), now_ms=int(NOW * 1000), limit=2)
    summary = next(line for line in logs() if line["message"] == "stuck approvals searched")
    assert summary["stuck"]["PENDING"] == 2 and summary["atLeast"] == ["PENDING"]


def test_the_search_only_queries_the_open_approvals_index(seeded):
    calls = Counter()

    def count(params, model, **kwargs):
        calls[(model.name, params.get("IndexName"))] += 1

    events = aws.client("dynamodb").meta.events
    events.register("provide-client-params.dynamodb", count)
    try:
        stuck_approvals.find(seeded, settings=load_settings(), now_ms=int(NOW * 1000))
    finally:
        events.unregister("provide-client-params.dynamodb", count)
    assert calls == {("Query", "open-approvals"): 3}


def scheduled(gateway) -> dict:
    """What EventBridge's schedule hands the function."""
    return gateway.events.generate_cw_event(
        source="aws.events", detail_type="Scheduled Event", detail={}, resources=[])


def hour_old_store() -> DynamoDBApprovalStore:
    """A store whose clock is an hour behind: what it claims is stuck now."""
    return DynamoDBApprovalStore(aws.client("dynamodb"), APPROVALS_TABLE, NONCES_TABLE,
                                 clock=lambda: __import__("time").time() - 3600)


def test_the_scheduled_function_runs_the_search(gateway, logs, capsys):
    store = hour_old_store()
    store.claim("SCHED-1", {"code": "SCHED-1"}, 120)
    event = scheduled(gateway)
    capsys.readouterr()
    gateway.lambda_.invoke("find_stuck_approvals", event)
    (line,) = [line for line in logs() if line["message"] == "approval stuck"]
    assert line["code"] == "SCHED-1" and line["function"] == "find_stuck_approvals"
    assert line["lambdaRequestId"]
    emf = [json.loads(out) for out in capsys.readouterr().out.splitlines()
           if out.startswith('{"_aws"')]
    assert {blob["status"]: blob["StuckApprovals"][0] for blob in emf
            if "StuckApprovals" in blob} == {"SUBMITTING": 1.0, "CANCELLING": 0.0,
                                             "PENDING": 0.0}


def test_each_stuck_approval_is_announced_to_operators_not_to_internal_apps(gateway, logs):
    from chalicelib.approvals.events import OPERATIONS_SOURCE
    from tests.conftest import EVENT_BUS_NAME
    from tests.events_support import STUCK_SCHEMA_PATH, Subscriber, assert_valid, create_bus

    create_bus(EVENT_BUS_NAME)
    operators = Subscriber(EVENT_BUS_NAME, name="on-call", source=OPERATIONS_SOURCE)
    internal_app = Subscriber(EVENT_BUS_NAME)
    store = hour_old_store()
    store.claim("SCHED-2", {"code": "SCHED-2"}, 120, correlation_id="order-77")
    event = scheduled(gateway)
    gateway.lambda_.invoke("find_stuck_approvals", event)
    gateway.lambda_.invoke("find_stuck_approvals", event)  # five minutes later: still stuck
    first, again = operators.drain(settle_seconds=1)
    for notice in (first, again):
        assert_valid(notice, STUCK_SCHEMA_PATH)
    detail = first["detail"]
    assert (first["detail-type"], detail["code"], detail["status"]) == (
        "Approval Stuck", "SCHED-2", "SUBMITTING")
    assert detail["correlationId"] == "order-77" and 3590 <= detail["openForSeconds"] <= 3700
    assert detail["leaseExpiredAt"] is not None and "lease" in detail["reason"]
    assert again["detail"]["eventId"] == detail["eventId"]  # one stay, one id: acted on once
    # The internal apps' rule (the approval events' source) sees the approval's own change only.
    assert [e["detail-type"] for e in internal_app.drain(settle_seconds=0.5)] == []


def test_a_notice_that_cannot_be_published_is_logged_and_the_search_still_counts(
        gateway, logs, capsys):
    store = hour_old_store()
    store.claim("SCHED-3", {"code": "SCHED-3"}, 120)
    event = scheduled(gateway)
    capsys.readouterr()
    gateway.lambda_.invoke("find_stuck_approvals", event)  # no bus: PutEvents fails
    (line,) = [line for line in logs() if line["message"] == "approval event not published"]
    assert line["code"] == "SCHED-3" and line["detailType"] == "Approval Stuck"
    emf = [json.loads(out) for out in capsys.readouterr().out.splitlines()
           if out.startswith('{"_aws"')]
    counted = {name: blob[name] for blob in emf for name in ("EventsFailed", "EventsPublished")
               if name in blob}
    assert counted == {"EventsFailed": [1.0], "EventsPublished": [0.0]}
    assert {blob["status"]: blob["StuckApprovals"] for blob in emf
            if "StuckApprovals" in blob}["SUBMITTING"] == [1.0]


def test_a_search_that_fails_is_a_lambda_error_and_is_logged(gateway, logs, monkeypatch):
    from chalicelib.errors import ServiceUnavailableError

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    aws.reset()
    event = scheduled(gateway)
    with pytest.raises(ServiceUnavailableError):
        gateway.lambda_.invoke("find_stuck_approvals", event)
    assert any(line["message"] == "stuck approvals could not be searched" for line in logs())
