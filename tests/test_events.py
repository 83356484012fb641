"""The approval events, from the store's real writes to what reaches an internal app's queue: one
event per change, exactly the expected ones for every kind of change, each valid against
docs/events/; PutEvents failures (whole calls, some entries, one entry for good) lose nothing.
Against moto server: the approvals table's stream, EventBridge with an SQS target, and
sandbox.aws_faults for PutEvents."""
from __future__ import annotations

import json

import pytest

from chalicelib.approvals import events
from chalicelib.approvals.events import EventError, event_of, handle_batch
from chalicelib.approvals.store import CallbackRecord
from chalicelib.runtime import aws
from tests.conftest import APPROVALS_TABLE, EVENT_BUS_NAME, Clock
from tests.events_support import (
    Subscriber,
    as_delivered,
    assert_valid,
    create_bus,
    stream_records,
    summary,
)

LEASE = 120


@pytest.fixture
def clock():
    return Clock(start=1_790_000_000.0)  # a fixed moment: the events' times are checked


@pytest.fixture
def subscriber(aws_env):
    create_bus(EVENT_BUS_NAME)
    return Subscriber(EVENT_BUS_NAME)


_nonces = iter(range(10**6))


def callback(code, business_id, type_="finish", result="agree", **fields) -> CallbackRecord:
    body = {"code": code, "businessId": business_id, "type": type_, "result": result, **fields}
    return CallbackRecord(code=code, business_id=business_id, type=type_, result=result,
                          audit_type=fields.get("auditType"), audit_user=fields.get("auditUser"),
                          remark=fields.get("remark"), body=json.dumps(body), app_key="k",
                          nonce=f"nonce{next(_nonces):06d}")


def request(code: str, audit_type: str = "CONTRACT") -> dict:
    return {"code": code, "auditType": audit_type, "originatorUsername": "E1001"}


def events_of(code: str | None = None) -> list[events.ApprovalEvent]:
    found = [event for event in map(event_of, stream_records(APPROVALS_TABLE)) if event]
    return [event for event in found if code is None or event.detail["code"] == code]


def summaries(found) -> list[tuple]:
    return [summary(as_delivered(event)) for event in found]


# -- one event per change ------------------------------------------------------------------------

def test_send_accept_agree_is_three_events_each_telling_the_whole_change(store, clock):
    attempt = store.claim("EV-A", request("EV-A"), LEASE)
    clock.skipped_seconds += 1
    store.settle_send("EV-A", attempt, "PENDING", {"kind": "accepted"})
    clock.skipped_seconds += 60
    store.record_callback(callback("EV-A", "bid-1", auditType="CONTRACT", auditUser="王经理",
                                   remark="同意 <ok>"), 1200)

    submitted, pending, agreed = events_of("EV-A")
    assert summaries([submitted, pending, agreed]) == [
        ("Approval Submitted", "SUBMITTING", None, 1),
        ("Approval Pending", "PENDING", "SUBMITTING", 2),
        ("Approval Agreed", "AGREED", "PENDING", 3)]
    head = store.get_head("EV-A")
    assert agreed.detail == {
        "schemaVersion": "1", "eventId": events.event_id("EV-A", 3), "code": "EV-A",
        "sequence": 3, "status": "AGREED", "previousStatus": "PENDING", "changedBy": "callback",
        "attemptId": attempt, "businessId": "bid-1", "auditType": "CONTRACT", "result": "agree",
        "auditUser": "王经理", "remark": "同意 <ok>", "occurredAt": events.iso_time(head["updatedAt"]),
        "callback": {"type": "finish", "disposition": "applied",
                     "receivedAt": events.iso_time(head["lastCallback"]["receivedAt"]),
                     "cut": []}}
    assert agreed.detail["occurredAt"] == "2026-09-21T14:14:21.000Z"  # the clock's moment
    # Before any callback, a change is no callback's: no approver, no remark, no instance.
    assert (pending.detail["businessId"], pending.detail["auditUser"], pending.detail["result"],
            pending.detail["changedBy"]) == (None, None, None, "answer")
    assert "callback" not in pending.detail
    assert submitted.detail["auditType"] == "CONTRACT" and submitted.detail["attemptId"] == attempt
    for event in (submitted, pending, agreed):
        assert_valid(as_delivered(event))


