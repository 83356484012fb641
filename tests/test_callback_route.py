"""POST /auth/token and POST /dingtalkAudit/callback through Chalice's test client, with moto
server behind them: every check's own errorCode, always HTTP 400 for a refusal (Zeyi's HTTP stack
reads no other 4xx body), nothing stored on failure, and the state machine of architecture.md."""
from __future__ import annotations

import hashlib
import json
import struct
import time

import pytest

from chalicelib.runtime import aws
from tests import peer
from tests.conftest import APPROVALS_TABLE, INBOUND, INBOUND_ROTATED, NONCES_TABLE, TOKEN_KEYS

CALLBACK = "/dingtalkAudit/callback"


def token_for(gateway, credential=INBOUND) -> str:
    body = b"{}"
    response = gateway.http.post("/auth/token", body=body,
                                 headers=peer.signed_headers(body, credential=credential))
    assert response.status_code == 200, response.body
    return json.loads(response.body)["result"]["accessToken"]


def post_callback(gateway, body: bytes, *, token: str | None = "auto", **overrides):
    if token == "auto":
        token = token_for(gateway)
    headers = peer.signed_headers(body, token=token, **overrides)
    response = gateway.http.post(CALLBACK, body=body, headers=headers)
    return response.status_code, json.loads(response.body)


def stored_items() -> tuple[list, list]:
    dynamodb = aws.client("dynamodb")
    approvals = dynamodb.scan(TableName=APPROVALS_TABLE)["Items"]
    nonces = dynamodb.scan(TableName=NONCES_TABLE)["Items"]
    return approvals, nonces


def history(gateway, code):
    """The code's history as the status route shows it, plus each callback's raw body as
    stored (the route leaves bodies out: they can be hundreds of kilobytes each)."""
    from chalicelib.approvals.store import DynamoDBApprovalStore

    store = DynamoDBApprovalStore(aws.client("dynamodb"), APPROVALS_TABLE, NONCES_TABLE)
    record = store.history(code)
    items = aws.client("dynamodb").query(
        TableName=APPROVALS_TABLE, KeyConditionExpression="code = :c",
        ExpressionAttributeValues={":c": {"S": code}})["Items"]
    bodies = {(item["businessId"]["S"], item["type"]["S"], item.get("result", {}).get("S")):
              item["body"]["S"] for item in items if "body" in item}
    for callback in record["callbacks"]:
        callback["body"] = bodies[(callback["businessId"], callback["type"],
                                   callback.get("result"))]
    return record


# -- the token endpoint -----------------------------------------------------------------------

def test_token_endpoint_answers_an_oauth_shaped_result_and_no_store(gateway):
    body = b"{}"
    response = gateway.http.post("/auth/token", body=body, headers=peer.signed_headers(body))
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    envelope = json.loads(response.body)
    assert envelope["success"] is True and envelope["errorCode"] is None
    assert envelope["result"]["tokenType"] == "Bearer"
    assert envelope["result"]["expiresIn"] == 7200
    assert len(envelope["result"]["accessToken"]) > 40


def test_token_request_cannot_be_replayed_as_a_callback(gateway):
    token = token_for(gateway)
    body = b"{}"
    headers = peer.signed_headers(body)
    assert gateway.http.post("/auth/token", body=body, headers=headers).status_code == 200
    replay = dict(headers, Authorization=f"Bearer {token}")
    response = gateway.http.post(CALLBACK, body=body, headers=replay)
    # The same signed bytes at another path: its nonce is already spent (or its body is wrong).
    assert response.status_code == 400
    assert json.loads(response.body)["errorCode"] in ("NONCE_REPLAYED", "BODY_INVALID")
    assert stored_items()[0] == []


def test_token_endpoint_rejects_a_replayed_nonce(gateway):
    body = b"{}"
    headers = peer.signed_headers(body)
    assert gateway.http.post("/auth/token", body=body, headers=headers).status_code == 200
    again = gateway.http.post("/auth/token", body=body, headers=headers)
    assert again.status_code == 400
    assert json.loads(again.body)["errorCode"] == "NONCE_REPLAYED"


