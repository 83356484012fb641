"""The approval state machine of docs/architecture.md, as data.

SUBMITTING ── send accepted ──▶ PENDING ── finish/agree ──▶ AGREED
    │ refused / unreachable       │ finish/refuse ──▶ REFUSED, terminate ──▶ TERMINATED
    ▼                             ▼ cancel accepted
  FAILED                     CANCELLING ── terminate ──▶ TERMINATED
"""
from __future__ import annotations

SUBMITTING = "SUBMITTING"
PENDING = "PENDING"
CANCELLING = "CANCELLING"
AGREED = "AGREED"
REFUSED = "REFUSED"
TERMINATED = "TERMINATED"
FAILED = "FAILED"

# A code with one of these blocks a new send (SUBMITTING only while its lease runs).
ACTIVE = frozenset({SUBMITTING, PENDING, CANCELLING, AGREED})
# A callback may settle only these; every other status is final.
OPEN = frozenset({SUBMITTING, PENDING, CANCELLING})

_CALLBACK_OUTCOMES = {
    ("finish", "agree"): AGREED,
    ("finish", "refuse"): REFUSED,
}


def status_after_callback(callback_type: str, result: str | None) -> str:
    """The final status a callback announces; the body was validated before, so it is known."""
    if callback_type == "terminate":
        return TERMINATED
    return _CALLBACK_OUTCOMES[(callback_type, result)]
