"""X-Ray subsegments for the calls a request makes to DynamoDB, Secrets Manager and Zeyi.

With active tracing (Chalice's ``xray`` setting) Lambda records each invocation itself and hands
the function its trace in ``_X_AMZN_TRACE_ID`` (``Root=…;Parent=…;Sampled=1``), refreshed per
invocation. This module adds one subsegment per outbound call to that trace, as the X-Ray SDK
does inside Lambda: each subsegment is a JSON document sent by UDP to the daemon Lambda runs at
``AWS_XRAY_DAEMON_ADDRESS``, with the function segment as its parent
(https://docs.aws.amazon.com/xray/latest/devguide/xray-api-segmentdocuments.html, "Sending
subsegments separately"). tests/test_tracing.py holds the documents to those the SDK sends.

Why not the SDK (or Powertools Tracer, which wraps it): measured in this repository's venv with
Lambda's environment, importing ``aws_xray_sdk.core`` costs about 40 ms of every cold start
before anything is traced (about 130 ms on a busy 2-core machine), which is most of the cold
budget of ``make bench``; Powertools Tracer adds about 25 ms more, and by default patches every
library it knows, importing ``requests`` on routes that never call Zeyi. Patching nothing costs
nothing but records nothing below the function segment. Botocore's own event hooks plus this
sender give the subsegments at no import cost: nothing here is imported that the app does not
load already. Outside Lambda, or for an invocation X-Ray did not sample, every call below
returns at once.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import time
import weakref
from dataclasses import dataclass

TRACE_ENV = "_X_AMZN_TRACE_ID"
DAEMON_ENV = "AWS_XRAY_DAEMON_ADDRESS"
_HEADER = b'{"format":"json","version":1}\n'
_MESSAGE_CHARS = 200


@dataclass(frozen=True)
class Trace:
    trace_id: str
    parent_id: str
    daemon: tuple[str, int]


_trace: Trace | None = None
_socket: socket.socket | None = None
_instrumented: weakref.WeakSet = weakref.WeakSet()


def begin_invocation() -> Trace | None:
    """Read this invocation's trace; None when there is nothing to record (outside Lambda,
    tracing off, or an invocation X-Ray did not sample)."""
    global _trace
    _trace = _parse(os.environ.get(TRACE_ENV, ""), os.environ.get(DAEMON_ENV, ""))
    return _trace


def _parse(header: str, daemon: str) -> Trace | None:
    fields = dict(part.split("=", 1) for part in header.split(";") if "=" in part)
    address = _daemon_address(daemon)
    if fields.get("Sampled") != "1" or not fields.get("Root") or not fields.get("Parent"):
        return None
    if address is None:
        return None
    return Trace(fields["Root"], fields["Parent"], address)


def _daemon_address(value: str) -> tuple[str, int] | None:
    """``host:port``, or the SDK's ``tcp:host:port udp:host:port`` form (UDP is used)."""
    for part in value.split():
        if part.startswith("udp:"):
            value = part[4:]
            break
    else:
        value = value.split()[0] if value.split() else ""
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        return None
    return host, int(port)


@contextlib.contextmanager
def subsegment(name: str, *, namespace: str, annotations: dict | None = None):
    """Record the enclosed block as a subsegment; yields a dict to fill with ``http`` or
    ``aws`` fields, or ``error``/``fault`` flags. An exception is recorded as its cause (a fault
    unless the block said ``error``) and goes on."""
    trace = _trace
    if trace is None:
        yield {}
        return
    document: dict = {}
    start = time.time()
    try:
        yield document
    except BaseException as exc:
        if not (document.get("error") or document.get("fault")):
            document["fault"] = True
        document["cause"] = _cause(exc)
        raise
    finally:
        _send(trace, name, namespace, start, time.time(), document, annotations)


def instrument(client):
    """Give ``client`` (a botocore client) one subsegment per API call; returns the client.
    Botocore's event hooks, not a patch: only this client, and only while sampled."""
    if client in _instrumented:
        return client
    events = client.meta.events
    service = client.meta.service_model.service_id.hyphenize()
    events.register(f"before-parameter-build.{service}", _call_started)
    events.register(f"after-call.{service}", _call_answered)
    events.register(f"after-call-error.{service}", _call_failed)
    _instrumented.add(client)
    return client


def _call_started(params, model, context, **kwargs):
    if _trace is None:
        return
    aws = {"operation": model.name}
    if context.get("client_region"):
        aws["region"] = context["client_region"]
    table = params.get("TableName") if isinstance(params, dict) else None
    if table:
        aws["table_name"] = table
    context["xray"] = (time.time(), model.service_model.service_id, aws)


def _call_answered(http_response, parsed, model, context, **kwargs):
    started = context.pop("xray", None)
    trace = _trace
    if started is None or trace is None:
        return
    start, service, aws = started
    status = http_response.status_code
    metadata = parsed.get("ResponseMetadata", {}) if isinstance(parsed, dict) else {}
    if metadata.get("RequestId"):
        aws = {**aws, "request_id": metadata["RequestId"]}
    document = {"aws": aws, "http": {"response": {"status": status}}, **_flags(status)}
    _send(trace, str(service), "aws", start, time.time(), document, None)


def _call_failed(exception, context, **kwargs):
    started = context.pop("xray", None)
    trace = _trace
    if started is None or trace is None:
        return
    start, service, aws = started
    _send(trace, str(service), "aws", start, time.time(),
          {"aws": aws, "fault": True, "cause": _cause(exception)}, None)


def _flags(status: int) -> dict:
    if status == 429:
        return {"error": True, "throttle": True}
    if 400 <= status < 500:
        return {"error": True}
    if status >= 500:
        return {"fault": True}
    return {}


def _cause(exc: BaseException) -> dict:
    message = getattr(exc, "message", None) or str(exc)
    return {"exceptions": [{"id": _new_id(), "type": type(exc).__name__,
                            "message": message[:_MESSAGE_CHARS]}]}


def _new_id() -> str:
    # An X-Ray entity id names a subsegment within its trace; it protects nothing, so the
    # PRNG does (no system call per subsegment, as os.urandom would make).
    return f"{random.getrandbits(64):016x}"


def _send(trace: Trace, name: str, namespace: str, start: float, end: float, document: dict,
          annotations: dict | None) -> None:
    global _socket
    entity = {"id": _new_id(), "name": name, "trace_id": trace.trace_id,
              "parent_id": trace.parent_id, "type": "subsegment", "namespace": namespace,
              "start_time": start, "end_time": end, **document}
    if annotations:
        entity["annotations"] = annotations
    try:
        if _socket is None:
            _socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            _socket.setblocking(False)
        _socket.sendto(_HEADER + json.dumps(entity, separators=(",", ":")).encode("utf-8"),
                       trace.daemon)
    except (OSError, TypeError, ValueError):
        pass  # a lost trace must never cost the request; X-Ray itself is best effort (UDP)
