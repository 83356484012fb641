"""``python -m ops sign check``: a partner's failing request, diagnosed against the stage's real
credentials in moto server. Requests are built the way Zeyi builds them (tests/peer.py, hashlib
directly); each test breaks one thing the way it breaks in the field and expects the check that
names it. No secret and no sign is ever printed."""
from __future__ import annotations

import hashlib
import json
import time

import pytest

from chalicelib.runtime import aws
from tests import peer
from tests.conftest import INBOUND, INBOUND_ROTATED, OUTBOUND, TOKEN_KEYS
from tests.test_ops_cli import run_ops, stage_config

GSON = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "=": "\\u003d", "'": "\\u0027"}


def gson(text: str) -> str:
    for char, escape in GSON.items():
        text = text.replace(char, escape)
    return text


@pytest.fixture
def token(gateway) -> str:
    body = b"{}"
    response = gateway.http.post("/auth/token", body=body, headers=peer.signed_headers(body))
    return json.loads(response.body)["result"]["accessToken"]


def check(capsys, tmp_path, headers: dict | str, body: bytes, *extra, config=None):
    headers_file, body_file = tmp_path / "headers.txt", tmp_path / "body.json"
    headers_file.write_text(headers if isinstance(headers, str) else json.dumps(headers),
                            encoding="utf-8")
    body_file.write_bytes(body)
    status, out, err = run_ops(capsys, "sign", "check", "--headers", headers_file, "--body",
                               body_file, *extra, "--stage", "dev",
                               "--config", config or stage_config(tmp_path))
    shown = out + err
    for secret in (INBOUND["appSecret"], INBOUND_ROTATED["appSecret"], OUTBOUND["appSecret"],
                   TOKEN_KEYS["keys"][0]):
        assert secret not in shown
    if isinstance(headers, dict) and headers.get("sign"):
        assert headers["sign"] not in shown and headers["sign"].upper() not in shown
    return status, out


def lines_with(out: str, outcome: str) -> list[str]:
    return [line[6:] for line in out.splitlines() if line.startswith(f"{outcome:<4}  ")]


def test_a_good_callback_passes_every_check(capsys, tmp_path, token):
    body = peer.callback_body()
    status, out = check(capsys, tmp_path, peer.signed_headers(body, token=token), body)
    assert status == 0, out
    assert lines_with(out, "FAIL") == []
    assert "sign matches (appKey + appSecret + timestamp + nonce + body)" in lines_with(out, "ok")
    assert "access token is valid for this appKey" in lines_with(out, "ok")
    assert out.splitlines()[-1].startswith("verdict: the gateway accepts")


def test_headers_copied_from_curl_verbose_are_read(capsys, tmp_path, token):
    body = peer.callback_body()
    headers = peer.signed_headers(body, token=token)
    curl = "> POST /api/dingtalkAudit/callback HTTP/1.1\n> Host: x\n" + "".join(
        f"> {name}: {value}\n" for name, value in headers.items())
    status, out = check(capsys, tmp_path, curl, body)
    assert status == 0, out


def test_an_old_timestamp_is_named_with_its_age(capsys, tmp_path, token):
    body = peer.callback_body()
    sent = int(time.time() * 1000)
    headers = peer.signed_headers(body, token=token, now=sent / 1000)
    status, out = check(capsys, tmp_path, headers, body, "--at", str(sent + 312_000))
    assert status == 1
    assert lines_with(out, "FAIL") == ["timestamp 312 s old (the gateway allows ±300 s; is a "
                                       "clock off?)"]
    assert out.splitlines()[-1] == ("verdict: the gateway refuses this request with "
                                    "TIMESTAMP_OUT_OF_WINDOW (1 check(s) fail)")


def test_the_legacy_header_only_sign_is_recognised(capsys, tmp_path, token):
    body = peer.callback_body()
    headers = peer.signed_headers(body, token=token)
    headers["sign"] = hashlib.md5((INBOUND["appKey"] + INBOUND["appSecret"] + headers["timestamp"]
                                   + headers["nonce"]).encode()).hexdigest()
    status, out = check(capsys, tmp_path, headers, body)
    assert status == 1
    (failed,) = lines_with(out, "FAIL")
    assert failed.startswith("sign matches the legacy header-only form (Zeyi SDK 1.0.0 leaves "
                             "the body out): set \"legacySign\": true on credential "
                             f"{INBOUND['appKey']}")


