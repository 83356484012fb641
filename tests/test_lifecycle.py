"""The approval record under the orders of events that used to lose a decision: each test here
failed before instance binding, versioned writes and the leases of docs/architecture.md.

The store is the real DynamoDBApprovalStore on moto server; Zeyi is the in-memory model of
tests/zeyi_model.py (its rules, its instances, the callbacks it owes), or a scripted HTTP server
for answers no rule produces."""
from __future__ import annotations

import json
import uuid

import pytest

from chalicelib.approvals import outbound
from chalicelib.approvals.store import CallbackRecord, DynamoDBApprovalStore
from chalicelib.errors import (
    ApprovalActiveError,
    ServiceUnavailableError,
    StoreError,
    UpstreamOutcomeUnknownError,
    UpstreamRejectedError,
    UpstreamSystemError,
)
from chalicelib.runtime import aws
from tests import peer
from tests.conftest import APPROVALS_TABLE, INBOUND, NONCES_TABLE
from tests.racing_store import RacingStore
from tests.test_callback_route import CALLBACK, history, token_for
from tests.zeyi_model import Callback, ZeyiModel

LEASE_SECONDS = 120
CANCEL_LEASE_SECONDS = 600


@pytest.fixture
def zeyi():
    return ZeyiModel()


def send(store, zeyi, code):
    return outbound.send_approval(peer.send_body(code), store=store, zeyi=zeyi,
                                  lease_seconds=LEASE_SECONDS)


def cancel(store, zeyi, code):
    return outbound.cancel_approval(peer.cancel_body(code), store=store, zeyi=zeyi,
                                    lease_seconds=CANCEL_LEASE_SECONDS)


def deliver(store, callback: Callback):
    """Zeyi's delivery of one callback, with a fresh nonce as every delivery has."""
    body = json.dumps(callback.body(), ensure_ascii=False)
    record = CallbackRecord(code=callback.code, business_id=callback.business_id,
                            type=callback.type, result=callback.result, audit_type="CONTRACT",
                            audit_user="M01", remark="ok", body=body, app_key=INBOUND["appKey"],
                            nonce=peer.nonce())
    return store.record_callback(record, nonce_ttl_seconds=1200)


def status(store, code):
    return store.get_head(code)["status"]


def test_a_callback_of_an_older_instance_never_moves_the_current_one(store, zeyi):
    send(store, zeyi, "HT-1")
    first = zeyi.latest("HT-1")
    deliver(store, zeyi.decide(first, "refuse"))
    assert status(store, "HT-1") == "REFUSED"
    send(store, zeyi, "HT-1")
    second = zeyi.latest("HT-1")

    revoked = deliver(store, zeyi.decide(first, "terminate"))  # the old one is deleted
    assert (revoked.disposition, revoked.status) == ("ignored", "PENDING")
    agreed = deliver(store, zeyi.decide(second, "agree"))
    assert (agreed.disposition, agreed.status) == ("applied", "AGREED")
    with pytest.raises(ApprovalActiveError):
        send(store, zeyi, "HT-1")

    record = store.history("HT-1")
    owners = {c["businessId"]: c["attemptId"] for c in record["callbacks"]}
    newer, older = [a["attemptId"] for a in record["attempts"]]
    assert owners == {first.business_id: older, second.business_id: newer}
    assert [(a["status"], a["businessId"]) for a in record["attempts"]] == [
        ("AGREED", second.business_id), ("REFUSED", first.business_id)]


@pytest.mark.parametrize("before", ["submitting past its lease", "failed with a send in doubt"])
def test_a_callback_landing_inside_a_claim_is_never_overwritten(aws_env, clock, zeyi, before):
    store = RacingStore(aws.client("dynamodb"), APPROVALS_TABLE, NONCES_TABLE, clock=clock)
    zeyi.faults.append("lost_after")
    with pytest.raises(UpstreamOutcomeUnknownError):
        send(store, zeyi, "HT-2")
    instance = zeyi.latest("HT-2")
    clock.skipped_seconds += LEASE_SECONDS
    if before == "failed with a send in doubt":
        with pytest.raises(UpstreamRejectedError):  # Zeyi: its approval is still pending
            send(store, zeyi, "HT-2")
        assert status(store, "HT-2") == "FAILED"
    agree = zeyi.decide(instance, "agree")
    store.between_claim = lambda: deliver(store, agree)

    with pytest.raises(ApprovalActiveError) as caught:
        send(store, zeyi, "HT-2")
    assert caught.value.result["status"] == "AGREED"
    assert status(store, "HT-2") == "AGREED"
    assert deliver(store, agree).disposition == "duplicate"  # Zeyi's redelivery
    assert status(store, "HT-2") == "AGREED"


