"""The response envelope Zeyi's API uses in both directions."""
from __future__ import annotations

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
