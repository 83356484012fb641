"""Jinrun's approval gateway: routes and wiring only; the logic lives in chalicelib.

Zeyi calls /auth/token and /dingtalkAudit/callback (signed; token; optional IP allowlist).
Internal apps call /audit/* (IAM-signed in deployed stages) or invoke the Lambda functions.
Every answer, including every failure, is Zeyi's envelope.
"""
from __future__ import annotations

import json

from chalice import Chalice, IAMAuthorizer, Response

from chalicelib import aws, envelope, inbound
from chalicelib.approval_store import DynamoDBApprovalStore
from chalicelib.credentials import parse_inbound, parse_outbound, parse_token_keys
from chalicelib.errors import GatewayError, ValidationError
from chalicelib.ip_allowlist import check_source_ip
from chalicelib.logs import logger
from chalicelib.secrets_cache import SecretsCache
from chalicelib.settings import Settings, load_settings

app = Chalice(app_name="jinrun-approval-gateway")
iam = IAMAuthorizer()
ZEYI_ROUTES = ("/auth/token", "/dingtalkAudit/callback")
# Zeyi may send application/json, with or without charset, or text/plain (encrypted bodies):
# every content type reaches the view, which reads the raw body itself.
ANY_CONTENT_TYPE = ["*/*"]
OTHER_METHODS = ["GET", "PUT", "DELETE", "PATCH"]
JSON_HEADERS = {"Content-Type": "application/json;charset=utf-8"}

# -- composition root: one of each per container, built on first use --------------------------

_secrets: SecretsCache | None = None
_zeyi: dict[tuple, object] = {}


def _secrets_cache() -> SecretsCache:
    global _secrets
    if _secrets is None:
        _secrets = SecretsCache(lambda: aws.client("secretsmanager"))
    return _secrets


def _store(settings: Settings) -> DynamoDBApprovalStore:
    return DynamoDBApprovalStore(aws.client("dynamodb"), settings.approvals_table,
                                 settings.nonces_table)


def _inbound_credentials(settings: Settings):
    return _secrets_cache().get(settings.inbound_secret_id, parse_inbound,
                                settings.secrets_cache_seconds)


def _token_keys(settings: Settings):
    return _secrets_cache().get(settings.token_secret_id, parse_token_keys,
                                settings.secrets_cache_seconds)


def _zeyi_client(settings: Settings):
    from chalicelib.zeyi_client import ZeyiClient

    key = (settings.zeyi_base_url, settings.zeyi_connect_timeout_seconds,
           settings.zeyi_read_timeout_seconds, settings.zeyi_deadline_seconds,
           settings.zeyi_encrypt, settings.outbound_secret_id)
    if key not in _zeyi:
        _zeyi[key] = ZeyiClient(
            settings.zeyi_base_url,
            lambda: _secrets_cache().get(settings.outbound_secret_id, parse_outbound,
                                         settings.secrets_cache_seconds),
            connect_timeout_seconds=settings.zeyi_connect_timeout_seconds,
            read_timeout_seconds=settings.zeyi_read_timeout_seconds,
            deadline_seconds=settings.zeyi_deadline_seconds, encrypt=settings.zeyi_encrypt)
    return _zeyi[key]


# -- mapping results and errors to the envelope --------------------------------------------------

def _envelope_of(action) -> tuple[int, dict]:
    logger.clear_state()  # keys appended while handling the previous request
    try:
        return 200, action()
    except GatewayError as exc:
        log = logger.error if exc.status >= 500 else logger.warning
        log("request refused", extra={"errorCode": exc.error_code, "reason": exc.message})
        return exc.status, envelope.failure(exc.error_code, exc.message,
                                            business=exc.business, result=exc.result)
    except Exception:
        # The traceback goes to the log only; the caller learns nothing about the internals.
        logger.exception("unexpected error")
        return 500, envelope.failure("INTERNAL_ERROR", "internal error; it has been logged")


