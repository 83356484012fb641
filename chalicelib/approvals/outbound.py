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

from chalicelib.approvals import states
from chalicelib.errors import (
    ApprovalNotCancellableError,
    ApprovalNotFoundError,
    GatewayError,
    ServiceUnavailableError,
    StoreError,
    UpstreamOutcomeUnknownError,
)
from chalicelib.protocol import envelope, payloads
from chalicelib.runtime.logs import logger

# What an attempt keeps of Zeyi's answer: its raw text, cut here (a marker says so).
ANSWER_KEEP_CHARS = 4000
_NOT_CANCELLABLE_REASONS = {
    states.SUBMITTING: "Zeyi has not confirmed it yet",
    states.CANCELLING: "it is already being cancelled",
    states.FAILED: "it never started at Zeyi",
}


def send_approval(payload: object, *, store, zeyi, lease_seconds: int,
                  correlation_id: str | None = None, files=None) -> dict:
    """Start an approval at Zeyi for an internal app; returns the envelope with
    ``{code, status, attemptId}`` when Zeyi accepted it (Zeyi's own answer is kept in the
    history).

    Raises ValidationError or BodyTooLargeError (nothing stored, nothing sent), ApprovalActiveError
    when the code has an active approval, UpstreamRejectedError when Zeyi refused and
    UpstreamUnavailableError when it could not be reached (both recorded FAILED: the code may be
    sent again at once), UpstreamOutcomeUnknownError (or UpstreamSystemError, Zeyi's own fault)
    when the request may have created the approval (the attempt stays SUBMITTING until a
    callback or the end of its lease). ``correlation_id`` is kept on the attempt and the HEAD.
    ``files`` (chalicelib.approvals.files.FileLinks) checks the file fields before anything is
    stored and links them in what Zeyi receives; the attempt keeps the app's own body.
    """
    body = payloads.validate_send(payload)
    linked = files.prepare(body) if files is not None else None
    code = body["code"]
    logger.append_keys(code=code)
    attempt_id = store.claim(code, body, lease_seconds, correlation_id=correlation_id)
    where = {"code": code, "attemptId": attempt_id}
    try:
        answer = zeyi.send(linked.body_for(code, attempt_id) if linked else body)
    except UpstreamOutcomeUnknownError as exc:
        logger.warning("send outcome unknown", extra={**where, "reason": exc.message})
        _keep(store.note_outcome, code, attempt_id, _outcome("unknown", exc))
        exc.message += (
            f"; the approval may have been created at Zeyi, and then its callback will settle it"
            f" (see GET /audit/{code}); code {code} can be sent again in {lease_seconds} s, and"
            " Zeyi refuses that send if the first one exists")
        exc.result = {**where, "status": states.SUBMITTING, "retryAfterSeconds": lease_seconds}
        raise
    except GatewayError as exc:
        # Refused by Zeyi, Zeyi unreachable, or no credential to sign with: in every case
        # nothing was accepted at Zeyi, so the code is free again at once.
        status = _settle(store, code, attempt_id, states.FAILED, _outcome("rejected", exc),
                         correlation_id)
        exc.result = {**where, "status": states.FAILED if status is _NOT_RECORDED else status}
        if status is _NOT_RECORDED:
            exc.result["recorded"] = False
        raise
    status = _settle(store, code, attempt_id, states.PENDING, _outcome("accepted", answer),
                     correlation_id)
    logger.info("approval sent", extra=where)
    if status is _NOT_RECORDED:
        return _catching_up({**where, "status": states.PENDING}, "send")
    return envelope.ok({**where, "status": status})


