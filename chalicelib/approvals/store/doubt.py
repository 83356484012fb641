"""What the HEAD keeps of attempts that are not current but may still change the code:
``inDoubt`` (they may own an instance the gateway has not heard from), ``owedTerminate`` (those of
them superseded while CANCELLING, whose instance's decision is the terminate of the cancel Zeyi
accepted) and ``agreedElsewhere`` (another agreed instance's, while the current one is AGREED).
All are lists of attempt ids, the second always a subset of the first, and all are read by the
callback rules (states.Head)."""
from __future__ import annotations

from chalicelib.approvals import states
from chalicelib.approvals.store.base import _s


def _doubt_sets(head: dict, in_doubt: tuple[str, ...], owed: tuple[str, ...], sets: dict,
                removes: list[str], agreed_elsewhere: tuple[str, ...] | None = None) -> None:
    """Write ``inDoubt``, ``owedTerminate`` (a subset of it) and ``agreedElsewhere`` (unless
    None) where they changed."""
    lists = [("inDoubt", in_doubt), ("owedTerminate", tuple(a for a in owed if a in in_doubt))]
    if agreed_elsewhere is not None:
        lists.append(("agreedElsewhere", agreed_elsewhere))
    for name, value in lists:
        if value == tuple(head.get(name, ())):
            continue
        if value:
            sets[name] = {"L": [_s(attempt) for attempt in value]}
        else:
            removes.append(name)


def _superseding_doubt(head: dict) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``inDoubt`` and ``owedTerminate`` once another attempt supersedes the HEAD's."""
    in_doubt = states.in_doubt_after_superseding(
        head["status"], head.get("businessId"), tuple(head.get("inDoubt", ())),
        head["attemptId"])
    owed = states.owed_terminate_after_superseding(
        head["status"], head.get("businessId"), tuple(head.get("owedTerminate", ())),
        head["attemptId"], in_doubt)
    return in_doubt, owed
