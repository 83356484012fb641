"""File links: what a click needs to know of an approval, the clicks counted on the attempt, and
a code's revocation.

- Clicks live on the attempt whose send carried the link (``ATTEMPT#<attemptId>``):
  ``fileClickCount``, ``fileFirstClickAt`` and ``fileLastClickAt`` (epoch ms), so
  ``GET /audit/{code}`` shows them with the attempt. The approval events ignore every item but
  the HEAD, so a click publishes nothing.
- A revocation is its own item, ``FILES`` (``revokedAt``, epoch ms): every link issued at or
  before that moment is refused. It is not on the HEAD, whose every write is a versioned change
  of the approval.
"""
from __future__ import annotations

from chalicelib.approvals.store.base import ATTEMPT_PREFIX, HEAD, StoreBase, _n, _plain

FILES = "FILES"


class FileStore(StoreBase):
    def now_ms(self) -> int:
        """The store's clock: a link's age is judged on the same clock as the approval's."""
        return self._now_ms()

    def link_state(self, code: str, attempt_id: str) -> tuple[dict | None, dict | None,
                                                               dict | None]:
        """The code's HEAD, its ``FILES`` item and the attempt, read together, consistently:
        one TransactGetItems."""
        head, files, attempt = self._read(code, HEAD, FILES, ATTEMPT_PREFIX + attempt_id)
        return tuple(_plain(item) if item else None for item in (head, files, attempt))

    def count_click(self, code: str, attempt_id: str) -> None:
        """One more click on the attempt's links. Never creates the attempt."""
        now = self._now_ms()
        self._call(
            "update_item", TableName=self._approvals,
            Key=self._key(code, ATTEMPT_PREFIX + attempt_id),
            UpdateExpression=("ADD fileClickCount :one SET fileFirstClickAt ="
                              " if_not_exists(fileFirstClickAt, :now), fileLastClickAt = :now"),
            ConditionExpression="attribute_exists(sk)",
            ExpressionAttributeValues={":one": _n(1), ":now": _n(now)})

    def revoke_files(self, code: str) -> int:
        """End every link of ``code`` issued until now; returns the moment (epoch ms)."""
        now = self._now_ms()
        self._call("put_item", TableName=self._approvals,
                   Item={**self._key(code, FILES), "revokedAt": _n(now),
                         "updatedAt": _n(now)})
        return now
