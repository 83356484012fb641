"""What a warm callback costs in AWS calls, and what the logs may never contain."""
from __future__ import annotations

import io
import json
import logging
import threading
from collections import Counter

from chalicelib.approvals.store import CallbackRecord, DynamoDBApprovalStore
from chalicelib.runtime import aws
from tests import peer
from tests.conftest import (
    APPROVALS_TABLE,
    INBOUND,
    NONCES_TABLE,
    OUTBOUND,
    TOKEN_KEYS,
    retry_once_after_success,
)
from tests.test_callback_route import CALLBACK, post_callback, seed_pending, token_for


class CallCounter:
    """Counts the botocore operations the shared clients actually send."""

    def __init__(self):
        self.calls = Counter()
        for service in ("dynamodb", "secretsmanager"):
            aws.client(service).meta.events.register("before-call.*.*", self._count)

    def _count(self, model, **kwargs):
        self.calls[f"{model.service_model.service_name}.{model.name}"] += 1


def test_warm_callback_costs_one_dynamodb_round_trip_and_no_secrets_call(gateway):
    token = token_for(gateway)
    seed_pending("WARM-1")
    seed_pending("WARM-2")
    post_callback(gateway, peer.callback_body(code="WARM-1"), token=token)  # warms the caches
    counter = CallCounter()
    status, envelope = post_callback(gateway, peer.callback_body(code="WARM-2"), token=token)
    assert status == 200 and envelope["result"]["disposition"] == "applied"
    assert counter.calls == Counter({"dynamodb.TransactWriteItems": 1})


def test_cold_callback_reads_each_secret_once(gateway):
    counter = CallCounter()
    token = token_for(gateway)
    post_callback(gateway, peer.callback_body(code="COLD"), token=token)
    assert counter.calls["secretsmanager.GetSecretValue"] == 2  # inbound credentials, token key


def test_concurrent_redeliveries_apply_exactly_once(aws_env, atomic_requests):
    store = DynamoDBApprovalStore(aws.client("dynamodb"), APPROVALS_TABLE, NONCES_TABLE)
    attempt = store.claim("RACE", {"code": "RACE"}, 120)
    store.settle_send("RACE", attempt, "PENDING", {"success": True})
    outcomes, barrier = [], threading.Barrier(12)

    def deliver(i):
        record = CallbackRecord(code="RACE", business_id="bid-1", type="finish", result="agree",
                                audit_type=None, audit_user=None, remark=None, body="{}",
                                app_key="k", nonce=f"race{i:02d}")
        barrier.wait(timeout=10)
        outcomes.append(store.record_callback(record, 1200).disposition)

    threads = [threading.Thread(target=deliver, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(outcomes).count("applied") == 1
    assert len(outcomes) == 12 and set(outcomes) <= {"applied", "duplicate"}
    history = store.history("RACE")
    assert history["status"] == "AGREED" and len(history["callbacks"]) == 1


def test_concurrent_callbacks_for_an_unknown_code_create_one_attempt(aws_env, atomic_requests):
    store = DynamoDBApprovalStore(aws.client("dynamodb"), APPROVALS_TABLE, NONCES_TABLE)
    barrier = threading.Barrier(8)

    def deliver(i):
        record = CallbackRecord(code="NEW", business_id=f"bid-{i}", type="terminate",
                                result=None, audit_type=None, audit_user=None, remark=None,
                                body="{}", app_key="k", nonce=f"newc{i:02d}")
        barrier.wait(timeout=10)
        store.record_callback(record, 1200)

    threads = [threading.Thread(target=deliver, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    history = store.history("NEW")
    assert len(history["attempts"]) == 1 and history["status"] == "TERMINATED"
    assert len(history["callbacks"]) == 8
    dispositions = sorted(c["disposition"] for c in history["callbacks"])
    assert dispositions == ["applied"] + ["unknown_instance"] * 7


def test_no_secret_token_or_sign_is_ever_logged(gateway):
    from chalicelib.runtime.logs import logger

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logger.registered_formatter)
    std_logger = logging.getLogger(logger.name)
    std_logger.addHandler(handler)
    try:
        logged, token, headers = _log_a_good_and_a_bad_callback(gateway, stream)
    finally:
        std_logger.removeHandler(handler)
    lines = [json.loads(line) for line in logged.splitlines()]
    assert any(line.get("code") == "LOG-1" and line.get("nonce") for line in lines)
    refusal = next(line for line in lines if line.get("errorCode") == "BODY_INVALID")
    assert refusal["nonce"] == "zzz998" and "code" not in refusal
    for forbidden in (token, headers["sign"], INBOUND["appSecret"], OUTBOUND["appSecret"],
                      TOKEN_KEYS["keys"][0]):
        assert forbidden not in logged


def _log_a_good_and_a_bad_callback(gateway, stream):
    token = token_for(gateway)
    seed_pending("LOG-1")
    body = peer.callback_body(code="LOG-1")
    headers = peer.signed_headers(body, token=token)
    assert gateway.http.post(CALLBACK, body=body, headers=headers).status_code == 200
    bad = dict(headers, sign="0" * 32, nonce="zzz999")
    assert gateway.http.post(CALLBACK, body=body, headers=bad).status_code == 400
    broken = b'{"code": 1}'
    assert gateway.http.post(CALLBACK, body=broken, headers=peer.signed_headers(
        broken, token=token, nonce="zzz998")).status_code == 400
    return stream.getvalue(), token, headers


def test_a_retried_callback_transaction_is_not_a_replay(gateway):
    token = token_for(gateway)
    seed_pending("RETRY-1")
    fired = retry_once_after_success(aws.client("dynamodb"), "TransactWriteItems")
    status, envelope = post_callback(gateway, peer.callback_body(code="RETRY-1"), token=token)
    assert fired, "the forced retry did not happen"
    assert (status, envelope["result"]["disposition"]) == (200, "applied")


def test_a_retried_token_nonce_put_is_not_a_replay(gateway):
    fired = retry_once_after_success(aws.client("dynamodb"), "PutItem")
    response = gateway.http.post("/auth/token", body=b"{}", headers=peer.signed_headers(b"{}"))
    assert fired and response.status_code == 200, response.body
