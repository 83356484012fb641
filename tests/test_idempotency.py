"""Idempotency keys on send and cancel (chalicelib.approvals.idempotency): the same key with the
same body gets the first answer again and does nothing else. Through app.py (HTTP routes and
Lambda functions) and, where threads or time are involved, below the routes; always a real store
on moto server and the Zeyi simulator on 127.0.0.1, counting what Zeyi received."""
from __future__ import annotations

import json
import threading

import pytest

from chalicelib.approvals import idempotency, outbound
from chalicelib.errors import GatewayError
from chalicelib.protocol import envelope
from chalicelib.protocol.credentials import parse_outbound
from chalicelib.protocol.zeyi_client import ZeyiClient
from chalicelib.runtime import aws
from chalicelib.runtime.secrets_cache import SecretsCache
from chalicelib.runtime.settings import load_settings
from tests.conftest import NONCES_TABLE
from tests.peer import cancel_body, send_body

LEASE_SECONDS = 120


@pytest.fixture
def client_for(aws_env, monkeypatch):
    """A ZeyiClient to ``url`` built from the settings, the way app.py builds it."""
    secrets = SecretsCache(lambda: aws.client("secretsmanager"))

    def build(url: str) -> ZeyiClient:
        monkeypatch.setenv("ZEYI_BASE_URL", url)
        settings = load_settings()
        return ZeyiClient(settings.zeyi_base_url,
                          lambda: secrets.get(settings.outbound_secret_id, parse_outbound,
                                              settings.secrets_cache_seconds),
                          connect_timeout_seconds=settings.zeyi_connect_timeout_seconds,
                          read_timeout_seconds=settings.zeyi_read_timeout_seconds,
                          encrypt=settings.zeyi_encrypt, sleep=lambda seconds: None)
    return build


def post(gateway, path, payload, key=None):
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Idempotency-Key"] = key
    response = gateway.http.post(path, body=json.dumps(payload).encode(), headers=headers)
    return response.status_code, json.loads(response.body)


def history(gateway, code):
    return json.loads(gateway.http.get(f"/audit/{code}").body)["result"]


def keyed_send(store, client, key, body=None, *, caller="app-a"):
    """What app.py does for a keyed send, as (HTTP status, envelope)."""
    body = body or send_body()
    key_ = idempotency.key_of(key, caller=caller, operation="send", request=body)
    try:
        return 200, idempotency.send(
            key_, store=store, lease_seconds=LEASE_SECONDS,
            run=lambda claims: outbound.send_approval(body, store=claims, zeyi=client,
                                                      lease_seconds=LEASE_SECONDS))
    except GatewayError as exc:
        return exc.status, envelope.failure(exc.error_code, exc.message, business=exc.business,
                                            result=exc.result)


# -- through the routes ----------------------------------------------------------------------

def test_the_same_key_twice_gets_the_first_answer_and_zeyi_one_send(gateway, zeyi):
    first = post(gateway, "/audit/send", send_body("IK-1"), key="order-4711")
    again = post(gateway, "/audit/send", send_body("IK-1"), key="order-4711")

    assert first[0] == 200 and first[1]["result"]["status"] == "PENDING"
    assert again == first
    assert len(zeyi.requests_log(kind="send")) == 1
    assert history(gateway, "IK-1")["attemptCount"] == 1


def test_without_a_key_a_retry_is_refused_as_today(gateway, zeyi):
    assert post(gateway, "/audit/send", send_body("IK-2"))[0] == 200
    status, answer = post(gateway, "/audit/send", send_body("IK-2"))
    assert (status, answer["errorCode"]) == (409, "APPROVAL_ACTIVE")


def test_a_5xx_after_zeyi_accepted_is_the_answer_replayed(gateway, zeyi):
    zeyi.add_fault("send", "accept_then_drop")
    first = post(gateway, "/audit/send", send_body("IK-3"), key="k-3")
    assert first[0] >= 500 and first[1]["errorCode"] == "UPSTREAM_OUTCOME_UNKNOWN"

    again = post(gateway, "/audit/send", send_body("IK-3"), key="k-3")
    assert again == first
    assert len(zeyi.requests_log(kind="send")) == 1
    assert history(gateway, "IK-3")["attemptCount"] == 1


def test_a_refusal_by_zeyi_is_replayed_too(gateway, zeyi):
    zeyi.add_fault("send", "refuse")
    first = post(gateway, "/audit/send", send_body("IK-4"), key="k-4")
    assert first[0] == 422
    assert post(gateway, "/audit/send", send_body("IK-4"), key="k-4") == first
    assert len(zeyi.requests_log(kind="send")) == 1


def test_the_same_key_with_another_body_is_422_and_changes_nothing(gateway, zeyi):
    post(gateway, "/audit/send", send_body("IK-5"), key="k-5")
    before = history(gateway, "IK-5")

    status, answer = post(gateway, "/audit/send", send_body("IK-5", orgCode="OTHER"), key="k-5")
    assert (status, answer["errorCode"], answer["success"]) == (422, "IDEMPOTENCY_KEY_REUSED",
                                                                False)
    status, answer = post(gateway, "/audit/send", send_body("IK-6"), key="k-5")
    assert (status, answer["errorCode"]) == (422, "IDEMPOTENCY_KEY_REUSED")
    assert history(gateway, "IK-5") == before
    assert gateway.http.get("/audit/IK-6").status_code == 404
    assert len(zeyi.requests_log(kind="send")) == 1


