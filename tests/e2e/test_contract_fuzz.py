"""schemathesis against the running sandbox: requests generated from docs/openapi.yaml, inside
and outside its schemas (positive and negative generation), on every route and every method,
over real HTTP through `chalice local`. Zeyi's routes get most requests signed with the sandbox's
inbound credential (and the callback a real token), so generated bodies reach the body checks,
the store and the state machine, not only the header checks. Bounded: a fixed number of examples
per operation and a timeout per request; every response must be no server error and must conform
to the document (status, content type, headers, schema)."""
from __future__ import annotations

import hashlib
import json
import secrets
import time
from pathlib import Path

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import examples

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = schemathesis.openapi.from_path(ROOT / "docs" / "openapi.yaml")
INBOUND = json.loads((ROOT / "sandbox" / "credentials.json").read_text(encoding="utf-8"))["inbound"]
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance]
ZEYI_PATHS = ("/auth/token", "/dingtalkAudit/callback")
METHODS = {"get", "head", "options", "post", "put", "patch", "delete"}
OPERATIONS = [(path, method.upper(), mode) for path, item in SCHEMA.raw_schema["paths"].items()
              for method, operation in item.items() if method in METHODS
              # Only what has parameters or a body can be generated outside the schema.
              for mode in ([GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
                           if "{" in path or "requestBody" in operation
                           else [GenerationMode.POSITIVE])]
POST_THROUGH = {("POST", "/auth/token"), ("POST", "/dingtalkAudit/callback"),
                ("POST", "/audit/send")}
REQUEST_TIMEOUT_SECONDS = 20
FUZZ = settings(max_examples=examples(30), deadline=None, database=None, derandomize=True,
                suppress_health_check=list(HealthCheck))


def _signed(body: bytes, token: str | None = None) -> dict[str, str]:
    timestamp = str(int(time.time() * 1000))
    nonce = "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(6))
    sign = hashlib.md5((INBOUND["appKey"] + INBOUND["appSecret"] + timestamp + nonce)
                       .encode("utf-8") + body).hexdigest()
    headers = {"appKey": INBOUND["appKey"], "timestamp": timestamp, "nonce": nonce, "sign": sign}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers


@pytest.fixture(scope="module")
def token(stack) -> str:
    response = requests.post(f"{stack.gateway_url}/auth/token", data=b"{}",
                             headers=_signed(b"{}"), timeout=REQUEST_TIMEOUT_SECONDS)
    assert response.status_code == 200, response.text
    return response.json()["result"]["accessToken"]


def _exchange(case, base_url: str, sign: bool, token: str) -> requests.Response:
    """Send the generated case as is, or signed as Zeyi would sign its exact bytes."""
    kwargs = case.as_transport_kwargs(base_url=base_url)
    kwargs.pop("timeout", None)
    headers = dict(kwargs.pop("headers", None) or {})
    if "json" in kwargs:
        kwargs["data"] = json.dumps(kwargs.pop("json"), ensure_ascii=False).encode("utf-8")
        headers.setdefault("Content-Type", "application/json")
    data = kwargs.get("data")
    if isinstance(data, str):
        data = kwargs["data"] = data.encode("utf-8")
    if sign and case.path in ZEYI_PATHS:
        headers.update(_signed(data or b"", token if case.path == ZEYI_PATHS[1] else None))
    # A new connection each time: chalice local writes a body even after HEAD.
    return requests.request(headers=headers, timeout=REQUEST_TIMEOUT_SECONDS, **kwargs)


@pytest.mark.timeout(600)
@pytest.mark.parametrize(("path", "method", "mode"), OPERATIONS,
                         ids=[f"{m} {p} {mode.value}" for p, m, mode in OPERATIONS])
def test_the_sandbox_conforms_to_its_contract(stack, token, path, method, mode):
    operation = SCHEMA[path][method]
    seen: list[int] = []

    @FUZZ
    @given(case=operation.as_strategy(generation_mode=mode), sign=st.booleans())
    def exchange(case, sign):
        response = _exchange(case, stack.gateway_url, sign or method != "POST", token)
        seen.append(response.status_code)
        case.validate_response(response, checks=CHECKS)

    exchange()
    assert seen and all(status < 500 for status in seen), seen
    if mode is GenerationMode.POSITIVE and (method, path) in POST_THROUGH:
        # Valid, signed requests get through every check to the store and to Zeyi: each of the
        # document's own examples, under a code of its own. (Generated ones may or may not: the
        # schema's pattern cannot say "assigned, printable Unicode", which the gateway checks;
        # and a cancel needs a PENDING approval of its code, which a generated code lacks.)
        for name, example in _documented_examples(path, method).items():
            if "code" in example:
                example = {**example, "code": f"{example['code']}-{secrets.token_hex(3)}"}
            body = json.dumps(example, ensure_ascii=False).encode("utf-8")
            headers = {"Content-Type": "application/json"}
            if path in ZEYI_PATHS:
                headers.update(_signed(body, token if path == ZEYI_PATHS[1] else None))
            response = requests.post(f"{stack.gateway_url}{path}", data=body, headers=headers,
                                     timeout=REQUEST_TIMEOUT_SECONDS)
            assert response.status_code == 200, (name, response.text)


def _documented_examples(path: str, method: str) -> dict[str, dict]:
    content = SCHEMA.raw_schema["paths"][path][method.lower()]["requestBody"]["content"]
    examples = content["application/json"]["examples"]
    assert examples, f"{method} {path} documents no example"
    return {name: example["value"] for name, example in examples.items()}


# -- what Chalice's test client cannot show: the same answers over real HTTP ---------------------

WRONG_METHODS = [(path, method, allowed, status)
                 for path, allowed, status in [("/auth/token", "POST", 400),
                                               ("/dingtalkAudit/callback", "POST", 400),
                                               ("/audit/send", "POST", 405),
                                               ("/audit/cancel", "POST", 405),
                                               ("/audit/E2E-NONE", "GET", 405)]
                 for method in ("GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE")
                 if method != allowed]


@pytest.mark.parametrize(("path", "method", "allowed", "status"), WRONG_METHODS,
                         ids=[f"{m} {p}" for p, m, _, _ in WRONG_METHODS])
def test_every_other_method_over_http_gets_the_envelope(stack, path, method, allowed, status):
    response = requests.request(method, f"{stack.gateway_url}{path}", data=b"{}",
                                headers={"Content-Type": "text/plain"},
                                timeout=REQUEST_TIMEOUT_SECONDS)
    assert (response.status_code, response.headers["Allow"]) == (status, allowed)
    if method != "HEAD":  # a HEAD answer has no body
        answer = response.json()
        assert answer["errorCode"] == "METHOD_NOT_ALLOWED" and answer["success"] is False
        assert set(answer) == {"success", "businessException", "errorCode", "message", "result"}


@pytest.mark.parametrize("content_type", ["text/plain", "multipart/form-data; boundary=x"])
def test_a_get_with_a_content_type_over_http_is_looked_up(stack, content_type):
    response = requests.get(f"{stack.gateway_url}/audit/E2E-NONE",
                            headers={"Content-Type": content_type},
                            timeout=REQUEST_TIMEOUT_SECONDS)
    assert (response.status_code, response.json()["errorCode"]) == (404, "APPROVAL_NOT_FOUND")


@pytest.mark.parametrize("path", ["/auth/token", "/dingtalkAudit/callback", "/audit/send",
                                  "/audit/cancel"])
def test_ten_thousand_levels_of_json_over_http_are_refused(stack, token, path):
    body = b'{"a":' * 10_000 + b"1" + b"}" * 10_000
    headers = _signed(body, token if path == "/dingtalkAudit/callback" else None)
    response = requests.post(f"{stack.gateway_url}{path}", data=body, headers=headers,
                             timeout=REQUEST_TIMEOUT_SECONDS)
    code = "BODY_INVALID" if path in ZEYI_PATHS else "VALIDATION_ERROR"
    assert (response.status_code, response.json()["errorCode"]) == (400, code)
