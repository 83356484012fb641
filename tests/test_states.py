"""The lifecycle rules alone, without a store: the transition table and the ruling that binds a
callback to the attempt it belongs to (chalicelib/approvals/states.py, docs/architecture.md)."""
from __future__ import annotations

import pytest

from chalicelib.approvals import states
from chalicelib.approvals.states import (
    AGREE,
    AGREED,
    APPLIED,
    CANCELLING,
    FAILED,
    IGNORED,
    LATE,
    NEW_ATTEMPT,
    PENDING,
    REFUSE,
    REFUSED,
    REVOKED,
    SUBMITTING,
    TERMINATE,
    TERMINATED,
    Head,
    decide_callback,
)


def test_every_status_is_reachable_and_only_open_ones_take_a_first_callback():
    reachable = {*states.TRANSITIONS.values(), *states.SAME_INSTANCE.values()}
    assert reachable == set(states.STATUSES)
    for event in states.CALLBACK_EVENTS:
        assert states.allowed_from(event) >= {SUBMITTING, PENDING}
        assert states.allowed_from(event) - states.OPEN <= {TERMINATED}
    # A CANCELLING attempt's instance is being terminated for the cancel Zeyi accepted.
    assert CANCELLING in states.allowed_from(TERMINATE)
    assert CANCELLING not in states.allowed_from(AGREE) | states.allowed_from(REFUSE)


@pytest.mark.parametrize("status, event, expected", [
    (SUBMITTING, states.ACCEPTED, PENDING),
    (SUBMITTING, states.REJECTED, FAILED),
    (PENDING, states.ACCEPTED, None),
    (PENDING, states.CANCEL_ACCEPTED, CANCELLING),
    (SUBMITTING, states.CANCEL_ACCEPTED, None),
    (CANCELLING, TERMINATE, TERMINATED),
    (CANCELLING, AGREE, None),      # another instance's: decide_callback
    (AGREED, TERMINATE, None),      # another instance's terminate: see SAME_INSTANCE
    (REFUSED, AGREE, None),
    (TERMINATED, AGREE, AGREED),    # an instance the code has not heard of (an operator's)
    (REVOKED, states.SEND, SUBMITTING),
    (TERMINATED, TERMINATE, None),
    (FAILED, AGREE, None),
])
def test_the_transition_table(status, event, expected):
    assert states.next_status(status, event) == expected


@pytest.mark.parametrize("status, lease, now, allowed", [
    (None, None, 0, True),
    (FAILED, None, 0, True),
    (REFUSED, None, 0, True),
    (TERMINATED, None, 0, True),
    (REVOKED, None, 0, True),
    (PENDING, None, 0, False),
    (AGREED, None, 0, False),
    (SUBMITTING, 1000, 999, False),
    (SUBMITTING, 1000, 1000, True),
    (CANCELLING, 1000, 999, False),
    (CANCELLING, 1000, 1001, True),
])
def test_a_send_may_supersede_only_an_ended_or_expired_attempt(status, lease, now, allowed):
    assert states.may_send(status, lease, now) is allowed


def test_an_attempt_superseded_before_zeyi_was_heard_is_kept_in_doubt():
    assert states.in_doubt_after_superseding(SUBMITTING, None, ("a1",), "a2") == ("a1", "a2")
    assert states.in_doubt_after_superseding(CANCELLING, None, (), "a2") == ("a2",)
    assert states.in_doubt_after_superseding(REFUSED, "b1", ("a1",), "a2") == ("a1",)
    assert states.in_doubt_after_superseding(FAILED, None, (), "a2") == ()
    # docs/architecture.md promises ten: the oldest goes when an eleventh joins.
    ten = tuple(f"a{i}" for i in range(10))
    assert states.in_doubt_after_superseding(SUBMITTING, None, ten[:9], "new") == (*ten[:9],
                                                                                  "new")
    assert states.in_doubt_after_superseding(SUBMITTING, None, ten, "new") == (*ten[1:], "new")


# -- which attempt a callback belongs to -------------------------------------------------------

def head(status, attempt="A2", business_id=None, in_doubt=()):
    return Head(status=status, attempt_id=attempt, business_id=business_id,
                in_doubt=tuple(in_doubt))


def test_a_code_never_seen_gets_an_attempt_of_its_own():
    ruling = decide_callback(None, "b1", TERMINATE, None)
    assert (ruling.disposition, ruling.attempt_id, ruling.status) == (APPLIED, NEW_ATTEMPT,
                                                                      TERMINATED)