def cancel_approval(payload: object, *, store, zeyi, lease_seconds: int,
                    correlation_id: str | None = None) -> dict:
    """Ask Zeyi to cancel a PENDING approval; returns the envelope with
    ``{code, status, attemptId}`` when Zeyi accepted (status CANCELLING until the terminate
    callback, or until ``lease_seconds`` pass without one).

    Raises ValidationError, ApprovalNotFoundError for a code never seen,
    ApprovalNotCancellableError when the approval is not PENDING, and, with no state change,
    UpstreamRejectedError, UpstreamUnavailableError or UpstreamOutcomeUnknownError.
    ``correlation_id`` is kept on the HEAD and in the attempt's ``cancel``.
    """
    body = payloads.validate_cancel(payload)
    code = body["code"]
    logger.append_keys(code=code)
    head = store.get_head(code)
    if head is None:
        raise ApprovalNotFoundError(f"no approval was ever sent or called back for code {code}",
                                    result={"code": code})
    status = head["status"]
    if states.next_status(status, states.CANCEL_ACCEPTED) is None:
        reason = _NOT_CANCELLABLE_REASONS.get(status, "it has ended")
        raise ApprovalNotCancellableError(
            f"code {code} is {status} and cannot be cancelled: {reason}; only a PENDING"
            " approval can be cancelled", result={"code": code, "status": status})
    where = {"code": code, "attemptId": head["attemptId"]}
    try:
        answer = zeyi.cancel(body)
    except UpstreamOutcomeUnknownError as exc:
        logger.warning("cancel outcome unknown", extra={**where, "reason": exc.message})
        exc.message += ("; Zeyi may have accepted the cancel: if it did, a terminate callback"
                        f" will end the approval; check GET /audit/{code} before cancelling"
                        " again")
        exc.result = {**where, "status": status}
        raise
    cancel = {**body, "answer": _outcome("accepted", answer)}
    try:
        if store.mark_cancelling(code, head["attemptId"], cancel, lease_seconds,
                                 correlation_id=correlation_id):
            status = states.CANCELLING
        else:
            logger.info("cancel accepted after a callback moved the approval on", extra=where)
            status = (store.get_head(code) or head)["status"]
    except (ServiceUnavailableError, StoreError):
        # Zeyi accepted: a 5xx would tell the app nothing happened. The terminate callback
        # moves the approval from PENDING directly.
        logger.exception("cancel accepted by Zeyi but not recorded", extra=where)
        return _catching_up({**where, "status": states.CANCELLING}, "cancel")
    logger.info("approval cancel accepted", extra=where)
    return envelope.ok({**where, "status": status})


def get_approval(code: str, *, store) -> dict:
    """The envelope with the code's status, its newest attempts and callbacks, newest first.

    Raises ValidationError for a malformed code and ApprovalNotFoundError for a code never seen.
    """
    code = payloads.validate_code(code)
    logger.append_keys(code=code)
    return envelope.ok(store.history(code))


def _outcome(kind: str, source) -> dict:
    """What an attempt keeps of a call to Zeyi: always storable, whatever Zeyi answered (NaN,
    huge numbers, deep nesting and long strings stay inside the raw text)."""
    outcome = {"kind": kind}
    if isinstance(source, GatewayError):
        outcome.update(errorCode=source.error_code, message=source.message[:ANSWER_KEEP_CHARS])
        source = getattr(source, "answer", None)
    if source is not None:
        text = source.text.encode("utf-8", "replace").decode("utf-8")
        outcome.update(httpStatus=source.http_status, answer=text[:ANSWER_KEEP_CHARS])
        if len(text) > ANSWER_KEEP_CHARS:
            outcome["answerCut"] = True
    return outcome


# _settle's answer when Zeyi's answer could not be recorded.
_NOT_RECORDED = object()


def _catching_up(result: dict, what: str) -> dict:
    """Zeyi accepted, and the record could not say so even after bounded retries: a success
    (never a 5xx, which would read "nothing happened, try again") whose ``recorded: false`` says
    the record is catching up. It converges by itself: Zeyi's callback moves the approval from
    the status it still shows, and a send's lease and the stuck-approval search bound the rest."""
    return envelope.ok({**result, "recorded": False},
                       message=f"Zeyi accepted the {what}; the record is catching up (GET"
                               f" /audit/{result['code']} may show the previous status for a"
                               f" while): do not send it again")


def _settle(store, code: str, attempt_id: str, status: str, outcome: dict,
            correlation_id: str | None):
    """Record Zeyi's answer; returns the code's status afterwards (a callback may have moved
    it first), or _NOT_RECORDED."""
    where = {"code": code, "attemptId": attempt_id, "status": status}
    try:
        if store.settle_send(code, attempt_id, status, outcome, correlation_id=correlation_id):
            return status
        logger.info("send answer kept on an attempt that had moved on", extra=where)
        head = store.get_head(code)
        return head["status"] if head and head["attemptId"] == attempt_id else status
    except (ServiceUnavailableError, StoreError):
        # What Zeyi said is still what the app must hear; the attempt stays SUBMITTING and its
        # lease, or a callback, ends it.
        logger.exception("send answer not recorded", extra=where)
        return _NOT_RECORDED


def _keep(write, *args) -> None:
    try:
        write(*args)
    except ServiceUnavailableError:
        logger.exception("call outcome not recorded", extra={"code": args[0]})