def test_refuse_terminate_cancel_and_failed_send_are_their_own_events(store):
    for code, action in (("EV-R", "refuse"), ("EV-T", "terminate"), ("EV-C", "cancel")):
        attempt = store.claim(code, request(code), LEASE)
        store.settle_send(code, attempt, "PENDING", {"kind": "accepted"})
        if action == "cancel":
            assert store.mark_cancelling(code, attempt, {"code": code}, 600)
        if action == "refuse":
            store.record_callback(callback(code, "b-" + code, result="refuse"), 1200)
        else:
            store.record_callback(callback(code, "b-" + code, "terminate", None), 1200)
    attempt = store.claim("EV-F", request("EV-F"), LEASE)
    store.settle_send("EV-F", attempt, "FAILED", {"kind": "rejected"})

    assert summaries(events_of("EV-R"))[2:] == [("Approval Refused", "REFUSED", "PENDING", 3)]
    terminated = events_of("EV-T")[2]
    assert summary(as_delivered(terminated)) == ("Approval Terminated", "TERMINATED", "PENDING", 3)
    assert (terminated.detail["result"], terminated.detail["callback"]["type"]) == (None,
                                                                                    "terminate")
    assert summaries(events_of("EV-C"))[2:] == [
        ("Approval Cancelling", "CANCELLING", "PENDING", 3),
        ("Approval Terminated", "TERMINATED", "CANCELLING", 4)]
    assert events_of("EV-C")[2].detail["changedBy"] == "cancel"
    assert summaries(events_of("EV-F")) == [("Approval Submitted", "SUBMITTING", None, 1),
                                            ("Approval Failed", "FAILED", "SUBMITTING", 2)]
    for event in events_of():
        assert_valid(as_delivered(event))


def test_an_unknown_outcome_settled_by_zeyis_callback(store):
    attempt = store.claim("EV-U", request("EV-U"), LEASE)
    store.note_outcome("EV-U", attempt, {"kind": "unknown"})  # the attempt only: no event
    store.record_callback(callback("EV-U", "bid-u"), 1200)
    assert summaries(events_of("EV-U")) == [("Approval Submitted", "SUBMITTING", None, 1),
                                            ("Approval Agreed", "AGREED", "SUBMITTING", 2)]


def test_a_callback_of_an_earlier_instance_is_recorded_as_its_own_event(store):
    first = store.claim("EV-O", request("EV-O"), LEASE)
    store.settle_send("EV-O", first, "PENDING", {"kind": "accepted"})
    store.record_callback(callback("EV-O", "bid-1", result="refuse"), 1200)
    second = store.claim("EV-O", request("EV-O", "CONTRACT-V2"), LEASE)
    store.settle_send("EV-O", second, "PENDING", {"kind": "accepted"})
    # DingTalk revokes the first, already refused, instance: Zeyi calls back a terminate.
    outcome = store.record_callback(callback("EV-O", "bid-1", "terminate", None,
                                             auditUser="admin", remark="作废"), 1200)
    assert outcome.disposition == "ignored"

    found = events_of("EV-O")
    assert summaries(found) == [
        ("Approval Submitted", "SUBMITTING", None, 1),
        ("Approval Pending", "PENDING", "SUBMITTING", 2),
        ("Approval Refused", "REFUSED", "PENDING", 3),
        ("Approval Submitted", "SUBMITTING", "REFUSED", 4),
        ("Approval Pending", "PENDING", "SUBMITTING", 5),
        ("Approval Callback Recorded", "PENDING", "PENDING", 6)]
    recorded = found[-1].detail
    # It belongs to the first attempt and its instance, not to the code's current attempt.
    assert (recorded["attemptId"], recorded["businessId"]) == (first, "bid-1")
    assert recorded["callback"] == {"type": "terminate", "disposition": "ignored",
                                    "receivedAt": recorded["callback"]["receivedAt"], "cut": []}
    assert (recorded["auditUser"], recorded["remark"]) == ("admin", "作废")
    assert found[3].detail["auditType"] == "CONTRACT-V2"  # each attempt its own type
    for event in found:
        assert_valid(as_delivered(event))


