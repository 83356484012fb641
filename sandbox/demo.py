"""``make demo``: walk through every flow against a running sandbox (``make run``), step by step.

1. send → PENDING → Zeyi agrees (simulator control API) → callback → AGREED
2. send → Zeyi refuses → REFUSED
3. send → cancel → CANCELLING → Zeyi's terminate callback → TERMINATED
4. a second send for a code whose approval is active → 409 APPROVAL_ACTIVE
5. a send with an Idempotency-Key, retried: the first answer again, one send at Zeyi; the key
   with another body → 422 IDEMPOTENCY_KEY_REUSED
6. a file: upload a small PDF with a Chinese name (POST /files, then straight to S3), send it by
   fileId, and follow the stable link Zeyi received to the exact bytes and the Chinese name
7. DingTalk revokes the agreed approval of 1 → Zeyi's terminate callback → REVOKED
and finally ``GET /audit/{code}`` for each. After each flow it shows the approval events the
sandbox's internal app received on its queue (the stage's bus → a rule → SQS), as an internal
team's app would. Codes carry the time of day (``DEMO-041530-A``), so the demo can be rerun.
Each call is one line: what was asked and the answer's status or errorCode; ``--raw`` (or
``DEMO_RAW=true make demo``) adds every answer's envelope as the gateway or the simulator sent it.
Ports: the same SANDBOX_GATEWAY_PORT / SANDBOX_ZEYI_PORT / SANDBOX_AWS_PORT as ``make run``.
Exits non-zero when a step does not do what it says, so it doubles as a smoke test.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import requests

from sandbox.gateway import summarize
from sandbox.run import pretty_printer
from sandbox.stack import (
    AWS_PORT_ENV,
    GATEWAY_PORT_ENV,
    INTERNAL_APP_QUEUE,
    REGION,
    ZEYI_PORT_ENV,
    StackError,
    ports_from_env,
)

FINAL_STATUSES = ("AGREED", "REFUSED", "TERMINATED", "FAILED")
FILE_NAME = "采购合同（演示）.pdf"
FILE_BYTES = (b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
              b"2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n")
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
    raw: bool = False
    """Also show every answer's raw envelope."""
    failures: list[str] = field(default_factory=list)
    codes: list[str] = field(default_factory=list)
    received: dict[str, dict[str, dict]] = field(default_factory=dict)  # code → eventId → event
    _internal_app_queue: tuple | None = field(default=None, repr=False)

    # -- output --------------------------------------------------------------------------------

    def step(self, text: str) -> None:
        self.out(f"\n▶ {text}")

    def show(self, label: str, response: requests.Response, note: str = "") -> dict | None:
        """One line: what was asked, the HTTP status and what the answer says; the raw answer
        below it with ``--raw``."""
        try:
            payload = response.json()
        except ValueError:
            payload = None
        said = summarize(response.status_code, response.content)
        if not said and isinstance(payload, dict) and isinstance(payload.get("status"), str):
            said = f"{payload['status']} at Zeyi"  # the simulator's control API: no envelope
        self.out(f"  {label:<34} → {response.status_code}{' ' + said if said else ''}"
                 f"{'  ' + note if note else ''}")
        if self.raw:
            shown = json.dumps(payload, ensure_ascii=False) if payload is not None \
                else response.text
            self.out(f"      {shown}")
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
            self.show(f"GET /audit/{code}", response)
        return result.get("status")

    def decide(self, code: str, action: str) -> None:
        remark = f"demo: {action}"
        response = requests.post(f"{self.zeyi}/_control/approvals/{code}/{action}",
                                 json={"auditUser": "王经理", "remark": remark}, timeout=30)
        self.show(f"Zeyi: {action} (王经理: {remark})", response)

    def wait_callback(self, code: str) -> None:
        """Zeyi's callbacks of ``code``, once delivered: one line each, with the gateway's
        answer to the last try."""
        response = requests.get(f"{self.zeyi}/_control/approvals/{code}",
                                params={"waitSeconds": WAIT_SECONDS}, timeout=WAIT_SECONDS + 10)
        approval = response.json()
        for delivery in approval.get("callbacks", []):
            tries = delivery["tries"]
            kind = delivery["type"] + (f"/{delivery['result']}" if delivery.get("result") else "")
            last = tries[-1] if tries else {}
            answer = last.get("response")
            said = (summarize(last["httpStatus"], json.dumps(answer)) if "httpStatus" in last
                    else last.get("error", "no try yet"))
            self.out(f"  {'Zeyi calls back: ' + kind:<34} → {delivery['status']} after"
                     f" {len(tries)} {'try' if len(tries) == 1 else 'tries'}; the gateway"
                     f" answered {said}")
            if self.raw:
                self.out(f"      {json.dumps(answer, ensure_ascii=False)}")

    def wait_status(self, code: str, wanted: str) -> str | None:
        """Wait until the gateway says ``wanted`` (or give up), then show its answer."""
        deadline = time.monotonic() + WAIT_SECONDS
        status = self.status(code, show=False)
        while status != wanted and time.monotonic() < deadline:
            time.sleep(0.2)
            status = self.status(code, show=False)
        return self.status(code)

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

    def files(self, code: str) -> None:
        from urllib.parse import unquote

        self.step(f"6. {FILE_NAME}: upload it, send {code} with its fileId, click the link")
        answer = requests.post(f"{self.gateway}/files", json={
            "fileName": FILE_NAME, "contentType": "application/pdf", "size": len(FILE_BYTES)},
            timeout=30)
        result = (self.show("POST /files", answer) or {}).get("result") or {}
        self.expect(answer.status_code == 200, "an upload form for the attachments bucket")
        if answer.status_code != 200:
            return
        form = result["upload"]
        stored = requests.post(form["url"], data=form["fields"],
                               files={"file": (FILE_NAME, FILE_BYTES)}, timeout=30)
        self.out(f"  POST {form['url']} (S3, the form's fields + the file): HTTP"
                 f" {stored.status_code}")
        self.expect(stored.status_code == 204, "S3 took the bytes")
        body = send_body(code)
        body["auditFormList"][1] = {"type": "file", "key": "合同附件", "value": result["fileId"]}
        self.codes.append(code)
        response = requests.post(f"{self.gateway}/audit/send", json=body, timeout=30)
        self.show(f"POST /audit/send {code} (合同附件 = {result['fileId']})", response)
        self.expect(response.status_code == 200, "send accepted")
        sent = requests.get(f"{self.zeyi}/_control/approvals/{code}", timeout=30).json()
        field = next(f for f in sent["request"]["auditFormList"] if f["key"] == "合同附件")
        link = field["value"]
        self.out(f"  Zeyi received 合同附件 = {link[:90]}… (extendValue {field['extendValue']})")
        self.expect(link.startswith(f"{self.gateway}/files/"), "a stable link on the gateway")
        click = requests.get(link, allow_redirects=False, timeout=30)
        location = click.headers.get("Location", "")
        self.out(f"  GET the link: HTTP {click.status_code} → {location[:80]}…")
        if click.status_code != 302:
            self.expect(False, "302 to the file")
            return
        got = requests.get(click.headers["Location"], timeout=30)
        disposition = got.headers.get("Content-Disposition", "")
        name = unquote(disposition.split("filename*=UTF-8''")[-1]) if "filename*=" in \
            disposition else ""
        self.out(f"  GET the file: HTTP {got.status_code}, {len(got.content)} bytes,"
                 f" {got.headers.get('Content-Type')}, named {name}")
        self.expect(got.content == FILE_BYTES and name == FILE_NAME,
                    "the exact bytes, under the Chinese name")
        attempts = requests.get(f"{self.gateway}/audit/{code}", timeout=30).json()["result"][
            "attempts"]
        self.out(f"  GET /audit/{code}: fileClickCount = {attempts[0].get('fileClickCount')}")
        self.decide(code, "agree")

    def run(self, suffix: str) -> int:
        agree, refuse, cancel = (f"DEMO-{suffix}-A", f"DEMO-{suffix}-R", f"DEMO-{suffix}-C")

        self.step(f"1. send {agree}, Zeyi agrees, the callback makes it AGREED")
        self.expect(self.send(agree).status_code == 200, "send accepted")
        self.expect(self.status(agree) == "PENDING", "PENDING while Zeyi decides")
        self.decide(agree, "agree")
        self.wait_callback(agree)
        self.expect(self.wait_status(agree, "AGREED") == "AGREED", "AGREED after the callback")
        self.events(agree, ["Approval Submitted", "Approval Pending", "Approval Agreed"])

        self.step(f"2. send {refuse}, Zeyi refuses")
        self.expect(self.send(refuse).status_code == 200, "send accepted")
        self.decide(refuse, "refuse")
        self.wait_callback(refuse)
        self.expect(self.wait_status(refuse, "REFUSED") == "REFUSED", "REFUSED after the callback")
        self.events(refuse, ["Approval Submitted", "Approval Pending", "Approval Refused"])

        self.step(f"3. send {cancel}, then cancel it: CANCELLING until Zeyi's terminate callback")
        self.expect(self.send(cancel).status_code == 200, "send accepted")
        response = requests.post(f"{self.gateway}/audit/cancel", json=cancel_body(cancel),
                                 timeout=30)
        self.show(f"POST /audit/cancel {cancel}", response)
        payload = response.json() if response.content else {}
        self.expect(response.status_code == 200
                    and (payload.get("result") or {}).get("status") == "CANCELLING",
                    "Zeyi accepted the cancel: CANCELLING until its terminate callback")
        self.wait_callback(cancel)
        self.expect(self.wait_status(cancel, "TERMINATED") == "TERMINATED",
                    "TERMINATED after the terminate callback")
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

        keyed = f"DEMO-{suffix}-K"
        key = f"demo-{suffix}-order-4711"
        self.step(f"5. send {keyed} with Idempotency-Key {key}, then retry it, as a client does"
                  " after a timeout")
        if keyed not in self.codes:
            self.codes.append(keyed)
        answers = []
        for label in ("first try", "retry"):
            response = requests.post(f"{self.gateway}/audit/send", json=send_body(keyed),
                                     headers={"Idempotency-Key": key}, timeout=30)
            answers.append((response.status_code, self.show(f"POST /audit/send {keyed}"
                                                            f" ({label})", response)))
        self.expect(answers[0][0] == 200 and answers[1] == answers[0],
                    "the retry got the first answer again: same status, same body")
        sent = requests.get(f"{self.zeyi}/_control/requests", params={"kind": "send",
                                                                      "code": keyed},
                            timeout=30).json().get("requests", [])
        self.expect(len(sent) == 1, "Zeyi received the send once")
        response = requests.post(f"{self.gateway}/audit/send",
                                 json={**send_body(keyed), "orgCode": "OTHER"},
                                 headers={"Idempotency-Key": key}, timeout=30)
        payload = self.show(f"POST /audit/send {keyed} (same key, another body)", response)
        self.expect(response.status_code == 422
                    and (payload or {}).get("errorCode") == "IDEMPOTENCY_KEY_REUSED",
                    "422 IDEMPOTENCY_KEY_REUSED")

        self.files(f"DEMO-{suffix}-F")

        self.step(f"7. DingTalk revokes {agree}'s agreed approval: Zeyi's terminate makes it"
                  " REVOKED")
        self.decide(agree, "terminate")
        self.wait_callback(agree)
        self.expect(self.wait_status(agree, "REVOKED") == "REVOKED", "REVOKED after the callback")
        self.events(agree, ["Approval Submitted", "Approval Pending", "Approval Agreed",
                            "Approval Revoked"])

        self.step("8. GET /audit/{code} for each")
        for code in self.codes:
            response = requests.get(f"{self.gateway}/audit/{code}", timeout=30)
            result = (response.json() or {}).get("result") or {}
            applied = [c for c in result.get("callbacks", [])
                       if c.get("disposition") == "applied"]
            attempts = result.get("attemptCount", len(result.get("attempts", [])))
            self.out(f"  {code:<16} {result.get('status')}, {plural(attempts, 'attempt')},"
                     f" {plural(len(applied), 'callback')} applied")

        if self.failures:
            self.out(f"\n{len(self.failures)} step(s) did not do what they should:")
            for failure in self.failures:
                self.out(f"  ✗ {failure}")
            return 1
        self.out("\nEvery step did what it should. What the gateway sent to Zeyi:"
                 f" curl -s {self.zeyi}/_control/requests | {pretty_printer()}")
        return 0


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox.demo",
                                     description="Every flow of the gateway, against make run.")
    parser.add_argument("--raw", action="store_true",
                        default=os.environ.get("DEMO_RAW", "").strip().lower()
                        in {"1", "true", "yes", "on"},
                        help="also print every answer's raw envelope (or DEMO_RAW=true)")
    args = parser.parse_args(argv)
    try:
        ports = ports_from_env()
    except StackError as error:
        print(f"demo: {error}", file=sys.stderr)
        return 2
    demo = Demo(gateway=f"http://127.0.0.1:{ports[GATEWAY_PORT_ENV]}",
                zeyi=f"http://127.0.0.1:{ports[ZEYI_PORT_ENV]}",
                aws=f"http://127.0.0.1:{ports[AWS_PORT_ENV]}",
                out=lambda line: print(line, flush=True), raw=args.raw)
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
    # The time of day is unique enough: make run starts from empty tables, and one demo takes
    # longer than a second.
    suffix = os.environ.get("DEMO_SUFFIX") or time.strftime("%H%M%S")
    return demo.run(suffix)


if __name__ == "__main__":
    sys.exit(main())
