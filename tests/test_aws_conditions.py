"""The record under what real AWS and DingTalk do and a sequential test never shows (issue 17):
DynamoDB throttling inside a transaction, a ruled try that commits on the last try, an operator
closing an attempt before Zeyi's answer, an earlier attempt made current again, a cancelled
approval's late terminate, and a revoked agreement.

The store is the real DynamoDBApprovalStore on moto server; Zeyi is tests/zeyi_model.py. DynamoDB's
per-item cancellation reasons, which moto never produces, come from a client that cancels the
next TransactWriteItems calls before they reach the table, as DynamoDB does."""
from __future__ import annotations

import json

import pytest

from chalicelib.approvals import outbound
from chalicelib.approvals.store import CallbackRecord, DynamoDBApprovalStore
from chalicelib.errors import (
    ServiceUnavailableError,
    UpstreamOutcomeUnknownError,
    UpstreamRejectedError,
)
from chalicelib.runtime import aws
from tests import peer
from tests.conftest import APPROVALS_TABLE, INBOUND, NONCES_TABLE
from tests.racing_store import RacingStore
from tests.zeyi_model import Callback, ZeyiModel

LEASE_SECONDS = 120
CANCEL_LEASE_SECONDS = 600
# What DynamoDB says when a transaction's item is throttled: it names the table or index.
THROTTLED = ("ThrottlingError", "Throughput exceeds the current capacity for one or more global"
             " secondary indexes. DynamoDB is automatically scaling your index.")
CAPACITY = ("ProvisionedThroughputExceeded", "The level of configured provisioned throughput for"
            " the table was exceeded.")


class Cancelling:
    """The DynamoDB client, except that TransactWriteItems calls number ``after`` + 1 onwards are
    cancelled, while ``reasons`` last, each with one per-item reason on the last item (the HEAD
    or the index it writes) and "None" on the others."""

    def __init__(self, client, *reasons: tuple[str, str], after: int = 0):
        self._client = client
        self._reasons = list(reasons)
        self._after = after
        self.transactions = 0

    def __getattr__(self, name):
        return getattr(self._client, name)

    def transact_write_items(self, **kwargs):
        from botocore.exceptions import ClientError

        self.transactions += 1
        if self.transactions > self._after and self._reasons:
            code, message = self._reasons.pop(0)
            items = kwargs["TransactItems"]
            reasons = [{"Code": "None"} for _ in items[:-1]] + [
                {"Code": code, "Message": message}]
            raise ClientError({"Error": {"Code": "TransactionCanceledException",
                                         "Message": "Transaction cancelled, please refer"
                                                    " cancellation reasons for specific reasons"},
                               "CancellationReasons": reasons}, "TransactWriteItems")
        return self._client.transact_write_items(**kwargs)


