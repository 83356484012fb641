"""The callback body's text fields at their length limits: what the refusal's message says."""
from __future__ import annotations

import json

import pytest

from chalicelib.errors import BodyInvalidError
from chalicelib.protocol.verification import parse_callback


def _refusal(**fields) -> str:
    body = {"code": "C-1", "businessId": "B-1", "type": "finish", "result": "agree", **fields}
    with pytest.raises(BodyInvalidError) as raised:
        parse_callback(json.dumps(body))
    return raised.value.message


def test_a_type_of_64_characters_is_refused_only_as_an_unknown_type():
    message = _refusal(type="x" * 64)
    assert message.startswith("type must be one of finish, terminate")
    assert "longer" not in message


def test_a_type_of_65_characters_is_refused_as_too_long_too():
    assert _refusal(type="x" * 65).startswith("type is longer than 64 characters; type must be one"
                                              " of finish, terminate")


@pytest.mark.parametrize(("field", "limit"), [("code", 128), ("businessId", 128)])
def test_code_and_business_id_are_refused_one_character_over_their_limit(field, limit):
    assert _refusal(**{field: "x" * (limit + 1)}) == f"{field} is longer than {limit} characters"
    body = {"code": "C-1", "businessId": "B-1", "type": "finish", "result": "agree",
            field: "x" * limit}
    assert parse_callback(json.dumps(body))[field] == "x" * limit
