"""DynamoDB storage of approvals and of the inbound nonces: one class, composed of the store's
use cases, each in its own module (claims and answers, callbacks, reads), over the key layout
and transaction helpers they share (``base``, which describes the layout)."""
from __future__ import annotations

from chalicelib.approvals.store.base import (
    CallbackOutcome,
    CallbackRecord,
    StoreBase,
    new_attempt_id,
)
from chalicelib.approvals.store.callbacks import CallbackStore
from chalicelib.approvals.store.claims import ClaimStore
from chalicelib.approvals.store.files import FileStore
from chalicelib.approvals.store.idempotency import IdempotencyStore
from chalicelib.approvals.store.reads import ReadStore
from chalicelib.approvals.store.task_tokens import TaskTokenStore

__all__ = ["CallbackOutcome", "CallbackRecord", "DynamoDBApprovalStore", "new_attempt_id"]


class DynamoDBApprovalStore(ClaimStore, CallbackStore, ReadStore, FileStore, IdempotencyStore,
                            TaskTokenStore, StoreBase):
    """The approvals table and the nonces table, as the use cases need them."""
