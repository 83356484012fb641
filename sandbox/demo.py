"""``make demo``: walk through every flow against a running sandbox (``make run``), step by step.

1. send → PENDING → Zeyi agrees (simulator control API) → callback → AGREED
2. send → Zeyi refuses → REFUSED
3. send → cancel → CANCELLING → Zeyi's terminate callback → TERMINATED
4. a second send for a code whose approval is active → 409 APPROVAL_ACTIVE
5. DingTalk revokes the agreed approval of 1 → Zeyi's terminate callback → REVOKED
and finally ``GET /audit/{code}`` for each. After each flow it shows the approval events the
sandbox's internal app received on its queue (the stage's bus → a rule → SQS), as an internal
team's app would. Codes carry a timestamp, so the demo can be rerun.
Ports: the same SANDBOX_GATEWAY_PORT / SANDBOX_ZEYI_PORT / SANDBOX_AWS_PORT as ``make run``.
Exits non-zero when a step does not do what it says, so it doubles as a smoke test.
"""
from __future__ import annotations

import json
import os
import secrets
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import requests

from sandbox.stack import (
    AWS_PORT_ENV,
    GATEWAY_PORT_ENV,
    INTERNAL_APP_QUEUE,
    REGION,
    ZEYI_PORT_ENV,
    StackError,
    ports_from_env,
)

FINAL_STATUSES = ("AGREED", "REFUSED", "TERMINATED", "FAILED", "REVOKED")
WAIT_SECONDS = 20.0


def send_body(code: str) -> dict:
    return {
        "code": code, "auditType": "CONTRACT", "originatorUsername": "E1001", "orgCode": "ORG-1",
        "auditFormList": [
            {"type": "text", "key": "合同金额", "value": "12,800.00"},
            {"type": "file", "key": "合同附件", "value": "https://files.example/contract.pdf",
             "extendValue": "contract.pdf"},
        ],
        "conditionParamList": [{"name": "amount", "value": "12800"}],
    }


def cancel_body(code: str) -> dict:
    return {"code": code, "type": "CONTRACT", "remark": "录入错误，撤回", "username": "E1001"}


