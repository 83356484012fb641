"""What internal apps ask of the gateway: send an approval, cancel it, and read where it stands.

Each use case takes the parsed body and the ports it needs (the approval store, the Zeyi client),
so the routes and the Lambda functions in app.py share them, and tests run them against moto
server and a real HTTP Zeyi.

Ordering, and why:
- send: validate → claim (the one-active-approval rule, so concurrent sends of one code reach
  Zeyi once) → call Zeyi → record the answer. FAILED is recorded only when Zeyi refused or was
  never reached; when the request may have arrived, the attempt stays SUBMITTING, its lease
  bounds how long it blocks the code, and a late callback settles it.
- cancel: validate → read the current status (only PENDING can be cancelled) → call Zeyi →
  CANCELLING once Zeyi accepted. TERMINATED arrives with Zeyi's callback.

This module must stay cheap to import: ``requests`` is imported by the Zeyi client only.
"""
from __future__ import annotations

from chalicelib import envelope, payloads, states
from chalicelib.errors import (
    ApprovalNotCancellableError,
    ApprovalNotFoundError,
    GatewayError,
    ServiceUnavailableError,
    UpstreamOutcomeUnknownError,
)
from chalicelib.logs import logger

_NOT_CANCELLABLE_REASONS = {
    states.SUBMITTING: "Zeyi has not confirmed it yet",
    states.CANCELLING: "it is already being cancelled",
    states.FAILED: "it never started at Zeyi",
}


def send_approval(payload: object, *, store, zeyi, lease_seconds: int) -> dict:
    """Start an approval at Zeyi for an internal app; returns Zeyi's envelope when accepted.

    Raises ValidationError or BodyTooLargeError (nothing stored, nothing sent), ApprovalActiveError
    when the code has an active approval, UpstreamRejectedError when Zeyi refused and
    UpstreamUnavailableError when it could not be reached (both recorded FAILED: the code may be
    sent again at once), UpstreamOutcomeUnknownError when the request may have reached Zeyi (the
    attempt stays SUBMITTING until a callback or the end of its lease).
    """
    body = payloads.validate_send(payload)
    code = body["code"]
    attempt_id = store.claim(code, body, lease_seconds)
    context = {"code": code, "attemptId": attempt_id}
    try:
        answer = zeyi.send(body)
    except UpstreamOutcomeUnknownError as exc:
        logger.warning("send outcome unknown", extra={**context, "reason": exc.message})
        raise _with_advice(exc, (
            f"the approval may have been created at Zeyi, and then its callback will settle it"
            f" (see GET /audit/{code}); code {code} can be sent again in {lease_seconds} s, and"
            " Zeyi refuses that send if the first one exists"),
            result={"code": code, "status": states.SUBMITTING, "attemptId": attempt_id,
                    "retryAfterSeconds": lease_seconds}) from exc
    except GatewayError as exc:
        # Refused by Zeyi, Zeyi unreachable, or no credential to sign with: in every case
        # nothing was accepted at Zeyi, so the code is free again at once.
        _settle(store, code, attempt_id, states.FAILED, {
            "success": False, "businessException": exc.business, "errorCode": exc.error_code,
            "message": exc.message, "result": exc.result})
        if exc.result is None:
            exc.result = {"code": code, "status": states.FAILED, "attemptId": attempt_id}
        raise
    _settle(store, code, attempt_id, states.PENDING, answer)
    logger.info("approval sent", extra=context)
    return answer


def cancel_approval(payload: object, *, store, zeyi) -> dict:
    """Ask Zeyi to cancel a PENDING approval; returns Zeyi's envelope when accepted.

    Raises ValidationError, ApprovalNotFoundError for a code never seen,
    ApprovalNotCancellableError when the approval is not PENDING, and, with no state change,
    UpstreamRejectedError, UpstreamUnavailableError or UpstreamOutcomeUnknownError.
    """
    body = payloads.validate_cancel(payload)
    code = body["code"]
    head = store.get_head(code)
    if head is None:
        raise ApprovalNotFoundError(f"no approval was ever sent or called back for code {code}",
                                    result={"code": code})
    status = head["status"]
    if status != states.PENDING:
        reason = _NOT_CANCELLABLE_REASONS.get(status, "it has ended")
        raise ApprovalNotCancellableError(
            f"code {code} is {status} and cannot be cancelled: {reason}; only a PENDING"
            " approval can be cancelled", result={"code": code, "status": status})
    context = {"code": code, "attemptId": head["attemptId"]}
    try:
        answer = zeyi.cancel(body)
    except UpstreamOutcomeUnknownError as exc:
        logger.warning("cancel outcome unknown", extra={**context, "reason": exc.message})
        raise _with_advice(exc, (
            "Zeyi may have accepted the cancel: if it did, a terminate callback will end the"
            f" approval; check GET /audit/{code} before cancelling again"),
            result={"code": code, "status": status}) from exc
    try:
        if not store.mark_cancelling(code, head["attemptId"], body):
            logger.info("cancel accepted after a callback moved the approval on", extra=context)
    except ServiceUnavailableError:
        # Zeyi accepted: telling the app otherwise would be wrong. The terminate callback will
        # move the approval from PENDING directly.
        logger.exception("cancel accepted by Zeyi but not recorded", extra=context)
    logger.info("approval cancel accepted", extra=context)
    return answer


def get_approval(code: str, *, store) -> dict:
    """The envelope with the code's status, every attempt and every callback, newest first.

    Raises ValidationError for a malformed code and ApprovalNotFoundError for a code never seen.
    """
    return envelope.ok(store.history(payloads.validate_code(code)))


def _settle(store, code: str, attempt_id: str, status: str, outcome: dict) -> None:
    context = {"code": code, "attemptId": attempt_id, "status": status}
    try:
        if not store.settle_send(code, attempt_id, status, outcome):
            logger.info("send answer kept on an attempt that had moved on", extra=context)
    except ServiceUnavailableError:
        # What Zeyi said is still what the app must hear; the attempt stays SUBMITTING and its
        # lease, or a callback, ends it.
        logger.exception("send answer not recorded", extra=context)


def _with_advice(exc: UpstreamOutcomeUnknownError, advice: str,
                 result: dict) -> UpstreamOutcomeUnknownError:
    error = UpstreamOutcomeUnknownError(f"{exc.message}; {advice}", result=result)
    error.status = exc.status
    return error
