"""The approval lifecycle of docs/architecture.md: one transition table and the rule that binds a
callback to the approval instance it belongs to. Pure: no store, no clock, no AWS.

The store never restates these rules. Its blind writes condition on ``allowed_from(event)``, and
when a blind write does not apply it reads the code's state and asks ``decide_callback``.

Statuses::

    SUBMITTING ── accepted ──▶ PENDING ── agree ──▶ AGREED ── its own terminate ──▶ REVOKED
        │ rejected               │ refuse ──▶ REFUSED, terminate ──▶ TERMINATED
        ▼                        ▼ cancel accepted
      FAILED                CANCELLING ── terminate ──▶ TERMINATED

A SUBMITTING or CANCELLING attempt also takes a callback directly (the send's answer or the
cancel's terminate may be lost or late), and both hold a lease: once it has run out, a new send
may supersede them, and Zeyi's own rule (one approved-or-in-progress approval per code) decides
whether that send is accepted.
"""
from __future__ import annotations

from dataclasses import dataclass

SUBMITTING = "SUBMITTING"
PENDING = "PENDING"
CANCELLING = "CANCELLING"
AGREED = "AGREED"
REFUSED = "REFUSED"
TERMINATED = "TERMINATED"
FAILED = "FAILED"
# Agreed, then revoked (撤销) or deleted (删除) in DingTalk: Zeyi's terminate of the agreed
# instance. By Zeyi's rule such an instance no longer holds the code, so REVOKED blocks nothing.
REVOKED = "REVOKED"
STATUSES = (SUBMITTING, PENDING, CANCELLING, AGREED, REFUSED, TERMINATED, FAILED, REVOKED)

# Events. SEND starts a new attempt; ACCEPTED and REJECTED are Zeyi's answer to it (REJECTED also
# when Zeyi was never reached); CANCEL_ACCEPTED is Zeyi accepting a cancel; the last three are the
# callbacks of the attempt's Zeyi instance.
SEND = "send"
ACCEPTED = "accepted"
REJECTED = "rejected"
CANCEL_ACCEPTED = "cancel_accepted"
AGREE = "agree"
REFUSE = "refuse"
TERMINATE = "terminate"
CALLBACK_EVENTS = (AGREE, REFUSE, TERMINATE)
# An operator closes an approval stuck open (ops approvals resolve): Zeyi is known to have
# created nothing (FAILED), or to have ended it without telling us (TERMINATED).
RESOLVE_FAILED = "resolved_failed"
RESOLVE_TERMINATED = "resolved_terminated"

# Zeyi may still decide these.
OPEN = frozenset({SUBMITTING, PENDING, CANCELLING})
# An instance's decision: final for that instance.
DECIDED = frozenset({AGREED, REFUSED, TERMINATED})
# These block a new send of the same code (a leased one only until its lease runs out).
BLOCKING = OPEN | {AGREED}
LEASED = frozenset({SUBMITTING, CANCELLING})

_DECISIONS = {AGREE: AGREED, REFUSE: REFUSED, TERMINATE: TERMINATED}
NEW_CODE = None  # the "status" of a code never seen

TRANSITIONS: dict[tuple[str | None, str], str] = {
    (NEW_CODE, SEND): SUBMITTING,
    (FAILED, SEND): SUBMITTING,
    (REFUSED, SEND): SUBMITTING,
    (TERMINATED, SEND): SUBMITTING,
    (REVOKED, SEND): SUBMITTING,
    (SUBMITTING, SEND): SUBMITTING,   # only once its lease has run out
    (CANCELLING, SEND): SUBMITTING,   # only once its lease has run out
    (SUBMITTING, ACCEPTED): PENDING,
    (SUBMITTING, REJECTED): FAILED,
    (PENDING, CANCEL_ACCEPTED): CANCELLING,
    **{(status, event): decision for status in (SUBMITTING, PENDING)
       for event, decision in _DECISIONS.items()},
    # Zeyi accepted the cancel, so the instance was in progress and DingTalk ended it: its
    # decision is the terminate on its way. An agree or a refuse meanwhile is another instance's
    # (decide_callback), and this attempt stays owed its terminate.
    (CANCELLING, TERMINATE): TERMINATED,
    # One instance can be finished and then revoked or deleted (a terminate callback), never
    # terminated and then finished: a finish that arrives after its instance's terminate came
    # first at Zeyi, and is the instance's decision.
    (TERMINATED, AGREE): AGREED,
    (TERMINATED, REFUSE): REFUSED,
    **{(status, RESOLVE_FAILED): FAILED for status in OPEN},
    **{(status, RESOLVE_TERMINATED): TERMINATED for status in OPEN},
}
AFTER_LEASE_ONLY = frozenset({(SUBMITTING, SEND), (CANCELLING, SEND)})
# An instance's own second callback, in either order (the status is the instance's own, the
# callback names the same businessId): its agreement was revoked or deleted. Not in TRANSITIONS,
# whose rows also serve callbacks of an instance the code has not heard of (an operator's
# TERMINATED took no instance: an agree then is Zeyi's decision, AGREED).
SAME_INSTANCE = {(AGREED, TERMINATE): REVOKED, (TERMINATED, AGREE): REVOKED}