def test_empty_body_token_request_is_accepted(gateway):
    response = gateway.http.post("/auth/token", body=b"", headers=peer.signed_headers(b""))
    assert response.status_code == 200


# -- the happy paths --------------------------------------------------------------------------

def test_callback_for_a_pending_approval_moves_it_and_records_the_raw_body(gateway):
    seed_pending("HT-1")
    body = peer.callback_body(code="HT-1")
    status, envelope = post_callback(gateway, body)
    assert (status, envelope["success"]) == (200, True)
    assert envelope["result"] == {"status": "AGREED", "disposition": "applied"}
    record = history(gateway, "HT-1")
    assert record["status"] == "AGREED"
    assert record["callbacks"][0]["body"] == body.decode("utf-8")
    assert record["callbacks"][0]["disposition"] == "applied"
    assert record["attempts"][0]["status"] == "AGREED"


def test_gson_body_with_escapes_and_chinese_is_accepted_as_signed(gateway):
    gson = ('{"code":"PO-2026-0420","auditType":"CONTRACT","businessId":"proc-inst-9f8e7d",'
            '"type":"finish","result":"refuse","auditUser":"李四","remark":"驳回：金额不符 '
            '\\u003c复核\\u003e \\u0026 \\u0027重填\\u0027 \\u003d"}').encode()
    status, envelope = post_callback(gateway, gson)
    assert status == 200, envelope
    record = history(gateway, "PO-2026-0420")
    assert record["status"] == "REFUSED"
    assert record["callbacks"][0]["body"].encode("utf-8") == gson
    assert record["callbacks"][0]["remark"] == "驳回：金额不符 <复核> & '重填' ="


def test_upper_case_nonce_lower_case_header_names_and_upper_case_sign(gateway):
    token = token_for(gateway)
    body = peer.callback_body(code="HT-2")
    headers = peer.signed_headers(body, nonce="1R8ICP")
    lowered = {k.lower(): v for k, v in headers.items()}
    lowered["sign"] = lowered["sign"].upper()
    lowered["authorization"] = f"Bearer {token}"
    response = gateway.http.post(CALLBACK, body=body, headers=lowered)
    assert response.status_code == 200, response.body


@pytest.mark.parametrize("content_type", ["application/json", "application/json;charset=utf-8",
                                          "text/plain;charset=utf-8", "application/x-unknown"])
def test_every_content_type_reaches_the_callback(gateway, content_type):
    body = peer.callback_body(code="HT-CT")
    status, envelope = post_callback(gateway, body, **{"Content-Type": content_type})
    assert status == 200, envelope


def test_rotated_inbound_credential_works_alongside_the_old_one(gateway):
    token = token_for(gateway, credential=INBOUND_ROTATED)
    body = peer.callback_body(code="HT-ROT")
    headers = peer.signed_headers(body, credential=INBOUND_ROTATED, token=token)
    assert gateway.http.post(CALLBACK, body=body, headers=headers).status_code == 200
    assert history(gateway, "HT-ROT")["status"] == "AGREED"


def test_a_token_of_one_credential_is_refused_for_another(gateway):
    foreign = token_for(gateway, credential=INBOUND_ROTATED)
    status, envelope = post_callback(gateway, peer.callback_body(), token=foreign)
    assert (status, envelope["errorCode"]) == (400, "TOKEN_INVALID")
    assert "another appKey" in envelope["message"]


# -- the state machine ------------------------------------------------------------------------

def seed_pending(code: str) -> None:
    from chalicelib.approvals.store import DynamoDBApprovalStore

    store = DynamoDBApprovalStore(aws.client("dynamodb"), APPROVALS_TABLE, NONCES_TABLE)
    attempt = store.claim(code, {"code": code}, 120)
    store.settle_send(code, attempt, "PENDING", {"success": True})