def test_a_body_signed_with_gson_escapes_but_sent_without(capsys, tmp_path, token):
    sent = peer.callback_body(remark="同意 <A&B> x='1'")
    signed = gson(sent.decode()).encode()
    assert signed != sent
    headers = peer.signed_headers(signed, token=token)
    status, out = check(capsys, tmp_path, headers, sent)
    assert status == 1
    (failed,) = lines_with(out, "FAIL")
    assert failed.startswith("sign matches a body with \\u003c escapes (Gson's HTML-safe JSON)")


def test_a_body_sent_with_gson_escapes_but_signed_without(capsys, tmp_path, token):
    signed = peer.callback_body(remark="<ok>")
    sent = gson(signed.decode()).encode()
    status, out = check(capsys, tmp_path, peer.signed_headers(signed, token=token), sent)
    assert status == 1
    (failed,) = lines_with(out, "FAIL")
    assert failed.startswith("sign matches the body without its \\u003c escapes")


def test_a_reserialized_body(capsys, tmp_path, token):
    signed = peer.callback_body()
    sent = json.dumps(json.loads(signed), ensure_ascii=False, indent=2).encode()
    status, out = check(capsys, tmp_path, peer.signed_headers(signed, token=token), sent)
    assert status == 1
    (failed,) = lines_with(out, "FAIL")
    assert failed.startswith("sign matches the same JSON serialized as compact JSON")


def test_a_final_newline_added_by_the_editor_is_a_warning(capsys, tmp_path, token):
    body = peer.callback_body()
    status, out = check(capsys, tmp_path, peer.signed_headers(body, token=token), body + b"\n")
    assert status == 0
    (warning,) = lines_with(out, "warn")
    assert warning.startswith("sign matches the body without its final newline")


def test_a_sign_made_with_another_credentials_secret(capsys, tmp_path, token):
    body = peer.callback_body()
    headers = peer.signed_headers(body, token=token)
    headers["sign"] = peer.md5_sign(INBOUND["appKey"], INBOUND_ROTATED["appSecret"],
                                    headers["timestamp"], headers["nonce"], body)
    status, out = check(capsys, tmp_path, headers, body)
    (failed,) = lines_with(out, "FAIL")
    assert failed.startswith(f"sign was made with the appSecret of appKey "
                             f"{INBOUND_ROTATED['appKey']}, but the appKey header says "
                             f"{INBOUND['appKey']}")


def test_a_sign_made_with_the_outbound_secret(capsys, tmp_path, token):
    body = peer.callback_body()
    headers = peer.signed_headers(body, token=token)
    headers["sign"] = peer.md5_sign(INBOUND["appKey"], OUTBOUND["appSecret"],
                                    headers["timestamp"], headers["nonce"], body)
    status, out = check(capsys, tmp_path, headers, body)
    (failed,) = lines_with(out, "FAIL")
    assert failed.startswith("sign was made with the outbound appSecret")


def test_a_sign_nothing_explains(capsys, tmp_path, token):
    body = peer.callback_body()
    headers = peer.signed_headers(body, token=token)
    headers["sign"] = peer.md5_sign(INBOUND["appKey"], "an-unknown-secret", headers["timestamp"],
                                    headers["nonce"], body)
    status, out = check(capsys, tmp_path, headers, body)
    (failed,) = lines_with(out, "FAIL")
    assert failed.startswith("sign does not match: not this body, nor the header-only form")


def test_an_unknown_appkey_lists_the_known_ones(capsys, tmp_path, token):
    body = peer.callback_body()
    headers = peer.signed_headers(body, token=token, appKey="zeyi-old-key")
    status, out = check(capsys, tmp_path, headers, body)
    assert status == 1
    assert lines_with(out, "FAIL")[0] == (f"appKey zeyi-old-key unknown: the inbound secret has "
                                          f"{INBOUND['appKey']}, {INBOUND_ROTATED['appKey']}")
    assert "APP_KEY_UNKNOWN" in out.splitlines()[-1]


