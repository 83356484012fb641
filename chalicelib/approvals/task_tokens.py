"""Step Functions task tokens: a workflow that sends an approval with ``.waitForTaskToken``
resumes when the approval reaches a final status.

A send may carry ``taskToken`` (the Lambda payload or the HTTP body). It is taken out before the
body is validated (it is never sent to Zeyi, never logged, never in an answer) and kept on a
``TASK#<attemptId>`` item written in the claim's transaction. The approvals stream (the events
outbox) drives the answer, from the same function that publishes the approval events: when a
HEAD reaches a final status, the token of the attempt that reached it, and only that attempt's,
gets ``SendTaskSuccess`` (AGREED) or ``SendTaskFailure`` with an error a workflow can catch
(``ERROR_NAMES``) and the decision as cause. The decision: ``code``, ``status``, ``attemptId``,
``businessId``, ``auditUser``, ``remark``, ``occurredAt`` (and ``eventId``).

Each answer is recorded on the TASK item and the attempt (``taskAnswer``), so a redelivered
stream batch does not answer again. A token Step Functions no longer knows (``TaskDoesNotExist``,
``TaskTimedOut``, ``InvalidToken``) is recorded as dropped and never retried; any other failure
(throttling, an unreachable service) reports the record failed, so Lambda retries it. A retry
between the call and its record answers again, and Step Functions refuses that second answer as
``TaskTimedOut``/``TaskDoesNotExist``: the workflow still sees exactly one.
"""
from __future__ import annotations

import json
from contextlib import contextmanager

from chalicelib.approvals import events, states
from chalicelib.errors import (
    ApprovalActiveError,
    BodyTooLargeError,
    IdempotencyKeyInvalidError,
    IdempotencyKeyReusedError,
    ValidationError,
)
from chalicelib.runtime.logs import logger

PAYLOAD_FIELD = "taskToken"
# SendTaskSuccess's own limit on a token.
MAX_CHARS = 2048
SUCCESS = {states.AGREED}
ERROR_NAMES = {
    states.REFUSED: "Approval.Refused",
    states.TERMINATED: "Approval.Terminated",
    states.FAILED: "Approval.Failed",
}
# Issue 17 adds REVOKED; its error name is ready for it.
if hasattr(states, "REVOKED"):
    ERROR_NAMES[states.REVOKED] = "Approval.Revoked"
FINAL = SUCCESS | set(ERROR_NAMES)
# A send refused before anything was recorded: no final status will ever answer its token.
NOT_SENT = "Approval.NotSent"
REFUSED_BEFORE_CLAIM = (ValidationError, BodyTooLargeError, IdempotencyKeyInvalidError,
                        IdempotencyKeyReusedError, ApprovalActiveError)
GONE = frozenset({"TaskDoesNotExist", "TaskTimedOut", "InvalidToken"})
# SendTaskFailure's limits: error 256 characters, cause 32768.
CAUSE_MAX_CHARS = 32768


def split_payload(payload: object) -> tuple[object, str | None]:
    """The send body without ``taskToken``, and the token (None when absent).

    Raises ValidationError for a token that is not a string of 1 to 2048 characters."""
    if not isinstance(payload, dict) or PAYLOAD_FIELD not in payload:
        return payload, None
    token = payload[PAYLOAD_FIELD]
    if not isinstance(token, str) or not 1 <= len(token) <= MAX_CHARS:
        raise ValidationError(f"{PAYLOAD_FIELD} must be a string of 1 to {MAX_CHARS}"
                              " characters (Step Functions' $$.Task.Token)")
    return {k: v for k, v in payload.items() if k != PAYLOAD_FIELD}, token


def decision_of(detail: dict) -> dict:
    """What the workflow gets: the decision, from an approval event's detail."""
    return {"code": detail["code"], "status": detail["status"],
            "attemptId": detail.get("attemptId"), "businessId": detail.get("businessId"),
            "auditUser": detail.get("auditUser"), "remark": detail.get("remark"),
            "occurredAt": detail.get("occurredAt"), "eventId": detail.get("eventId")}