@dataclass
class Demo:
    gateway: str
    zeyi: str
    aws: str | None = None
    out: Callable[[str], None] = print
    failures: list[str] = field(default_factory=list)
    codes: list[str] = field(default_factory=list)
    received: dict[str, dict[str, dict]] = field(default_factory=dict)  # code → eventId → event
    _internal_app_queue: tuple | None = field(default=None, repr=False)

    # -- output --------------------------------------------------------------------------------

    def step(self, text: str) -> None:
        self.out(f"\n▶ {text}")

    def show(self, label: str, response: requests.Response) -> dict | None:
        try:
            payload = response.json()
        except ValueError:
            payload = None
        shown = json.dumps(payload, ensure_ascii=False) if payload is not None else response.text
        if len(shown) > 400:
            shown = shown[:400] + " …"
        self.out(f"  {label}: HTTP {response.status_code} {shown}")
        return payload

    def expect(self, ok: bool, what: str) -> None:
        self.out(f"  {'✓' if ok else '✗'} {what}")
        if not ok:
            self.failures.append(what)

    # -- calls ---------------------------------------------------------------------------------

    def send(self, code: str) -> requests.Response:
        if code not in self.codes:
            self.codes.append(code)
        response = requests.post(f"{self.gateway}/audit/send", json=send_body(code), timeout=30)
        self.show(f"POST /audit/send {code}", response)
        return response

    def status(self, code: str, *, show: bool = True) -> str | None:
        response = requests.get(f"{self.gateway}/audit/{code}", timeout=30)
        payload = response.json() if response.headers.get("Content-Type", "").startswith(
            "application/json") else None
        result = (payload or {}).get("result") or {}
        if show:
            self.out(f"  GET /audit/{code}: HTTP {response.status_code} status ="
                     f" {result.get('status')}")
        return result.get("status")

    def decide(self, code: str, action: str) -> None:
        response = requests.post(f"{self.zeyi}/_control/approvals/{code}/{action}",
                                 json={"auditUser": "王经理", "remark": f"demo: {action}"},
                                 timeout=30)
        self.out(f"  Zeyi simulator: {action} {code} → HTTP {response.status_code}")

    def wait_callback(self, code: str) -> None:
        response = requests.get(f"{self.zeyi}/_control/approvals/{code}",
                                params={"waitSeconds": WAIT_SECONDS}, timeout=WAIT_SECONDS + 10)
        approval = response.json()
        for delivery in approval.get("callbacks", []):
            tries = delivery["tries"]
            answer = tries[-1].get("response") if tries else None
            self.out(f"  callback {delivery['type']}/{delivery.get('result') or '-'} →"
                     f" {delivery['status']} after {len(tries)} try(ies); gateway answered"
                     f" {json.dumps(answer, ensure_ascii=False)}")

    def wait_status(self, code: str, wanted: str) -> str | None:
        deadline = time.monotonic() + WAIT_SECONDS
        status = self.status(code, show=False)
        while status != wanted and time.monotonic() < deadline:
            time.sleep(0.2)
            status = self.status(code, show=False)
        return status

    # -- the internal app's events --------------------------------------------------------------

    def _read_queue(self, sqs, url: str) -> None:
        for message in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10,
                                           WaitTimeSeconds=1).get("Messages", []):
            event = json.loads(message["Body"])
            detail = event["detail"]
            self.received.setdefault(detail["code"], {}).setdefault(detail["eventId"], event)
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])

    def _queue(self):
        """The SQS client and the internal app's queue URL, looked up once per demo."""
        if self._internal_app_queue is None:
            import boto3

            sqs = boto3.client("sqs", endpoint_url=self.aws, region_name=REGION,
                               aws_access_key_id="testing",
                               aws_secret_access_key="testing")  # noqa: S106 - the sandbox's moto
            url = sqs.get_queue_url(QueueName=INTERNAL_APP_QUEUE)["QueueUrl"]
            self._internal_app_queue = (sqs, url)
        return self._internal_app_queue

    def events(self, code: str, expected: list[str]) -> None:
        """Wait for ``code``'s events on the internal app's queue, show them, check them."""
        if self.aws is None:
            return
        sqs, url = self._queue()
        deadline = time.monotonic() + WAIT_SECONDS
        while len(self.received.get(code, {})) < len(expected) and time.monotonic() < deadline:
            self._read_queue(sqs, url)
        self._read_queue(sqs, url)  # one more look: nothing unexpected may follow
        found = sorted(self.received.get(code, {}).values(),
                       key=lambda event: event["detail"]["sequence"])
        self.out(f"  the internal app's queue ({INTERNAL_APP_QUEUE}) got, for {code}:")
        for event in found:
            detail = event["detail"]
            self.out(f"    #{detail['sequence']} {event['detail-type']:<27}"
                     f" {detail['previousStatus'] or '-'} → {detail['status']}"
                     f"  eventId {detail['eventId'][:8]}…"
                     + (f"  {detail['auditUser']}: {detail['remark']}"
                        if detail.get("auditUser") else ""))
        self.expect([event["detail-type"] for event in found] == expected,
                    "events: " + ", ".join(name.removeprefix("Approval ") for name in expected))

    # -- the flows -----------------------------------------------------------------------------

    def run(self, suffix: str) -> int:
        agree, refuse, cancel = (f"DEMO-{suffix}-A", f"DEMO-{suffix}-R", f"DEMO-{suffix}-C")

        self.step(f"1. send {agree}, Zeyi agrees, the callback makes it AGREED")
        self.expect(self.send(agree).status_code == 200, "send accepted")
        self.expect(self.status(agree) == "PENDING", "PENDING while Zeyi decides")
        self.decide(agree, "agree")
        self.wait_callback(agree)
        self.expect(self.wait_status(agree, "AGREED") == "AGREED", "AGREED after the callback")
        self.status(agree)
        self.events(agree, ["Approval Submitted", "Approval Pending", "Approval Agreed"])

        self.step(f"2. send {refuse}, Zeyi refuses")
        self.expect(self.send(refuse).status_code == 200, "send accepted")
        self.decide(refuse, "refuse")
        self.wait_callback(refuse)
        self.expect(self.wait_status(refuse, "REFUSED") == "REFUSED", "REFUSED after the callback")
        self.status(refuse)
        self.events(refuse, ["Approval Submitted", "Approval Pending", "Approval Refused"])

        self.step(f"3. send {cancel}, then cancel it: CANCELLING until Zeyi's terminate callback")
        self.expect(self.send(cancel).status_code == 200, "send accepted")
        response = requests.post(f"{self.gateway}/audit/cancel", json=cancel_body(cancel),
                                 timeout=30)
        self.show(f"POST /audit/cancel {cancel}", response)
        self.expect(response.status_code == 200, "cancel accepted by Zeyi")
        status = self.status(cancel)
        self.expect(status in ("CANCELLING", "TERMINATED"),
                    "CANCELLING (or already TERMINATED if the callback was quicker)")
        self.wait_callback(cancel)
        self.expect(self.wait_status(cancel, "TERMINATED") == "TERMINATED",
                    "TERMINATED after the terminate callback")
        self.status(cancel)
        self.events(cancel, ["Approval Submitted", "Approval Pending", "Approval Cancelling",
                             "Approval Terminated"])

        self.step(f"4. a second send for {agree}, whose approval is AGREED (still active)")
        response = self.send(agree)
        payload = response.json() if response.content else {}
        self.expect(response.status_code == 409 and payload.get("errorCode") == "APPROVAL_ACTIVE",
                    "409 APPROVAL_ACTIVE")
        pending = f"DEMO-{suffix}-P"
        self.out(f"  …and for {pending} while it is PENDING:")
        self.send(pending)
        response = self.send(pending)
        payload = response.json() if response.content else {}
        self.expect(response.status_code == 409 and payload.get("errorCode") == "APPROVAL_ACTIVE",
                    "409 APPROVAL_ACTIVE")
        self.events(pending, ["Approval Submitted", "Approval Pending"])
        self.out("  …and a refused send changes nothing, so it is no event:")
        self.events(agree, ["Approval Submitted", "Approval Pending", "Approval Agreed"])

        self.step(f"5. DingTalk revokes {agree}'s agreed approval: Zeyi's terminate makes it"
                  " REVOKED")
        self.decide(agree, "terminate")
        self.wait_callback(agree)
        self.expect(self.wait_status(agree, "REVOKED") == "REVOKED", "REVOKED after the callback")
        self.events(agree, ["Approval Submitted", "Approval Pending", "Approval Agreed",
                            "Approval Revoked"])

        self.step("6. GET /audit/{code} for each")
        for code in self.codes:
            response = requests.get(f"{self.gateway}/audit/{code}", timeout=30)
            result = (response.json() or {}).get("result") or {}
            applied = [c for c in result.get("callbacks", [])
                       if c.get("disposition") == "applied"]
            self.out(f"  {code}: {result.get('status')}, {len(result.get('attempts', []))}"
                     f" attempt(s), {len(applied)} callback(s) applied")

        if self.failures:
            self.out(f"\n{len(self.failures)} step(s) did not do what they should:")
            for failure in self.failures:
                self.out(f"  ✗ {failure}")
            return 1
        self.out("\nEvery step did what it should. The simulator's request log:"
                 f" curl -s {self.zeyi}/_control/requests")
        return 0