def test_missing_headers_are_named(aws_env, capsys, tmp_path):
    body = peer.callback_body()
    headers = peer.signed_headers(body, nonce=None, sign=None)
    status, out = check(capsys, tmp_path, headers, body)
    assert (status, lines_with(out, "FAIL")) == (1, ["header(s) nonce, sign missing or empty"])


def test_a_missing_or_expired_token_is_named(capsys, tmp_path, token):
    body = peer.callback_body()
    status, out = check(capsys, tmp_path, peer.signed_headers(body), body)
    assert lines_with(out, "FAIL") == ["Authorization header with a Bearer token is required"]
    at = str(int((time.time() + 7300) * 1000))
    headers = peer.signed_headers(body, token=token, now=time.time() + 7300)
    status, out = check(capsys, tmp_path, headers, body, "--at", at)
    assert lines_with(out, "FAIL") == ["access token has expired; get a new one from /auth/token"]


def test_a_body_of_the_wrong_shape_is_named(capsys, tmp_path, token):
    body = peer.callback_body(type="finish", result="maybe")
    status, out = check(capsys, tmp_path, peer.signed_headers(body, token=token), body)
    assert lines_with(out, "FAIL") == ["body: result must be one of agree, refuse when type is "
                                       "finish"]


def test_the_token_route_needs_no_token(aws_env, capsys, tmp_path):
    body = b"{}"
    status, out = check(capsys, tmp_path, peer.signed_headers(body), body, "--route", "token")
    assert status == 0 and "body is empty or a JSON object" in lines_with(out, "ok")


def test_encrypted_callbacks_are_checked_as_the_gateway_does(capsys, tmp_path, token):
    config = stage_config(tmp_path, CALLBACK_ENCRYPTED="true")
    plain = peer.callback_body().decode()
    timestamp, nonce = str(int(time.time() * 1000)), peer.nonce()
    sealed = peer.encrypt(plain, INBOUND["appKey"], timestamp, nonce)
    headers = peer.signed_headers(sealed, token=token, timestamp=timestamp, nonce=nonce)
    status, out = check(capsys, tmp_path, headers, sealed, config=config)
    assert status == 0, out
    # Signed over the plaintext instead of the Base64 text that was sent:
    headers["sign"] = peer.md5_sign(INBOUND["appKey"], INBOUND["appSecret"], timestamp, nonce,
                                    plain.encode())
    status, out = check(capsys, tmp_path, headers, sealed, config=config)
    assert lines_with(out, "FAIL") == ["sign matches the decrypted JSON, not the Base64 text "
                                       "that was sent: with encryption the sign covers the "
                                       "Base64 body"]


def test_a_missing_inbound_secret_is_one_line(aws_env, capsys, tmp_path):
    aws.client("secretsmanager").delete_secret(SecretId="test/zeyi-inbound",
                                               ForceDeleteWithoutRecovery=True)
    body = peer.callback_body()
    headers_file, body_file = tmp_path / "h.json", tmp_path / "b.json"
    headers_file.write_text(json.dumps(peer.signed_headers(body)), encoding="utf-8")
    body_file.write_bytes(body)
    status, _, err = run_ops(capsys, "sign", "check", "--headers", headers_file, "--body",
                             body_file, "--stage", "dev", "--config", stage_config(tmp_path))
    assert status == 1 and err.startswith("error: secret test/zeyi-inbound does not exist")


def test_an_unreadable_file_is_one_line(aws_env, capsys, tmp_path):
    status, _, err = run_ops(capsys, "sign", "check", "--headers", tmp_path / "nope.json",
                             "--body", tmp_path / "nope.json", "--stage", "dev",
                             "--config", stage_config(tmp_path))
    assert status == 1 and err == f"error: {tmp_path / 'nope.json'}: No such file or directory\n"