class Sleeps(list):
    """The store's injected sleep: records each pause, waits for none."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def model():
    return ZeyiModel()


def store_on(client, clock, sleeps=None) -> DynamoDBApprovalStore:
    return DynamoDBApprovalStore(client, APPROVALS_TABLE, NONCES_TABLE, clock=clock,
                                 sleep=sleeps if sleeps is not None else Sleeps())


def send(store, zeyi, code, **fields):
    return outbound.send_approval(peer.send_body(code, **fields), store=store, zeyi=zeyi,
                                  lease_seconds=LEASE_SECONDS)


def cancel(store, zeyi, code):
    return outbound.cancel_approval(peer.cancel_body(code), store=store, zeyi=zeyi,
                                    lease_seconds=CANCEL_LEASE_SECONDS)


def deliver(store, callback: Callback, **fields):
    body = json.dumps(callback.body(), ensure_ascii=False)
    record = CallbackRecord(code=callback.code, business_id=callback.business_id,
                            type=callback.type, result=callback.result,
                            audit_type=fields.get("audit_type", "CONTRACT"),
                            audit_user=fields.get("audit_user", "M01"),
                            remark=fields.get("remark", "ok"), body=body,
                            app_key=INBOUND["appKey"], nonce=peer.nonce())
    return store.record_callback(record, nonce_ttl_seconds=1200)


def head(store, code):
    return store.get_head(code)


# -- 1. throttling inside a transaction is transient, and work Zeyi accepted is never a 5xx -------

@pytest.mark.parametrize("reason", [THROTTLED, CAPACITY], ids=["throttling", "capacity"])
def test_a_throttled_callback_is_retried_with_backoff_and_applied(aws_env, clock, reason):
    sleeps = Sleeps()
    cancelling = Cancelling(aws.client("dynamodb"), reason, reason)
    store = store_on(cancelling, clock, sleeps)
    outcome = deliver(store, Callback("AC-1", "inst-ac-1", "finish", "agree"))
    assert (outcome.disposition, outcome.status) == ("applied", "AGREED")
    assert head(store, "AC-1")["status"] == "AGREED"
    assert cancelling.transactions == 3
    assert sleeps and all(0 <= pause <= 1.0 for pause in sleeps)


def test_a_claim_throttled_on_every_try_is_a_retryable_503_and_stores_nothing(aws_env, clock,
                                                                             model):
    sleeps = Sleeps()
    store = store_on(Cancelling(aws.client("dynamodb"), *[THROTTLED] * 20), clock, sleeps)
    with pytest.raises(ServiceUnavailableError) as caught:
        send(store, model, "AC-2")
    assert (caught.value.status, caught.value.error_code) == (503, "SERVICE_UNAVAILABLE")
    assert model.sends == 0 and head(store, "AC-2") is None
    assert len(sleeps) == 4  # bounded: five tries, a pause between each two
    assert len(set(sleeps)) == len(sleeps)  # jittered


def test_a_send_zeyi_accepted_is_a_success_saying_the_record_is_catching_up(aws_env, clock,
                                                                            model):
    cancelling = Cancelling(aws.client("dynamodb"), *[THROTTLED] * 20, after=1)  # after claim
    store = store_on(cancelling, clock)
    answer = send(store, model, "AC-3")
    assert answer["success"] is True
    result = answer["result"]
    assert (result["status"], result["recorded"]) == ("PENDING", False)
    assert "do not send it again" in answer["message"]
    assert head(store, "AC-3")["status"] == "SUBMITTING"
    assert head(store, "AC-3")["attemptId"] == result["attemptId"]
    # The record converges by itself: Zeyi's callback settles the attempt.
    plain = store_on(aws.client("dynamodb"), clock)
    decided = deliver(plain, model.decide(model.latest("AC-3"), "agree"))
    assert (decided.disposition, decided.status) == ("applied", "AGREED")


def test_a_cancel_zeyi_accepted_is_a_success_saying_the_record_is_catching_up(aws_env, clock,
                                                                              model):
    plain = store_on(aws.client("dynamodb"), clock)
    send(plain, model, "AC-4")
    store = store_on(Cancelling(aws.client("dynamodb"), *[CAPACITY] * 20), clock)
    answer = cancel(store, model, "AC-4")
    assert answer["success"] is True
    assert (answer["result"]["status"], answer["result"]["recorded"]) == ("CANCELLING", False)
    assert head(plain, "AC-4")["status"] == "PENDING"
    [terminate] = model.owed
    assert deliver(plain, terminate).status == "TERMINATED"


def test_a_validation_reason_stays_a_defect_and_is_not_retried(aws_env, clock):
    from chalicelib.errors import StoreError

    cancelling = Cancelling(aws.client("dynamodb"), ("ValidationError", "bad"))
    with pytest.raises(StoreError):
        deliver(store_on(cancelling, clock), Callback("AC-5", "inst-ac-5", "finish", "agree"))
    assert cancelling.transactions == 1


# -- 8. every try's outcome is checked --------------------------------------------------------------

def test_a_callback_applied_on_the_last_ruled_try_is_answered_applied(aws_env, clock):
    conflict = ("TransactionConflict", "Transaction is ongoing for the item")
    # The blind try and four ruled tries conflict; the fifth ruled try commits.
    cancelling = Cancelling(aws.client("dynamodb"), *[conflict] * 5)
    store = store_on(cancelling, clock)
    outcome = deliver(store, Callback("AC-8", "inst-ac-8", "finish", "refuse"))
    assert (outcome.disposition, outcome.status) == ("applied", "REFUSED")
    assert cancelling.transactions == 6
    assert deliver(store, Callback("AC-8", "inst-ac-8", "finish", "refuse")).disposition \
        == "duplicate"


# -- 5. what Zeyi answered is always kept ----------------------------------------------------------

def test_zeyis_answer_after_an_operators_failed_is_kept_on_the_attempt(store):
    attempt = store.claim("AC-6", peer.send_body("AC-6"), LEASE_SECONDS)
    store.resolve("AC-6", "FAILED", reason="Zeyi says it has nothing", by="ops")
    answer = {"kind": "rejected", "errorCode": "APPROVAL_ACTIVE", "message": "refused"}
    assert store.settle_send("AC-6", attempt, "FAILED", answer) is False
    [kept] = store.history("AC-6")["attempts"]
    assert kept["outcome"] == answer
    assert kept["resolution"]["by"] == "ops"
    assert head(store, "AC-6")["changedBy"] == "operator"


# -- 2. an attempt made current again brings its own fields ---------------------------------------

def test_an_earlier_attempt_made_current_again_names_its_own_audit_type(store, clock, model):
    model.faults.append("lost_after")
    with pytest.raises(UpstreamOutcomeUnknownError) as first:
        send(store, model, "AC-7", auditType="CONTRACT")
    b1 = model.latest("AC-7")
    clock.skipped_seconds += LEASE_SECONDS
    with pytest.raises(UpstreamRejectedError):  # B1 is in progress at Zeyi
        send(store, model, "AC-7", auditType="PAYMENT")
    assert head(store, "AC-7")["auditType"] == "PAYMENT"
    deliver(store, model.decide(b1, "agree"), audit_type="CONTRACT")
    now = head(store, "AC-7")
    assert (now["status"], now["attemptId"]) == ("AGREED", first.value.result["attemptId"])
    assert now["auditType"] == "CONTRACT"


# -- 6. binding uses what the gateway knows ---------------------------------------------------------

def test_a_cancelled_approvals_late_terminate_never_ends_the_next_one(store, clock, model):
    send(store, model, "AC-9")
    cancel(store, model, "AC-9")
    [b1_terminate] = model.owed
    model.owed.clear()  # delayed
    clock.skipped_seconds += CANCEL_LEASE_SECONDS
    a2 = send(store, model, "AC-9")["result"]["attemptId"]
    b2 = model.latest("AC-9")
    late = deliver(store, b1_terminate)
    assert (late.disposition, late.status) == ("late", "PENDING")
    assert head(store, "AC-9")["attemptId"] == a2
    assert cancel(store, model, "AC-9")["result"]["status"] == "CANCELLING"  # B2 still cancellable
    [b2_terminate] = model.owed
    assert b2_terminate.business_id == b2.business_id
    assert deliver(store, b2_terminate).status == "TERMINATED"
    owners = {c["businessId"]: c["attemptId"] for c in store.history("AC-9")["callbacks"]}
    assert owners[b2.business_id] == a2 and owners[b1_terminate.business_id] != a2


# -- 9. a revoked agreement --------------------------------------------------------------------------

def test_a_revoked_agreement_is_revoked_and_frees_the_code(store, model):
    send(store, model, "AC-10")
    b1 = model.latest("AC-10")
    assert deliver(store, model.decide(b1, "agree")).status == "AGREED"
    revoked = deliver(store, model.decide(b1, "terminate"), audit_user="M02",
                      remark="合同作废")
    assert (revoked.disposition, revoked.status) == ("applied", "REVOKED")
    now = head(store, "AC-10")
    assert now["lastCallback"]["auditUser"] == "M02"
    assert now["lastCallback"]["remark"] == "合同作废"
    statuses = {(c["type"], c["disposition"]) for c in store.history("AC-10")["callbacks"]}
    assert statuses == {("finish", "applied"), ("terminate", "applied")}
    assert send(store, model, "AC-10")["result"]["status"] == "PENDING"  # not blocked


def test_a_terminate_then_its_own_agree_ends_revoked_too(store, model):
    send(store, model, "AC-11")
    b1 = model.latest("AC-11")
    agree = model.decide(b1, "agree")
    terminate = model.decide(b1, "terminate")
    assert deliver(store, terminate).status == "TERMINATED"
    outcome = deliver(store, agree)
    assert (outcome.disposition, outcome.status) == ("applied", "REVOKED")


def test_a_refused_instances_terminate_keeps_refused_and_is_recorded(store, model):
    send(store, model, "AC-12")
    b1 = model.latest("AC-12")
    deliver(store, model.decide(b1, "refuse"))
    outcome = deliver(store, model.decide(b1, "terminate"))
    assert (outcome.disposition, outcome.status) == ("ignored", "REFUSED")
    assert store.history("AC-12")["callbackCount"] == 2


# -- found by the deep model run: an unknown instance's later callback ------------------------------

def test_an_unknown_instances_revocation_never_ends_the_current_attempt(store, clock, model):
    outside = model.create_elsewhere("AC-13")
    deliver(store, model.decide(outside, "refuse"))          # the code's first instance
    second = model.create_elsewhere("AC-13")
    assert deliver(store, model.decide(second, "refuse")).disposition == "unknown_instance"
    model.faults.append("lost_before")
    with pytest.raises(UpstreamOutcomeUnknownError):
        send(store, model, "AC-13")                          # SUBMITTING
    revoked = deliver(store, model.decide(second, "terminate"))  # deleted in DingTalk
    assert (revoked.disposition, revoked.status) == ("unknown_instance", "SUBMITTING")
    unknown = [c for c in store.history("AC-13")["callbacks"]
               if c["businessId"] == second.business_id]
    assert [c["attemptId"] for c in unknown] == [None, None]


# -- found by the model test: what Zeyi's rules tell apart ------------------------------------------

def test_an_outside_refusal_while_cancelling_leaves_the_cancelled_attempt_owed_its_terminate(
        store, model):
    # Zeyi accepted the cancel, so the cancelled instance's decision is the terminate on its way:
    # a refusal arriving meanwhile is another instance's, and that terminate, however late,
    # never ends the next attempt.
    cancelled = send(store, model, "AC-14")["result"]["attemptId"]
    cancel(store, model, "AC-14")
    [terminate] = model.owed
    model.owed.clear()  # delayed
    outside = model.create_elsewhere("AC-14")
    refused = deliver(store, model.decide(outside, "refuse"))
    assert (refused.disposition, refused.status) == ("applied", "REFUSED")
    nxt = send(store, model, "AC-14")["result"]["attemptId"]
    late = deliver(store, terminate)
    assert (late.disposition, late.status) == ("late", "PENDING")
    assert head(store, "AC-14")["attemptId"] == nxt
    owners = {c["businessId"]: c["attemptId"] for c in store.history("AC-14")["callbacks"]}
    assert owners[terminate.business_id] == cancelled
    assert owners[outside.business_id] not in (cancelled, nxt)


def test_an_agreement_after_a_revocation_holds_the_code_whichever_callback_comes_first(
        store, model):
    # An agreed instance blocks every later approval of the code, so of two agreed instances the
    # later one exists only because the earlier was revoked: the one still agreed holds the code.
    send(store, model, "AC-15")
    first = model.latest("AC-15")
    assert deliver(store, model.decide(first, "agree")).status == "AGREED"
    revocation = model.decide(first, "terminate")   # delivered late (throttled, retried)
    outside = model.create_elsewhere("AC-15")
    second = deliver(store, model.decide(outside, "agree"), audit_type="PAYMENT")
    assert second.status == "AGREED"
    waiting = [a["waitingForRevocation"] for a in store.history("AC-15")["attempts"]
               if a["status"] == "AGREED" and "waitingForRevocation" in a]
    assert waiting == [True]  # one of the two AGREED attempts, not the current one
    late = deliver(store, revocation)
    assert (late.disposition, late.status) == ("applied", "AGREED")
    now = head(store, "AC-15")
    assert (now["status"], now["businessId"], now["auditType"]) == ("AGREED",
                                                                    outside.business_id,
                                                                    "PAYMENT")
    # Its own revocation then frees the code.
    assert deliver(store, model.decide(outside, "terminate")).status == "REVOKED"


def test_an_earlier_agreement_arriving_late_never_takes_the_code_from_the_later_one(store, model):
    send(store, model, "AC-16")
    first = model.latest("AC-16")
    agreement = model.decide(first, "agree")          # both delivered late
    revocation = model.decide(first, "terminate")
    outside = model.create_elsewhere("AC-16")
    deliver(store, model.decide(outside, "agree"))    # taken for the send's own instance
    assert deliver(store, agreement).status == "AGREED"
    assert deliver(store, revocation).status == "AGREED"
    assert head(store, "AC-16")["businessId"] == outside.business_id
    assert deliver(store, model.decide(outside, "terminate")).status == "REVOKED"


def test_two_revoked_agreements_leave_the_code_revoked_in_any_order(store, model):
    send(store, model, "AC-17")
    first = model.latest("AC-17")
    deliver(store, model.decide(first, "agree"))
    revocation = model.decide(first, "terminate")
    outside = model.create_elsewhere("AC-17")
    deliver(store, model.decide(outside, "agree"))
    deliver(store, model.decide(outside, "terminate"))
    assert deliver(store, revocation).status == "REVOKED"
    assert send(store, model, "AC-17")["result"]["status"] == "PENDING"  # the code is free


def test_two_waiting_agreements_written_at_once_both_wait_for_the_revocations(aws_env, clock,
                                                                              model):
    # Three agreed instances, each revoked before the next began; the agreements arrive first,
    # and two of them race in two containers: neither may drop the other from agreedElsewhere.
    store = RacingStore(aws.client("dynamodb"), APPROVALS_TABLE, NONCES_TABLE, clock=clock,
                        sleep=Sleeps())
    send(store, model, "AC-18")
    revocations = []
    agreements = []
    for _ in range(3):
        instance = model.latest("AC-18") if not agreements else model.create_elsewhere("AC-18")
        agreements.append(model.decide(instance, "agree"))
        revocations.append(model.decide(instance, "terminate"))
    held = model.create_elsewhere("AC-18")
    agreements.append(model.decide(held, "agree"))
    deliver(store, agreements[0])
    deliver(store, agreements[1])
    store.between_ruling = lambda: deliver(store, agreements[3])
    deliver(store, agreements[2])
    for revocation in revocations:
        assert deliver(store, revocation).status == "AGREED"
    assert head(store, "AC-18")["businessId"] == held.business_id
