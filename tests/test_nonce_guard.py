"""The nonce replay guard on moto server, on the test's clock: a nonce is refused while it lives,
usable again once its lifetime has passed (whether or not DynamoDB's TTL has deleted it yet),
and stored under the attribute the nonces table's TTL deletes by."""
from __future__ import annotations

import pytest

from chalicelib.errors import NonceReplayedError
from chalicelib.runtime import aws
from chalicelib.runtime.table_keys import NONCE_TTL_ATTRIBUTE
from tests.conftest import NONCES_TABLE


@pytest.fixture
def frozen(clock):
    clock.start = 1_800_000_000.0
    return clock


def test_a_nonce_is_refused_for_its_lifetime_and_usable_once_it_has_passed(store, frozen):
    store.use_nonce("app", "abc123", 60)
    frozen.skipped_seconds = 59
    with pytest.raises(NonceReplayedError):
        store.use_nonce("app", "abc123", 60)
    frozen.skipped_seconds = 61  # expired, though TTL has deleted nothing
    store.use_nonce("app", "abc123", 60)
    frozen.skipped_seconds = 62
    with pytest.raises(NonceReplayedError):
        store.use_nonce("app", "abc123", 60)


def test_a_nonce_belongs_to_its_app_key(store, frozen):
    store.use_nonce("app", "abc123", 60)
    store.use_nonce("other", "abc123", 60)


def test_the_stored_nonce_expires_by_the_tables_ttl_attribute(store, frozen):
    store.use_nonce("app", "abc123", 60)
    (item,) = aws.client("dynamodb").scan(TableName=NONCES_TABLE)["Items"]
    assert item[NONCE_TTL_ATTRIBUTE] == {"N": str(1_800_000_000 + 60)}
    assert item["pk"] == {"S": "app:abc123"}


def test_a_store_failure_is_not_told_as_a_replayed_nonce(aws_env, frozen):
    # Only a failed condition means the nonce was seen; any other refusal (here: no such table,
    # as with a wrong NONCES_TABLE) must surface as our own fault (a 5xx, which Zeyi retries),
    # never as a 400 NONCE_REPLAYED.
    from botocore.exceptions import ClientError

    from chalicelib.approvals.store import DynamoDBApprovalStore
    from tests.conftest import APPROVALS_TABLE

    store = DynamoDBApprovalStore(aws.client("dynamodb"), APPROVALS_TABLE, "no-such-table",
                                  clock=frozen)
    with pytest.raises(ClientError) as raised:
        store.use_nonce("app", "abc123", 60)
    assert raised.value.response["Error"]["Code"] == "ResourceNotFoundException"