def test_a_late_callback_of_an_attempt_in_doubt_names_that_attempt(store, clock):
    first = store.claim("EV-L2", request("EV-L2"), 1)  # its answer never came
    clock.skipped_seconds += 5
    second = store.claim("EV-L2", request("EV-L2"), LEASE)
    store.settle_send("EV-L2", second, "PENDING", {"kind": "accepted"})
    store.record_callback(callback("EV-L2", "bid-2", result="refuse"), 1200)
    outcome = store.record_callback(callback("EV-L2", "bid-1", "terminate", None), 1200)
    assert outcome.disposition == "late"
    recorded = events_of("EV-L2")[-1]
    assert summary(as_delivered(recorded)) == ("Approval Callback Recorded", "REFUSED",
                                               "REFUSED", 5)
    assert (recorded.detail["attemptId"], recorded.detail["businessId"]) == (first, "bid-1")
    assert recorded.detail["callback"]["disposition"] == "late"
    assert_valid(as_delivered(recorded))


def test_a_callback_no_attempt_can_own_belongs_to_none(store):
    attempt = store.claim("EV-X", request("EV-X"), LEASE)
    store.settle_send("EV-X", attempt, "PENDING", {"kind": "accepted"})
    store.record_callback(callback("EV-X", "bid-1"), 1200)
    outcome = store.record_callback(callback("EV-X", "bid-9", result="refuse"), 1200)
    assert outcome.disposition == "unknown_instance"
    recorded = events_of("EV-X")[-1]
    assert summary(as_delivered(recorded)) == ("Approval Callback Recorded", "AGREED", "AGREED",
                                               4)
    assert (recorded.detail["attemptId"], recorded.detail["businessId"],
            recorded.detail["callback"]["disposition"]) == (None, "bid-9", "unknown_instance")
    assert_valid(as_delivered(recorded))


def test_a_code_first_seen_by_callback_starts_with_its_decision(store):
    store.record_callback(callback("EV-N", "bid-n", auditType="PURCHASE"), 1200)
    [agreed] = events_of("EV-N")
    assert summary(as_delivered(agreed)) == ("Approval Agreed", "AGREED", None, 1)
    assert agreed.detail["auditType"] == "PURCHASE"  # the callback's, kept on the HEAD
    assert_valid(as_delivered(agreed))


def test_a_redelivered_callback_and_a_pruned_doubt_make_no_event(store, clock):
    first = store.claim("EV-D", request("EV-D"), 1)
    clock.skipped_seconds += 5  # its lease ran out: a new send supersedes it, and it stays in doubt
    second = store.claim("EV-D", request("EV-D"), LEASE)
    before = events_of("EV-D")
    assert summaries(before) == [("Approval Submitted", "SUBMITTING", None, 1),
                                 ("Approval Submitted", "SUBMITTING", "SUBMITTING", 2)]
    assert before[1].detail["attemptId"] == second
    # Zeyi's late answer rejects the first: the HEAD drops it from the doubt, status unchanged.
    assert store.settle_send("EV-D", first, "FAILED", {"kind": "rejected"}) is False
    assert store.get_head("EV-D")["version"] == 3
    store.settle_send("EV-D", second, "PENDING", {"kind": "accepted"})
    store.record_callback(callback("EV-D", "bid-d"), 1200)
    again = callback("EV-D", "bid-d")
    assert store.record_callback(again, 1200).disposition == "duplicate"
    assert [event.detail["sequence"] for event in events_of("EV-D")] == [1, 2, 4, 5]