def test_unknown_code_is_recorded_as_an_attempt_in_the_announced_state(gateway):
    status, envelope = post_callback(gateway, peer.callback_body(code="NEVER-SENT", type="terminate",
                                                                 result=...))
    assert status == 200 and envelope["result"]["status"] == "TERMINATED"
    record = history(gateway, "NEVER-SENT")
    assert record["status"] == "TERMINATED"
    assert [a["origin"] for a in record["attempts"]] == ["callback"]


def test_same_callback_twice_changes_nothing_the_second_time(gateway):
    seed_pending("HT-DUP")
    body = peer.callback_body(code="HT-DUP")
    assert post_callback(gateway, body)[1]["result"]["disposition"] == "applied"
    before = stored_items()[0]
    status, envelope = post_callback(gateway, body)  # a redelivery: new nonce, same content
    assert status == 200 and envelope["result"]["disposition"] == "duplicate"
    assert stored_items()[0] == before
    assert len(history(gateway, "HT-DUP")["callbacks"]) == 1


def test_late_callback_never_leaves_a_final_state(gateway):
    """An agreed approval's own terminate (revoked or deleted in DingTalk) makes it REVOKED,
    a final status too: a later decision of that instance changes nothing."""
    seed_pending("HT-LATE")
    post_callback(gateway, peer.callback_body(code="HT-LATE", result="agree"))
    status, envelope = post_callback(gateway, peer.callback_body(code="HT-LATE", type="terminate",
                                                                 result=...))
    assert status == 200 and envelope["result"] == {"status": "REVOKED", "disposition": "applied"}
    status, envelope = post_callback(gateway, peer.callback_body(code="HT-LATE", result="refuse"))
    assert status == 200 and envelope["result"] == {"status": "REVOKED", "disposition": "ignored"}
    record = history(gateway, "HT-LATE")
    assert record["status"] == "REVOKED"
    assert [c["disposition"] for c in record["callbacks"]] == ["ignored", "applied", "applied"]
    status, envelope = post_callback(gateway, peer.callback_body(code="HT-LATE", type="terminate",
                                                                 result=...))
    assert envelope["result"] == {"status": "REVOKED", "disposition": "duplicate"}


def test_terminate_settles_a_cancelling_approval(gateway):
    from chalicelib.approvals.store import DynamoDBApprovalStore

    seed_pending("HT-CAN")
    store = DynamoDBApprovalStore(aws.client("dynamodb"), APPROVALS_TABLE, NONCES_TABLE)
    assert store.mark_cancelling("HT-CAN", store.get_head("HT-CAN")["attemptId"], {"code": "HT-CAN"},
                                 lease_seconds=600)
    post_callback(gateway, peer.callback_body(code="HT-CAN", type="terminate", result=...))
    assert history(gateway, "HT-CAN")["status"] == "TERMINATED"


def test_a_callback_settles_a_submitting_attempt(gateway):
    from chalicelib.approvals.store import DynamoDBApprovalStore

    store = DynamoDBApprovalStore(aws.client("dynamodb"), APPROVALS_TABLE, NONCES_TABLE)
    store.claim("HT-SUB", {"code": "HT-SUB"}, 120)
    post_callback(gateway, peer.callback_body(code="HT-SUB", result="refuse"))
    assert history(gateway, "HT-SUB")["status"] == "REFUSED"


# -- every way a callback can be wrong: its own errorCode, HTTP 400, nothing stored ------------

def _md5_padding(message_length: int) -> bytes:
    return b"\x80" + b"\x00" * ((55 - message_length) % 64) + struct.pack("<Q", message_length * 8)


