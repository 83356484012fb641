"""The one strict parse of a JSON request body, for Zeyi's routes and the internal ones alike.

Strict means: UTF-8 with no invalid byte (the md5 padding of a length-extension forgery starts
with 0x80), no trailing data, no NaN or Infinity, no key twice (the last value would silently
win, and what is stored and forwarded would differ from what a reviewer reads), no ``\\ud800``
escape that leaves a lone surrogate (it cannot be encoded again, so it would fail far from here,
in DynamoDB or in the response), and at most ``MAX_DEPTH`` levels of nesting. The depth is
counted on the text before ``json.loads`` runs, so a 10,000-level body never reaches the
recursive parser. Each caller names the error its route reports.
"""
from __future__ import annotations

import json
import re
from json.decoder import scanstring

from chalicelib.errors import GatewayError

# Our deepest body is a send (object > auditFormList > item); Zeyi's are flat. Room to spare.
MAX_DEPTH = 16
_STRUCTURE = re.compile(r'[\[\]{}"]')
_SURROGATE = re.compile("[\ud800-\udfff]")


def decode_utf8(raw: bytes, *, error: type[GatewayError]) -> str:
    """Raises ``error`` unless ``raw`` is strict UTF-8."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise error("body is not valid UTF-8") from None


def parse_object(text: str, *, error: type[GatewayError]) -> dict:
    """The JSON object ``text`` holds. Raises ``error`` for anything else (see the module doc)."""
    if _too_deep(text):
        raise error(f"body nests deeper than {MAX_DEPTH} levels")

    def reject_constant(name: str):
        raise error(f"body is not strict JSON: {name} is not allowed")

    def unique_keys(pairs: list) -> dict:
        result = {}
        for key, value in pairs:
            if key in result:
                raise error(f"body repeats the field {field_label(key)}")
            result[key] = value
        return result

    try:
        value = json.loads(text, parse_constant=reject_constant, object_pairs_hook=unique_keys)
    except ValueError:
        raise error("body is not valid JSON") from None
    if not isinstance(value, dict):
        raise error("body must be a JSON object")
    if _has_surrogate(value):
        raise error("body holds a \\u escape that is not a whole Unicode character")
    return value


def field_label(name: object, max_chars: int = 64) -> str:
    """A field name fit for an error message: non-printable characters (lone surrogates
    included) escaped, and cut short, so a hostile name can neither break the response's
    encoding nor fill it."""
    text = name if isinstance(name, str) else repr(name)
    # A lone surrogate is not printable (category Cs), so it is escaped like a control character.
    escaped = "".join(char if char.isprintable() else char.encode("unicode_escape").decode("ascii")
                      for char in text[:max_chars + 1])
    return escaped if len(escaped) <= max_chars else escaped[:max_chars - 3] + "..."


def _too_deep(text: str) -> bool:
    # Strings are skipped with json's own (C) string scanner, so a bracket inside a string is
    # never counted and the count is exact for any text json.loads accepts. A regex for strings
    # would be quadratic on a run of escaped quotes.
    depth = position = 0
    while match := _STRUCTURE.search(text, position):
        char = match.group()
        if char == '"':
            try:
                position = scanstring(text, match.end())[1]
            except ValueError:
                return False  # not JSON, and json.loads stops there, no deeper than counted
            continue
        depth += 1 if char in ("[", "{") else -1
        if depth > MAX_DEPTH:
            return True
        position = match.end()
    return False


def _has_surrogate(value: object) -> bool:
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False
