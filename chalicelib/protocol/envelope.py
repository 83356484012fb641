"""The response envelope Zeyi's API uses in both directions."""
from __future__ import annotations

import json
from typing import Any


def ok(result: Any = None, message: str | None = None) -> dict:
    return {
        "success": True,
        "businessException": False,
        "errorCode": None,
        "message": message,
        "result": result,
    }


def failure(error_code: str, message: str, *, business: bool = False, result: Any = None) -> dict:
    return {
        "success": False,
        "businessException": business,
        "errorCode": error_code,
        "message": message,
        "result": result,
    }


def is_envelope(value: Any) -> bool:
    """True when ``value`` has the envelope's five fields with their types."""
    return (
        isinstance(value, dict)
        and isinstance(value.get("success"), bool)
        and isinstance(value.get("businessException"), bool)
        and isinstance(value.get("errorCode", None), (str, type(None)))
        and isinstance(value.get("message", None), (str, type(None)))
        and {"success", "businessException"} <= value.keys()
    )


def to_json(body: Any) -> str:
    """``body`` as JSON text that always encodes as UTF-8, non-ASCII kept as is.

    A lone surrogate (which json.loads accepts in ``"\\ud800"``, and Lambda's runtime too) would
    make the response fail to encode; it is written as the literal text ``\\ud800`` instead.
    """
    text = json.dumps(body, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(_escape_surrogates(body), ensure_ascii=False)
    return text


def _escape_surrogates(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_escape_surrogates(k): _escape_surrogates(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_escape_surrogates(item) for item in value]
    return value