def bad_requests():
    now = time.time()
    ms = lambda seconds: str(int((now + seconds) * 1000))  # noqa: E731
    body = peer.callback_body()
    return {
        "appKey missing": (body, {"appKey": None}, 400, "HEADER_MISSING"),
        "appKey empty": (body, {"appKey": ""}, 400, "HEADER_MISSING"),
        "timestamp missing": (body, {"timestamp": None}, 400, "HEADER_MISSING"),
        "timestamp empty": (body, {"timestamp": ""}, 400, "HEADER_MISSING"),
        "nonce missing": (body, {"nonce": None}, 400, "HEADER_MISSING"),
        "nonce empty": (body, {"nonce": ""}, 400, "HEADER_MISSING"),
        "sign missing": (body, {"sign": None}, 400, "HEADER_MISSING"),
        "sign empty": (body, {"sign": " "}, 400, "HEADER_MISSING"),
        "unknown appKey": (body, {"appKey": "someone-else"}, 400, "APP_KEY_UNKNOWN"),
        "stale timestamp": (body, {"timestamp": ms(-301)}, 400, "TIMESTAMP_OUT_OF_WINDOW"),
        "future timestamp": (body, {"timestamp": ms(301)}, 400, "TIMESTAMP_OUT_OF_WINDOW"),
        "timestamp not a number": (body, {"timestamp": "17640576000x0"}, 400, "TIMESTAMP_INVALID"),
        "timestamp in seconds": (body, {"timestamp": str(int(now))}, 400, "TIMESTAMP_INVALID"),
        "nonce too short": (body, {"nonce": "abc12"}, 400, "NONCE_INVALID"),
        "nonce bad alphabet": (body, {"nonce": "abc-12"}, 400, "NONCE_INVALID"),
        "wrong sign": (body, {"sign": "0" * 32}, 400, "SIGN_INVALID"),
        "sign not hex": (body, {"sign": "z" * 32}, 400, "SIGN_INVALID"),
        "invalid utf-8": (b'{"code":"\xff"}', {}, 400, "BODY_INVALID"),
        "invalid json": (b'{"code": ', {}, 400, "BODY_INVALID"),
        "json trailing data": (body + b" {}", {}, 400, "BODY_INVALID"),
        "json not an object": (b'["code"]', {}, 400, "BODY_INVALID"),
        "NaN constant": (peer.callback_body(remark=...)[:-1] + b',"x":NaN}', {}, 400, "BODY_INVALID"),
        "duplicate field": (body[:-1] + b',"code":"OTHER"}', {}, 400, "BODY_INVALID"),
        "missing code": (peer.callback_body(code=...), {}, 400, "BODY_INVALID"),
        "missing businessId": (peer.callback_body(businessId=...), {}, 400, "BODY_INVALID"),
        "code not a string": (peer.callback_body(code=42), {}, 400, "BODY_INVALID"),
        "code with a control character": (peer.callback_body(code="A\u0000B"), {}, 400, "BODY_INVALID"),
        "code too long": (peer.callback_body(code="x" * 129), {}, 400, "BODY_INVALID"),
        "remark not a string": (peer.callback_body(remark=["x"]), {}, 400, "BODY_INVALID"),
        "unknown type": (peer.callback_body(type="approve"), {}, 400, "BODY_INVALID"),
        "unknown result": (peer.callback_body(result="maybe"), {}, 400, "BODY_INVALID"),
        "finish without result": (peer.callback_body(result=...), {}, 400, "BODY_INVALID"),
        "body over 256 KiB": (peer.callback_body(remark="x" * 262144), {}, 400, "BODY_TOO_LARGE"),
    }


@pytest.mark.parametrize("case", list(bad_requests()))
def test_bad_callback_gets_its_error_and_stores_nothing(gateway, case):
    token = token_for(gateway)
    _, nonces_before = stored_items()
    body, overrides, status, code = bad_requests()[case]
    headers = peer.signed_headers(body, token=token, **overrides)
    response = gateway.http.post(CALLBACK, body=body, headers=headers)
    envelope = json.loads(response.body)
    assert (response.status_code, envelope["errorCode"]) == (status, code), envelope
    assert envelope["success"] is False and envelope["message"]
    assert set(envelope) == {"success", "businessException", "errorCode", "message", "result"}
    approvals, nonces = stored_items()
    assert approvals == [] and nonces == nonces_before


