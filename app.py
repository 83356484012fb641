"""Jinrun's approval gateway: routes and wiring only; the logic lives in chalicelib.

Zeyi calls /auth/token and /dingtalkAudit/callback (signed; token; optional IP allowlist).
Internal apps call /audit/* (IAM-signed in deployed stages) or invoke the Lambda functions.
Every answer to every method on every route, including every failure, is Zeyi's envelope.
The approvals table's stream feeds publish_approval_events, which puts the approval events on
the stage's EventBridge bus.
"""
from __future__ import annotations

import time

from chalice import Chalice, IAMAuthorizer, Rate, Response

from chalicelib.approvals import inbound, states, stream_mapping
from chalicelib.approvals.store import DynamoDBApprovalStore
from chalicelib.errors import (
    BodyInvalidError,
    GatewayError,
    MethodNotAllowedError,
    ValidationError,
)
from chalicelib.protocol import envelope, json_body
from chalicelib.protocol.credentials import parse_inbound, parse_outbound, parse_token_keys
from chalicelib.protocol.ip_allowlist import check_source_ip
from chalicelib.runtime import aws, correlation, metrics, telemetry, tracing
from chalicelib.runtime.logs import logger
from chalicelib.runtime.secrets_cache import SecretsCache
from chalicelib.runtime.settings import Settings, approvals_stream_arn, load_settings

app = Chalice(app_name="jinrun-approval-gateway")
iam = IAMAuthorizer()
ZEYI_ROUTES = ("/auth/token", "/dingtalkAudit/callback")
# Zeyi may send application/json, with or without charset, or text/plain (encrypted bodies):
# every content type reaches the view, which reads the raw body itself. A GET too, or Chalice
# would answer a GET with a Content-Type its own 415 body.
ANY_CONTENT_TYPE = ["*/*"]
# Every method is routed to a view: API Gateway answers a method it was not given with its own
# 403 "Missing Authentication Token", and Chalice with {"Code": "MethodNotAllowedError"} (and an
# empty 200 to OPTIONS), none of them the envelope.
ALL_METHODS = ("GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE")
JSON_HEADERS = {"Content-Type": "application/json;charset=utf-8"}
# Zeyi's HTTP stack (its Java SDK 1.0.0) reads a reply body only for a status up to 400; any
# other 4xx becomes a bare exception and the errorCode is lost. So on Zeyi's routes every refusal
# is 400; our own faults stay 5xx, so that Zeyi retries them.
ZEYI_REFUSAL_STATUS = 400


def _other_methods(allowed: str) -> list[str]:
    return [method for method in ALL_METHODS if method != allowed]


# -- composition root: one of each per container, built on first use --------------------------

_secrets: SecretsCache | None = None
_zeyi: dict[tuple, object] = {}


def _secrets_cache() -> SecretsCache:
    global _secrets
    if _secrets is None:
        _secrets = SecretsCache(lambda: tracing.instrument(aws.client("secretsmanager")))
    return _secrets


def _store(settings: Settings) -> DynamoDBApprovalStore:
    return DynamoDBApprovalStore(tracing.instrument(aws.client("dynamodb")),
                                 settings.approvals_table, settings.nonces_table)


def _events_client():
    return tracing.instrument(aws.client("events"))


def _inbound_credentials(settings: Settings):
    return _secrets_cache().get(settings.inbound_secret_id, parse_inbound,
                                settings.secrets_cache_seconds)


def _token_keys(settings: Settings):
    return _secrets_cache().get(settings.token_secret_id, parse_token_keys,
                                settings.secrets_cache_seconds)


def _zeyi_client(settings: Settings):
    from chalicelib.protocol.zeyi_client import ZeyiClient

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


# -- observability: correlation ids, log keys, metrics, traces -----------------------------------
# Every invocation is one telemetry scope (chalicelib.runtime.telemetry): the HTTP middleware
# below is registered first, so it wraps every route and every answer Chalice makes itself.