@pytest.mark.parametrize("status", [SUBMITTING, PENDING])
def test_the_first_instance_an_open_attempt_hears_of_is_its_own(status):
    ruling = decide_callback(head(status), "b2", REFUSE, None)
    assert (ruling.disposition, ruling.attempt_id, ruling.status) == (APPLIED, "A2", REFUSED)


def test_a_cancelling_attempts_instance_is_the_one_that_terminates():
    ruling = decide_callback(head(CANCELLING), "b2", TERMINATE, None)
    assert (ruling.disposition, ruling.attempt_id, ruling.status) == (APPLIED, "A2", TERMINATED)
    # Zeyi accepted its cancel, so its instance was in progress and is being terminated: a
    # finish meanwhile is another instance's, the code's latest, on an attempt of its own (A2
    # is then superseded while CANCELLING, so it stays owed its terminate).
    for event, status in ((REFUSE, REFUSED), (AGREE, AGREED)):
        ruling = decide_callback(head(CANCELLING), "bX", event, None)
        assert (ruling.disposition, ruling.attempt_id, ruling.current, ruling.status) == (
            APPLIED, NEW_ATTEMPT, NEW_ATTEMPT, status)


def test_an_agreed_instances_own_terminate_revokes_it_in_either_order():
    ruling = decide_callback(head(AGREED, business_id="b2"), "b2", TERMINATE, None)
    assert (ruling.disposition, ruling.attempt_id, ruling.status) == (APPLIED, "A2", REVOKED)
    # Terminate first: the finish came first at Zeyi, then the revocation; the same end.
    ruling = decide_callback(head(TERMINATED, business_id="b2"), "b2", AGREE, None)
    assert (ruling.disposition, ruling.status) == (APPLIED, REVOKED)
    # A refused instance's terminate changes nothing: nothing held the code either way.
    ruling = decide_callback(head(REFUSED, business_id="b2"), "b2", TERMINATE, None)
    assert (ruling.disposition, ruling.status) == (IGNORED, REFUSED)
    assert decide_callback(head(REVOKED, business_id="b2"), "b2", TERMINATE, None).disposition \
        == IGNORED


def test_a_terminate_goes_to_the_attempt_in_doubt_that_is_owed_one():
    owing = Head(status=PENDING, attempt_id="A2", in_doubt=("A0", "A1"), owed_terminate=("A1",))
    ruling = decide_callback(owing, "bX", TERMINATE, None)
    assert (ruling.disposition, ruling.attempt_id, ruling.attempt_status, ruling.status) == (
        LATE, "A1", TERMINATED, PENDING)
    # Its instance was terminated, so an agree or a refuse is not its.
    assert decide_callback(owing, "bX", REFUSE, None).attempt_id == "A2"
    # Owed only while in doubt.
    settled = Head(status=PENDING, attempt_id="A2", in_doubt=("A0",), owed_terminate=("A1",))
    assert decide_callback(settled, "bX", TERMINATE, None).attempt_id == "A2"


def test_an_instance_of_an_earlier_attempt_settles_that_attempt_alone():
    ruling = decide_callback(head(PENDING), "b1", TERMINATE, ("A1", REFUSED))
    assert (ruling.disposition, ruling.attempt_id, ruling.status) == (IGNORED, "A1", PENDING)
    ruling = decide_callback(head(PENDING), "b1", REFUSE, ("A1", TERMINATED))
    assert (ruling.disposition, ruling.attempt_status, ruling.status) == (LATE, REFUSED, PENDING)
    assert ruling.warning is None
    # Its agree after its terminate: it was agreed, then revoked.
    ruling = decide_callback(head(REFUSED, business_id="b2"), "b1", AGREE, ("A1", TERMINATED))
    assert (ruling.disposition, ruling.attempt_status, ruling.status) == (LATE, REVOKED,
                                                                          REFUSED)
    ruling = decide_callback(head(PENDING, business_id="b2"), "b1", TERMINATE, ("A1", AGREED))
    assert (ruling.disposition, ruling.attempt_status, ruling.status) == (LATE, REVOKED,
                                                                          PENDING)


