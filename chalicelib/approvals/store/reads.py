"""Reads: the open approvals (a Query of the sparse index, never a Scan) and a code's history."""
from __future__ import annotations

from chalicelib.approvals import states
from chalicelib.approvals.store.base import (
    ATTEMPT_PREFIX,
    CALLBACK_PREFIX,
    HEAD,
    INSTANCE_PREFIX,
    StoreBase,
    _n,
    _plain,
    _s,
)
from chalicelib.errors import ApprovalNotFoundError
from chalicelib.runtime.table_keys import OPEN_INDEX, OPEN_SINCE_ATTRIBUTE, OPEN_STATUS_ATTRIBUTE

# Newest first, at most this many in a status answer; the counts say how many there are.
HISTORY_ATTEMPTS = 20
HISTORY_CALLBACKS = 50


class ReadStore(StoreBase):
    def open_approvals(self, status: str, *, opened_before_ms: int | None = None,
                       limit: int = 100) -> list[dict]:
        """The HEADs of approvals open in ``status`` (SUBMITTING, PENDING or CANCELLING),
        oldest first, that entered it before ``opened_before_ms``: a Query on the sparse
        open-approvals index, never a Scan."""
        values = {":status": _s(status)}
        condition = "#open = :status"
        if opened_before_ms is not None:
            condition += " AND #since < :before"
            values[":before"] = _n(opened_before_ms)
        kwargs = {"TableName": self._approvals, "IndexName": OPEN_INDEX,
                  "KeyConditionExpression": condition,
                  "ExpressionAttributeNames": {"#open": OPEN_STATUS_ATTRIBUTE,
                                               "#since": OPEN_SINCE_ATTRIBUTE}
                  if opened_before_ms is not None else {"#open": OPEN_STATUS_ATTRIBUTE},
                  "ExpressionAttributeValues": values}
        heads: list[dict] = []
        while len(heads) < limit:
            page = self._call("query", **kwargs, Limit=limit - len(heads))
            heads.extend(_plain(item) for item in page.get("Items", []))
            if "LastEvaluatedKey" not in page:
                break
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        return heads

    def history(self, code: str, *, bodies: bool = False) -> dict:
        """Current status, the newest attempts and callbacks of ``code``, newest first; each
        callback's raw body only with ``bodies`` (they can be hundreds of kilobytes each).

        Raises ApprovalNotFoundError for a code never seen.
        """
        items: list[dict] = []
        kwargs = {
            "TableName": self._approvals, "ConsistentRead": True,
            "KeyConditionExpression": "code = :code",
            "ExpressionAttributeValues": {":code": _s(code)},
        }
        while True:
            page = self._call("query", **kwargs)
            items.extend(_plain(item) for item in page.get("Items", []))
            if "LastEvaluatedKey" not in page:
                break
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        head = next((item for item in items if item["sk"] == HEAD), None)
        if head is None:
            raise ApprovalNotFoundError(f"no approval was ever sent or called back for code {code}")
        attempts, callbacks, owners = [], [], {}
        for item in items:
            sk = item.pop("sk")
            item.pop("code", None)
            if sk.startswith(ATTEMPT_PREFIX):
                if item["attemptId"] == head["attemptId"]:
                    item["status"] = head["status"]
                    for name in ("leaseExpiresAt", "businessId"):
                        if name in head:
                            item[name] = head[name]
                elif item["attemptId"] in head.get("agreedElsewhere", ()):
                    item["waitingForRevocation"] = True  # a second agreed instance's
                if item.get("businessId"):
                    owners[item["businessId"]] = item["attemptId"]
                attempts.append(item)
            elif sk.startswith(CALLBACK_PREFIX):
                item.pop("appKey", None)
                if not bodies:
                    item.pop("body", None)
                callbacks.append(item)
            elif sk.startswith(INSTANCE_PREFIX) and item["attemptId"] != states.UNOWNED:
                owners[sk[len(INSTANCE_PREFIX):]] = item["attemptId"]
        for callback in callbacks:
            callback.setdefault("attemptId", owners.get(callback["businessId"]))
        attempts.sort(key=lambda a: a["attemptId"], reverse=True)
        callbacks.sort(key=lambda c: c["receivedAt"], reverse=True)
        return {
            "code": code,
            "status": head["status"],
            "currentAttemptId": head["attemptId"],
            "businessId": head.get("businessId"),
            "updatedAt": head.get("updatedAt"),
            "version": head.get("version"),
            "attemptCount": len(attempts),
            "callbackCount": len(callbacks),
            "attempts": attempts[:HISTORY_ATTEMPTS],
            "callbacks": callbacks[:HISTORY_CALLBACKS],
        }


