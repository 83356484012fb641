"""The bodies internal apps send, checked before anything is stored or sent to Zeyi.

An internal app sends exactly Zeyi's send and cancel bodies (docs/protocol.md §1, §2). They are
checked here with plain functions: the whole schema is a dozen fields, and a schema library
would cost every cold send its import (measured in this venv: jsonschema ~100 ms, pydantic ~120 ms
with two models; this module ~3 ms beyond json and re, which the app imports anyway) to say less
precisely what is wrong. Every problem is reported at once, so an
app fixes its request in one round trip.

Decisions the protocol leaves open:
- Unknown fields are rejected, by name. The body goes to Zeyi as the app sent it, so dropping a
  field would silently change what the app asked for: a misspelt ``conditionParamsList`` would
  start the approval on the wrong route instead of failing.
- An optional field may be absent or null; it is forwarded as sent.
- A ``text`` value may be empty (DingTalk forms have optional fields); keys, names and every
  required top-level string must hold a non-blank string.
- Limits keep every request well inside a DynamoDB item (400 KB), where each attempt is kept.
"""
from __future__ import annotations

import json
import re
from urllib.parse import urlsplit

from chalicelib.errors import BodyTooLargeError, ValidationError
from chalicelib.protocol import file_links
from chalicelib.protocol.json_body import field_label

CODE_MAX_CHARS = 64
LOOKUP_CODE_MAX_CHARS = 128  # what a callback may carry (chalicelib.protocol.verification)
TEXT_MAX_CHARS = 2_000
VALUE_MAX_CHARS = 10_000
LIST_MAX_ITEMS = 100
SEND_BODY_MAX_BYTES = 200_000
PROBLEMS_MAX_REPORTED = 20
FORM_TYPES = ("text", "file")

# Codes name DynamoDB items and appear in GET /audit/{code}: no slash, no leading dot.
_CODE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]*")
CODE_RULE = (f"code must be 1 to {CODE_MAX_CHARS} characters of A-Z, a-z, 0-9, '_', '.', ':'"
             " and '-', starting with a letter or digit")

SEND_FIELDS = ("code", "auditType", "originatorUsername", "orgCode", "auditFormList",
               "conditionParamList")
FORM_FIELDS = ("type", "key", "value", "extendValue")
CONDITION_FIELDS = ("name", "value")
CANCEL_FIELDS = ("code", "type", "remark", "username")


def validate_send(payload: object) -> dict:
    """Return the send body unchanged when it is a valid Zeyi send body.

    Raises ValidationError naming every bad field, BodyTooLargeError when the body would not fit.
    """
    problems: list[str] = []
    body = _object(payload, problems)
    _unknown(body, SEND_FIELDS, "", "a send request", problems)
    _code(body, problems)
    for name in ("auditType", "originatorUsername", "orgCode"):
        _text(body, name, "", problems)
    forms = _items(body, "auditFormList", problems, required=True)
    for index, item in enumerate(forms):
        _form_item(item, f"auditFormList[{index}]", problems)
    params = _items(body, "conditionParamList", problems, required=False)
    for index, item in enumerate(params):
        where = f"conditionParamList[{index}]"
        if not isinstance(item, dict):
            problems.append(f"{where} must be an object")
            continue
        _unknown(item, CONDITION_FIELDS, f"{where}.", "a condition parameter", problems)
        _text(item, "name", f"{where}.", problems)
        _text(item, "value", f"{where}.", problems, allow_empty=True)
    _raise(problems)
    size = len(to_wire(body))
    if size > SEND_BODY_MAX_BYTES:
        raise BodyTooLargeError(f"the send body is {size} bytes as UTF-8 JSON; at most"
                                f" {SEND_BODY_MAX_BYTES} are allowed")
    return body


def validate_cancel(payload: object) -> dict:
    """Return the cancel body unchanged when it is a valid Zeyi cancel body.

    Raises ValidationError naming every bad field.
    """
    problems: list[str] = []
    body = _object(payload, problems)
    _unknown(body, CANCEL_FIELDS, "", "a cancel request", problems)
    _code(body, problems)
    for name in ("type", "remark", "username"):
        _text(body, name, "", problems)
    _raise(problems)
    return body


def validate_code(code: object) -> str:
    """A code to look up. Raises ValidationError unless it is 1 to 128 printable characters.

    Looser than the rule for new sends: a callback may record a code that predates the gateway,
    in whatever form Zeyi knows it, and that code must still be readable.
    """
    if (not isinstance(code, str) or not 1 <= len(code) <= LOOKUP_CODE_MAX_CHARS
            or not code.isprintable()):
        raise ValidationError(f"code must be 1 to {LOOKUP_CODE_MAX_CHARS} printable characters",
                              result={"problems": ["code"]})
    return code