API_HANDLER = "api_handler"


@app.middleware("http")
def _observed(request, get_response):
    with telemetry.invocation(
            API_HANDLER,
            lambda_request_id=getattr(request.lambda_context, "aws_request_id", None),
            api_request_id=(request.context or {}).get("requestId"),
            correlation_given=request.headers.get(correlation.HEADER)) as scope:
        response = get_response(request)
    response.headers[correlation.HEADER] = scope.correlation_id
    return response


def _invoked(function: str, event, context, action) -> dict:
    """A Lambda function's answer: ``action`` on the payload (its ``correlationId`` taken out),
    in the envelope, with the correlation id in ``result``."""
    payload, given = correlation.split_payload(event)
    with telemetry.invocation(function,
                              lambda_request_id=getattr(context, "aws_request_id", None),
                              correlation_given=given) as scope:
        answer = _envelope_of(lambda: action(payload))[1]
    return correlation.into_answer(answer, scope.correlation_id)


def _correlation_id() -> str | None:
    scope = telemetry.current()
    return scope.correlation_id if scope else None


# -- mapping results and errors to the envelope --------------------------------------------------

def http_status(error: GatewayError, *, zeyi_route: bool) -> int:
    """The one status policy: REST statuses on the internal routes; on Zeyi's, 400 for every
    refusal and the error's own 5xx for our faults."""
    if zeyi_route and error.status < 500:
        return ZEYI_REFUSAL_STATUS
    return error.status


def _envelope_of(action, *, zeyi_route: bool = False) -> tuple[int, dict]:
    try:
        return 200, action()
    except GatewayError as exc:
        log = logger.error if exc.status >= 500 else logger.warning
        log("request refused", extra={"errorCode": exc.error_code, "reason": exc.message})
        telemetry.error(exc)
        return http_status(exc, zeyi_route=zeyi_route), envelope.failure(
            exc.error_code, exc.message, business=exc.business, result=exc.result)
    except Exception:
        # The traceback goes to the log only; the caller learns nothing about the internals.
        logger.exception("unexpected error")
        telemetry.error(None)
        return 500, envelope.failure("INTERNAL_ERROR", "internal error; it has been logged")


def _respond(action, *, zeyi_route: bool = False, headers: dict | None = None) -> Response:
    status, body = _envelope_of(action, zeyi_route=zeyi_route)
    return Response(body=envelope.to_json(body), status_code=status,
                    headers={**JSON_HEADERS, **(headers or {})})


def _wrong_method(allowed: str, *, zeyi_route: bool) -> Response:
    def action():
        raise MethodNotAllowedError(
            f"{app.current_request.method} is not allowed on this route; use {allowed}")
    return _respond(action, zeyi_route=zeyi_route, headers={"Allow": allowed})


@app.middleware("http")
def _only_envelopes(event, get_response):
    """Chalice answers some requests itself, with {"Code", "Message"}: an exception that escaped a
    view, a method or a content type no view takes (every one is routed, so those two should not
    happen). Those answers become the envelope too, under the same status policy."""
    response = get_response(event)
    if isinstance(response.body, str):
        return response  # every view answers through _respond
    zeyi_route = event.path in ZEYI_ROUTES
    if response.status_code == 405:
        error = MethodNotAllowedError("this method is not allowed on this route")
    elif response.status_code < 500:
        invalid = BodyInvalidError if zeyi_route else ValidationError
        error = invalid("this request cannot be served by this route")
    else:
        error = GatewayError("internal error; it has been logged")
    allow = {k: v for k, v in response.headers.items() if k.lower() == "allow"}
    telemetry.error(error)
    return Response(body=envelope.to_json(envelope.failure(error.error_code, error.message)),
                    status_code=http_status(error, zeyi_route=zeyi_route),
                    headers={**JSON_HEADERS, **allow})