def test_a_decision_counts_whether_or_not_a_refused_send_came_first(store, zeyi):
    for code, send_first in (("HT-3A", True), ("HT-3B", False)):
        elsewhere = zeyi.create_elsewhere(code)
        if send_first:
            with pytest.raises(UpstreamRejectedError) as caught:
                send(store, zeyi, code)
            assert caught.value.error_code == "APPROVAL_ACTIVE"
            assert status(store, code) == "FAILED"
        outcome = deliver(store, zeyi.decide(elsewhere, "agree"))
        assert (outcome.disposition, outcome.status) == ("applied", "AGREED")
    assert status(store, "HT-3A") == status(store, "HT-3B") == "AGREED"


@pytest.mark.parametrize("result", [
    b'{"n":NaN,"m":-Infinity}', str(10 ** 40).encode(), b'[' * 40 + b']' * 40,
    json.dumps("长" * 20_000, ensure_ascii=False).encode(),
])
def test_any_answer_zeyi_accepts_with_is_stored_and_the_send_succeeds(store, result):
    from chalicelib.protocol.credentials import parse_outbound
    from chalicelib.protocol.zeyi_client import ZeyiClient
    from tests.conftest import OUTBOUND
    from tests.test_zeyi_client import Scripted

    answer = (b'{"success":true,"businessException":false,"errorCode":null,"message":null,'
              b'"result":' + result + b'}')
    with Scripted((200, answer)) as server:
        client = ZeyiClient(server.url, lambda: parse_outbound("o", json.dumps(OUTBOUND)),
                            connect_timeout_seconds=1, read_timeout_seconds=2, encrypt=False)
        sent = send(store, client, "HT-4")
    assert sent["success"] is True and sent["result"]["status"] == "PENDING"
    [attempt] = store.history("HT-4")["attempts"]
    kept = attempt["outcome"]["answer"]
    assert answer.decode().startswith(kept) and attempt["outcome"]["kind"] == "accepted"
    assert attempt["outcome"].get("answerCut", False) == (len(answer.decode()) > len(kept))
    json.dumps(sent, allow_nan=False)  # what the caller got is plain JSON


@pytest.mark.parametrize("fields", [
    {"remark": "审" * 70_000},                          # 210 KB of UTF-8
    {"remark": "x" * 120_000, "auditUser": "y" * 120_000},
])
def test_a_callback_with_a_huge_remark_is_stored_and_redelivered(gateway, fields):
    from tests.test_callback_route import seed_pending

    seed_pending("HT-5")
    token = token_for(gateway)
    body = peer.callback_body(code="HT-5", **fields)
    assert 200_000 < len(body) <= 256 * 1024
    for expected in ("applied", "duplicate"):
        response = gateway.http.post(CALLBACK, body=body,
                                     headers=peer.signed_headers(body, token=token))
        assert response.status_code == 200, response.body
        assert json.loads(response.body)["result"] == {"status": "AGREED",
                                                       "disposition": expected}
    [callback] = history(gateway, "HT-5")["callbacks"]
    assert callback["body"] == body.decode("utf-8")  # kept once, whole
    assert len(callback["remark"]) == 1000 and "remark" in callback["cut"]


def test_an_answer_that_trickles_in_ends_at_the_deadline_and_the_attempt_stays_open(store):
    from chalicelib.protocol.credentials import parse_outbound
    from chalicelib.protocol.zeyi_client import ZeyiClient
    from tests.conftest import OUTBOUND
    from tests.test_zeyi_client import Trickle, trickled_answer

    with Trickle(trickled_answer()) as server:
        client = ZeyiClient(server.url, lambda: parse_outbound("o", json.dumps(OUTBOUND)),
                            connect_timeout_seconds=1, read_timeout_seconds=1,
                            deadline_seconds=0.4, encrypt=False)
        with pytest.raises(UpstreamOutcomeUnknownError) as caught:
            send(store, client, "HT-6")
    assert "deadline of 0.4 s" in caught.value.message
    assert caught.value.result["status"] == "SUBMITTING"
    [attempt] = store.history("HT-6")["attempts"]
    assert (attempt["status"], attempt["outcome"]["kind"]) == ("SUBMITTING", "unknown")


