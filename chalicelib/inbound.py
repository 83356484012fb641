"""Everything Zeyi calls: the access-token endpoint and the approval callback.

Checks run in protocol.md's order, each with its own error: appKey known → timestamp format and
window → nonce format → sign → nonce unseen → token → body. A failed request changes nothing. So
that a failed check never burns a nonce, the nonce is stored in the same write as the callback
itself (one DynamoDB round trip): a replay is therefore reported after token and body checks,
which a replay of a genuine call passes anyway.
"""
from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from chalicelib import json_body, signing, tokens
from chalicelib.approval_store import CallbackOutcome, CallbackRecord, DynamoDBApprovalStore
from chalicelib.credentials import Credential, InboundCredentials, TokenKeys
from chalicelib.errors import (
    AppKeyUnknownError,
    BodyInvalidError,
    BodyTooLargeError,
    HeaderMissingError,
)
from chalicelib.logs import logger
from chalicelib.payloads import LOOKUP_CODE_MAX_CHARS
from chalicelib.settings import Settings

MAX_BODY_BYTES = 256 * 1024
_CALLBACK_TYPES = ("finish", "terminate")
_FINISH_RESULTS = ("agree", "refuse")
_REQUIRED_TEXT = ("code", "businessId", "type")
_OPTIONAL_TEXT = ("result", "auditType", "auditUser", "remark")
_MAX_FIELD_CHARS = {"code": LOOKUP_CODE_MAX_CHARS, "businessId": 128}


@dataclass(frozen=True)
class InboundRequest:
    """A request as it arrived: header names in any case, the body's exact bytes."""

    headers: Mapping[str, str]
    body: bytes

    def optional_header(self, name: str) -> str | None:
        value = self.headers.get(name)
        if value is None:
            lowered = name.lower()
            value = next((v for k, v in self.headers.items() if k.lower() == lowered), None)
        return value

    def header(self, name: str) -> str:
        """Raises HeaderMissingError when the header is absent or blank."""
        value = self.optional_header(name)
        if value is None or not value.strip():
            raise HeaderMissingError(f"header {name} is missing or empty")
        return value.strip()


@dataclass(frozen=True)
class VerifiedCall:
    credential: Credential
    timestamp: str
    nonce: str


def verify_signature(request: InboundRequest, credentials: InboundCredentials, *,
                     skew_seconds: int, clock=time.time) -> VerifiedCall:
    """The header checks, in protocol order. Raises the GatewayError of the first that fails."""
    if len(request.body) > MAX_BODY_BYTES:
        raise BodyTooLargeError(f"body is larger than {MAX_BODY_BYTES} bytes")
    app_key = request.header("appKey")
    credential = credentials.get(app_key)
    if credential is None:
        raise AppKeyUnknownError("appKey is not known")
    timestamp = request.header("timestamp")
    signing.check_timestamp(timestamp, skew_seconds, clock)
    nonce = request.header("nonce")
    signing.check_nonce(nonce)
    signing.verify(app_key, credential.app_secret, timestamp, nonce, request.body,
                   request.header("sign"), legacy=credential.legacy_sign)
    return VerifiedCall(credential, timestamp, nonce)


def issue_access_token(request: InboundRequest, *, credentials: InboundCredentials,
                       token_keys: TokenKeys, store: DynamoDBApprovalStore, settings: Settings,
                       clock=time.time) -> dict:
    """Answer POST /auth/token: a signed, never-replayed call gets a token bound to its appKey.

    Raises the GatewayError of the first failed check.
    """
    call = verify_signature(request, credentials, skew_seconds=settings.timestamp_skew_seconds,
                            clock=clock)
    logger.append_keys(appKey=call.credential.app_key, nonce=call.nonce)
    if request.body.strip():
        _parse_json_object(strict_utf8(request.body))
    store.use_nonce(call.credential.app_key, call.nonce, settings.nonce_ttl_seconds)
    logger.info("access token issued")
    return {
        "accessToken": tokens.issue_token(token_keys, call.credential.app_key,
                                          settings.token_ttl_seconds, clock=clock),
        "tokenType": tokens.TOKEN_TYPE,
        "expiresIn": settings.token_ttl_seconds,
    }