def _zeyi_request(settings: Settings) -> inbound.InboundRequest:
    request = app.current_request
    check_source_ip(request.context.get("identity", {}).get("sourceIp"),
                    settings.allowed_source_ips)
    return inbound.InboundRequest(headers=request.headers, body=request.raw_body or b"")


def _internal_payload() -> dict:
    """The internal app's JSON object, parsed as strictly as Zeyi's bodies.

    Raises ValidationError when it is not one."""
    raw = app.current_request.raw_body or b""
    return json_body.parse_object(json_body.decode_utf8(raw, error=ValidationError),
                                  error=ValidationError)


# -- routes Zeyi calls ---------------------------------------------------------------------------

@app.route("/auth/token", methods=["POST"], content_types=ANY_CONTENT_TYPE)
def access_token():
    def action():
        settings = load_settings()
        request = _zeyi_request(settings)
        result = inbound.issue_access_token(
            request, credentials=_inbound_credentials(settings),
            token_keys=_token_keys(settings), store=_store(settings), settings=settings)
        telemetry.count(metrics.TOKENS_ISSUED)
        return envelope.ok(result)
    return _respond(action, zeyi_route=True,
                    headers={"Cache-Control": "no-store", "Pragma": "no-cache"})


@app.route("/dingtalkAudit/callback", methods=["POST"], content_types=ANY_CONTENT_TYPE)
def approval_callback():
    def action():
        settings = load_settings()
        request = _zeyi_request(settings)
        token_keys = _token_keys(settings) if settings.callback_require_token else None
        outcome = inbound.handle_callback(
            request, credentials=_inbound_credentials(settings), token_keys=token_keys,
            store=_store(settings), settings=settings)
        telemetry.count(metrics.CALLBACKS, ("disposition", outcome.disposition))
        return envelope.ok({"status": outcome.status, "disposition": outcome.disposition})
    return _respond(action, zeyi_route=True)


@app.route("/auth/token", methods=_other_methods("POST"), content_types=ANY_CONTENT_TYPE)
@app.route("/dingtalkAudit/callback", methods=_other_methods("POST"),
           content_types=ANY_CONTENT_TYPE)
def zeyi_wrong_method():
    return _wrong_method("POST", zeyi_route=True)


# -- routes and functions internal apps call -----------------------------------------------------

def _s3():
    return tracing.instrument(aws.client("s3"))


def _file_links(settings: Settings):
    from chalicelib.approvals.files import FileLinks

    return FileLinks(s3=_s3, token_keys=lambda: _token_keys(settings), settings=settings,
                     clock=time.time)


def _request_upload(payload):
    from chalicelib.approvals import files

    return files.request_upload(payload, s3=_s3(), settings=load_settings())


def _send(payload, *, given_key=None, caller: str = "anonymous"):
    from chalicelib.approvals import idempotency, outbound, task_tokens

    settings = load_settings()
    store = _store(settings)
    body, token = task_tokens.split_payload(payload)
    more_items = None
    if token is not None:
        def more_items(attempt_id):
            return [store.task_token_put(body["code"], attempt_id, token)]
    with task_tokens.failed_at_once_when_refused(
            token, lambda: tracing.instrument(aws.client("stepfunctions"))):
        key = idempotency.key_of(given_key, caller=caller, operation="send", request=payload)
        with telemetry.zeyi_outcome(metrics.SENDS, accepted=states.PENDING):
            return idempotency.send(
                key, store=store, lease_seconds=settings.submit_lease_seconds,
                more_items=more_items, run=lambda claims: outbound.send_approval(
                    body, store=claims, zeyi=_zeyi_client(settings),
                    lease_seconds=settings.submit_lease_seconds,
                    correlation_id=_correlation_id(), files=_file_links(settings)))