def test_of_two_agreed_instances_the_one_not_revoked_holds_the_code():
    # Zeyi starts no approval of a code while one is agreed: one of the two was revoked first.
    # The second waits on an attempt of its own, and the first revocation decides.
    ruling = decide_callback(head(AGREED, business_id="b1"), "b2", AGREE, None)
    assert (ruling.disposition, ruling.attempt_id, ruling.current, ruling.status,
            ruling.attempt_status) == (LATE, NEW_ATTEMPT, "A2", AGREED, AGREED)
    assert ruling.warning == "a second agreed instance for one code"
    waiting = Head(status=AGREED, attempt_id="A2", business_id="b1", agreed_elsewhere=("A3",))
    ruling = decide_callback(waiting, "b1", TERMINATE, None)
    assert (ruling.disposition, ruling.attempt_id, ruling.attempt_status, ruling.current,
            ruling.status) == (APPLIED, "A2", REVOKED, "A3", AGREED)
    # The waiting one revoked first: it settles its own attempt, and the code stays AGREED.
    ruling = decide_callback(waiting, "b2", TERMINATE, ("A3", AGREED))
    assert (ruling.disposition, ruling.attempt_id, ruling.attempt_status, ruling.status) == (
        LATE, "A3", REVOKED, AGREED)
    # With none waiting, a revocation frees the code.
    assert decide_callback(head(AGREED, business_id="b1"), "b1", TERMINATE, None).status \
        == REVOKED


def test_an_unknown_instance_while_the_current_attempt_has_its_own_is_only_recorded():
    ruling = decide_callback(head(REFUSED, business_id="b2"), "bX", TERMINATE, None)
    assert (ruling.disposition, ruling.attempt_id, ruling.status) == ("unknown_instance", None,
                                                                      REFUSED)
    assert ruling.warning == "an instance no attempt of this code can own"


def test_an_unknown_instance_goes_to_an_attempt_in_doubt_and_settles_it():
    ruling = decide_callback(head(REFUSED, business_id="b2", in_doubt=["A0", "A1"]), "bX",
                             TERMINATE, None)
    assert (ruling.disposition, ruling.attempt_id, ruling.attempt_status, ruling.status) == (
        LATE, "A0", TERMINATED, REFUSED)


def test_an_agreed_unknown_instance_displaces_one_bound_by_inference():
    ruling = decide_callback(head(REFUSED, business_id="b1", in_doubt=["A0", "A1"]), "b2", AGREE,
                             None)
    assert (ruling.disposition, ruling.attempt_id, ruling.status) == (APPLIED, "A2", AGREED)
    assert ruling.displaced == ("b1", "A0")  # the oldest in doubt, as a late callback's


def test_an_agreed_instance_no_send_created_still_counts():
    ruling = decide_callback(head(REFUSED, business_id="b2"), "bX", AGREE, None)
    assert (ruling.disposition, ruling.attempt_id, ruling.status) == (APPLIED, NEW_ATTEMPT,
                                                                      AGREED)
    assert ruling.warning == "an agreed instance the gateway never sent"
    assert decide_callback(head(AGREED, business_id="b2"), "bX", AGREE, None).disposition \
        == LATE  # a second agreed instance: above


@pytest.mark.parametrize("event", states.CALLBACK_EVENTS)
def test_after_a_failed_send_zeyis_decision_counts(event):
    # Zeyi refused our send because it held an approval of the code: that approval is the
    # code's latest, so its decision is the code's status (the same as with no send at all).
    ruling = decide_callback(head(FAILED), "bX", event, None)
    assert (ruling.disposition, ruling.attempt_id) == (APPLIED, NEW_ATTEMPT)
    assert ruling.status == decide_callback(None, "bX", event, None).status
    ruling = decide_callback(head(FAILED, in_doubt=["A0", "A1"]), "bX", event, None)
    assert (ruling.attempt_id, ruling.current) == ("A1", "A1")


@pytest.mark.parametrize("bound_status", [s for s in states.STATUSES if s not in states.OPEN])
@pytest.mark.parametrize("event", [states.AGREE, states.REFUSE, states.TERMINATE])
@pytest.mark.parametrize("head_status", states.STATUSES)
def test_an_ended_bound_instance_never_makes_its_attempt_current_again(bound_status, event,
                                                                       head_status):
    """Instances are bound to an earlier attempt only once they have ended; their later
    callbacks settle that attempt alone, so the store never has to move a binding back onto
    the HEAD (chalicelib/approvals/store/callbacks.py)."""
    head = states.Head(status=head_status, attempt_id="current", business_id="b-current",
                       in_doubt=())
    ruling = states.decide_callback(head, "b-earlier", event, ("earlier", bound_status))
    assert ruling.current == "current"