def test_replayed_callback_is_refused_and_changes_nothing(gateway):
    token = token_for(gateway)
    seed_pending("HT-REPLAY")
    body = peer.callback_body(code="HT-REPLAY")
    headers = peer.signed_headers(body, token=token)
    assert gateway.http.post(CALLBACK, body=body, headers=headers).status_code == 200
    before = stored_items()
    response = gateway.http.post(CALLBACK, body=body, headers=headers)
    assert (response.status_code, json.loads(response.body)["errorCode"]) == (400, "NONCE_REPLAYED")
    assert stored_items() == before


def test_body_reserialized_after_signing_is_refused(gateway):
    token = token_for(gateway)
    body = peer.callback_body()
    headers = peer.signed_headers(body, token=token)
    pretty = json.dumps(json.loads(body), ensure_ascii=False, indent=1).encode("utf-8")
    response = gateway.http.post(CALLBACK, body=pretty, headers=headers)
    assert json.loads(response.body)["errorCode"] == "SIGN_INVALID"


def test_length_extension_forgery_is_refused(gateway):
    # An attacker who saw one signed callback computes md5(secret || body || padding || suffix)
    # without the secret. We build that forged digest honestly: the "extended" message is signed
    # with the secret here only to stand in for the attacker's state-continuation, which yields
    # the identical digest.
    token = token_for(gateway)
    body = peer.callback_body(code="HT-LE")
    headers = peer.signed_headers(body, token=token)
    prefix = (headers["appKey"] + INBOUND["appSecret"] + headers["timestamp"]
              + headers["nonce"]).encode() + body
    forged_body = body + _md5_padding(len(prefix)) + b',"result":"refuse"}'
    forged = dict(headers, sign=hashlib.md5(prefix + _md5_padding(len(prefix))
                                            + b',"result":"refuse"}').hexdigest())
    response = gateway.http.post(CALLBACK, body=forged_body, headers=forged)
    envelope = json.loads(response.body)
    assert response.status_code == 400 and envelope["errorCode"] == "BODY_INVALID"
    assert stored_items()[0] == []


@pytest.mark.parametrize(("authorization", "why"), [
    (None, "required"), ("Bearer", "malformed"), ("Basic abc", "malformed"),
    ("Bearer v1.abc.def", "malformed"), ("Bearer " + "v1." + "a" * 20 + "." + "b" * 43, "not valid"),
])
def test_missing_or_malformed_token_is_refused(gateway, authorization, why):
    body = peer.callback_body()
    headers = peer.signed_headers(body)
    if authorization:
        headers["Authorization"] = authorization
    response = gateway.http.post(CALLBACK, body=body, headers=headers)
    envelope = json.loads(response.body)
    assert (response.status_code, envelope["errorCode"]) == (400, "TOKEN_INVALID")
    assert why in envelope["message"]
    assert stored_items()[0] == []


def test_expired_token_is_refused(gateway):
    from chalicelib.protocol import tokens
    from chalicelib.protocol.credentials import parse_token_keys

    keys = parse_token_keys("test", json.dumps(TOKEN_KEYS))
    expired = tokens.issue_token(keys, INBOUND["appKey"], 7200, clock=lambda: time.time() - 7201)
    status, envelope = post_callback(gateway, peer.callback_body(), token=expired)
    assert (status, envelope["errorCode"]) == (400, "TOKEN_INVALID")
    assert "expired" in envelope["message"]


def test_token_can_be_switched_off_per_stage(gateway, monkeypatch):
    monkeypatch.setenv("CALLBACK_REQUIRE_TOKEN", "false")
    status, _ = post_callback(gateway, peer.callback_body(code="HT-NOTOKEN"), token=None)
    assert status == 200


# -- encryption, IP allowlist, envelopes everywhere -------------------------------------------

