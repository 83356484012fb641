"""Correlation ids: one id per request that ties together what the request caused.

An internal app may name its request with the ``X-Correlation-Id`` header (HTTP) or the
``correlationId`` field of a Lambda payload; otherwise the gateway makes one. The id goes on
every log line of the request (the Zeyi call's included), onto the attempt and the HEAD a send or
cancel writes (so an event built from the record can carry it), and back to the caller: the
``X-Correlation-Id`` response header, or ``result.correlationId`` in a Lambda function's answer.

An id that is not 1 to 128 printable ASCII characters without spaces is replaced by a new one,
as W3C Trace Context does with a malformed ``traceparent``: a tracing aid never fails the request
it travels with. The replacement is logged and returned, so the caller sees it.
"""
from __future__ import annotations

import re
import uuid

HEADER = "X-Correlation-Id"
PAYLOAD_FIELD = "correlationId"
MAX_CHARS = 128
# Printable ASCII without the space: safe in a response header and in any log viewer.
_VALID = re.compile(rf"[!-~]{{1,{MAX_CHARS}}}")


def new_id() -> str:
    return str(uuid.uuid4())


def accept(given: object) -> tuple[str, str | None]:
    """The correlation id to use for a request that brought ``given`` (None when it brought
    none), and why ``given`` was replaced (None when it was used, or absent)."""
    if given is None:
        return new_id(), None
    if isinstance(given, str) and _VALID.fullmatch(given):
        return given, None
    return new_id(), (f"{PAYLOAD_FIELD} must be 1 to {MAX_CHARS} printable ASCII characters"
                      " without spaces; a new one was made")


def split_payload(payload: object) -> tuple[object, object]:
    """A Lambda payload without its ``correlationId`` (which is not Zeyi's and must not be sent
    there), and that field's value (None when absent). Anything but an object is returned as
    it is, for the body's own validation to refuse."""
    if not isinstance(payload, dict) or PAYLOAD_FIELD not in payload:
        return payload, None
    rest = {name: value for name, value in payload.items() if name != PAYLOAD_FIELD}
    return rest, payload[PAYLOAD_FIELD]


def into_answer(answer: dict, correlation_id: str) -> dict:
    """A Lambda function's envelope with the correlation id in its ``result``: added to an
    object, or the whole result when there was none (a failure without details). The five
    fields stay the envelope's; a result of another type (none today) is left as it is."""
    result = answer.get("result")
    if result is None:
        return {**answer, "result": {PAYLOAD_FIELD: correlation_id}}
    if isinstance(result, dict):
        return {**answer, "result": {**result, PAYLOAD_FIELD: correlation_id}}
    return answer