# At most this many superseded attempts are kept "in doubt" on the code; an older one's late
# callback is then recorded as an unknown instance instead of settling its attempt.
IN_DOUBT_MAX = 10


def next_status(status: str | None, event: str) -> str | None:
    """The status ``event`` leads to from ``status``, or None when the table does not allow it."""
    return TRANSITIONS.get((status, event))


def next_status_of_instance(status: str | None, event: str) -> str | None:
    """The status a callback leads its own instance to from the status that instance has."""
    return SAME_INSTANCE.get((status, event)) or next_status(status, event)


def allowed_from(event: str) -> frozenset[str]:
    """Every existing status ``event`` may leave (the store's condition expressions)."""
    return frozenset(status for status, name in TRANSITIONS
                     if name == event and status is not NEW_CODE)


def target_of(event: str) -> str:
    """The one status ``event`` leads to, from whichever status it may leave."""
    [target] = {target for (status, name), target in TRANSITIONS.items()
                if name == event and status is not NEW_CODE}
    return target


def decision_of(callback_type: str, result: str | None) -> str:
    """The callback event of a validated callback body: terminate, or finish with its result."""
    return TERMINATE if callback_type == "terminate" else {"agree": AGREE, "refuse": REFUSE}[result]


def may_send(status: str | None, lease_expires_at_ms: int | None, now_ms: int) -> bool:
    """Whether a new send may supersede a code's current attempt."""
    if next_status(status, SEND) is None:
        return False
    if (status, SEND) in AFTER_LEASE_ONLY:
        return (lease_expires_at_ms or 0) <= now_ms
    return True


def in_doubt_after_superseding(status: str, business_id: str | None,
                               in_doubt: tuple[str, ...], attempt_id: str) -> tuple[str, ...]:
    """The attempts in doubt once another attempt supersedes ``attempt_id`` as the current one:
    one that may have (or has) a Zeyi instance the gateway has not heard from joins them."""
    if status in OPEN and business_id is None:
        in_doubt = (*in_doubt, attempt_id)
    return in_doubt[-IN_DOUBT_MAX:]


def owed_terminate_after_superseding(status: str, business_id: str | None,
                                     owed: tuple[str, ...], attempt_id: str,
                                     in_doubt: tuple[str, ...]) -> tuple[str, ...]:
    """The attempts in doubt that are owed a terminate, once ``attempt_id`` is superseded: a
    CANCELLING one whose instance the gateway has not heard from. Zeyi accepted its cancel, so
    its instance's decision is that terminate (it was PENDING, and Zeyi ended it)."""
    if status == CANCELLING and business_id is None:
        owed = (*owed, attempt_id)
    return tuple(attempt for attempt in owed if attempt in in_doubt)


# -- callbacks -------------------------------------------------------------------------------------

APPLIED = "applied"            # moved the code's status
DUPLICATE = "duplicate"        # this very callback was recorded before
IGNORED = "ignored"            # its instance had already ended: recorded only
LATE = "late"                  # settles an attempt that is not current; the status stays
UNKNOWN_INSTANCE = "unknown_instance"  # no attempt can own it: recorded only, and a warning
NEW_ATTEMPT = "new"            # Ruling.attempt_id: an attempt the callback itself creates
# The "attempt" an instance recorded as unknown_instance is bound to, so that its later
# callbacks are known to be its own and never taken for the current attempt's instance.
UNOWNED = "-"


@dataclass(frozen=True)
class Head:
    """What the rules read of a code's current state."""

    status: str
    attempt_id: str
    business_id: str | None = None
    in_doubt: tuple[str, ...] = ()
    owed_terminate: tuple[str, ...] = ()  # those of in_doubt whose instance was terminated
    # Attempts of other agreed instances heard of while this one was AGREED: one of the two was
    # revoked before the other was started, and its terminate is on its way.
    agreed_elsewhere: tuple[str, ...] = ()


@dataclass(frozen=True)
class Ruling:
    """What one callback does.

    ``attempt_id`` is the attempt the callback belongs to (NEW_ATTEMPT, or None for an unknown
    instance); ``current`` the code's current attempt afterwards; ``status`` the code's status
    afterwards; ``attempt_status`` the status an earlier attempt ends with when the callback
    settles it; ``displaced`` the (instance, attempt) an instance bound by inference moves to.
    """

    disposition: str
    attempt_id: str | None
    current: str | None
    status: str
    attempt_status: str | None = None
    displaced: tuple[str, str] | None = None
    warning: str | None = None