@pytest.mark.parametrize("key", ["", "x" * 256, "caf\u00e9", "tab\there"])
def test_an_invalid_key_is_400_and_stores_nothing(gateway, zeyi, key):
    status, answer = post(gateway, "/audit/send", send_body("IK-7"), key=key)
    assert (status, answer["errorCode"]) == (400, "IDEMPOTENCY_KEY_INVALID")
    assert gateway.http.get("/audit/IK-7").status_code == 404
    assert zeyi.requests_log() == []


def test_a_refused_body_keeps_no_answer_so_the_fixed_body_may_use_the_key(gateway, zeyi):
    status, answer = post(gateway, "/audit/send", send_body("IK-8", orgCode=None), key="k-8")
    assert (status, answer["errorCode"]) == (400, "VALIDATION_ERROR")
    assert post(gateway, "/audit/send", send_body("IK-8"), key="k-8")[0] == 200


def test_cancel_with_a_key_reaches_zeyi_once_and_answers_the_same(gateway, zeyi):
    post(gateway, "/audit/send", send_body("IK-9"))
    first = post(gateway, "/audit/cancel", cancel_body("IK-9"), key="cancel-9")
    again = post(gateway, "/audit/cancel", cancel_body("IK-9"), key="cancel-9")
    assert first[0] == 200 and first[1]["result"]["status"] == "CANCELLING"
    assert again == first
    assert len(zeyi.requests_log(kind="cancel")) == 1
    # Without the key, the second cancel is refused: the approval is CANCELLING.
    assert post(gateway, "/audit/cancel", cancel_body("IK-9"))[0] == 409


def test_a_key_used_for_a_send_cannot_cancel(gateway, zeyi):
    post(gateway, "/audit/send", send_body("IK-10"), key="shared")
    status, answer = post(gateway, "/audit/cancel", cancel_body("IK-10"), key="shared")
    assert (status, answer["errorCode"]) == (422, "IDEMPOTENCY_KEY_REUSED")
    assert zeyi.requests_log(kind="cancel") == []


def test_lambda_keys_are_scoped_to_their_caller(gateway, zeyi):
    def invoke(caller, code):
        return gateway.lambda_.invoke("send_approval", {
            **send_body(code), "idempotencyKey": "batch-1", "caller": caller}).payload

    first_a = invoke("purchasing", "IK-11")
    first_b = invoke("travel", "IK-12")  # the same key, another app: its own request
    again_a = invoke("purchasing", "IK-11")
    assert first_a["success"] and first_b["success"]
    assert first_a["result"]["attemptId"] != first_b["result"]["attemptId"]
    strip = {"correlationId"}
    assert {k: v for k, v in again_a["result"].items() if k not in strip} == \
        {k: v for k, v in first_a["result"].items() if k not in strip}
    assert len(zeyi.requests_log(kind="send")) == 2
    refused = invoke("travel", "IK-11")  # travel's key batch-1 was for IK-12
    assert refused["errorCode"] == "IDEMPOTENCY_KEY_REUSED"


def test_the_key_is_not_kept_in_clear_and_expires_with_the_ttl(gateway, zeyi):
    post(gateway, "/audit/send", send_body("IK-13"), key="secret-looking-key")
    items = aws.client("dynamodb").scan(TableName=NONCES_TABLE)["Items"]
    [record] = [item for item in items if item["pk"]["S"].startswith("idempotency#")]
    assert "secret-looking-key" not in json.dumps(record)
    assert record["state"]["S"] == "COMPLETED"
    assert 86_000 < int(record["expiresAt"]["N"]) - int(record["createdAt"]["N"]) // 1000 \
        <= 86_400


# -- below the routes: threads and time --------------------------------------------------------

