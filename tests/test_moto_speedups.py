"""sandbox.moto_speedups answers as moto does: it writes DynamoDB attribute values byte for byte
as moto's own serializer does, for every kind of value DynamoDB holds, or leaves them to moto's
walk; and it keeps an SQS message exactly as long as moto's retention check does."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from moto.core.serialize import XFormedAttributePicker, get_serializer_class
from moto.core.utils import get_service_model

from sandbox.moto_speedups import message_within_retention, plain_attribute_value
from tests.conftest import examples

text = st.text(max_size=8)
binary = st.binary(max_size=8)
scalars = st.one_of(
    st.builds(lambda s: {"S": s}, text),
    st.builds(lambda n: {"N": str(n)}, st.integers()),
    st.builds(lambda b: {"B": b}, binary),
    st.builds(lambda b: {"B": b.hex()}, binary),  # moto may hold a blob as text
    st.builds(lambda ss: {"SS": ss}, st.lists(text, max_size=3)),
    st.builds(lambda ns: {"NS": [str(n) for n in ns]}, st.lists(st.integers(), max_size=3)),
    st.builds(lambda bs: {"BS": bs}, st.lists(binary, max_size=3)),
    st.just({"NULL": True}),
    st.builds(lambda b: {"BOOL": b}, st.booleans()),
)
attribute_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.builds(lambda m: {"M": m}, st.dictionaries(st.text(min_size=1, max_size=5), inner,
                                                      max_size=3)),
        st.builds(lambda items: {"L": items}, st.lists(inner, max_size=3))),
    max_leaves=12)


def _serializer(service: str, operation: str):
    model = get_service_model(service)
    protocol = model.metadata["protocol"]
    return get_serializer_class(service, protocol)(
        operation_model=model.operation_model(operation), pretty_print=False,
        value_picker=XFormedAttributePicker())


def _moto_writes(service: str, operation: str, result: dict) -> dict:
    """The response body moto's own (unpatched) serializer writes for ``result``."""
    return json.loads(_serializer(service, operation).serialize(result)["body"])


@pytest.mark.parametrize("service, operation, wrap, unwrap", [
    ("dynamodb", "GetItem", lambda value: {"Item": {"a": value}},
     lambda body: body["Item"]["a"]),
    ("dynamodbstreams", "GetRecords",
     lambda value: {"Records": [{"dynamodb": {"NewImage": {"a": value}}}]},
     lambda body: body["Records"][0]["dynamodb"]["NewImage"]["a"]),
])
@settings(max_examples=examples(200))
@given(value=attribute_values)
def test_an_attribute_value_is_written_as_moto_writes_it(service, operation, wrap, unwrap,
                                                         value):
    base64 = _serializer(service, operation)._base64
    written = json.dumps(unwrap(_moto_writes(service, operation, wrap(value))))
    assert json.dumps(plain_attribute_value(value, base64)) == written


@pytest.mark.parametrize("value", [
    {"S": 5},  # not text: moto's walk writes it as "5"
    {"s": "lower-case member"},  # moto finds it by alias
    {"M": {"": {"S": "x"}}},  # moto writes an empty key's value inline
    {"L": [None]},
    {"M": {"a": {"S": "x", "X": "unknown member"}}},
    {"NULL": "yes"},
    "not a value",
])
def test_a_value_it_does_not_read_is_left_to_moto(value):
    assert plain_attribute_value(value, _serializer("dynamodb", "GetItem")._base64) is None


@pytest.mark.parametrize("age_seconds", [0, 59, 61, 3600])
def test_a_message_is_within_retention_exactly_when_moto_says_so(age_seconds):
    from moto.sqs.models import SQSBackend

    backend = SQSBackend("us-east-1", "123456789012")  # in memory: no server, no other test's
    backend.create_queue("events", MessageRetentionPeriod="60")
    message = backend.send_message("events", "approval")
    message.sent_timestamp -= age_seconds * 1000
    moto_says = SQSBackend.is_message_valid_based_on_retention_period(backend, "events", message)
    assert message_within_retention(backend, "events", message) is moto_says
    assert moto_says is (age_seconds < 60)