def decide_callback(head: Head | None, business_id: str, event: str,
                    bound_to: tuple[str, str] | None) -> Ruling:
    """Which attempt the callback of instance ``business_id`` belongs to, and what it changes.

    ``bound_to`` is (attempt id, the instance's status) when the instance is bound to an attempt
    that is no longer current. Zeyi's send answer names no instance, so the first callback of an
    instance binds it. Two rules of Zeyi's decide the rest: an agreed instance is always the
    code's latest (it blocks every later send), and a send is accepted only once every earlier
    instance of the code has ended.
    """
    decision = _DECISIONS[event]
    if head is None:
        return Ruling(APPLIED, NEW_ATTEMPT, NEW_ATTEMPT, decision)
    if business_id == head.business_id:
        after = next_status_of_instance(head.status, event)
        if after is None:
            return Ruling(IGNORED, head.attempt_id, head.attempt_id, head.status)
        if after == REVOKED and head.agreed_elsewhere:
            # The other agreed instance is the later one: it holds the code now.
            return Ruling(APPLIED, head.attempt_id, head.agreed_elsewhere[-1], AGREED,
                          attempt_status=REVOKED)
        return Ruling(APPLIED, head.attempt_id, head.attempt_id, after)
    if bound_to is not None and bound_to[0] == UNOWNED:
        # An instance no attempt could own has called back before: this is its own later
        # callback (a revocation, say), recorded under no attempt like the first.
        return Ruling(UNKNOWN_INSTANCE, None, head.attempt_id, head.status,
                      warning="an instance no attempt of this code can own")
    if bound_to is not None:
        return _earlier_instance(head, event, *bound_to)
    owed = [attempt for attempt in head.owed_terminate if attempt in head.in_doubt]
    if event == TERMINATE and owed:
        # An attempt superseded while CANCELLING is owed exactly this: a terminate of an
        # instance the gateway has not heard from. The current attempt's own instance cannot
        # be told apart by its businessId, but Zeyi accepting a later send means the cancelled
        # instance had ended, and its terminate is the one on its way; it settles that attempt.
        return Ruling(LATE, owed[0], head.attempt_id, head.status, attempt_status=TERMINATED)
    if head.business_id is None and head.status in allowed_from(event):
        # The current attempt is open and has heard of no instance yet: this is its instance.
        # With attempts in doubt it may instead be theirs, arriving late; that cannot be told
        # apart, so it counts for the current one until a later callback shows otherwise.
        return Ruling(APPLIED, head.attempt_id, head.attempt_id, decision)
    agreed = event == AGREE
    if head.business_id is not None:
        # The current attempt is bound to another instance.
        if agreed and head.status == AGREED:
            # Zeyi starts no approval of a code while one is agreed, so one of the two was
            # revoked before the other began; whichever revocation comes decides which holds
            # the code. Until then this one waits on an attempt of its own (agreed_elsewhere).
            return Ruling(LATE, NEW_ATTEMPT, head.attempt_id, AGREED, attempt_status=AGREED,
                          warning="a second agreed instance for one code")
        if agreed and head.in_doubt:
            # The agreed instance is the latest, so the instance bound before came from an
            # attempt in doubt; it moves there.
            return Ruling(APPLIED, head.attempt_id, head.attempt_id, AGREED,
                          displaced=(head.business_id, head.in_doubt[0]))
        if head.in_doubt:
            return Ruling(LATE, head.in_doubt[0], head.attempt_id, head.status,
                          attempt_status=decision)
        if agreed:
            return Ruling(APPLIED, NEW_ATTEMPT, NEW_ATTEMPT, AGREED,
                          warning="an agreed instance the gateway never sent")
        return Ruling(UNKNOWN_INSTANCE, None, head.attempt_id, head.status,
                      warning="an instance no attempt of this code can own")
    # The current attempt created nothing at Zeyi (FAILED, or closed by an operator), or its
    # instance is being terminated for its accepted cancel (CANCELLING: an agree or a refuse is
    # another instance's). Zeyi's refusal of a send may have been for this very instance, which
    # is then the code's latest: it belongs to the newest attempt in doubt, or to an attempt of
    # its own (Zeyi's, not ours). A CANCELLING attempt superseded so stays owed its terminate.
    if head.in_doubt:
        return Ruling(APPLIED, head.in_doubt[-1], head.in_doubt[-1], decision,
                      attempt_status=decision)
    return Ruling(APPLIED, NEW_ATTEMPT, NEW_ATTEMPT, decision)


def _earlier_instance(head: Head, event: str, attempt_id: str, status: str) -> Ruling:
    """A callback of an instance bound to an earlier attempt. Instances are bound only once they
    have ended (or agreed), so this is a revocation, or the finish of one whose terminate came
    first: it settles that attempt alone."""
    after = next_status_of_instance(status, event)
    if after is None:
        return Ruling(IGNORED, attempt_id, head.attempt_id, head.status)
    return Ruling(LATE, attempt_id, head.attempt_id, head.status, attempt_status=after)
