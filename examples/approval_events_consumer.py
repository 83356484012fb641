"""A minimal consumer of the approval gateway's events, for an internal team to copy.

Your rule on the stage's bus (``jinrun-approval-events-<stage>``) sends the events you want to
your SQS queue (README, "Approval events"). This reads the queue, acts once per change of an
approval, and drops the rest:

- a duplicate (the same ``detail.eventId`` again): delivery is at least once;
- a stale event (``detail.sequence`` not above the last one acted on for that code): events may
  arrive out of order, and a later state supersedes an earlier one.

A message is deleted only once handled, so an ``act`` that fails is retried by SQS (give your
queue a redrive policy to a dead-letter queue of your own).

Against the sandbox (``make run``)::

    AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1 \\
    .venv/bin/python examples/approval_events_consumer.py --endpoint-url http://127.0.0.1:5000 \\
        --queue jinrun-internal-app-local --once

Needs boto3 only.
"""
from __future__ import annotations

import argparse
import json
import sys

NEW, DUPLICATE, STALE = "new", "duplicate", "stale"


class Seen:
    """What this consumer has acted on: the event ids, and the last sequence per code.

    In memory here. Keep it in your own database instead, and update it in the same transaction
    as what ``act`` changes, so that a crash between the two can never act twice."""

    def __init__(self):
        self.event_ids: set[str] = set()
        self.sequences: dict[str, int] = {}

    def verdict(self, detail: dict) -> str:
        if detail["eventId"] in self.event_ids:
            return DUPLICATE
        if detail["sequence"] <= self.sequences.get(detail["code"], 0):
            return STALE
        return NEW

    def remember(self, detail: dict) -> None:
        self.event_ids.add(detail["eventId"])
        self.sequences[detail["code"]] = detail["sequence"]


def act(event: dict) -> None:
    """Your business. Here: say what happened. A contracts app would, say, release the contract
    on "Approval Agreed" and reopen it for editing on "Approval Refused"."""
    detail = event["detail"]
    print(f"{detail['code']} #{detail['sequence']} {event['detail-type']}: "
          f"{detail['previousStatus']} → {detail['status']}"
          + (f" by {detail['auditUser']}" if detail.get("auditUser") else "")
          + (f" ({detail['remark']})" if detail.get("remark") else ""), flush=True)


def handle(body: str, seen: Seen, act=act) -> str:
    """One message: act on it if it is a new change; return what it was."""
    event = json.loads(body)
    detail = event["detail"]
    verdict = seen.verdict(detail)
    if verdict == NEW:
        act(event)
        seen.remember(detail)
    return verdict


def consume(sqs, queue_url: str, seen: Seen, *, act=act, once: bool = False,
            wait_seconds: int = 20) -> dict[str, int]:
    """Read the queue until it is empty (``once``) or forever; counts of new, duplicate and
    stale events."""
    counts = {NEW: 0, DUPLICATE: 0, STALE: 0}
    while True:
        messages = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10,
                                       WaitTimeSeconds=1 if once else wait_seconds
                                       ).get("Messages", [])
        if not messages and once:
            return counts
        for message in messages:
            counts[handle(message["Body"], seen, act)] += 1
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])


def main(argv: list[str] | None = None) -> int:
    import boto3

    parser = argparse.ArgumentParser(description="Act on the approval gateway's events.")
    parser.add_argument("--queue", required=True, help="your queue's name")
    parser.add_argument("--region", default=None)
    parser.add_argument("--endpoint-url", default=None, help="the sandbox's AWS, for a try")
    parser.add_argument("--once", action="store_true", help="stop when the queue is empty")
    args = parser.parse_args(argv)
    sqs = boto3.client("sqs", region_name=args.region, endpoint_url=args.endpoint_url)
    url = sqs.get_queue_url(QueueName=args.queue)["QueueUrl"]
    counts = consume(sqs, url, Seen(), once=args.once)
    print(f"{counts[NEW]} acted on, {counts[DUPLICATE]} duplicate(s), {counts[STALE]} stale")
    return 0


if __name__ == "__main__":
    sys.exit(main())