def test_a_cancel_whose_terminate_never_comes_frees_the_code_after_its_lease(store, zeyi, clock):
    send(store, zeyi, "HT-7")
    first = zeyi.latest("HT-7")
    assert cancel(store, zeyi, "HT-7")["result"]["status"] == "CANCELLING"
    [terminate] = zeyi.owed  # Zeyi terminated it; its callback is lost for now

    clock.skipped_seconds += CANCEL_LEASE_SECONDS - 1
    with pytest.raises(ApprovalActiveError) as caught:
        send(store, zeyi, "HT-7")
    assert "cancel" in caught.value.message and "retry in 1 s" in caught.value.message
    clock.skipped_seconds += 1
    assert send(store, zeyi, "HT-7")["result"]["status"] == "PENDING"  # Zeyi arbitrates
    second = zeyi.latest("HT-7")
    assert deliver(store, zeyi.decide(second, "agree")).status == "AGREED"

    late = deliver(store, terminate)
    assert (late.disposition, late.status) == ("late", "AGREED")
    attempts = store.history("HT-7")["attempts"]
    assert [(a["status"], a.get("businessId")) for a in attempts] == [
        ("AGREED", second.business_id), ("TERMINATED", first.business_id)]


def test_an_agree_corrects_a_late_callback_taken_for_the_current_attempt(store, zeyi, clock):
    zeyi.faults.append("lost_after")
    with pytest.raises(UpstreamOutcomeUnknownError):
        send(store, zeyi, "HT-11")
    first = zeyi.latest("HT-11")
    refused = zeyi.decide(first, "refuse")  # its callback is slow to come
    clock.skipped_seconds += LEASE_SECONDS
    send(store, zeyi, "HT-11")
    second = zeyi.latest("HT-11")

    # The gateway cannot tell whose refusal this is: it counts for the current attempt.
    assert deliver(store, refused).status == "REFUSED"
    # An agreed instance is the code's latest by Zeyi's rule: the refusal was the older one's.
    agreed = deliver(store, zeyi.decide(second, "agree"))
    assert (agreed.disposition, agreed.status) == ("applied", "AGREED")
    attempts = store.history("HT-11")["attempts"]
    assert [(a["status"], a["businessId"]) for a in attempts] == [
        ("AGREED", second.business_id), ("REFUSED", first.business_id)]


def test_a_zeyi_system_error_keeps_zeyis_code_and_leaves_the_attempt_open(store, zeyi):
    zeyi.faults.append("system_error")
    with pytest.raises(UpstreamSystemError) as caught:
        send(store, zeyi, "HT-8")
    assert (caught.value.error_code, caught.value.status) == ("SYSTEM_ERROR", 502)
    assert caught.value.result["status"] == "SUBMITTING"
    assert status(store, "HT-8") == "SUBMITTING"
    [attempt] = store.history("HT-8")["attempts"]
    assert attempt["outcome"] == {"kind": "unknown", "errorCode": "SYSTEM_ERROR",
                                  "message": attempt["outcome"]["message"]}
    # Had Zeyi created it after all, its callback settles the attempt.
    assert deliver(store, Callback("HT-8", "inst-late", "finish", "refuse")).status == "REFUSED"


# -- DynamoDB's own refusals: conflicts are retried, anything else is a defect ---------------------

class Interfering:
    """The DynamoDB client, except that the next TransactWriteItems calls are cancelled with
    the given reasons before they reach the table."""

    def __init__(self, client, *reasons: str):
        self._client = client
        self._reasons = list(reasons)
        self.transactions = 0

    def __getattr__(self, name):
        return getattr(self._client, name)

    def transact_write_items(self, **kwargs):
        from botocore.exceptions import ClientError

        self.transactions += 1
        if self._reasons:
            code = self._reasons.pop(0)
            reasons = [{"Code": code if i == 0 else "None"}
                       for i in range(len(kwargs["TransactItems"]))]
            raise ClientError({"Error": {"Code": "TransactionCanceledException",
                                         "Message": "cancelled"},
                               "CancellationReasons": reasons}, "TransactWriteItems")
        return self._client.transact_write_items(**kwargs)


@pytest.mark.parametrize("step", ["claim", "settle", "cancel", "callback"])
def test_a_transaction_conflict_is_retried_not_taken_for_someone_elses_change(aws_env, zeyi,
                                                                           step):
    plain = DynamoDBApprovalStore(aws.client("dynamodb"), APPROVALS_TABLE, NONCES_TABLE)
    interfering = Interfering(aws.client("dynamodb"))
    racy = DynamoDBApprovalStore(interfering, APPROVALS_TABLE, NONCES_TABLE)
    code = f"HT-9-{step}"
    stores = {name: (racy if name == step else plain) for name in ("claim", "settle", "cancel",
                                                                   "callback")}
    if step == "settle":
        attempt = plain.claim(code, {"code": code}, LEASE_SECONDS)
        interfering._reasons = ["TransactionConflict"] * 2
        assert racy.settle_send(code, attempt, "PENDING", {"kind": "accepted"}) is True
    else:
        interfering._reasons = ["TransactionConflict"] * 2
        send(stores["claim"], zeyi, code)
        if step == "cancel":
            interfering._reasons = ["TransactionConflict"] * 2
            assert cancel(racy, zeyi, code)["result"]["status"] == "CANCELLING"
        if step == "callback":
            interfering._reasons = ["TransactionConflict"] * 2
            outcome = deliver(racy, zeyi.decide(zeyi.latest(code), "agree"))
            assert (outcome.disposition, outcome.status) == ("applied", "AGREED")
    assert interfering.transactions >= 3
    assert status(plain, code) == {"claim": "PENDING", "settle": "PENDING",
                                   "cancel": "CANCELLING", "callback": "AGREED"}[step]


