"""docs/openapi.yaml is the contract internal apps (and Zeyi) build against, so its schemas must be
the real ones: every route and method of app.py is documented and every documented one exists,
every errorCode the code can raise is documented, the documented examples are accepted, and for
each documented constraint (required, unknown fields, lengths, item counts, enums, nullability,
patterns) the schema and the code give the same verdict, at the edge and one past it. The variants
are derived from the document itself, so changing a limit on one side only fails here.
tests/e2e/test_contract_fuzz.py fuzzes the running sandbox against the same document."""
from __future__ import annotations

import copy
import inspect
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from chalicelib import errors
from chalicelib.approvals import inbound
from chalicelib.errors import BodyInvalidError, BodyTooLargeError, ValidationError
from chalicelib.protocol import payloads

SPEC = yaml.safe_load((Path(__file__).resolve().parent.parent / "docs" / "openapi.yaml")
                      .read_text(encoding="utf-8"))
SCHEMAS = SPEC["components"]["schemas"]
METHODS = {"get", "head", "options", "post", "put", "patch", "delete"}


def schema_accepts(name: str, instance) -> bool:
    validator = jsonschema.Draft202012Validator({**SPEC, "$ref": f"#/components/schemas/{name}"})
    return validator.is_valid(instance)


def code_accepts(name: str, instance) -> bool:
    try:
        if name == "SendBody":  # as the route reads it: a taskToken is the gateway's own
            from chalicelib.approvals import task_tokens

            payloads.validate_send(task_tokens.split_payload(instance)[0])
        elif name == "CancelBody":
            payloads.validate_cancel(instance)
        else:
            inbound.parse_callback(json.dumps(instance, ensure_ascii=False))
    except (ValidationError, BodyInvalidError, BodyTooLargeError):
        return False
    return True


def examples(operation: str) -> list:
    for path in SPEC["paths"].values():
        for spec in path.values():
            if isinstance(spec, dict) and spec.get("operationId") == operation:
                media = spec["requestBody"]["content"]["application/json"]
                return [example["value"] for example in media["examples"].values()]
    raise AssertionError(f"no operation {operation}")


BODIES = {"SendBody": "sendApproval", "CancelBody": "cancelApproval",
          "CallbackBody": "approvalCallback"}


# -- the document and the app describe the same surface ------------------------------------------

def test_the_document_is_valid_openapi_3_1():
    from openapi_spec_validator import validate

    assert SPEC["openapi"].startswith("3.1")
    validate(SPEC)


def test_every_route_and_method_of_the_app_is_documented_and_nothing_else():
    import app

    routed = {(path, method.lower()) for path, views in app.app.routes.items()
              for method in views}
    documented = {(path, method) for path, item in SPEC["paths"].items()
                  for method in item if method in METHODS}
    assert routed == documented
    assert {method for _, method in routed} == METHODS


# Raised by operator tooling only, never answered by a route: `python -m ops approvals resolve`
# refuses an approval that is not open (main, issue 12).
OPERATOR_ONLY = {"APPROVAL_NOT_OPEN"}