def test_encrypted_callback_is_verified_then_decrypted(gateway, monkeypatch):
    monkeypatch.setenv("CALLBACK_ENCRYPTED", "true")
    token = token_for(gateway)
    data = peer.callback_body(code="HT-ENC").decode("utf-8")
    timestamp, nonce = str(int(time.time() * 1000)), peer.nonce()
    sealed = peer.encrypt(data, INBOUND["appKey"], timestamp, nonce)
    headers = peer.signed_headers(sealed, token=token, timestamp=timestamp, nonce=nonce,
                                  **{"Content-Type": "text/plain;charset=utf-8"})
    response = gateway.http.post(CALLBACK, body=sealed, headers=headers)
    assert response.status_code == 200, response.body
    assert history(gateway, "HT-ENC")["callbacks"][0]["body"] == data


def test_encrypted_callback_with_another_requests_prefix_is_refused(gateway, monkeypatch):
    monkeypatch.setenv("CALLBACK_ENCRYPTED", "true")
    token = token_for(gateway)
    data = peer.callback_body(code="HT-ENC2").decode("utf-8")
    timestamp = str(int(time.time() * 1000))
    sealed = peer.encrypt(data, INBOUND["appKey"], timestamp, "other1")
    headers = peer.signed_headers(sealed, token=token, timestamp=timestamp, nonce="abc123")
    response = gateway.http.post(CALLBACK, body=sealed, headers=headers)
    assert (response.status_code, json.loads(response.body)["errorCode"]) == (400, "BODY_INVALID")
    assert stored_items()[0] == []


def test_ip_allowlist(gateway, monkeypatch):
    monkeypatch.setenv("ALLOWED_SOURCE_IPS", "203.0.113.0/24")
    response = gateway.http.post("/auth/token", body=b"{}", headers=peer.signed_headers(b"{}"))
    envelope = json.loads(response.body)
    assert (response.status_code, envelope["errorCode"]) == (400, "IP_NOT_ALLOWED")
    monkeypatch.setenv("ALLOWED_SOURCE_IPS", "127.0.0.1, 203.0.113.0/24")
    assert gateway.http.post("/auth/token", body=b"{}",
                             headers=peer.signed_headers(b"{}")).status_code == 200




def test_internal_error_is_an_envelope_without_a_trace(gateway, monkeypatch):
    from chalicelib.approvals import store as approval_store

    def explode(*args, **kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(approval_store.DynamoDBApprovalStore, "record_callback", explode)
    status, envelope = post_callback(gateway, peer.callback_body())
    assert status == 500 and envelope["errorCode"] == "INTERNAL_ERROR"
    assert "secret internals" not in json.dumps(envelope) and "Traceback" not in json.dumps(envelope)


def test_a_code_that_predates_the_gateway_is_recorded_and_can_be_read_back(gateway):
    status, _ = post_callback(gateway, peer.callback_body(code="合同 2019/07"))
    assert status == 200
    answer = gateway.lambda_.invoke("get_approval", {"code": "合同 2019/07"}).payload
    assert answer["result"]["status"] == "AGREED"
    assert answer["result"]["attempts"][0]["origin"] == "callback"


def test_a_credential_marked_legacy_accepts_zeyi_sdk_100s_header_only_sign(gateway):
    from tests.conftest import INBOUND_SECRET_ID

    legacy = dict(INBOUND, legacySign=True)
    aws.client("secretsmanager").put_secret_value(
        SecretId=INBOUND_SECRET_ID, SecretString=json.dumps({"credentials": [legacy]}))

    def header_only(headers: dict) -> dict:
        return dict(headers, sign=peer.md5_sign(INBOUND["appKey"], INBOUND["appSecret"],
                                                headers["timestamp"], headers["nonce"], b""))

    answer = gateway.http.post("/auth/token", body=b"{}",
                               headers=header_only(peer.signed_headers(b"{}")))
    token = json.loads(answer.body)["result"]["accessToken"]
    body = peer.callback_body(code="HT-LEGACY")
    headers = header_only(peer.signed_headers(body, token=token))
    assert gateway.http.post(CALLBACK, body=body, headers=headers).status_code == 200
    full = peer.signed_headers(body, token=token)  # the doc's rule, body included
    response = gateway.http.post(CALLBACK, body=body, headers=full)
    assert json.loads(response.body)["errorCode"] == "SIGN_INVALID"