def _respond(action, headers: dict | None = None) -> Response:
    status, body = _envelope_of(action)
    return Response(body=json.dumps(body, ensure_ascii=False), status_code=status,
                    headers={**JSON_HEADERS, **(headers or {})})


def _zeyi_request(settings: Settings) -> inbound.InboundRequest:
    request = app.current_request
    check_source_ip(request.context.get("identity", {}).get("sourceIp"),
                    settings.allowed_source_ips)
    return inbound.InboundRequest(headers=request.headers, body=request.raw_body or b"")


def _internal_payload():
    """The internal app's JSON body. Raises ValidationError when it is not JSON."""
    raw = app.current_request.raw_body or b""
    try:
        return json.loads(raw.decode("utf-8"))
    except ValueError:
        raise ValidationError("body must be a JSON object") from None


# -- routes Zeyi calls ---------------------------------------------------------------------------

@app.route("/auth/token", methods=["POST"], content_types=ANY_CONTENT_TYPE)
def access_token():
    def action():
        settings = load_settings()
        request = _zeyi_request(settings)
        result = inbound.issue_access_token(
            request, credentials=_inbound_credentials(settings),
            token_keys=_token_keys(settings), store=_store(settings), settings=settings)
        return envelope.ok(result)
    return _respond(action, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})


@app.route("/dingtalkAudit/callback", methods=["POST"], content_types=ANY_CONTENT_TYPE)
def approval_callback():
    def action():
        settings = load_settings()
        request = _zeyi_request(settings)
        token_keys = _token_keys(settings) if settings.callback_require_token else None
        outcome = inbound.handle_callback(
            request, credentials=_inbound_credentials(settings), token_keys=token_keys,
            store=_store(settings), settings=settings)
        return envelope.ok({"status": outcome.status, "disposition": outcome.disposition})
    return _respond(action)


@app.route("/auth/token", methods=OTHER_METHODS, content_types=ANY_CONTENT_TYPE)
@app.route("/dingtalkAudit/callback", methods=OTHER_METHODS, content_types=ANY_CONTENT_TYPE)
def zeyi_wrong_method():
    return Response(
        body=json.dumps(envelope.failure("METHOD_NOT_ALLOWED", "use POST")),
        status_code=405, headers={**JSON_HEADERS, "Allow": "POST"})


# -- routes and functions internal apps call -----------------------------------------------------

def _send(payload):
    from chalicelib import outbound

    settings = load_settings()
    return outbound.send_approval(payload, store=_store(settings), zeyi=_zeyi_client(settings),
                                  lease_seconds=settings.submit_lease_seconds)


def _cancel(payload):
    from chalicelib import outbound

    settings = load_settings()
    return outbound.cancel_approval(payload, store=_store(settings), zeyi=_zeyi_client(settings),
                                    lease_seconds=settings.cancel_lease_seconds)


def _get(code):
    from chalicelib import outbound

    return outbound.get_approval(code, store=_store(load_settings()))


@app.route("/audit/send", methods=["POST"], authorizer=iam, content_types=ANY_CONTENT_TYPE)
def send_route():
    return _respond(lambda: _send(_internal_payload()))


@app.route("/audit/cancel", methods=["POST"], authorizer=iam, content_types=ANY_CONTENT_TYPE)
def cancel_route():
    return _respond(lambda: _cancel(_internal_payload()))


@app.route("/audit/{code}", methods=["GET"], authorizer=iam)
def get_route(code):
    return _respond(lambda: _get(code))


@app.lambda_function(name="send_approval")
def send_function(event, context):
    return _envelope_of(lambda: _send(event))[1]


@app.lambda_function(name="cancel_approval")
def cancel_function(event, context):
    return _envelope_of(lambda: _cancel(event))[1]


@app.lambda_function(name="get_approval")
def get_function(event, context):
    def action():
        if not isinstance(event, dict) or not isinstance(event.get("code"), str):
            raise ValidationError("event must be {\"code\": \"...\"}")
        return _get(event["code"])
    return _envelope_of(action)[1]