def _cancel(payload, *, given_key=None, caller: str = "anonymous"):
    from chalicelib.approvals import idempotency, outbound
    from chalicelib.protocol import payloads

    settings = load_settings()
    store = _store(settings)
    key = idempotency.key_of(given_key, caller=caller, operation="cancel", request=payload)
    if key is not None:
        payloads.validate_cancel(payload)  # a refused body keeps no answer under the key
    with telemetry.zeyi_outcome(metrics.CANCELS, accepted=states.CANCELLING):
        return idempotency.cancel(
            key, store=store, lease_seconds=settings.cancel_lease_seconds,
            run=lambda: outbound.cancel_approval(
                payload, store=store, zeyi=_zeyi_client(settings),
                lease_seconds=settings.cancel_lease_seconds, correlation_id=_correlation_id()))


def _http_keyed(action):
    """``action`` on the internal app's body, with its Idempotency-Key scoped to its IAM
    principal (API Gateway's ``identity.userArn``)."""
    from chalicelib.approvals import idempotency

    request = app.current_request
    identity = (request.context or {}).get("identity") or {}
    caller = identity.get("userArn") or identity.get("caller") or "anonymous"
    return action(_internal_payload(), given_key=request.headers.get(idempotency.HEADER),
                  caller=caller)


def _lambda_keyed(action):
    """``action`` on a Lambda payload, its ``idempotencyKey`` scoped to its ``caller``."""
    def run(payload):
        from chalicelib.approvals import idempotency

        payload, given_key = idempotency.split_key(payload)
        payload, caller = idempotency.lambda_caller(payload)
        return action(payload, given_key=given_key, caller=caller)
    return run


def _get(code):
    from chalicelib.approvals import outbound

    return outbound.get_approval(code, store=_store(load_settings()))


@app.route("/audit/send", methods=["POST"], authorizer=iam, content_types=ANY_CONTENT_TYPE)
def send_route():
    return _respond(lambda: _http_keyed(_send))


@app.route("/audit/cancel", methods=["POST"], authorizer=iam, content_types=ANY_CONTENT_TYPE)
def cancel_route():
    return _respond(lambda: _http_keyed(_cancel))


@app.route("/audit/{code}", methods=["GET"], authorizer=iam, content_types=ANY_CONTENT_TYPE)
def get_route(code):
    return _respond(lambda: _get(code))


@app.route("/audit/send", methods=_other_methods("POST"), authorizer=iam,
           content_types=ANY_CONTENT_TYPE)
@app.route("/audit/cancel", methods=_other_methods("POST"), authorizer=iam,
           content_types=ANY_CONTENT_TYPE)
def internal_post_only():
    return _wrong_method("POST", zeyi_route=False)


@app.route("/audit/{code}", methods=_other_methods("GET"), authorizer=iam,
           content_types=ANY_CONTENT_TYPE)
def internal_get_only(code):
    return _wrong_method("GET", zeyi_route=False)


@app.route("/files", methods=["POST"], authorizer=iam, content_types=ANY_CONTENT_TYPE)
def upload_route():
    return _respond(lambda: _request_upload(_internal_payload()))


@app.route("/files", methods=_other_methods("POST"), authorizer=iam,
           content_types=ANY_CONTENT_TYPE)
def upload_post_only():
    return _wrong_method("POST", zeyi_route=False)


# -- file links approvers click (public): a redirect to the file, or a page for people -----------

