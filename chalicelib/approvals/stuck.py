"""Approvals stuck open, found by a scheduled function every 5 minutes without a Scan.

Stuck means open for longer than anything but a lost message explains:

- SUBMITTING past its lease (``SUBMIT_LEASE_SECONDS``): Zeyi's answer to the send was lost and no
  callback came;
- CANCELLING past its lease (``CANCEL_LEASE_SECONDS``): Zeyi accepted the cancel and its
  terminate never came;
- PENDING for longer than ``STUCK_PENDING_SECONDS`` (7 days unless the stage says otherwise): an
  approver has not decided, or Zeyi's callback was lost.

Each status is one Query of the sparse open-approvals index (``store.open_approvals``, oldest first,
bounded by the time the approval entered the status); a leased status is then checked against the
HEAD's own ``leaseExpiresAt``, which the lease setting of its day fixed. For each stuck approval
``run`` writes one warning log line and calls each of its ``notify`` callables; ``run_and_announce``
(the scheduled function) also puts an "Approval Stuck" event per code on the stage's bus
(chalicelib.approvals.events.stuck_event); per status it counts the ``StuckApprovals`` metric, zero
included, so that the alarm sees the search ran. docs/operations.md says what an operator does with
a stuck approval (`python -m ops approvals list` / `resolve`).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from chalicelib.approvals import states
from chalicelib.runtime import metrics, telemetry
from chalicelib.runtime.logs import logger
from chalicelib.runtime.settings import Settings

# At most this many per status and run: each gets a log line; the metric says "at least" then.
MAX_PER_STATUS = 500
SEARCHED = (states.SUBMITTING, states.CANCELLING, states.PENDING)


@dataclass(frozen=True)
class StuckApproval:
    code: str
    status: str
    attempt_id: str
    open_since_ms: int
    lease_expires_at_ms: int | None
    correlation_id: str | None
    reason: str

    def log_fields(self, now_ms: int) -> dict:
        fields = {"code": self.code, "status": self.status, "attemptId": self.attempt_id,
                  "openSince": self.open_since_ms,
                  "openForSeconds": (now_ms - self.open_since_ms) // 1000,
                  "reason": self.reason}
        if self.lease_expires_at_ms is not None:
            fields["leaseExpiredSecondsAgo"] = (now_ms - self.lease_expires_at_ms) // 1000
        if self.correlation_id:
            fields["sentWithCorrelationId"] = self.correlation_id
        return fields


def find(store, *, settings: Settings, now_ms: int,
         limit: int = MAX_PER_STATUS) -> dict[str, list[StuckApproval]]:
    """The stuck approvals of each searched status, oldest first, at most ``limit`` each."""
    bounds = {
        states.SUBMITTING: now_ms - settings.submit_lease_seconds * 1000,
        states.CANCELLING: now_ms - settings.cancel_lease_seconds * 1000,
        states.PENDING: now_ms - settings.stuck_pending_seconds * 1000,
    }
    found: dict[str, list[StuckApproval]] = {}
    for status in SEARCHED:
        stuck = []
        for head in store.open_approvals(status, opened_before_ms=bounds[status], limit=limit):
            lease = head.get("leaseExpiresAt")
            if status in states.LEASED and lease is not None and lease > now_ms:
                continue  # a lease longer than today's setting, still running
            stuck.append(StuckApproval(
                code=head["code"], status=status, attempt_id=head.get("attemptId", ""),
                open_since_ms=head.get("openSince", head.get("updatedAt", now_ms)),
                lease_expires_at_ms=lease, correlation_id=head.get("correlationId"),
                reason=_REASONS[status]))
        found[status] = stuck
    return found


_REASONS = {
    states.SUBMITTING: "no answer from Zeyi and no callback within the send's lease",
    states.CANCELLING: "no terminate callback within the cancel's lease",
    states.PENDING: "no decision within the stage's STUCK_PENDING_SECONDS",
}


def run(store, *, settings: Settings, now_ms: int,
        notify: Iterable[Callable[[StuckApproval], None]] = (),
        limit: int = MAX_PER_STATUS) -> dict[str, int]:
    """Find the stuck approvals, report each, count them; returns the count per status."""
    found = find(store, settings=settings, now_ms=now_ms, limit=limit)
    notifiers = tuple(notify)
    for status, stuck in found.items():
        telemetry.count(metrics.STUCK_APPROVALS, ("status", status), value=len(stuck))
        for approval in stuck:
            logger.warning("approval stuck", extra=approval.log_fields(now_ms))
            for notifier in notifiers:
                notifier(approval)
    counts = {status: len(stuck) for status, stuck in found.items()}
    capped = sorted(status for status, count in counts.items() if count >= limit)
    logger.info("stuck approvals searched", extra={
        "stuck": counts, **({"atLeast": capped} if capped else {})})
    return counts


def run_and_announce(store, *, settings: Settings, now_ms: int, events_client) -> dict[str, int]:
    """``run``, then one "Approval Stuck" event per stuck approval on the stage's bus
    (``events_client``: a callable that gives the EventBridge client, called only when there is
    something to announce). An event PutEvents still refuses after ``events.publish``'s own
    retries is logged and counted, not raised: the next run, 5 minutes on, announces the
    approval again."""
    from chalicelib.approvals import events

    found: list[StuckApproval] = []
    counts = run(store, settings=settings, now_ms=now_ms, notify=[found.append])
    if found:
        outgoing = [(str(number), events.stuck_event(approval, now_ms))
                    for number, approval in enumerate(found, 1)]
        unpublished = events.publish(outgoing, client=events_client(),
                                     bus_name=settings.event_bus_name)
        telemetry.count(metrics.EVENTS_PUBLISHED, value=len(outgoing) - len(unpublished))
        telemetry.count(metrics.EVENTS_FAILED, value=len(unpublished))
    return counts
