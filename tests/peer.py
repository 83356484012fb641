"""What Zeyi sends, built the way protocol.md describes, with hashlib and pycryptodome directly,
so the tests do not trust the gateway's own signing code. Defaults are valid: each negative test
overrides exactly one thing."""
from __future__ import annotations

import base64
import hashlib
import itertools
import json
import secrets
import time

from Crypto.Cipher import AES
from Crypto.Util.Padding import pad

from tests.conftest import INBOUND


def md5_sign(app_key: str, app_secret: str, timestamp: str, nonce: str, body: bytes) -> str:
    return hashlib.md5((app_key + app_secret + timestamp + nonce).encode() + body).hexdigest()


_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
# Unique within a test run: random nonces collide by the birthday bound (a 2,000-delivery model
# run drew the same 6 characters twice often enough to fail as a replay).
_NONCES = itertools.count(secrets.randbelow(36 ** 6 // 2))


def nonce() -> str:
    number, digits = next(_NONCES), []
    for _ in range(6):
        number, digit = divmod(number, 36)
        digits.append(_ALPHABET[digit])
    return "".join(reversed(digits))


def callback_body(**fields) -> bytes:
    body = {"code": "HT-2026-0001", "auditType": "CONTRACT", "businessId": "proc-inst-0001",
            "type": "finish", "result": "agree", "auditUser": "张三", "remark": "同意"}
    body.update(fields)
    body = {k: v for k, v in body.items() if v is not ...}
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def signed_headers(body: bytes, *, credential=INBOUND, token: str | None = None,
                   now: float | None = None, **overrides) -> dict:
    """Headers for ``body``; an override of None drops that header."""
    timestamp = overrides.pop("timestamp", str(int((now or time.time()) * 1000)))
    the_nonce = overrides.pop("nonce", nonce())
    app_key = overrides.pop("appKey", credential["appKey"])
    headers = {
        "appKey": app_key if app_key is not None else credential["appKey"],
        "timestamp": timestamp,
        "nonce": the_nonce,
        "sign": md5_sign(headers_key := (app_key or credential["appKey"]), credential["appSecret"],
                         timestamp or "", the_nonce or "", body),
        "Content-Type": "application/json;charset=utf-8",
    }
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    headers.update(overrides)
    if app_key is None or app_key != headers_key:
        headers["appKey"] = app_key
    return {k: v for k, v in headers.items() if v is not None}


def encrypt(body: str, app_key: str, timestamp: str, the_nonce: str, *, credential=INBOUND) -> bytes:
    cipher = AES.new(credential["appSecret"].encode(), AES.MODE_CBC, credential["iv"].encode())
    plaintext = (app_key + timestamp + the_nonce + body).encode("utf-8")
    return base64.b64encode(cipher.encrypt(pad(plaintext, 16)))


def send_body(code: str = "PO-1", **overrides) -> dict:
    """An internal app's send body (Zeyi's send body), with text Gson would escape."""
    body = {"code": code, "auditType": "purchase", "originatorUsername": "E1001",
            "orgCode": "JR01",
            "auditFormList": [{"type": "text", "key": "说明", "value": "办公用品 <A&B> 'x'=1"},
                              {"type": "file", "key": "合同", "value": "https://f.example/c.pdf"}],
            "conditionParamList": [{"name": "amount", "value": "1200"}]}
    body.update(overrides)
    return body


def cancel_body(code: str = "PO-1") -> dict:
    return {"code": code, "type": "purchase", "remark": "录入错误", "username": "E1001"}
