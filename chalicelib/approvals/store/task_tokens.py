"""Step Functions task tokens: one ``TASK#<attemptId>`` item in the approvals table per send that
carried a token, written in the claim's transaction. The token lives on this item only (the
history, GET /audit/{code}, reads no TASK# item); once the token is answered, or Step Functions
no longer knows it, the item keeps when and how, and the attempt's item ``taskAnswer`` says it
too (without the token)."""
from __future__ import annotations

from chalicelib.approvals.store.base import (
    ATTEMPT_PREFIX,
    StoreBase,
    _Cancelled,
    _n,
    _plain,
    _s,
    _to_dynamo,
)

TASK_PREFIX = "TASK#"
# BatchGetItem reads at most 100 keys per call.
BATCH_GET_MAX_KEYS = 100


class TaskTokenStore(StoreBase):
    def task_token_put(self, code: str, attempt_id: str, token: str) -> dict:
        """The TransactWriteItems item that keeps ``token`` for the attempt being claimed."""
        return {"Put": {
            "TableName": self._approvals,
            "Item": {**self._key(code, TASK_PREFIX + attempt_id), "attemptId": _s(attempt_id),
                     "taskToken": _s(token), "createdAt": _n(self._now_ms())},
            "ConditionExpression": "attribute_not_exists(sk)",
        }}

    def task_tokens(self, attempts: list[tuple[str, str]]) -> dict[tuple[str, str], dict]:
        """The TASK items of ``(code, attemptId)`` pairs that have one, read consistently."""
        found: dict[tuple[str, str], dict] = {}
        keys = [self._key(code, TASK_PREFIX + attempt_id) for code, attempt_id in
                dict.fromkeys(attempts)]
        while keys:
            chunk, keys = keys[:BATCH_GET_MAX_KEYS], keys[BATCH_GET_MAX_KEYS:]
            request = {self._approvals: {"Keys": chunk, "ConsistentRead": True}}
            for _ in range(5):
                answer = self._call("batch_get_item", RequestItems=request)
                for item in answer.get("Responses", {}).get(self._approvals, []):
                    plain = _plain(item)
                    found[(plain["code"], plain["attemptId"])] = plain
                request = answer.get("UnprocessedKeys") or {}
                if not request:
                    break
            else:
                from chalicelib.errors import ServiceUnavailableError

                raise ServiceUnavailableError("DynamoDB left keys unprocessed; try again")
        return found

    def record_task_answer(self, code: str, attempt_id: str, answer: dict) -> bool:
        """Keep how the token was answered (``answer``: outcome, error, at) on its TASK item and
        on the attempt. Returns False when it had been answered already (a redelivery)."""
        now = self._now_ms()
        try:
            self._transact([
                {"Update": {
                    "TableName": self._approvals,
                    "Key": self._key(code, TASK_PREFIX + attempt_id),
                    "UpdateExpression": "SET answeredAt = :now, answer = :answer",
                    "ConditionExpression": "attribute_exists(sk) AND attribute_not_exists("
                                           "answeredAt)",
                    "ExpressionAttributeValues": {":now": _n(now),
                                                  ":answer": _to_dynamo(answer)}}},
                {"Update": {
                    "TableName": self._approvals,
                    "Key": self._key(code, ATTEMPT_PREFIX + attempt_id),
                    "UpdateExpression": "SET taskAnswer = :answer",
                    "ConditionExpression": "attribute_exists(sk)",
                    "ExpressionAttributeValues": {":answer": _to_dynamo(answer)}}},
            ])
        except _Cancelled:
            return False
        return True