def test_an_operators_resolve_says_who_and_why(store):
    store.claim("EV-S", request("EV-S"), LEASE)
    store.resolve("EV-S", "FAILED", reason="Zeyi support: never arrived", by="ops@jinrun")
    resolved = events_of("EV-S")[-1]
    assert summary(as_delivered(resolved)) == ("Approval Failed", "FAILED", "SUBMITTING", 2)
    assert resolved.detail["changedBy"] == "operator"
    assert resolved.detail["resolution"] == {
        "by": "ops@jinrun", "reason": "Zeyi support: never arrived", "from": "SUBMITTING",
        "at": resolved.detail["occurredAt"]}
    assert_valid(as_delivered(resolved))


def test_records_that_are_no_change_of_an_approval_make_no_event(store):
    attempt = store.claim("EV-Z", request("EV-Z"), LEASE)
    dynamodb = aws.client("dynamodb")
    key = {"code": {"S": "EV-Z"}, "sk": {"S": f"ATTEMPT#{attempt}"}}
    dynamodb.delete_item(TableName=APPROVALS_TABLE, Key=key)  # a REMOVE
    dynamodb.update_item(TableName=APPROVALS_TABLE,  # a HEAD change of neither status nor attempt
                         Key={"code": {"S": "EV-Z"}, "sk": {"S": "HEAD"}},
                         UpdateExpression="SET leaseExpiresAt = :x",
                         ExpressionAttributeValues={":x": {"N": "1"}})
    records = stream_records(APPROVALS_TABLE)
    assert [record["eventName"] for record in records] == ["INSERT", "INSERT", "REMOVE", "MODIFY"]
    assert [event_of(record) is not None for record in records] == [True, False, False, False]


def test_the_same_change_is_always_the_same_event(store):
    store.claim("EV-I", request("EV-I"), LEASE)
    [record] = [r for r in stream_records(APPROVALS_TABLE)
                if r["dynamodb"]["Keys"]["sk"]["S"] == "HEAD"]
    assert event_of(record).event_id == event_of(json.loads(json.dumps(record))).event_id
    assert events.event_id("EV-I", 1) != events.event_id("EV-I", 2)
    assert events.event_id("EV-I", 1) != events.event_id("EV-J", 1)


def test_the_sending_requests_correlation_id_is_carried(store):
    attempt = store.claim("EV-K", request("EV-K"), LEASE, correlation_id="req-123")
    store.settle_send("EV-K", attempt, "PENDING", {"kind": "accepted"})
    store.record_callback(callback("EV-K", "bid-k"), 1200)
    found = [event for event in map(event_of, stream_records(APPROVALS_TABLE)) if event]
    assert [(e.detail["status"], e.detail.get("correlationId")) for e in found] == [
        ("SUBMITTING", "req-123"), ("PENDING", "req-123"), ("AGREED", "req-123")]
    for event in found:
        assert_valid(as_delivered(event))


@pytest.mark.parametrize("broken", [
    {"status": None}, {"status": {"S": "WAITING"}}, {"version": None}, {"updatedAt": {"S": "x"}},
    {"code": {"N": "7"}}])
def test_a_head_that_cannot_be_told_is_an_error_not_a_silence(store, broken):
    store.claim("EV-E", request("EV-E"), LEASE)
    [record] = [r for r in stream_records(APPROVALS_TABLE)
                if r["dynamodb"]["Keys"]["sk"]["S"] == "HEAD"]
    for name, value in broken.items():
        if value is None:
            record["dynamodb"]["NewImage"].pop(name)
        else:
            record["dynamodb"]["NewImage"][name] = value
    with pytest.raises(EventError):
        event_of(record)


# -- publishing: nothing lost, nothing retried that went through ---------------------------------

def _publish(records, **kwargs):
    slept = []
    outcome = handle_batch(records, client=aws.client("events"), bus_name=EVENT_BUS_NAME,
                           sleep=slept.append, **kwargs)
    return outcome, slept


def _codes_sent(count: int, store) -> list[dict]:
    for index in range(count):
        store.claim(f"EV-P{index:02d}", request(f"EV-P{index:02d}"), LEASE)
    return stream_records(APPROVALS_TABLE)


