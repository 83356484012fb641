"""Idempotency keys of internal apps' sends and cancels, in the nonces table.

The nonces table already holds short-lived "this request was seen" markers with a TTL
(``expiresAt``, epoch seconds); an idempotency key is one more, under ``pk`` =
``idempotency#<sha256 of caller and key>``, so it needs no table of its own. Its item:
``state`` (IN_PROGRESS, then COMPLETED), ``fingerprint`` (the request's hash), ``attemptId``
(a send's), ``inProgressUntil`` (epoch ms: a first request that died is taken over after it),
``httpStatus`` and ``answer`` (the first answer's envelope, as JSON text) once COMPLETED.
Correctness never waits for TTL deletion, which can lag by days: an expired item counts as
absent, in the conditions and in the reads.
"""
from __future__ import annotations

import json

from chalicelib.approvals.store.base import StoreBase, _n, _plain, _s
from chalicelib.errors import ServiceUnavailableError

IN_PROGRESS = "IN_PROGRESS"
COMPLETED = "COMPLETED"


class IdempotencyStore(StoreBase):
    def idempotency_put(self, record_id: str, fingerprint: str, *, ttl_seconds: int,
                        in_progress_seconds: int, attempt_id: str | None = None) -> dict:
        """The TransactWriteItems item that takes the key for a new request: it succeeds when the
        key is unused, expired, or held IN_PROGRESS past ``inProgressUntil`` by the same
        request (its first try died before answering)."""
        now_ms = self._now_ms()
        item = {"pk": _s(record_id), "state": _s(IN_PROGRESS), "fingerprint": _s(fingerprint),
                "expiresAt": _n(now_ms // 1000 + ttl_seconds),
                "inProgressUntil": _n(now_ms + in_progress_seconds * 1000),
                "createdAt": _n(now_ms)}
        if attempt_id is not None:
            item["attemptId"] = _s(attempt_id)
        return {"Put": {
            "TableName": self._nonces, "Item": item,
            "ConditionExpression": (
                "attribute_not_exists(pk) OR expiresAt < :now_s OR (#state = :in_progress"
                " AND inProgressUntil < :now_ms AND fingerprint = :fingerprint)"),
            "ExpressionAttributeNames": {"#state": "state"},
            "ExpressionAttributeValues": {":now_s": _n(now_ms // 1000),
                                          ":now_ms": _n(now_ms),
                                          ":in_progress": _s(IN_PROGRESS),
                                          ":fingerprint": _s(fingerprint)},
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        }}

    def take_idempotency_key(self, put: dict) -> dict | None:
        """Write ``put`` (an ``idempotency_put``) on its own. Returns None when the key was
        taken, else the key's record as it is (plain values)."""
        from botocore.exceptions import ClientError

        try:
            self._call("put_item", **put["Put"])
            return None
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise
            item = exc.response.get("Item")
            if not item:  # DynamoDB returns the item that failed the condition: it exists
                raise ServiceUnavailableError("the idempotency key could not be read; try"
                                              " again") from exc
            return idempotency_record(item)

    def complete_idempotency_key(self, record_id: str, http_status: int, answer: dict) -> None:
        """Keep the first answer under the key: what every later request with it gets."""
        self._call(
            "update_item", TableName=self._nonces, Key={"pk": _s(record_id)},
            UpdateExpression="SET #state = :done, httpStatus = :status, answer = :answer"
                             " REMOVE inProgressUntil",
            ConditionExpression="attribute_exists(pk)",
            ExpressionAttributeNames={"#state": "state"},
            ExpressionAttributeValues={
                ":done": _s(COMPLETED), ":status": _n(http_status),
                ":answer": _s(json.dumps(answer, ensure_ascii=False, separators=(",", ":")))})

    def idempotency_record(self, record_id: str) -> dict | None:
        """The key's record (plain values), or None when there is none or it expired."""
        item = self._call("get_item", TableName=self._nonces, Key={"pk": _s(record_id)},
                          ConsistentRead=True).get("Item")
        record = idempotency_record(item) if item else None
        if record is None or record["expiresAt"] < int(self._clock()):
            return None
        return record


def idempotency_record(item: dict) -> dict:
    """A key's item (DynamoDB's typed JSON) as plain values, its answer parsed."""
    record = _plain(item)
    if isinstance(record.get("answer"), str):
        record["answer"] = json.loads(record["answer"])
    return record
