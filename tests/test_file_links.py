"""The pure parts of file fields (chalicelib.protocol.file_links): link tokens, references, the
durability of plain URLs and the Content-Disposition a browser reads."""
from __future__ import annotations

import time
from datetime import UTC, datetime
from urllib.parse import unquote

import pytest

from chalicelib.errors import TokenInvalidError
from chalicelib.protocol import file_links
from chalicelib.protocol.credentials import TokenKeys
from chalicelib.protocol.file_links import LinkClaims, LinkInvalid, ObjectRef
from chalicelib.protocol.tokens import issue_token, verify_authorization

OLD = TokenKeys((b"o" * 32,))
NEW = TokenKeys((b"n" * 32, b"o" * 32))
CLAIMS = LinkClaims(ref=ObjectRef("b-att", "uploads/file-1", "合同 \"终稿\".pdf", "application/pdf"),
                    code="PO-1", attempt_id="0001-ab", issued_at_ms=1_700_000_000_000)
NOW = 1_800_000_000.0
WEEK = 7 * 24 * 3600


def test_a_link_token_names_the_object_code_and_attempt_and_survives_a_key_rotation():
    token = file_links.issue_link_token(OLD, CLAIMS)
    assert file_links.verify_link_token(OLD, token) == CLAIMS
    assert file_links.verify_link_token(NEW, token) == CLAIMS  # the old key still verifies
    assert file_links.verify_link_token(NEW, file_links.issue_link_token(NEW, CLAIMS)) == CLAIMS
    with pytest.raises(LinkInvalid):
        file_links.verify_link_token(TokenKeys((b"n" * 32,)), token)  # once it is retired


def test_a_damaged_link_token_is_invalid_wherever_it_is_damaged():
    token = file_links.issue_link_token(OLD, CLAIMS)
    for index in range(3, len(token), 7):
        flipped = "A" if token[index] != "A" else "B"
        with pytest.raises(LinkInvalid):
            file_links.verify_link_token(OLD, token[:index] + flipped + token[index + 1:])


def test_link_tokens_and_access_tokens_cannot_stand_in_for_each_other():
    access = issue_token(OLD, "app", 60)
    with pytest.raises(LinkInvalid):
        file_links.verify_link_token(OLD, access)
    with pytest.raises(TokenInvalidError):
        verify_authorization(OLD, f"Bearer {file_links.issue_link_token(OLD, CLAIMS)}", "app")


@pytest.mark.parametrize(("value", "parsed"), [
    ("s3://b-att/2026/发票 7.pdf", ("b-att", "2026/发票 7.pdf")),
    ("https://x/y", None),
    ("file-" + "0" * 32, None),
])
def test_references(value, parsed):
    assert file_links.parse_s3_url(value) == parsed


@pytest.mark.parametrize("value", ["s3://", "s3://Bad_Bucket/k", "s3://b-att/", "s3://b-att",
                                   "s3://b-att/a\nb"])
def test_a_malformed_s3_reference_says_why(value):
    with pytest.raises(ValueError, match="write s3://<bucket>/<key>"):
        file_links.parse_s3_url(value)


def sigv4(signed_at: float, seconds: int, token: bool = False) -> str:
    stamp = datetime.fromtimestamp(signed_at, UTC).strftime("%Y%m%dT%H%M%SZ")
    url = (f"https://b.s3.amazonaws.com/c.pdf?X-Amz-Algorithm=AWS4-HMAC-SHA256"
           f"&X-Amz-Date={stamp}&X-Amz-Expires={seconds}&X-Amz-Signature=abc")
    return url + ("&X-Amz-Security-Token=FwoG" if token else "")


@pytest.mark.parametrize(("url", "problem"), [
    ("https://cdn.example/c.pdf", None),
    ("http://cdn.example/c.pdf", "is not an https URL"),
    (sigv4(NOW, WEEK), None),  # a week from now: exactly the horizon
    (sigv4(NOW - 60, WEEK), "expires at"),
    (sigv4(NOW, WEEK, token=True), "temporary credentials"),
    ("https://b.s3.amazonaws.com/c.pdf?x-amz-security-token=x", "temporary credentials"),
    (f"https://cdn.example/c.pdf?Expires={int(NOW) + 8 * 86400}", None),
    (f"https://cdn.example/c.pdf?Expires={int(NOW) + 86400}", "expires at"),
    ("https://cdn.example/c.pdf?Expires=soon", "expires at"),
])
def test_a_plain_url_must_outlast_the_horizon(url, problem):
    found = file_links.durability_problem(url, now_s=NOW, horizon_seconds=WEEK, allow_http=False)
    assert (found is None) if problem is None else (problem in found)


def test_http_is_accepted_where_the_stage_allows_it():
    assert file_links.durability_problem("http://127.0.0.1/c.pdf", now_s=time.time(),
                                         horizon_seconds=WEEK, allow_http=True) is None


def test_the_content_disposition_carries_the_exact_name_and_an_ascii_fallback():
    header = file_links.content_disposition("合同 \"终稿\" 100%.pdf")
    assert header.startswith('attachment; filename="__ ____ 100_.pdf"; ')  # no quote escapes
    assert unquote(header.split("filename*=UTF-8''")[1]) == "合同 \"终稿\" 100%.pdf"
    assert all(32 < ord(char) < 127 for char in header.split("filename*=UTF-8''")[1])
