"""Idempotent sends and cancels: the same idempotency key with the same body, from the same
caller, within 24 hours, gets the first answer again (status and body) and does nothing else.

- The key comes from the ``Idempotency-Key`` header (HTTP) or the ``idempotencyKey`` field
  (Lambda): 1 to 255 printable ASCII characters. It is scoped to the caller (the IAM principal
  of an HTTP request; the ``caller`` a Lambda payload names), so two apps cannot collide.
- A send takes the key in the claim's own TransactWriteItems (``ClaimStore.claim``'s
  ``extra_items``): there is no moment when the claim exists and the key does not, and the happy
  path pays no extra round trip for taking it. Keeping the answer is one UpdateItem after it.
- A cancel has no claim: it takes the key with one conditional PutItem before anything else.
- While the first request runs, the same key gets 409 IDEMPOTENCY_IN_PROGRESS (retry); another
  body 422 IDEMPOTENCY_KEY_REUSED. A request refused before it did anything (an invalid body, a
  code that is active for another reason) keeps no answer: its retry runs again.
- A first request that died before answering holds the key until its lease ends (the send's or
  cancel's lease); then the same request may take it over and run again.

Why not Powertools' idempotency utility: it writes its record with a PutItem of its own before
the handler runs and an UpdateItem after, so the happy path pays an extra round trip, and its
record cannot join the claim's transaction (a window where one exists without the other). It
also keys on the payload only; here the key is the caller's, and the payload is the fingerprint
that must match.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

from chalicelib.approvals.store.claims import ClaimItemRefused
from chalicelib.approvals.store.idempotency import COMPLETED, idempotency_record
from chalicelib.errors import (
    ApprovalActiveError,
    GatewayError,
    IdempotencyInProgressError,
    IdempotencyKeyInvalidError,
    IdempotencyKeyReusedError,
    ReplayedAnswerError,
    ServiceUnavailableError,
    ValidationError,
)
from chalicelib.protocol import envelope
from chalicelib.runtime.logs import logger

HEADER = "Idempotency-Key"
PAYLOAD_FIELD = "idempotencyKey"
CALLER_FIELD = "caller"
TTL_SECONDS = 24 * 3600
MAX_CHARS = 255
_VALID_KEY = re.compile(rf"[ -~]{{1,{MAX_CHARS}}}")
_VALID_CALLER = re.compile(r"[!-~]{1,128}")
RECORD_PREFIX = "idempotency#"
INTERNAL_ERROR = (500, envelope.failure("INTERNAL_ERROR", "internal error; it has been logged"))


@dataclass(frozen=True)
class Key:
    """One caller's idempotency key for one request."""

    record_id: str
    fingerprint: str


def key_of(given: object, *, caller: str, operation: str, request: object) -> Key | None:
    """The key of a request that brought ``given`` (None when it brought none).

    Raises IdempotencyKeyInvalidError when ``given`` is not 1 to 255 printable ASCII."""
    if given is None:
        return None
    if not isinstance(given, str) or not _VALID_KEY.fullmatch(given):
        raise IdempotencyKeyInvalidError(
            f"the {HEADER} header (idempotencyKey field) must be 1 to {MAX_CHARS} printable"
            " ASCII characters")
    scope = json.dumps([caller, given], separators=(",", ":"))
    body = json.dumps([operation, request], sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False, default=str)
    return Key(record_id=RECORD_PREFIX + hashlib.sha256(scope.encode()).hexdigest(),
               fingerprint=hashlib.sha256(body.encode("utf-8", "replace")).hexdigest())


def lambda_caller(payload: object) -> tuple[object, str]:
    """A Lambda payload without its ``caller`` field, and the caller it names.

    Lambda tells a function nothing of who invoked it, so the scope is the name the invoking app
    declares (``lambda`` when none): it keeps well-meaning apps apart, it does not authenticate.
    Raises ValidationError for a caller that is not 1 to 128 printable ASCII without spaces."""
    if not isinstance(payload, dict) or CALLER_FIELD not in payload:
        return payload, "lambda"
    caller = payload[CALLER_FIELD]
    if not isinstance(caller, str) or not _VALID_CALLER.fullmatch(caller):
        raise ValidationError("caller must be 1 to 128 printable ASCII characters without"
                              " spaces")
    return ({k: v for k, v in payload.items() if k != CALLER_FIELD}, "lambda:" + caller)


def split_key(payload: object) -> tuple[object, object]:
    """A Lambda payload without its ``idempotencyKey``, and that field's value."""
    if not isinstance(payload, dict) or PAYLOAD_FIELD not in payload:
        return payload, None
    return ({k: v for k, v in payload.items() if k != PAYLOAD_FIELD}, payload[PAYLOAD_FIELD])


