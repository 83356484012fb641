"""One measured process of ``make bench``: a handler, as Lambda would run it, in a fresh process.

    python bench/worker.py warm gateway|floor CALLS   time CALLS warm callbacks, one by one
    python bench/worker.py cold gateway|floor          answer one callback (BENCH_EVENT_FILE)
    python bench/worker.py calls gateway|floor         the AWS calls of each operation

Results go to stderr as one line ``BENCH <json>``; the handler's own output (its logs and
metrics) goes to stdout, which the parent sends to a file, as Lambda sends it to CloudWatch.
Nothing is imported before the handler that the handler would not import itself: the cold
figure is the handler's own.
"""
from __future__ import annotations

import json
import os
import sys
import time

GATEWAY, FLOOR = "gateway", "floor"
CALLBACK_PATH = "/dingtalkAudit/callback"


def _report(value) -> None:
    sys.stderr.write("BENCH " + json.dumps(value) + "\n")
    sys.stderr.flush()


class Context:
    """What the Lambda runtime passes a handler."""

    function_name = "jinrun-approval-gateway-bench"
    memory_limit_in_mb = 512
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:bench"

    def __init__(self, number: int):
        self.aws_request_id = f"00000000-0000-4000-8000-{number:012d}"

    @staticmethod
    def get_remaining_time_in_millis() -> int:
        return 25_000


def _event(method: str, path: str, resource: str, body: bytes, headers: dict, number: int,
           path_parameters: dict | None = None) -> dict:
    return {"resource": resource, "path": path, "httpMethod": method, "headers": headers,
            "multiValueHeaders": {k: [v] for k, v in headers.items()},
            "queryStringParameters": None, "multiValueQueryStringParameters": None,
            "pathParameters": path_parameters, "stageVariables": None,
            "body": body.decode("utf-8"), "isBase64Encoded": False,
            "requestContext": {"resourcePath": resource, "httpMethod": method, "stage": "api",
                               "requestId": f"bench-api-{number}", "path": f"/api{path}",
                               "identity": {"sourceIp": "203.0.113.7"}}}


def _signed(body: bytes, number: int, *, token: bool) -> dict:
    """Zeyi's headers for ``body``, built with hashlib and hmac directly."""
    import base64
    import hashlib
    import hmac

    from bench.stand_in import SECRETS

    credential = SECRETS["bench/inbound"]["credentials"][0]
    timestamp = str(int(time.time() * 1000))
    nonce = f"{number:06d}"[-6:]
    sign = hashlib.md5((credential["appKey"] + credential["appSecret"] + timestamp + nonce)
                       .encode() + body, usedforsecurity=False).hexdigest()
    headers = {"appKey": credential["appKey"], "timestamp": timestamp, "nonce": nonce,
               "sign": sign, "Content-Type": "application/json;charset=utf-8"}
    if token:
        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

        claims = {"k": credential["appKey"], "exp": int(time.time()) + 3600, "jti": "bench"}
        signed = "v1." + b64(json.dumps(claims).encode())
        key = SECRETS["bench/token-key"]["keys"][0].encode()
        mac = hmac.new(key, signed.encode(), hashlib.sha256).digest()
        headers["Authorization"] = f"Bearer {signed}.{b64(mac)}"
    return headers


def callback_event(number: int) -> dict:
    body = json.dumps({"code": f"BENCH-{number}", "auditType": "CONTRACT",
                       "businessId": f"proc-{number}", "type": "finish", "result": "agree",
                       "auditUser": "张三", "remark": "同意"}, ensure_ascii=False,
                      separators=(",", ":")).encode()
    return _event("POST", CALLBACK_PATH, CALLBACK_PATH, body,
                  _signed(body, number, token=True), number)


def _handler(which: str):
    if which == GATEWAY:
        import app

        return app.app
    from bench import floor

    return floor.handler


def _answered(answer: dict) -> None:
    body = json.loads(answer["body"])
    if answer["statusCode"] != 200 or body["result"]["disposition"] != "applied":
        raise SystemExit(f"the handler did not apply the callback: {answer}")


