"""The real store with a hook between a read and its conditional write, where another Lambda
container's write can land: ``between_claim`` runs once after a claim has read the HEAD,
``between_ruling`` once after a ruled callback has read it. Shared by the race tests and the
lifecycle model."""
from __future__ import annotations

from chalicelib.approvals.store import DynamoDBApprovalStore


class RacingStore(DynamoDBApprovalStore):
    between_claim = None
    between_ruling = None

    def _race(self, hook: str) -> None:
        """Run the hook once (it is cleared first: the store's retries read again)."""
        between = getattr(self, hook)
        if between is not None:
            setattr(self, hook, None)
            between()

    def _claim_items(self, *args, **kwargs):
        self._race("between_claim")
        return super()._claim_items(*args, **kwargs)

    def _ruled_head(self, *args, **kwargs):
        self._race("between_ruling")
        return super()._ruled_head(*args, **kwargs)
