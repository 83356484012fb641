"""Everything Zeyi calls: the access-token endpoint and the approval callback, as use cases.

The checks (chalicelib.protocol.verification) run in protocol.md's order. A failed request
changes nothing. So that a failed check never burns a nonce, the nonce is stored in the same write
as the callback itself (one DynamoDB round trip): a replay is therefore reported after token and
body checks, which a replay of a genuine call passes anyway.
"""
from __future__ import annotations

import time

from chalicelib.approvals.store import CallbackOutcome, CallbackRecord, DynamoDBApprovalStore
from chalicelib.protocol import tokens
from chalicelib.protocol.credentials import InboundCredentials, TokenKeys
from chalicelib.protocol.verification import (
    InboundRequest,
    parse_callback,
    parse_json_object,
    strict_utf8,
    verify_signature,
)
from chalicelib.runtime.logs import logger
from chalicelib.runtime.settings import Settings

__all__ = ["InboundRequest", "handle_callback", "issue_access_token", "parse_callback",
           "verify_signature"]


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
        parse_json_object(strict_utf8(request.body))
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