HTML_HEADERS = {"Content-Type": "text/html;charset=utf-8", "Cache-Control": "no-store",
                "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


def _page(status: int, extra: dict | None = None) -> Response:
    from chalicelib.approvals.files import refusal_page

    return Response(body=refusal_page(status), status_code=status,
                    headers={**HTML_HEADERS, **(extra or {})})


@app.route("/files/{token}", methods=["GET"], content_types=ANY_CONTENT_TYPE)
def file_link_route(token):
    from chalicelib.approvals import files

    try:
        settings = load_settings()
        location = files.open_link(token, token_keys=_token_keys(settings),
                                   store=_store(settings), s3=_s3, settings=settings)
    except files.LinkRefused as refused:
        logger.warning("file link refused", extra={"status": refused.status,
                                                   "reason": refused.reason})
        return _page(refused.status)
    except GatewayError as exc:
        logger.error("file link not served", extra={"errorCode": exc.error_code,
                                                    "reason": exc.message})
        telemetry.error(exc)
        return _page(503)
    except Exception:
        logger.exception("unexpected error")  # the traceback goes to the log only
        telemetry.error(None)
        return _page(503)
    return Response(body="", status_code=302,
                    headers={"Location": location, "Cache-Control": "no-store",
                             "Referrer-Policy": "no-referrer",
                             "Content-Type": "text/plain;charset=utf-8"})


@app.route("/files/{token}", methods=_other_methods("GET"), content_types=ANY_CONTENT_TYPE)
def file_link_get_only(token):
    return _page(405, {"Allow": "GET"})


@app.lambda_function(name="send_approval")
def send_function(event, context):
    return _invoked("send_approval", event, context, _lambda_keyed(_send))


@app.lambda_function(name="cancel_approval")
def cancel_function(event, context):
    return _invoked("cancel_approval", event, context, _lambda_keyed(_cancel))


@app.lambda_function(name="request_file_upload")
def upload_function(event, context):
    return _invoked("request_file_upload", event, context, _request_upload)


@app.lambda_function(name="get_approval")
def get_function(event, context):
    def action(payload):
        if not isinstance(payload, dict) or not isinstance(payload.get("code"), str):
            raise ValidationError("event must be {\"code\": \"...\"}")
        return _get(payload["code"])
    return _invoked("get_approval", event, context, action)


# -- stuck approvals: a search every 5 minutes ----------------------------------------------------

@app.schedule(Rate(5, unit=Rate.MINUTES), name="find_stuck_approvals")
def find_stuck_approvals(event):
    from chalicelib.approvals import stuck as stuck_approvals

    with telemetry.invocation("find_stuck_approvals",
                              lambda_request_id=getattr(event.context, "aws_request_id", None)):
        try:
            settings = load_settings()
            stuck_approvals.run_and_announce(
                _store(settings), settings=settings, now_ms=int(time.time() * 1000),
                events_client=_events_client)
        except Exception:
            logger.exception("stuck approvals could not be searched")
            raise  # a failed search is a Lambda error: its alarm tells


# -- approval events: the approvals table's stream → EventBridge (chalicelib.approvals.events) --

@app.on_dynamodb_record(stream_arn=approvals_stream_arn(),
                        batch_size=stream_mapping.STREAM_BATCH_SIZE,
                        starting_position=stream_mapping.STREAM_STARTING_POSITION,
                        name=stream_mapping.FUNCTION_NAME)
def publish_approval_events(event):
    # Loaded here: the outbox is this function's alone, and off every route's cold start.
    from chalicelib.approvals import events

    with telemetry.invocation(stream_mapping.FUNCTION_NAME,
                              lambda_request_id=getattr(event.context, "aws_request_id", None)):
        records = event.to_dict()["Records"]
        settings = load_settings()
        outcome = events.handle_batch(records, client=_events_client(),
                                      bus_name=settings.event_bus_name)
        telemetry.count(metrics.EVENTS_PUBLISHED, value=outcome.published)
        telemetry.count(metrics.EVENTS_FAILED, value=len(outcome.failed))
        return _answer_task_tokens(records, outcome, settings)


def _answer_task_tokens(records: list[dict], outcome, settings: Settings) -> dict:
    """The Step Functions tokens of the batch's final statuses (chalicelib.approvals.task_tokens);
    a record whose token is not answered yet is retried with the unpublished ones."""
    from chalicelib.approvals import task_tokens

    unanswered = task_tokens.answer_batch(
        records, store=_store(settings),
        client=lambda: tracing.instrument(aws.client("stepfunctions")))
    if unanswered:
        outcome.failed = sorted(set(outcome.failed) | set(unanswered), key=int)
    return outcome.response
