"""Faults in the sandbox's AWS: moto server answers EventBridge's PutEvents as AWS does when it
is in trouble, so the approval events' publishing is tested against what it must survive (and
can be tried by hand, docs/sandbox.md).

A WSGI middleware in front of moto (``sandbox.moto_server``), controlled over HTTP on the same
port:

- ``POST /_sandbox/faults`` ``{"mode": "error", "times": 3, "status": 500, "errorCode":
  "InternalException"}``: the next 3 PutEvents calls fail as a whole (botocore retries those
  itself, then the caller sees the error);
- ``{"mode": "fail_entries", "every": 2, "times": 1, "errorCode": "ThrottlingException"}``: in
  the next call, entries 0, 2, 4... fail (PutEvents answers 200 with ``FailedEntryCount``;
  the others are published);
- ``{"mode": "fail_entries", "match": "\\"code\\":\\"HT-9\\"", "errorCode": "MalformedDetail"}``
  with no ``times``: every entry whose Detail contains the text fails, until cleared (a poison
  record);
- ``DELETE /_sandbox/faults`` clears them; ``GET /_sandbox/faults`` lists them and the log of
  PutEvents calls (each call's entries, by code and sequence, and which of them failed).

Every other request goes to moto untouched.
"""
from __future__ import annotations

import io
import json
import threading
from collections import deque
from dataclasses import dataclass

CONTROL_PATH = "/_sandbox/faults"
PUT_EVENTS = "AWSEvents.PutEvents"
LOG_CALLS = 2000
MODES = ("error", "fail_entries")


@dataclass
class Fault:
    mode: str
    times: int | None = None  # None: until cleared
    status: int = 500
    error_code: str = "InternalException"
    every: int = 1
    match: str | None = None

    @classmethod
    def parse(cls, raw: dict) -> Fault:
        if not isinstance(raw, dict) or raw.get("mode") not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}")
        fault = cls(mode=raw["mode"], times=raw.get("times"),
                    status=int(raw.get("status", 500)),
                    error_code=str(raw.get("errorCode", "InternalException")),
                    every=int(raw.get("every", 1)), match=raw.get("match"))
        if fault.times is not None and (not isinstance(fault.times, int) or fault.times < 1):
            raise ValueError("times must be a positive whole number (or absent: until cleared)")
        if fault.every < 1:
            raise ValueError("every must be at least 1")
        return fault

    def to_json(self) -> dict:
        return {"mode": self.mode, "times": self.times, "status": self.status,
                "errorCode": self.error_code, "every": self.every, "match": self.match}

    def failing(self, details: list[str]) -> list[int]:
        return [index for index, detail in enumerate(details)
                if index % self.every == 0 and (self.match is None or self.match in detail)]


def _entry_summary(entry: dict) -> dict:
    try:
        detail = json.loads(entry.get("Detail") or "{}")
    except ValueError:
        detail = {}
    return {"code": detail.get("code"), "sequence": detail.get("sequence"),
            "eventId": detail.get("eventId"), "detailType": entry.get("DetailType")}


class FaultInjector:
    """WSGI middleware: faults for PutEvents, and their control API."""

    def __init__(self, app):
        self._app = app
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._calls: deque = deque(maxlen=LOG_CALLS)

    # -- control -----------------------------------------------------------------------------

    def _control(self, environ, start_response):
        method = environ.get("REQUEST_METHOD", "GET")
        with self._lock:
            if method == "POST":
                try:
                    fault = Fault.parse(json.loads(_body(environ) or b"{}"))
                except (ValueError, TypeError) as exc:
                    return _json(start_response, 400, {"error": str(exc)})
                self._faults.append(fault)
            elif method == "DELETE":
                self._faults.clear()
                self._calls.clear()
            elif method != "GET":
                return _json(start_response, 405, {"error": "GET, POST or DELETE"})
            return _json(start_response, 200, {"faults": [f.to_json() for f in self._faults],
                                               "calls": list(self._calls)})

    # -- requests ----------------------------------------------------------------------------

    def __call__(self, environ, start_response):
        if environ.get("PATH_INFO") == CONTROL_PATH:
            return self._control(environ, start_response)
        if environ.get("PATH_INFO") == "/moto-api/reset":  # a reset of the emulator resets these
            with self._lock:
                self._faults.clear()
                self._calls.clear()
        if environ.get("HTTP_X_AMZ_TARGET") != PUT_EVENTS:
            return self._app(environ, start_response)
        body = _body(environ)
        try:
            entries = json.loads(body).get("Entries", [])
        except (ValueError, AttributeError):
            return self._forward(environ, start_response, body)
        call = {"entries": [_entry_summary(entry) for entry in entries], "failed": []}
        with self._lock:
            fault = self._faults[0] if self._faults else None
            failing = []
            if fault is not None and fault.mode == "fail_entries":
                failing = fault.failing([entry.get("Detail") or "" for entry in entries])
            applies = fault is not None and (fault.mode == "error" or failing)
            if applies and fault.times is not None:
                fault.times -= 1
                if fault.times == 0:
                    self._faults.pop(0)
            if applies and fault.mode == "error":
                call["failed"] = list(range(len(entries)))
            else:
                call["failed"] = failing
            self._calls.append(call)
        if applies and fault.mode == "error":
            return _json(start_response, fault.status,
                         {"__type": fault.error_code, "message": "fault injected by the sandbox"},
                         content_type="application/x-amz-json-1.1")
        if not failing:
            return self._forward(environ, start_response, body)
        return self._partial(environ, start_response, json.loads(body), failing, fault)

    def _forward(self, environ, start_response, body: bytes):
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        return self._app(environ, start_response)

    def _partial(self, environ, start_response, request: dict, failing: list[int], fault: Fault):
        """Publish the entries that do not fail through moto; answer as PutEvents does."""
        entries = request.get("Entries", [])
        passing = [entry for index, entry in enumerate(entries) if index not in failing]
        results: list[dict] = []
        if passing:
            captured = {}

            def capture(status, headers, exc_info=None):
                captured["status"] = status
                return lambda data: None

            body = json.dumps({**request, "Entries": passing}).encode()
            answer = b"".join(self._forward(environ, capture, body))
            if not captured.get("status", "").startswith("200"):
                start_response(captured["status"], [("Content-Type", "application/json")])
                return [answer]
            results = json.loads(answer).get("Entries", [])
        published = iter(results)
        merged = [{"ErrorCode": fault.error_code, "ErrorMessage": "fault injected by the sandbox"}
                  if index in failing else next(published, {}) for index in range(len(entries))]
        return _json(start_response, 200, {"FailedEntryCount": len(failing), "Entries": merged},
                     content_type="application/x-amz-json-1.1")


def _body(environ) -> bytes:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    return environ["wsgi.input"].read(length) if length else b""


def _json(start_response, status: int, payload: dict, content_type: str = "application/json"):
    body = json.dumps(payload).encode()
    reason = {200: "OK", 400: "Bad Request", 405: "Method Not Allowed"}.get(status, "Error")
    start_response(f"{status} {reason}", [("Content-Type", content_type),
                                          ("Content-Length", str(len(body)))])
    return [body]