def answer_batch(records: list[dict], *, store, client) -> list[str]:
    """Answer the task tokens of the final statuses in a batch of stream records. Returns the
    sequence numbers of the records whose token could not be answered yet (Lambda retries).
    ``client()`` makes the Step Functions client: only a batch with a token to answer pays
    for it; one with no final status reads nothing either."""
    finals: list[tuple[str, dict]] = []
    for record in records:
        try:
            event = events.event_of(record)
        except Exception:  # noqa: S112 - handle_batch reports an unreadable record already
            continue
        if event is None or event.detail_type == events.CALLBACK_RECORDED:
            continue
        if event.detail["status"] in FINAL and event.detail.get("attemptId"):
            finals.append((record["dynamodb"]["SequenceNumber"], event.detail))
    if not finals:
        return []
    try:
        tokens = store.task_tokens([(d["code"], d["attemptId"]) for _, d in finals])
    except Exception:
        logger.exception("task tokens could not be read")
        return [number for number, _ in finals]
    failed = []
    sfn = None
    for number, detail in finals:
        task = tokens.get((detail["code"], detail["attemptId"]))
        if task is None or task.get("answeredAt") is not None:
            continue
        sfn = sfn or client()
        if not _answer(task, detail, store=store, client=sfn):
            failed.append(number)
    return failed


def _answer(task: dict, detail: dict, *, store, client) -> bool:
    from botocore.exceptions import BotoCoreError, ClientError

    decision = decision_of(detail)
    where = {"code": detail["code"], "attemptId": detail["attemptId"],
             "status": detail["status"]}
    text = json.dumps(decision, ensure_ascii=False, separators=(",", ":"))
    error = ERROR_NAMES.get(detail["status"])
    try:
        if error is None:
            client.send_task_success(taskToken=task["taskToken"], output=text)
        else:
            client.send_task_failure(taskToken=task["taskToken"], error=error,
                                     cause=text[:CAUSE_MAX_CHARS])
        answer = {"outcome": "answered", "error": error}
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code not in GONE:
            logger.warning("task token not answered; the record is retried",
                           extra={**where, "reason": code})
            return False
        logger.warning("task token dropped: Step Functions no longer knows it",
                       extra={**where, "reason": code})
        answer = {"outcome": "dropped", "error": error, "reason": code}
    except BotoCoreError as exc:
        logger.warning("task token not answered; the record is retried",
                       extra={**where, "reason": type(exc).__name__})
        return False
    try:
        store.record_task_answer(detail["code"], detail["attemptId"],
                                 {**answer, "at": events.iso_time(store._now_ms())})
    except Exception:
        # Answered; a retry of the record would answer again and be refused by Step Functions.
        logger.exception("task token answer not recorded", extra=where)
    if answer["outcome"] == "answered":
        logger.info("task token answered", extra={**where, "error": error})
    return True


@contextmanager
def failed_at_once_when_refused(token: str | None, client):
    """Around a send: when it is refused before its claim, fail the workflow's task now
    (``refuse``), since no final status will ever answer it; unless the code is held by this
    very request's own first try (a keyed retry), whose claim keeps the token. ``client()``
    makes the Step Functions client, on that path only."""
    try:
        yield
    except REFUSED_BEFORE_CLAIM as refused:
        if token is not None and not getattr(refused, "own_first_try", False):
            refuse(token, refused, client=client())
        raise


def refuse(token: str, error, *, client) -> None:
    """Fail the workflow's task at once with ``NOT_SENT`` and the refusal (errorCode, message,
    result) as cause: the send was refused before its claim, so nothing recorded will ever
    answer the token, and the workflow would otherwise wait until its timeout. A failure to
    answer is logged; the caller's answer does not change."""
    from botocore.exceptions import BotoCoreError, ClientError

    cause = json.dumps({"errorCode": error.error_code, "message": error.message,
                        "result": error.result}, ensure_ascii=False, default=str)
    try:
        client.send_task_failure(taskToken=token, error=NOT_SENT, cause=cause[:CAUSE_MAX_CHARS])
    except (ClientError, BotoCoreError) as exc:
        reason = exc.response.get("Error", {}).get("Code") if isinstance(exc, ClientError) \
            else type(exc).__name__
        logger.warning("task token of a refused send not answered", extra={"reason": reason})
        return
    logger.info("task token of a refused send answered", extra={"error": NOT_SENT})