def to_wire(body: dict) -> bytes:
    """The one serialization of a body: compact UTF-8 JSON, non-ASCII kept as is."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


# -- checks; each appends what is wrong to ``problems`` -------------------------------------------

def _object(payload: object, problems: list[str]) -> dict:
    if not isinstance(payload, dict):
        raise ValidationError("body must be a JSON object")
    return payload


def _raise(problems: list[str]) -> None:
    if not problems:
        return
    shown = problems[:PROBLEMS_MAX_REPORTED]
    message = "; ".join(shown)
    if len(problems) > len(shown):
        message += f"; and {len(problems) - len(shown)} more problems"
    raise ValidationError(message, result={"problems": shown})


def _unknown(body: dict, known: tuple[str, ...], where: str, what: str,
             problems: list[str]) -> None:
    for name in body:
        if name not in known:
            problems.append(f"{where}{field_label(name)} is not a field of {what}")


def _code(body: dict, problems: list[str]) -> None:
    code = body.get("code")
    if code is None:
        problems.append("code is required")
    elif (not isinstance(code, str) or len(code) > CODE_MAX_CHARS
          or not _CODE_RE.fullmatch(code)):
        problems.append(CODE_RULE)


def _text(body: dict, name: str, where: str, problems: list[str], *, required: bool = True,
          allow_empty: bool = False, max_chars: int = TEXT_MAX_CHARS) -> str | None:
    """Check one string field; returns it when it is a usable string."""
    label = f"{where}{name}"
    value = body.get(name)
    if value is None:
        if required:
            problems.append(f"{label} is required")
        return None
    if not isinstance(value, str):
        problems.append(f"{label} must be a string")
    elif not allow_empty and not value.strip():
        problems.append(f"{label} must not be empty")
    elif len(value) > max_chars:
        problems.append(f"{label} must be at most {max_chars} characters")
    elif not _is_unicode(value):
        problems.append(f"{label} must be valid Unicode text")
    else:
        return value
    return None


def _is_unicode(value: str) -> bool:
    # json.loads accepts "\ud800": a lone surrogate that UTF-8 cannot encode.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _items(body: dict, name: str, problems: list[str], *, required: bool) -> list:
    value = body.get(name)
    if value is None:
        if required:
            problems.append(f"{name} is required")
        return []
    if not isinstance(value, list):
        problems.append(f"{name} must be a list")
        return []
    if required and not value:
        problems.append(f"{name} must not be empty")
    if len(value) > LIST_MAX_ITEMS:
        problems.append(f"{name} must have at most {LIST_MAX_ITEMS} items")
        return value[:LIST_MAX_ITEMS]
    return value


def _form_item(item: object, where: str, problems: list[str]) -> None:
    if not isinstance(item, dict):
        problems.append(f"{where} must be an object")
        return
    _unknown(item, FORM_FIELDS, f"{where}.", "a form item", problems)
    kind = item.get("type")
    if kind is None:
        problems.append(f"{where}.type is required")
    elif kind not in FORM_TYPES:
        problems.append(f"{where}.type must be text or file")
    _text(item, "key", f"{where}.", problems)
    value = _text(item, "value", f"{where}.", problems, allow_empty=kind != "file",
                  max_chars=VALUE_MAX_CHARS)
    if kind == "file" and value is not None:
        _file_value(value, f"{where}.value", problems)
    _text(item, "extendValue", f"{where}.", problems, required=False, allow_empty=True,
          max_chars=VALUE_MAX_CHARS)


def _file_value(value: str, label: str, problems: list[str]) -> None:
    """A file's value: a fileId, s3://bucket/key or an http(s) URL (chalicelib.protocol.file_links;
    whether the object exists and the URL lasts is checked by chalicelib.approvals.files)."""
    if file_links.is_file_id(value):
        return
    try:
        if file_links.parse_s3_url(value) is not None:
            return
    except ValueError as exc:
        problems.append(f"{label} {exc}")
        return
    if not _is_http_url(value):
        problems.append(f"{label} must be a fileId from POST /files, s3://<bucket>/<key> or an"
                        " https URL for a file")


def _is_http_url(value: str) -> bool:
    if any(char.isspace() or not char.isprintable() for char in value):
        return False
    try:
        parts = urlsplit(value)
        host = parts.hostname
    except ValueError:
        return False
    return parts.scheme.lower() in ("http", "https") and bool(host)