def test_a_batch_is_published_once_each_valid_and_none_reported_failed(store, subscriber):
    attempt = store.claim("EV-B", request("EV-B"), LEASE)
    store.settle_send("EV-B", attempt, "PENDING", {"kind": "accepted"})
    store.record_callback(callback("EV-B", "bid-b", result="refuse", remark="金额不对"), 1200)
    records = stream_records(APPROVALS_TABLE)

    outcome, slept = _publish(records)
    assert (outcome.failed, outcome.published, outcome.records) == ([], 3, len(records))
    assert outcome.response == {"batchItemFailures": []}
    assert slept == []
    received = subscriber.drain(settle_seconds=0.5)
    assert [summary(event) for event in received] == [
        ("Approval Submitted", "SUBMITTING", None, 1),
        ("Approval Pending", "PENDING", "SUBMITTING", 2),
        ("Approval Refused", "REFUSED", "PENDING", 3)]
    for event in received:  # as EventBridge delivered them
        assert event["source"] == "jinrun.approval-gateway"
        assert_valid(event)
    assert received[2]["detail"]["remark"] == "金额不对"


def test_more_than_ten_events_go_in_calls_of_at_most_ten(store, subscriber, faults):
    records = _codes_sent(23, store)
    outcome, _ = _publish(records)
    assert outcome.failed == [] and outcome.published == 23
    assert [len(call["entries"]) for call in faults.calls()] == [10, 10, 3]
    assert len({e["detail"]["eventId"] for e in subscriber.drain(settle_seconds=0.5)}) == 23


def test_a_bus_failing_for_a_while_loses_nothing(store, subscriber, faults):
    records = _codes_sent(3, store)
    # botocore's three tries of the first call, then our second round's first try: all 500s.
    faults.add(mode="error", times=4, status=500, errorCode="InternalException")
    outcome, slept = _publish(records)
    assert outcome.failed == [] and outcome.published == 3
    assert slept == [events.BACKOFF_SECONDS]  # one round again, after a short wait
    assert [len(call["failed"]) for call in faults.calls()] == [3, 3, 3, 3, 0]
    received = subscriber.drain(settle_seconds=0.5)
    assert sorted(e["detail"]["code"] for e in received) == ["EV-P00", "EV-P01", "EV-P02"]


def test_only_the_entries_putevents_failed_are_sent_again(store, subscriber, faults):
    records = _codes_sent(5, store)
    faults.add(mode="fail_entries", every=2, times=1, errorCode="ThrottlingException")
    outcome, slept = _publish(records)
    assert outcome.failed == [] and outcome.published == 5
    first, second = faults.calls()
    assert first["failed"] == [0, 2, 4]
    assert [entry["code"] for entry in second["entries"]] == ["EV-P00", "EV-P02", "EV-P04"]
    assert second["failed"] == [] and slept == [events.BACKOFF_SECONDS]
    received = subscriber.drain(settle_seconds=0.5)
    assert sorted(e["detail"]["code"] for e in received) == [f"EV-P{i:02d}" for i in range(5)]
    assert len({e["detail"]["eventId"] for e in received}) == 5  # each once


def test_an_event_that_always_fails_is_reported_and_the_others_published(store, subscriber,
                                                                         faults):
    records = _codes_sent(4, store)
    faults.add(mode="fail_entries", match='"code":"EV-P01"', errorCode="MalformedDetail")
    outcome, slept = _publish(records)
    poison = next(r["dynamodb"]["SequenceNumber"] for r in records
                  if r["dynamodb"]["Keys"]["code"]["S"] == "EV-P01"
                  and r["dynamodb"]["Keys"]["sk"]["S"] == "HEAD")
    assert outcome.failed == [poison] and outcome.published == 3
    assert outcome.response == {"batchItemFailures": [{"itemIdentifier": poison}]}
    # Bounded: PUBLISH_TRIES rounds in all, the last ones with only the failing entry.
    assert len(faults.calls()) == events.PUBLISH_TRIES
    assert [len(call["entries"]) for call in faults.calls()[1:]] == [1] * (events.PUBLISH_TRIES - 1)
    assert slept == [0.2, 0.4]
    received = subscriber.drain(settle_seconds=0.5)
    assert sorted(e["detail"]["code"] for e in received) == ["EV-P00", "EV-P02", "EV-P03"]


