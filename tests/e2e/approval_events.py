"""An internal app of the end-to-end tests' own: everything a rule on the stage's bus delivers to
its queue, collected in the background for the whole session (so no test takes another's
events), by code."""
from __future__ import annotations

import json
import threading
import time


def subscribe(stack, name: str) -> str:
    """A queue of its own, and a rule sending it every approval event of the sandbox's bus, as an
    internal app sets up; its URL."""
    from chalicelib.approvals.events import SOURCE

    sqs, bridge = stack.aws_client("sqs"), stack.aws_client("events")
    bus = stack.stage_environment()["EVENT_BUS_NAME"]
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"]
    bridge.put_rule(Name=name, EventBusName=bus, EventPattern=json.dumps({"source": [SOURCE]}))
    bridge.put_targets(Rule=name, EventBusName=bus, Targets=[{"Id": name, "Arn": arn}])
    return url


class EventCollector:
    def __init__(self, sqs, queue_url: str):
        self._sqs = sqs
        self._url = queue_url
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._by_code: dict[str, list[dict]] = {}
        self._thread = threading.Thread(target=self._run, name="approval-events", daemon=True)

    def start(self) -> EventCollector:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                messages = self._sqs.receive_message(QueueUrl=self._url, MaxNumberOfMessages=10,
                                                     WaitTimeSeconds=1).get("Messages", [])
            except Exception:  # moto busy or restarting: the messages wait in the queue
                self._stop.wait(0.2)
                continue
            for message in messages:
                event = json.loads(message["Body"])
                with self._lock:
                    self._by_code.setdefault(event["detail"]["code"], []).append(event)
                self._sqs.delete_message(QueueUrl=self._url,
                                         ReceiptHandle=message["ReceiptHandle"])

    def received(self, code: str) -> list[dict]:
        """Every delivery for ``code``, duplicates included, in arrival order."""
        with self._lock:
            return list(self._by_code.get(code, []))

    def distinct(self, code: str) -> list[dict]:
        """One delivery per eventId, by sequence."""
        first: dict[str, dict] = {}
        for event in self.received(code):
            first.setdefault(event["detail"]["eventId"], event)
        return sorted(first.values(), key=lambda event: event["detail"]["sequence"])

    def wait(self, code: str, count: int, timeout_seconds: float = 30,
             settle_seconds: float = 1.0) -> list[dict]:
        """The distinct events of ``code`` once there are ``count`` of them (or the time is up),
        after ``settle_seconds`` more in which an unexpected one could still arrive."""
        deadline = time.monotonic() + timeout_seconds
        while len(self.distinct(code)) < count and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(settle_seconds)
        return self.distinct(code)

    def wait_all(self, codes, count_of, timeout_seconds: float) -> dict[str, list[dict]]:
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            if all(len(self.distinct(code)) >= count_of(code) for code in codes):
                break
            time.sleep(0.5)
        return {code: self.distinct(code) for code in codes}
