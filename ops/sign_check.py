"""``python -m ops sign check``: why the gateway refuses a partner's request.

Takes the request's headers and body as captured (from a log, a packet capture, Zeyi's support)
and runs the gateway's own checks, in the gateway's order, against the stage's real credentials.
For a sign that does not match it tries the usual ways a sign goes wrong and names the one that
fits: the legacy header-only form, Gson's ``\\u003c`` escapes added or removed after signing, a
re-serialized body, a final newline, another credential's secret. It prints no secret and no
sign: only which check fails and why.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from chalicelib.errors import ConfigError, GatewayError
from chalicelib.protocol import signing, tokens
from chalicelib.protocol.credentials import (
    Credential,
    parse_inbound,
    parse_outbound,
    parse_token_keys,
)
from chalicelib.protocol.verification import parse_callback, strict_utf8
from chalicelib.runtime import settings
from ops.common import OpsError, aws_session, client, error_code
from ops.stage_config import load_stage

SECURITY_HEADERS = ("appKey", "timestamp", "nonce", "sign")
# Gson's default HTML-safe escaping, which Zeyi's Java peers apply when they serialize JSON.
GSON_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "=": "\\u003d", "'": "\\u0027"}
_REQUEST_LINE = re.compile(r"^[A-Z]+ \S+ HTTP/\d(\.\d)?$")
OK, WARN, FAIL = "ok", "warn", "FAIL"


@dataclass(frozen=True)
class Check:
    outcome: str  # OK, WARN or FAIL
    text: str
    error_code: str | None = None  # what the gateway answers when this check fails


def parse_headers(text: str) -> dict[str, str]:
    """Headers from a JSON object or from ``Name: value`` lines (as curl -v or a log shows
    them; a request line and '> ' prefixes are skipped)."""
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            data = json.loads(stripped)
        except ValueError:
            raise OpsError("the headers file starts with '{' but is not JSON") from None
        return {str(k): str(v) for k, v in data.items()}
    headers = {}
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith((">", "<")):
            line = line[1:].strip()
        if not line or _REQUEST_LINE.match(line) or ":" not in line:
            continue
        name, value = line.split(":", 1)
        headers[name.strip()] = value.strip()
    return headers


def _header(headers: dict[str, str], name: str) -> str | None:
    lowered = name.lower()
    return next((v.strip() for k, v in headers.items() if k.lower() == lowered), None)


def gson_escaped(body: bytes) -> bytes:
    text = body.decode("utf-8", errors="surrogateescape")
    for char, escape in GSON_ESCAPES.items():
        text = text.replace(char, escape)
    return text.encode("utf-8", errors="surrogateescape")


def gson_unescaped(body: bytes) -> bytes:
    text = body.decode("utf-8", errors="surrogateescape")
    for char, escape in GSON_ESCAPES.items():
        text = re.sub(re.escape(escape), lambda _m, c=char: c, text, flags=re.IGNORECASE)
    return text.encode("utf-8", errors="surrogateescape")


def _reserialized(body: bytes) -> list[tuple[bytes, str]]:
    try:
        value = json.loads(body.decode("utf-8"))
    except ValueError:
        return []
    return [(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode(),
             "compact JSON with the characters as they are"),
            (json.dumps(value, ensure_ascii=True, separators=(",", ":")).encode(),
             "compact JSON with \\uXXXX escapes for non-ASCII"),
            (json.dumps(value, ensure_ascii=False).encode(),
             "JSON with spaces after ':' and ','")]


def _matches(credential_key: str, secret: str, headers: dict, body: bytes, sign: str, *,
             legacy: bool = False) -> bool:
    try:
        signing.verify(credential_key, secret, headers["timestamp"], headers["nonce"], body, sign,
                       legacy=legacy)
    except GatewayError:
        return False
    return True


def diagnose_sign(credential: Credential, others: list[Credential], outbound: Credential | None,
                  headers: dict[str, str], body: bytes, sign: str) -> Check:
    """Whether ``sign`` is right for ``credential``, and when not, the likeliest reason."""
    key = credential.app_key

    def signed(candidate: bytes, *, secret: str = credential.app_secret, legacy=False) -> bool:
        return _matches(key, secret, headers, candidate, sign, legacy=legacy)

    if signed(body, legacy=credential.legacy_sign):
        form = "header-only (legacySign)" if credential.legacy_sign else "appKey + appSecret + " \
            "timestamp + nonce + body"
        return Check(OK, f"sign matches ({form})")
    code = "SIGN_INVALID"
    if credential.legacy_sign and signed(body):
        return Check(FAIL, f"sign covers the body, but credential {key} is marked legacySign "
                           "(header-only): remove \"legacySign\" from it", code)
    if not credential.legacy_sign and signed(body, legacy=True):
        return Check(FAIL, "sign matches the legacy header-only form (Zeyi SDK 1.0.0 leaves the "
                           f"body out): set \"legacySign\": true on credential {key}, or ask Zeyi "
                           "to sign the body", code)
    if body.endswith((b"\n", b"\r")) and signed(body.rstrip(b"\r\n")):
        return Check(WARN, "sign matches the body without its final newline: the body file most "
                           "likely gained it when it was saved (the request itself is fine); if "
                           "the request did end with a newline, Zeyi signed before adding it")
    escaped = gson_escaped(body)
    if escaped != body and signed(escaped):
        return Check(FAIL, "sign matches a body with \\u003c escapes (Gson's HTML-safe JSON): "
                           "Zeyi signed the escaped JSON but sent it unescaped; it must sign the "
                           "exact bytes it sends", code)
    unescaped = gson_unescaped(body)
    if unescaped != body and signed(unescaped):
        return Check(FAIL, "sign matches the body without its \\u003c escapes: Zeyi signed the "
                           "plain JSON, then sent it Gson-escaped; it must sign the exact bytes "
                           "it sends", code)
    for candidate, how in _reserialized(body):
        if candidate != body and signed(candidate):
            return Check(FAIL, f"sign matches the same JSON serialized as {how}: the body was "
                               "re-serialized between signing and sending", code)
    for other in others:
        if other.app_key != key and _matches(key, other.app_secret, headers, body, sign,
                                             legacy=other.legacy_sign):
            return Check(FAIL, f"sign was made with the appSecret of appKey {other.app_key}, but "
                               f"the appKey header says {key}: Zeyi mixed two credentials", code)
    if outbound is not None and _matches(key, outbound.app_secret, headers, body, sign):
        return Check(FAIL, "sign was made with the outbound appSecret (the credential Zeyi issued "
                           "to Jinrun): Zeyi must sign its calls with the inbound credential "
                           "Jinrun issued to it", code)
    return Check(FAIL, "sign does not match: not this body, nor the header-only form, Gson "
                       "escapes, a re-serialized body or another credential of the stage; the "
                       f"appSecret Zeyi uses for {key} is not the one in the inbound secret, or "
                       "the body changed on the way", code)


def check_request(headers: dict[str, str], body: bytes, *, inbound: list[Credential],
                  outbound: Credential | None, token_keys, route: str, skew_seconds: int,
                  require_token: bool, encrypted: bool, at: float) -> list[Check]:
    """Every check the gateway makes on ``route``, in its order, each with the reason it fails.
    Checks that depend on a failed one are still run where they can tell something."""
    checks: list[Check] = []
    values = {name: _header(headers, name) for name in SECURITY_HEADERS}
    missing = [name for name, value in values.items() if not value]
    if missing:
        checks.append(Check(FAIL, f"header(s) {', '.join(missing)} missing or empty",
                            "HEADER_MISSING"))
        return checks
    by_key = {c.app_key: c for c in inbound}
    credential = by_key.get(values["appKey"])
    if credential is None:
        checks.append(Check(FAIL, f"appKey {values['appKey']} unknown: the inbound secret has "
                                  f"{', '.join(by_key) or 'no credential'}", "APP_KEY_UNKNOWN"))
    else:
        checks.append(Check(OK, f"appKey {credential.app_key} is an inbound credential"))
    timestamp = values["timestamp"]
    if not re.fullmatch(r"[0-9]{13}", timestamp):
        checks.append(Check(FAIL, f"timestamp {timestamp!r} is not 13 digits of epoch "
                                  "milliseconds", "TIMESTAMP_INVALID"))
    else:
        age = at - int(timestamp) / 1000
        words = f"{abs(age):.0f} s {'old' if age >= 0 else 'in the future'}"
        if abs(age) > skew_seconds:
            checks.append(Check(FAIL, f"timestamp {words} (the gateway allows ±{skew_seconds} s"
                                      "; is a clock off?)", "TIMESTAMP_OUT_OF_WINDOW"))
        else:
            checks.append(Check(OK, f"timestamp {words}, within ±{skew_seconds} s"))
    try:
        signing.check_nonce(values["nonce"])
        checks.append(Check(OK, "nonce has the right form (whether it was used before is not "
                                "checked here)"))
    except GatewayError as exc:
        checks.append(Check(FAIL, f"nonce {values['nonce']!r}: {exc.message}", exc.error_code))
    sign = values["sign"]
    if not re.fullmatch(r"[0-9A-Fa-f]{32}", sign):
        checks.append(Check(FAIL, "sign is not 32 hexadecimal characters", "SIGN_INVALID"))
    elif credential is not None:
        signed_headers = {"timestamp": timestamp, "nonce": values["nonce"]}
        check = diagnose_sign(credential, inbound, outbound, signed_headers, body, sign)
        if check.outcome == OK or not encrypted or credential.iv is None:
            checks.append(check)
        else:
            checks.append(_encrypted_sign(credential, inbound, outbound, signed_headers, body,
                                          sign, check))
    if route == "callback" and require_token:
        checks.append(_token_check(headers, token_keys, values["appKey"], at))
    checks.append(_body_check(route, body, credential, values, encrypted))
    return checks


def _encrypted_sign(credential, inbound, outbound, headers, body, sign, plain_check) -> Check:
    try:
        text = credential.codec().open(credential.app_key, headers["timestamp"], headers["nonce"],
                                       body)
    except GatewayError:
        return plain_check
    if diagnose_sign(credential, inbound, outbound, headers, text.encode("utf-8"),
                     sign).outcome == OK:
        return Check(FAIL, "sign matches the decrypted JSON, not the Base64 text that was sent: "
                           "with encryption the sign covers the Base64 body", "SIGN_INVALID")
    return plain_check


def _token_check(headers, token_keys, app_key: str, at: float) -> Check:
    authorization = _header(headers, "Authorization")
    if token_keys is None:
        return Check(WARN, "access token not checked: the token key secret could not be read")
    try:
        tokens.verify_authorization(token_keys, authorization, app_key, clock=lambda: at)
    except GatewayError as exc:
        return Check(FAIL, exc.message, exc.error_code)
    return Check(OK, "access token is valid for this appKey")


def _body_check(route: str, body: bytes, credential, values, encrypted: bool) -> Check:
    try:
        if encrypted:
            if credential is None:
                return Check(WARN, "body not checked: it is encrypted and the appKey is unknown")
            text = credential.codec().open(credential.app_key, values["timestamp"],
                                           values["nonce"], body)
        else:
            text = strict_utf8(body)
        if route == "token":
            if text.strip():
                value = json.loads(text)
                if not isinstance(value, dict):
                    return Check(FAIL, "body must be empty or a JSON object", "BODY_INVALID")
            return Check(OK, "body is empty or a JSON object")
        callback = parse_callback(text)
    except ValueError:
        return Check(FAIL, "body is not valid JSON", "BODY_INVALID")
    except GatewayError as exc:
        return Check(FAIL, f"body: {exc.message}", exc.error_code)
    return Check(OK, f"body is a valid callback: code {callback['code']}, type "
                     f"{callback['type']}, result {callback.get('result') or '-'}")


def _parse_at(text: str | None) -> float:
    if not text:
        return time.time()
    if text.isdigit():
        return int(text) / 1000 if len(text) >= 13 else float(text)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise OpsError(f"--at {text!r}: give epoch milliseconds or an ISO time such as "
                       "2026-01-31T08:00:00Z") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _secret(secrets_client, secret_id: str, parse, *, required: bool):
    try:
        raw = secrets_client.get_secret_value(SecretId=secret_id)["SecretString"]
        return parse(secret_id, raw)
    except ConfigError as exc:
        if required:
            raise OpsError(exc.message) from None
        return None
    except Exception as exc:
        if required and error_code(exc) == "ResourceNotFoundException":
            raise OpsError(f"secret {secret_id} does not exist: create it with `python -m ops "
                           "secrets add-inbound`") from None
        if required or not error_code(exc):
            raise
        return None  # the other secrets only sharpen the diagnosis


def sign_check_command(args) -> int:
    stage = load_stage(args.stage, args.config)
    try:
        headers = parse_headers(Path(args.headers).read_text(encoding="utf-8"))
        body = Path(args.body).read_bytes()
    except OSError as exc:
        raise OpsError(f"{exc.filename}: {exc.strerror}") from None
    at = _parse_at(args.at)
    session = aws_session(args.region)
    secrets_client = client(session, "secretsmanager")
    inbound = _secret(secrets_client, stage.setting(settings.INBOUND_SECRET_ID), parse_inbound,
                      required=True)
    outbound = _secret(secrets_client, stage.setting(settings.OUTBOUND_SECRET_ID),
                       parse_outbound, required=False)
    require_token = stage.setting(settings.CALLBACK_REQUIRE_TOKEN).strip().lower() not in {
        "0", "false", "no", "off"}
    token_keys = None
    if args.route == "callback" and require_token:
        token_keys = _secret(secrets_client, stage.setting(settings.TOKEN_SECRET_ID),
                             parse_token_keys, required=False)
    checks = check_request(
        headers, body, inbound=list(inbound.by_app_key.values()), outbound=outbound,
        token_keys=token_keys, route=args.route,
        skew_seconds=stage.seconds(settings.TIMESTAMP_SKEW_SECONDS, 300),
        require_token=require_token, encrypted=stage.flag(settings.CALLBACK_ENCRYPTED), at=at)
    for check in checks:
        print(f"{check.outcome:<4}  {check.text}")
    failed = [check for check in checks if check.outcome == FAIL]
    if failed:
        print(f"verdict: the gateway refuses this request with {failed[0].error_code} "
              f"({len(failed)} check(s) fail)")
        return 1
    print("verdict: the gateway accepts these headers and this body (a replayed nonce would "
          "still be refused)")
    return 0
