"""How often and how patiently the store tries again: every read-then-write and every
transaction cancelled for a transient reason, bounded, with the last outcome always checked by
the caller."""
from __future__ import annotations

import random

_TRIES = 5  # every read-then-write and every conflicted transaction, bounded
# Between two tries: a pause drawn from [0, base * 2**n] (full jitter, so that Lambda containers
# throttled together do not come back together), at most _BACKOFF_CAP_SECONDS; the five tries
# then stay well inside a callback's and a send's time budget.
_BACKOFF_BASE_SECONDS = 0.05
_BACKOFF_CAP_SECONDS = 0.8
# A transaction's per-item cancellation reasons that say "try again": a concurrent transaction
# on an item, or throttling of the table or of an index it writes (the open-approvals index has
# three partition values, and every open or close writes it). Anything else but a failed
# condition (ValidationError, ItemCollectionSizeLimitExceeded) would fail the same way again.
_TRANSIENT_REASONS = frozenset({"TransactionConflict", "ThrottlingError",
                                "ProvisionedThroughputExceeded", "RequestLimitExceeded"})


def backoff(sleep, tries_done: int) -> None:
    """The pause before try number ``tries_done + 1`` (none before the first)."""
    if tries_done > 0:
        ceiling = min(_BACKOFF_CAP_SECONDS, _BACKOFF_BASE_SECONDS * 2 ** (tries_done - 1))
        sleep(random.uniform(0, ceiling))