def test_concurrent_sends_with_one_key_claim_once_and_all_get_the_first_answer(
        store, zeyi, client_for, atomic_requests):
    client = client_for(zeyi.url)
    start = threading.Barrier(8)
    answers: list[tuple[int, dict]] = []

    def one():
        start.wait(timeout=10)
        answers.append(keyed_send(store, client, "together"))

    threads = [threading.Thread(target=one) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert len(answers) == 8
    first = [a for a in answers if a[0] == 200]
    waiting = [a for a in answers if a[0] != 200]
    assert first, answers
    assert all(a == (409, a[1]) and a[1]["errorCode"] == "IDEMPOTENCY_IN_PROGRESS"
               for a in waiting), waiting
    # Every one that was told to retry gets the first answer when it does.
    finals = first + [keyed_send(store, client, "together") for _ in waiting]
    assert all(answer == first[0] for answer in finals)
    assert len(zeyi.requests_log(kind="send")) == 1
    assert outbound.get_approval("PO-1", store=store)["result"]["attemptCount"] == 1


class HeldZeyi:
    """The real Zeyi client, whose send waits until the test lets it go: the first request is
    in flight for as long as the test needs."""

    def __init__(self, client):
        self.client = client
        self.sending = threading.Event()
        self.release = threading.Event()

    def send(self, body):
        self.sending.set()
        assert self.release.wait(timeout=10)
        return self.client.send(body)


def test_a_retry_while_the_first_is_in_flight_is_409_in_progress(store, zeyi, client_for):
    held = HeldZeyi(client_for(zeyi.url))
    results = []
    first = threading.Thread(target=lambda: results.append(keyed_send(store, held, "slow")))
    first.start()
    try:
        assert held.sending.wait(timeout=10)
        status, answer = keyed_send(store, held, "slow")
        assert (status, answer["errorCode"]) == (409, "IDEMPOTENCY_IN_PROGRESS")
        assert "retry" in answer["message"]
        assert 1 <= answer["result"]["retryAfterSeconds"] <= LEASE_SECONDS
    finally:
        held.release.set()
        first.join(timeout=30)
    assert results[0][0] == 200
    assert keyed_send(store, held, "slow") == results[0]
    assert len(zeyi.requests_log(kind="send")) == 1


def test_an_expired_key_behaves_as_new(store, zeyi, client_for, clock):
    client = client_for(zeyi.url)
    zeyi.add_fault("send", "refuse")
    first = keyed_send(store, client, "daily")
    assert first[0] == 422
    assert keyed_send(store, client, "daily") == first  # within 24 h: replayed
    assert len(zeyi.requests_log(kind="send")) == 1

    clock.skipped_seconds += idempotency.TTL_SECONDS + 1
    # TTL deletion has not happened (it can lag by days): the expired key counts as absent.
    status, answer = keyed_send(store, client, "daily")
    assert status == 200 and answer["result"]["status"] == "PENDING"
    assert len(zeyi.requests_log(kind="send")) == 2
    # And an expired key may carry another body.
    clock.skipped_seconds += idempotency.TTL_SECONDS + 1
    assert keyed_send(store, client, "daily", send_body("PO-2"))[0] == 200


def test_a_first_request_that_died_is_taken_over_after_its_lease(store, zeyi, client_for,
                                                                  clock):
    client = client_for(zeyi.url)

    def die(claims):
        claims.claim("PO-1", send_body(), LEASE_SECONDS)
        raise SystemExit("the Lambda container died after the claim")

    key = idempotency.key_of("phoenix", caller="app-a", operation="send", request=send_body())
    with pytest.raises(SystemExit):
        idempotency.send(key, store=store, lease_seconds=LEASE_SECONDS, run=die)
    assert keyed_send(store, client, "phoenix")[1]["errorCode"] == "IDEMPOTENCY_IN_PROGRESS"

    clock.skipped_seconds += LEASE_SECONDS + 1
    status, answer = keyed_send(store, client, "phoenix")
    assert status == 200 and answer["result"]["status"] == "PENDING"
    assert keyed_send(store, client, "phoenix") == (status, answer)
    assert len(zeyi.requests_log(kind="send")) == 1


class _Context:
    aws_request_id = "00000000-0000-4000-8000-000000000001"

    @staticmethod
    def get_remaining_time_in_millis() -> int:
        return 25_000


def as_principal(user_arn: str, body: dict, key: str) -> tuple[int, dict]:
    """A POST /audit/send as API Gateway hands it to the function, IAM-signed by ``user_arn``
    (the Chalice test client cannot set the caller's identity)."""
    import app as gateway_app

    raw = json.dumps(body)
    headers = {"Content-Type": "application/json", "Idempotency-Key": key}
    event = {"resource": "/audit/send", "path": "/audit/send", "httpMethod": "POST",
             "headers": headers, "multiValueHeaders": {k: [v] for k, v in headers.items()},
             "queryStringParameters": None, "multiValueQueryStringParameters": None,
             "pathParameters": None, "stageVariables": None, "body": raw,
             "isBase64Encoded": False,
             "requestContext": {"resourcePath": "/audit/send", "httpMethod": "POST",
                                "stage": "api", "requestId": "r-1", "path": "/api/audit/send",
                                "identity": {"sourceIp": "10.0.0.1", "userArn": user_arn}}}
    answer = gateway_app.app(event, _Context())
    return answer["statusCode"], json.loads(answer["body"])


def test_http_keys_are_scoped_to_the_iam_principal(gateway, zeyi):
    purchasing = "arn:aws-cn:sts::123456789012:assumed-role/purchasing-app/session"
    travel = "arn:aws-cn:sts::123456789012:assumed-role/travel-app/session"
    first = as_principal(purchasing, send_body("IK-20"), "shared-key")
    other = as_principal(travel, send_body("IK-21"), "shared-key")
    assert first[0] == other[0] == 200
    assert as_principal(purchasing, send_body("IK-20"), "shared-key") == first
    assert as_principal(travel, send_body("IK-20"), "shared-key")[1]["errorCode"] == \
        "IDEMPOTENCY_KEY_REUSED"
    assert len(zeyi.requests_log(kind="send")) == 2