def main() -> int:
    try:
        ports = ports_from_env()
    except StackError as error:
        print(f"demo: {error}", file=sys.stderr)
        return 2
    demo = Demo(gateway=f"http://127.0.0.1:{ports[GATEWAY_PORT_ENV]}",
                zeyi=f"http://127.0.0.1:{ports[ZEYI_PORT_ENV]}",
                aws=f"http://127.0.0.1:{ports[AWS_PORT_ENV]}",
                out=lambda line: print(line, flush=True))
    # A bare connection, not an HTTP request: the gateway's terminal shows requests people make.
    for name, url, port in (("gateway", demo.gateway, ports[GATEWAY_PORT_ENV]),
                            ("Zeyi simulator", demo.zeyi, ports[ZEYI_PORT_ENV]),
                            ("AWS emulator", demo.aws, ports[AWS_PORT_ENV])):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=3).close()
        except OSError:
            print(f"demo: the {name} does not answer on {url}. Start the sandbox first with"
                  " `make run` (with the same SANDBOX_*_PORT variables), then run `make demo`"
                  " in another terminal.", file=sys.stderr)
            return 2
    suffix = os.environ.get("DEMO_SUFFIX") or (time.strftime("%Y%m%d%H%M%S")
                                                + secrets.token_hex(2))
    return demo.run(suffix)


if __name__ == "__main__":
    sys.exit(main())