def test_any_other_cancellation_reason_is_a_defect_and_not_retried(aws_env):
    interfering = Interfering(aws.client("dynamodb"), "ValidationError")
    store = DynamoDBApprovalStore(interfering, APPROVALS_TABLE, NONCES_TABLE)
    with pytest.raises(StoreError) as caught:
        deliver(store, Callback("HT-10", f"inst-{uuid.uuid4().hex}", "finish", "agree"))
    assert (caught.value.status, caught.value.error_code) == (500, "INTERNAL_ERROR")
    assert "ValidationError" in caught.value.message
    assert interfering.transactions == 1
    assert not isinstance(caught.value, ServiceUnavailableError)


# -- operators and the open-approvals index ----------------------------------------------------------

def test_an_operators_resolution_never_hides_a_decision_zeyi_reports_later(store, zeyi):
    zeyi.faults.append("lost_after")
    with pytest.raises(UpstreamOutcomeUnknownError):
        send(store, zeyi, "HT-12")
    store.resolve("HT-12", "TERMINATED", reason="looked stuck", by="ops")
    assert status(store, "HT-12") == "TERMINATED"
    outcome = deliver(store, zeyi.decide(zeyi.latest("HT-12"), "agree"))
    assert (outcome.disposition, outcome.status) == ("applied", "AGREED")


def test_the_open_index_holds_exactly_the_open_approvals(store, zeyi, clock):
    send(store, zeyi, "OPEN-1")
    zeyi.faults.append("lost_before")
    with pytest.raises(UpstreamOutcomeUnknownError):
        send(store, zeyi, "OPEN-2")
    send(store, zeyi, "OPEN-3")
    cancel(store, zeyi, "OPEN-3")
    send(store, zeyi, "DONE-1")
    deliver(store, zeyi.decide(zeyi.latest("DONE-1"), "refuse"))

    def open_codes(status):
        return [head["code"] for head in store.open_approvals(status)]

    assert (open_codes("PENDING"), open_codes("SUBMITTING"), open_codes("CANCELLING")) == (
        ["OPEN-1"], ["OPEN-2"], ["OPEN-3"])
    deliver(store, zeyi.owed[0])  # OPEN-3's terminate
    assert open_codes("CANCELLING") == []
    later = int((clock() + 1) * 1000)
    calls = []
    aws.client("dynamodb").meta.events.register(
        "provide-client-params.dynamodb",
        lambda model, params, **kwargs: calls.append((model.name, params.get("IndexName"))))
    assert [h["code"] for h in store.open_approvals("PENDING", opened_before_ms=later)] == [
        "OPEN-1"]
    assert store.open_approvals("PENDING", opened_before_ms=later - 60_000) == []
    assert set(calls) == {("Query", "open-approvals")}  # an index Query, never a Scan


def test_an_instance_no_attempt_can_own_is_recorded_answered_and_logged(store, zeyi):
    import io
    import logging

    from chalicelib.runtime.logs import logger

    send(store, zeyi, "HT-13")
    deliver(store, zeyi.decide(zeyi.latest("HT-13"), "refuse"))
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logger.registered_formatter)
    logging.getLogger(logger.name).addHandler(handler)
    try:
        stray = deliver(store, Callback("HT-13", "inst-stray", "terminate", None))
    finally:
        logging.getLogger(logger.name).removeHandler(handler)
    assert (stray.disposition, stray.status) == ("unknown_instance", "REFUSED")
    [line] = [json.loads(text) for text in stream.getvalue().splitlines()]
    assert (line["level"], line["reason"], line["businessId"]) == (
        "WARNING", "an instance no attempt of this code can own", "inst-stray")
    [recorded] = [c for c in store.history("HT-13")["callbacks"]
                  if c["businessId"] == "inst-stray"]
    assert (recorded["disposition"], recorded["attemptId"]) == ("unknown_instance", None)
