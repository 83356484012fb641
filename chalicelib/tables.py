"""The two DynamoDB tables, defined once: the tests, the sandbox and the deploy bootstrap all
create them from here, so their schemas cannot drift apart.

- approvals: ``code`` (partition) + ``sk`` (sort). One ``HEAD`` item per code for the uniqueness
  rule and current status, one ``ATTEMPT#...`` item per send, one ``CALLBACK#...`` per callback.
  Every read of one code is a single Query.
- nonces: ``pk`` = appKey + ":" + nonce, with the TTL attribute ``expiresAt`` (epoch seconds).
"""
from __future__ import annotations

NONCE_TTL_ATTRIBUTE = "expiresAt"


def approvals_table_definition(name: str) -> dict:
    return {
        "TableName": name,
        "AttributeDefinitions": [
            {"AttributeName": "code", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
        ],
        "KeySchema": [
            {"AttributeName": "code", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
        "BillingMode": "PAY_PER_REQUEST",
        "SSESpecification": {"Enabled": True},
    }


def nonces_table_definition(name: str) -> dict:
    return {
        "TableName": name,
        "AttributeDefinitions": [{"AttributeName": "pk", "AttributeType": "S"}],
        "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}],
        "BillingMode": "PAY_PER_REQUEST",
        "SSESpecification": {"Enabled": True},
    }


def ensure_tables(dynamodb, approvals_table: str, nonces_table: str) -> list[str]:
    """Create whichever of the two tables is missing, with TTL on nonces and point-in-time
    recovery on both; return the names of the tables it created (empty when all existed)."""
    created = []
    existing = set()
    for page in dynamodb.get_paginator("list_tables").paginate():
        existing.update(page["TableNames"])
    for definition in (approvals_table_definition(approvals_table),
                       nonces_table_definition(nonces_table)):
        name = definition["TableName"]
        if name in existing:
            continue
        dynamodb.create_table(**definition)
        dynamodb.get_waiter("table_exists").wait(
            TableName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
        dynamodb.update_continuous_backups(
            TableName=name,
            PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True})
        created.append(name)
    if nonces_table in created:
        dynamodb.update_time_to_live(
            TableName=nonces_table,
            TimeToLiveSpecification={"Enabled": True, "AttributeName": NONCE_TTL_ATTRIBUTE})
    return created
