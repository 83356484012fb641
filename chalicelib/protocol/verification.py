"""The checks of every call Zeyi makes, in protocol.md's order, each with its own error:
appKey known → timestamp format and window → nonce format → sign; then the callback body, field
by field. Pure: what a check needs is passed in, nothing is stored here (the nonce is stored by
the use case, in the same write as what the call does: chalicelib.approvals.inbound).
"""
from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from chalicelib.errors import (
    AppKeyUnknownError,
    BodyInvalidError,
    BodyTooLargeError,
    HeaderMissingError,
)
from chalicelib.protocol import json_body, signing
from chalicelib.protocol.credentials import Credential, InboundCredentials
from chalicelib.protocol.payloads import LOOKUP_CODE_MAX_CHARS

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


def strict_utf8(raw: bytes) -> str:
    """Raises BodyInvalidError for anything but strict UTF-8 (the md5 padding's 0x80 is not)."""
    return json_body.decode_utf8(raw, error=BodyInvalidError)


def parse_json_object(text: str) -> dict:
    """Raises BodyInvalidError unless ``text`` is one strict JSON object (json_body)."""
    return json_body.parse_object(text, error=BodyInvalidError)


def parse_callback(text: str) -> dict:
    """The callback body as a dict, checked field by field.

    Raises BodyInvalidError naming every bad field.
    """
    body = parse_json_object(text)
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