def test_an_unreadable_record_is_reported_and_the_others_published(store, subscriber):
    records = _codes_sent(2, store)
    heads = [r for r in records if r["dynamodb"]["Keys"]["sk"]["S"] == "HEAD"]
    heads[0]["dynamodb"]["NewImage"].pop("status")
    outcome, _ = _publish(records)
    assert outcome.failed == [heads[0]["dynamodb"]["SequenceNumber"]]
    assert [e["detail"]["code"] for e in subscriber.drain(settle_seconds=0.5)] == ["EV-P01"]


def test_an_event_over_putevents_size_limit_is_never_sent(store, subscriber, faults):
    store.claim("EV-L", request("EV-L"), LEASE)
    store.resolve("EV-L", "TERMINATED", reason="x" * (300 * 1024), by="ops")
    records = stream_records(APPROVALS_TABLE)
    outcome, _ = _publish(records)
    too_large = next(r["dynamodb"]["SequenceNumber"] for r in records
                     if r["dynamodb"].get("NewImage", {}).get("status") == {"S": "TERMINATED"})
    assert outcome.failed == [too_large]
    assert [entry["sequence"] for call in faults.calls() for entry in call["entries"]] == [1]


def test_a_record_without_a_sequence_number_fails_the_whole_batch(store):
    records = _codes_sent(1, store)
    del records[0]["dynamodb"]["SequenceNumber"]
    with pytest.raises(EventError):
        _publish(records)


def test_the_lambda_function_answers_a_partial_batch_response(gateway, store, subscriber,
                                                              faults, capsys):
    records = _codes_sent(3, store)
    faults.add(mode="fail_entries", match='"code":"EV-P02"')
    capsys.readouterr()
    answer = gateway.lambda_.invoke("publish_approval_events", {"Records": records}).payload
    emf = [json.loads(line) for line in capsys.readouterr().out.splitlines()
           if line.startswith('{"_aws"')]
    assert {name: blob[name] for blob in emf for name in ("EventsPublished", "EventsFailed")
            if name in blob} == {"EventsPublished": [2.0], "EventsFailed": [1.0]}
    failed = [r["dynamodb"]["SequenceNumber"] for r in records
              if r["dynamodb"]["Keys"] == {"code": {"S": "EV-P02"}, "sk": {"S": "HEAD"}}]
    assert answer == {"batchItemFailures": [{"itemIdentifier": failed[0]}]}
    assert sorted(e["detail"]["code"] for e in subscriber.drain(settle_seconds=0.5)) == [
        "EV-P00", "EV-P01"]


def test_the_example_in_docs_events_is_a_valid_event():
    import re

    from tests.events_support import SCHEMA_PATH

    readme = (SCHEMA_PATH.parent / "README.md").read_text(encoding="utf-8")
    [example] = re.findall(r"```json\n(.*?)```", readme, re.S)
    assert_valid(json.loads(example))


@pytest.mark.parametrize("change", [
    lambda e: e.update({"detail-type": "Approval Refused"}),          # another status's type
    lambda e: e["detail"].pop("eventId"),
    lambda e: e["detail"].update(sequence=0),
    lambda e: e["detail"].update(previousStatus=None),                # only a first change has none
    lambda e: e["detail"].update(remark="x" * 1001),                  # longer than a preview
    lambda e: e["detail"].update(unknownField=1),
    lambda e: e["detail"].pop("callback"),                            # a callback's change says so
    lambda e: e.update({"detail-type": "Approval Callback Recorded"}),  # an applied one moved it
], ids=["type", "eventId", "sequence", "previous", "remark", "unknown", "callback", "recorded"])
def test_the_schema_refuses_what_the_gateway_never_sends(change):
    import re

    import jsonschema

    from tests.events_support import SCHEMA_PATH, validator

    readme = (SCHEMA_PATH.parent / "README.md").read_text(encoding="utf-8")
    event = json.loads(re.findall(r"```json\n(.*?)```", readme, re.S)[0])
    change(event)
    with pytest.raises(jsonschema.ValidationError):
        validator().validate(event)