def handle_callback(request: InboundRequest, *, credentials: InboundCredentials,
                    token_keys: TokenKeys | None, store: DynamoDBApprovalStore,
                    settings: Settings, clock=time.time) -> CallbackOutcome:
    """Verify, record and apply one approval callback, exactly once.

    Raises the GatewayError of the first failed check; nothing is stored then.
    """
    call = verify_signature(request, credentials, skew_seconds=settings.timestamp_skew_seconds,
                            clock=clock)
    # From here on every log line of this request, refusals included, names the call.
    logger.append_keys(appKey=call.credential.app_key, nonce=call.nonce)
    if settings.callback_require_token:
        tokens.verify_authorization(token_keys, request.optional_header("Authorization"),
                                    call.credential.app_key, clock=clock)
    if settings.callback_encrypted:
        # The sign covered the Base64 text: only now, authenticated, is it decrypted.
        text = call.credential.codec().open(call.credential.app_key, call.timestamp, call.nonce,
                                            request.body)
    else:
        text = strict_utf8(request.body)
    body = parse_callback(text)
    logger.append_keys(code=body["code"], businessId=body["businessId"])
    record = CallbackRecord(
        code=body["code"], business_id=body["businessId"], type=body["type"],
        result=body.get("result") or None,
        audit_type=body.get("auditType"), audit_user=body.get("auditUser"),
        remark=body.get("remark"), body=text, app_key=call.credential.app_key, nonce=call.nonce)
    outcome = store.record_callback(record, settings.nonce_ttl_seconds)
    logger.info(f"callback {outcome.disposition}",
                extra={"type": record.type, "result": record.result, "status": outcome.status})
    return outcome


def strict_utf8(raw: bytes) -> str:
    """Raises BodyInvalidError for anything but strict UTF-8 (the md5 padding's 0x80 is not)."""
    return json_body.decode_utf8(raw, error=BodyInvalidError)


def _parse_json_object(text: str) -> dict:
    """Raises BodyInvalidError unless ``text`` is one strict JSON object (chalicelib.json_body)."""
    return json_body.parse_object(text, error=BodyInvalidError)


def parse_callback(text: str) -> dict:
    """The callback body as a dict, checked field by field.

    Raises BodyInvalidError naming every bad field.
    """
    body = _parse_json_object(text)
    problems = []
    for name in _REQUIRED_TEXT:
        value = body.get(name)
        if not isinstance(value, str) or not value.strip():
            problems.append(f"{name} is required and must be a non-empty string")
        elif len(value) > _MAX_FIELD_CHARS.get(name, 64):
            problems.append(f"{name} is longer than {_MAX_FIELD_CHARS.get(name, 64)} characters")
        elif not value.isprintable():
            problems.append(f"{name} must be printable: no control, format, separator or"
                            " unassigned characters")
    for name in _OPTIONAL_TEXT:
        if body.get(name) is not None and not isinstance(body[name], str):
            problems.append(f"{name} must be a string")
    callback_type = body.get("type")
    if isinstance(callback_type, str) and callback_type not in _CALLBACK_TYPES:
        problems.append(f"type must be one of {', '.join(_CALLBACK_TYPES)}")
    result = body.get("result")
    if callback_type == "finish" and result not in _FINISH_RESULTS:
        problems.append(f"result must be one of {', '.join(_FINISH_RESULTS)} when type is finish")
    elif result and isinstance(result, str) and result not in _FINISH_RESULTS:
        problems.append(f"result must be one of {', '.join(_FINISH_RESULTS)} or empty")
    if problems:
        raise BodyInvalidError("; ".join(problems))
    return body