def warm(which: str, calls: int) -> None:
    warmup = 20
    events = [callback_event(n) for n in range(1, warmup + calls + 1)]
    handler = _handler(which)
    for number in range(warmup):
        _answered(handler(events[number], Context(number)))
    wall, cpu = [], []
    for number in range(warmup, warmup + calls):
        event, context = events[number], Context(number)
        started, started_cpu = time.perf_counter_ns(), time.thread_time_ns()
        answer = handler(event, context)
        cpu.append((time.thread_time_ns() - started_cpu) / 1000)
        wall.append((time.perf_counter_ns() - started) / 1000)
        _answered(answer)
    _report({"wall_us": wall, "cpu_us": cpu})


def cold(which: str) -> None:
    # The event was built by the parent: the handler's imports are the only ones timed.
    with open(os.environ["BENCH_EVENT_FILE"], encoding="utf-8") as source:
        event = json.load(source)
    answer = _handler(which)(event, Context(1))
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)  # since the process started
    _report({"status": answer["statusCode"], "cpu_ms": (usage.ru_utime + usage.ru_stime) * 1000})
    _answered(answer)


def _counts(reset: bool = False) -> dict:
    from urllib.request import Request, urlopen

    base = os.environ["AWS_ENDPOINT_URL"]
    if reset:
        urlopen(Request(base + "/__bench/reset", data=b"", method="POST"), timeout=5).read()  # noqa: S310
        return {}
    return json.loads(urlopen(base + "/__bench/counts", timeout=5).read())  # noqa: S310


def calls(which: str) -> None:
    """The AWS calls of each operation, counted by the stand-in."""
    handler = _handler(which)
    found = {}

    def measure(name: str, event: dict, number: int, expect: int = 200) -> None:
        _counts(reset=True)
        answer = handler(event, Context(number))
        status = answer.get("statusCode", 200) if isinstance(answer, dict) else 200
        if status != expect:
            raise SystemExit(f"{name}: answered {status}: {answer}")
        found[name] = _counts()

    measure("callback (first in a container)", callback_event(1), 1)
    measure("callback (warm)", callback_event(2), 2)
    if which == GATEWAY:
        token = _event("POST", "/auth/token", "/auth/token", b"{}",
                       _signed(b"{}", 3, token=False), 3)
        measure("token (warm)", token, 3)
        for number, name in ((4, None), (5, "send (warm)"),
                             (9, "send with an Idempotency-Key (warm)")):
            body = json.dumps({"code": f"BENCH-S{number}", "auditType": "t",
                               "originatorUsername": "u", "orgCode": "o",
                               "auditFormList": [{"type": "text", "key": "k", "value": "v"}]})
            headers = {"Content-Type": "application/json"}
            if "Idempotency-Key" in (name or ""):
                headers["Idempotency-Key"] = f"bench-{number}"
            event = _event("POST", "/audit/send", "/audit/send", body.encode(), headers, number)
            if name is None:
                handler(event, Context(number))  # the first send reads the outbound secret
            else:
                measure(name, event, number)
        cancel = json.dumps({"code": "BENCH-PENDING-1", "type": "t", "remark": "r",
                             "username": "u"}).encode()
        measure("cancel (warm)", _event("POST", "/audit/cancel", "/audit/cancel", cancel,
                                        {"Content-Type": "application/json"}, 6), 6)
        keyed_cancel = cancel.replace(b"BENCH-PENDING-1", b"BENCH-PENDING-2")
        measure("cancel with an Idempotency-Key (warm)", _event(
            "POST", "/audit/cancel", "/audit/cancel", keyed_cancel,
            {"Content-Type": "application/json", "Idempotency-Key": "bench-10"}, 10), 10)
        measure("status lookup", _event("GET", "/audit/BENCH-PENDING-1", "/audit/{code}", b"",
                                        {}, 7, {"code": "BENCH-PENDING-1"}), 7)
        import app

        if not hasattr(app, "find_stuck_approvals"):  # an older checkout (--project)
            _report({"calls": found})
            return
        schedule = {"version": "0", "id": "bench", "detail-type": "Scheduled Event",
                    "source": "aws.events", "account": "123456789012",
                    "time": "2026-01-01T00:00:00Z", "region": "us-east-1", "resources": [],
                    "detail": {}}
        _counts(reset=True)
        app.find_stuck_approvals(schedule, Context(8))
        found["stuck approvals search"] = _counts()
    _report({"calls": found})


def main(argv: list[str]) -> int:
    mode, which = argv[0], argv[1]
    if mode == "warm":
        warm(which, int(argv[2]))
    elif mode == "cold":
        cold(which)
    else:
        calls(which)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
