"""The attribute and index names the Lambda functions share with the tables' definitions
(``chalicelib.runtime.tables``). Their own module, with no imports, because the store needs them
on every request while the definitions and their reconciling are operator tooling: loading those
would cost every cold start for nothing.
"""
from __future__ import annotations

NONCE_TTL_ATTRIBUTE = "expiresAt"
APPROVALS_STREAM_VIEW_TYPE = "NEW_AND_OLD_IMAGES"
# A sparse index of the codes whose approval is still open (SUBMITTING, PENDING, CANCELLING):
# only a HEAD in such a status carries ``openStatus``, keyed with the time it entered it, so
# the oldest of each status is a Query, never a Scan.
OPEN_INDEX = "open-approvals"
OPEN_STATUS_ATTRIBUTE = "openStatus"
OPEN_SINCE_ATTRIBUTE = "openSince"
