"""The floor: the least a correct callback handler does, as a Lambda handler for API Gateway.

Timestamp window, nonce format, md5 sign (constant time), the Bearer token's HMAC and claims,
the JSON body's fields, and one TransactWriteItems that stores the nonce and the callback and
moves the approval, each conditioned so that a replay or a redelivery changes nothing; the two
secrets are read once per container. No logging, no metrics, no tracing, no error detail beyond
the errorCode: what the gateway does on top of this is what ``make bench`` measures.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import time

import boto3
from botocore.config import Config

_NONCE = re.compile(r"[A-Za-z0-9]{6}")
_TOKEN = re.compile(r"Bearer v1\.([A-Za-z0-9_-]{1,512})\.([A-Za-z0-9_-]{43})")
_client = None
_secrets: tuple[dict, list[bytes]] | None = None


def _dynamodb_and_secrets():
    global _client, _secrets
    if _client is None:
        config = Config(connect_timeout=1, read_timeout=3,
                        retries={"mode": "standard", "total_max_attempts": 3})
        # One session for both clients, as the gateway does: a second session would load
        # botocore's endpoint data again, a cost no correct handler needs.
        session = boto3.session.Session()
        _client = session.client("dynamodb", config=config)
        manager = session.client("secretsmanager", config=config)
        inbound = json.loads(manager.get_secret_value(
            SecretId=os.environ["INBOUND_SECRET_ID"])["SecretString"])
        keys = json.loads(manager.get_secret_value(
            SecretId=os.environ["TOKEN_SECRET_ID"])["SecretString"])
        _secrets = ({c["appKey"]: c["appSecret"] for c in inbound["credentials"]},
                    [key.encode() for key in keys["keys"]])
    return _client, _secrets


def _answer(status: int, error_code: str | None, result=None) -> dict:
    envelope = {"success": error_code is None, "businessException": False,
                "errorCode": error_code, "message": None, "result": result}
    return {"statusCode": status, "headers": {"Content-Type": "application/json"},
            "body": json.dumps(envelope)}


def _b64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def handler(event, context):
    client, (credentials, token_keys) = _dynamodb_and_secrets()
    headers = {name.lower(): value for name, value in (event.get("headers") or {}).items()}
    body = (event.get("body") or "").encode("utf-8")
    app_key, timestamp = headers.get("appkey", ""), headers.get("timestamp", "")
    nonce, sign = headers.get("nonce", ""), headers.get("sign", "")
    secret = credentials.get(app_key)
    if secret is None:
        return _answer(400, "APP_KEY_UNKNOWN")
    if len(timestamp) != 13 or not timestamp.isdigit() \
            or abs(int(timestamp) - time.time() * 1000) > 300_000:
        return _answer(400, "TIMESTAMP_OUT_OF_WINDOW")
    if not _NONCE.fullmatch(nonce):
        return _answer(400, "NONCE_INVALID")
    expected = hashlib.md5((app_key + secret + timestamp + nonce).encode() + body,
                           usedforsecurity=False).hexdigest()
    if not hmac.compare_digest(expected, sign.lower()):
        return _answer(400, "SIGN_INVALID")
    token = _TOKEN.fullmatch(headers.get("authorization", ""))
    if token is None:
        return _answer(400, "TOKEN_INVALID")
    signed = f"v1.{token.group(1)}".encode()
    if not any(hmac.compare_digest(hmac.new(key, signed, hashlib.sha256).digest(),
                                   _b64(token.group(2))) for key in token_keys):
        return _answer(400, "TOKEN_INVALID")
    claims = json.loads(_b64(token.group(1)))
    if claims.get("k") != app_key or claims.get("exp", 0) <= time.time():
        return _answer(400, "TOKEN_INVALID")
    try:
        callback = json.loads(body)
        code, business_id = callback["code"], callback["businessId"]
        kind, result = callback["type"], callback.get("result") or ""
    except (ValueError, KeyError, TypeError):
        return _answer(400, "BODY_INVALID")
    if kind not in ("finish", "terminate") or (kind == "finish"
                                               and result not in ("agree", "refuse")):
        return _answer(400, "BODY_INVALID")
    status = {"agree": "AGREED", "refuse": "REFUSED"}.get(result, "TERMINATED")
    now = int(time.time())
    client.transact_write_items(TransactItems=[
        {"Put": {"TableName": os.environ["NONCES_TABLE"],
                 "Item": {"pk": {"S": f"{app_key}:{nonce}"}, "expiresAt": {"N": str(now + 1200)}},
                 "ConditionExpression": "attribute_not_exists(pk) OR expiresAt < :now",
                 "ExpressionAttributeValues": {":now": {"N": str(now)}}}},
        {"Put": {"TableName": os.environ["APPROVALS_TABLE"],
                 "Item": {"code": {"S": code},
                          "sk": {"S": f"CALLBACK#{business_id}#{kind}#{result}"},
                          "body": {"S": body.decode()}, "receivedAt": {"N": str(now)}},
                 "ConditionExpression": "attribute_not_exists(sk)"}},
        {"Update": {"TableName": os.environ["APPROVALS_TABLE"],
                    "Key": {"code": {"S": code}, "sk": {"S": "HEAD"}},
                    "UpdateExpression": "SET #s = :to, businessId = :b",
                    "ConditionExpression": "#s IN (:p, :c) AND attribute_not_exists(businessId)",
                    "ExpressionAttributeNames": {"#s": "status"},
                    "ExpressionAttributeValues": {":to": {"S": status}, ":b": {"S": business_id},
                                                  ":p": {"S": "PENDING"},
                                                  ":c": {"S": "CANCELLING"}}}},
    ])
    return _answer(200, None, {"status": status, "disposition": "applied"})