def test_every_error_code_the_code_can_raise_is_documented_and_none_is_invented():
    raised = {cls.error_code for _, cls in inspect.getmembers(errors, inspect.isclass)
              if issubclass(cls, errors.GatewayError) and isinstance(cls.error_code, str)}
    raised |= {"UPSTREAM_REJECTED"}  # UpstreamRejectedError's, when Zeyi gives no errorCode
    raised -= OPERATOR_ONLY
    text = yaml.safe_dump(SPEC, allow_unicode=True)
    documented = {word for word in raised if word in text}
    assert documented == raised

    def enums(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "errorCode" and isinstance(value, dict):
                    yield from value.get("enum", [])
                    if "const" in value:
                        yield value["const"]
                yield from enums(value)
        elif isinstance(node, list):
            for item in node:
                yield from enums(item)

    assert set(enums(SPEC)) <= raised


@pytest.mark.parametrize(("path", "status"), [
    ("/auth/token", {"200", "400", "500", "503"}),
    ("/dingtalkAudit/callback", {"200", "400", "500", "503"}),
])
def test_zeyi_routes_document_no_4xx_but_400(path, status):
    assert set(SPEC["paths"][path]["post"]["responses"]) == status
    for method, operation in SPEC["paths"][path].items():
        if method in METHODS and method != "post":
            assert set(operation["responses"]) == {"400"}


def test_the_documented_statuses_are_the_ones_in_chalicelib():
    import app

    doc_send = set(SPEC["paths"]["/audit/send"]["post"]["responses"])
    for cls in (errors.ValidationError, errors.ApprovalActiveError, errors.BodyTooLargeError,
                errors.UpstreamUnavailableError, errors.UpstreamOutcomeUnknownError,
                errors.ServiceUnavailableError, errors.ConfigError):
        assert str(app.http_status(cls("x"), zeyi_route=False)) in doc_send, cls
    assert str(errors.UpstreamRejectedError.status) in doc_send
    doc_cancel = set(SPEC["paths"]["/audit/cancel"]["post"]["responses"])
    assert {str(errors.ApprovalNotFoundError.status),
            str(errors.ApprovalNotCancellableError.status)} <= doc_cancel


def test_the_documented_state_names_are_the_code_s():
    from chalicelib.approvals import states

    assert set(SCHEMAS["Status"]["enum"]) == {
        states.SUBMITTING, states.PENDING, states.CANCELLING, states.AGREED, states.REFUSED,
        states.TERMINATED, states.FAILED, states.REVOKED} == set(states.STATUSES)
    active = SCHEMAS["ApprovalActive"]["allOf"][1]["properties"]["result"]["properties"]
    assert set(active["status"]["enum"]) == {states.SUBMITTING, states.PENDING, states.CANCELLING,
                                              states.AGREED}


# -- the bodies: examples accepted, every constraint enforced the same way -----------------------

@pytest.mark.parametrize("name", list(BODIES))
def test_documented_examples_are_valid_and_accepted(name):
    for example in examples(BODIES[name]):
        assert schema_accepts(name, example), example
        assert code_accepts(name, example), example


def _resolve(schema: dict) -> dict:
    while "$ref" in schema:
        schema = SCHEMAS[schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _types(schema: dict) -> list[str]:
    kind = schema.get("type", [])
    return kind if isinstance(kind, list) else [kind]


def _string_variants(where, schema, put):
    yield f"{where} a number", put(7)
    if "maxLength" in schema:
        limit = schema["maxLength"]
        yield f"{where} at maxLength", put(_fill(schema, limit))
        yield f"{where} over maxLength", put(_fill(schema, limit + 1))
    if schema.get("minLength") == 1:
        yield f"{where} empty", put("")
    else:
        yield f"{where} empty", put("")
    yield f"{where} blank", put("   ")
    for bad in ("a/b", "-x", ".x", "a b", "有中文", "a\nb", "a\x00b", "a\u2028b", "a\u200bb",
                "ftp://h/f", "http://", "https://h/a b", "http://h\x01/x", "http://h/\x7f",
                "HTTP://h:8080/a?b"):
        yield f"{where} {bad!r}", put(bad)


def _fill(schema: dict, length: int) -> str:
    if "pattern" in schema and "http" in schema["pattern"].lower():
        return "https://h/" + "x" * (length - len("https://h/"))
    return "x" * length


def variants(schema: dict, instance, where: str = "body"):
    """(what, instance) pairs around ``instance``: one documented constraint changed each."""
    schema = _resolve(schema)
    if "oneOf" in schema:
        for option in schema["oneOf"]:
            option = _resolve(option)
            kind = option["properties"]["type"].get("const")
            if isinstance(instance, dict) and instance.get("type") == kind:
                yield from variants(option, instance, where)
        return
    if "object" in _types(schema) and isinstance(instance, dict):
        properties = schema.get("properties", {})
        for name in schema.get("required", []):
            yield f"{where}.{name} missing", {k: v for k, v in instance.items() if k != name}
        if schema.get("additionalProperties") is False:
            yield f"{where} with an unknown field", {**instance, "unknownField": "x"}
        for name, subschema in properties.items():
            def put(value, name=name):
                return {**instance, name: value}
            yield f"{where}.{name} null", put(None)
            resolved = _resolve(subschema)
            if "enum" in resolved or "const" in resolved:
                yield f"{where}.{name} outside its enum", put("bogus")
            if name in instance:
                for what, inner in variants(subschema, instance[name], f"{where}.{name}"):
                    yield what, put(inner)
            elif "string" in _types(resolved):
                yield from _string_variants(f"{where}.{name}", resolved, put)
        return
    if "array" in _types(schema) and isinstance(instance, list) and instance:
        yield f"{where} not a list", "x"
        yield f"{where} empty", []
        if "maxItems" in schema:
            yield f"{where} at maxItems", [instance[0]] * schema["maxItems"]
            yield f"{where} over maxItems", [instance[0]] * (schema["maxItems"] + 1)
        yield f"{where}[0] not an object", ["x", *instance[1:]]
        for index, item in enumerate(instance[:2]):
            for what, inner in variants(schema["items"], item, f"{where}[{index}]"):
                yield what, [*instance[:index], inner, *instance[index + 1:]]
        return
    if isinstance(instance, str):
        yield from _string_variants(where, schema, lambda value: value)


# The few places where the schema says less than the code, each for a reason a schema cannot
# express; they are checked by tests/test_payloads.py and tests/test_validation_edges.py.
LOOSER_SCHEMA = {
    # JSON Schema's regex has no Unicode categories: the document says "printable" in words
    # and its pattern refuses control characters; the code also refuses separators (U+2028)
    # and format characters (U+200B).
    ("CallbackBody", f"body.{field} {text!r}") for field in ("code", "businessId")
    for text in ("a\u2028b", "a\u200bb")
}


@pytest.mark.parametrize("name", list(BODIES))
def test_schema_and_code_agree_on_every_documented_constraint(name):
    base = examples(BODIES[name])[0]
    checked = 0
    disagreements = []
    for what, instance in variants(SCHEMAS[name], base):
        by_schema, by_code = schema_accepts(name, instance), code_accepts(name, instance)
        checked += 1
        if by_schema != by_code and (name, what) not in LOOSER_SCHEMA:
            disagreements.append(f"{what}: schema {'accepts' if by_schema else 'refuses'},"
                                 f" code {'accepts' if by_code else 'refuses'}")
    assert not disagreements, "\n".join(disagreements)
    assert checked > 40


def test_the_send_size_limit_is_documented():
    assert f"{payloads.SEND_BODY_MAX_BYTES:,}" in SCHEMAS["SendBody"]["description"]


def test_a_deep_copy_of_each_example_survives_validation_unchanged():
    # The code returns the body as sent: what is documented is what Zeyi receives.
    for example in examples("sendApproval"):
        assert payloads.validate_send(copy.deepcopy(example)) == example


# -- the correlation id: documented on every route and every answer, with the code's rule ---------

def _resolved(node: dict) -> dict:
    while "$ref" in node:
        kind, name = node["$ref"].split("/")[-2:]
        node = SPEC["components"][kind][name]
    return node


def test_every_route_takes_and_every_answer_returns_the_correlation_id():
    from chalicelib.runtime import correlation

    for path, item in SPEC["paths"].items():
        names = {_resolved(p)["name"] for p in item.get("parameters", [])}
        assert correlation.HEADER in names, path
        for method, operation in item.items():
            if method not in METHODS:
                continue
            for status, response in operation["responses"].items():
                headers = _resolved(response).get("headers", {})
                assert correlation.HEADER in headers, (path, method, status)
                assert _resolved(headers[correlation.HEADER])["required"] is True


@pytest.mark.parametrize("value", ["a", "x" * 128, "x" * 129, "a b", "", "app-42:req/7",
                                   "é", "tab\there", "~!"])
def test_the_documented_correlation_id_rule_is_the_codes(value):
    import re

    from chalicelib.runtime import correlation

    schema = SPEC["components"]["parameters"]["CorrelationId"]["schema"]
    documented = re.search(schema["pattern"], value) is not None
    used, problem = correlation.accept(value)
    assert documented == (used == value and problem is None), value