class _KeyedClaims:
    """The approval store as a send sees it, with the key taken in the claim's transaction.
    Everything but ``claim`` is the store's own."""

    def __init__(self, store, key: Key, lease_seconds: int, more_items=None):
        self._store = store
        self._key = key
        self._lease_seconds = lease_seconds
        self._more_items = more_items
        self.claimed = False

    def claim(self, code, request, lease_seconds, **kwargs):
        def items(attempt_id):
            extra = [self._store.idempotency_put(
                self._key.record_id, self._key.fingerprint, ttl_seconds=TTL_SECONDS,
                in_progress_seconds=self._lease_seconds, attempt_id=attempt_id)]
            return extra + (list(self._more_items(attempt_id)) if self._more_items else [])
        attempt_id = self._store.claim(code, request, lease_seconds, extra_items=items,
                                       **kwargs)
        self.claimed = True
        return attempt_id

    def __getattr__(self, name):
        return getattr(self._store, name)


def send(key: Key | None, *, store, run, lease_seconds: int, more_items=None) -> dict:
    """``run(store)`` (the send use case) under ``key``; returns its envelope, or the first
    answer's. ``more_items(attempt_id)`` adds items to the claim, keyed or not."""
    if key is None:
        return run(_WithItems(store, more_items) if more_items else store)
    keyed = _KeyedClaims(store, key, lease_seconds, more_items)
    try:
        answer = run(keyed)
    except ClaimItemRefused as refused:
        return _first_answer(idempotency_record(refused.old_items[0]), key, store)
    except ApprovalActiveError as active:
        # Blocked before the claim's write: by this key's own first request, or by another one.
        record = store.idempotency_record(key.record_id)
        if record is None:
            raise
        if record.get("fingerprint") == key.fingerprint and _abandoned(record, store):
            active.own_first_try = True  # its claim holds the code (and any task token)
            raise
        return _first_answer(record, key, store)
    except GatewayError as exc:
        if keyed.claimed:
            _keep(store, key, exc.status, _failure(exc))
        raise
    except Exception:
        if keyed.claimed:
            _keep(store, key, *INTERNAL_ERROR)
        raise
    _keep(store, key, 200, answer)
    return answer


def cancel(key: Key | None, *, store, run, lease_seconds: int) -> dict:
    """``run()`` (the cancel use case, its body already valid) under ``key``; returns its
    envelope, or the first answer's."""
    if key is None:
        return run()
    existing = store.take_idempotency_key(store.idempotency_put(
        key.record_id, key.fingerprint, ttl_seconds=TTL_SECONDS,
        in_progress_seconds=lease_seconds))
    if existing is not None:
        return _first_answer(existing, key, store)
    try:
        answer = run()
    except GatewayError as exc:
        _keep(store, key, exc.status, _failure(exc))
        raise
    except Exception:
        _keep(store, key, *INTERNAL_ERROR)
        raise
    _keep(store, key, 200, answer)
    return answer


class _WithItems:
    """The store with ``more_items`` added to its claim (a send without a key)."""

    def __init__(self, store, more_items):
        self._store = store
        self._more_items = more_items

    def claim(self, code, request, lease_seconds, **kwargs):
        return self._store.claim(code, request, lease_seconds, extra_items=self._more_items,
                                 **kwargs)

    def __getattr__(self, name):
        return getattr(self._store, name)


def _abandoned(record: dict, store) -> bool:
    """A first request that died before keeping its answer, and whose lease has ended."""
    return record["state"] != COMPLETED and record.get("inProgressUntil", 0) < store._now_ms()


def _first_answer(record: dict, key: Key, store) -> dict:
    if record.get("fingerprint") != key.fingerprint:
        raise IdempotencyKeyReusedError(
            f"this {HEADER} was used in the last 24 hours for a request with another body;"
            " use a new key for a new request")
    if record["state"] != COMPLETED:
        retry_s = max(1, -(-(record.get("inProgressUntil", 0) - store._now_ms()) // 1000))
        raise IdempotencyInProgressError(
            f"a request with this {HEADER} is still in progress; retry in {retry_s} s to get"
            " its answer", result={"retryAfterSeconds": retry_s})
    logger.info("idempotent replay", extra={"httpStatus": record["httpStatus"]})
    answer = record["answer"]
    if record["httpStatus"] == 200:
        return answer
    raise ReplayedAnswerError(record["httpStatus"], answer)


def _failure(exc: GatewayError) -> dict:
    return envelope.failure(exc.error_code, exc.message, business=exc.business,
                            result=exc.result)


def _keep(store, key: Key, status: int, answer: dict) -> None:
    try:
        store.complete_idempotency_key(key.record_id, status, answer)
    except ServiceUnavailableError:
        # The caller still gets its answer; a retry gets IDEMPOTENCY_IN_PROGRESS until the
        # lease ends, then runs again (and a send is then refused as APPROVAL_ACTIVE).
        logger.exception("idempotent answer not kept")
