"""A minimal consumer of the approval gateway's events, for an internal team to copy.

Your rule on the stage's bus (``jinrun-approval-events-<stage>``) sends the events you want to
your SQS queue (README, "Approval events"). This reads the queue and follows docs/events.md's
ordering contract, so it acts on every change of an approval's status exactly once, in whatever
order EventBridge delivers:

- a duplicate (the same ``detail.eventId`` again) is dropped: delivery is at least once;
- every status change (each detail-type but "Approval Callback Recorded") is acted on once, and
  ``detail.sequence`` says whether it is the code's current status (above every status change
  acted on for that code) or a *late* one, overtaken by a later change already acted on (an
  "Approval Agreed" delivered after the "Approval Revoked" that followed it: the agreement
  happened, and was revoked since; do not release the contract now);
- "Approval Callback Recorded" (Zeyi said something that changed no status) is a note: acted on
  once, and it never moves the code's sequence, so it can never make a status change look late.

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

NEW, LATE, NOTE, DUPLICATE = "new", "late", "note", "duplicate"
CALLBACK_RECORDED = "Approval Callback Recorded"


class Seen:
    """What this consumer has acted on: the event ids, and per code the sequence and status of
    the latest status change.

    In memory here. Keep it in your own database instead, and update it in the same transaction
    as what ``act`` changes, so that a crash between the two can never act twice."""

    def __init__(self):
        self.event_ids: set[str] = set()
        self.sequences: dict[str, int] = {}
        self.statuses: dict[str, str] = {}

    def verdict(self, event: dict) -> str:
        detail = event["detail"]
        if detail["eventId"] in self.event_ids:
            return DUPLICATE
        if event["detail-type"] == CALLBACK_RECORDED:
            return NOTE
        if detail["sequence"] <= self.sequences.get(detail["code"], 0):
            return LATE
        return NEW

    def remember(self, event: dict, verdict: str) -> None:
        detail = event["detail"]
        self.event_ids.add(detail["eventId"])
        if verdict == NEW:
            self.sequences[detail["code"]] = detail["sequence"]
            self.statuses[detail["code"]] = detail["status"]


def act(event: dict, verdict: str) -> None:
    """Your business. Here: say what happened. A contracts app would, say, release the contract
    on a NEW "Approval Agreed", reopen it for editing on "Approval Refused", and withdraw it on
    "Approval Revoked"; a LATE one only goes into its history."""
    detail = event["detail"]
    previous = detail["previousStatus"] or "(first change)"
    line = (f"{detail['code']} #{detail['sequence']} {event['detail-type']}: "
            f"{previous} → {detail['status']}")
    if detail.get("auditUser"):
        line += f" by {detail['auditUser']}"
    if detail.get("remark"):
        line += f" ({detail['remark']})"
    resolution = detail.get("resolution")
    if isinstance(resolution, dict):
        line += (f", closed by an operator ({resolution.get('by')}:"
                 f" {resolution.get('reason')})")
    if verdict == LATE:
        line += " [late: a later change was already acted on]"
    print(line, flush=True)


def handle(body: str, seen: Seen, act=act) -> str:
    """One message: act on it unless it is a duplicate; return what it was."""
    event = json.loads(body)
    verdict = seen.verdict(event)
    if verdict != DUPLICATE:
        act(event, verdict)
        seen.remember(event, verdict)
    return verdict


def consume(sqs, queue_url: str, seen: Seen, *, act=act, once: bool = False,
            wait_seconds: int = 20) -> dict[str, int]:
    """Read the queue until it is empty (``once``) or forever; counts of new, late, note and
    duplicate events."""
    counts = {NEW: 0, LATE: 0, NOTE: 0, DUPLICATE: 0}
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
    print(f"{counts[NEW] + counts[LATE] + counts[NOTE]} acted on ({counts[LATE]} late,"
          f" {counts[NOTE]} note(s)), {counts[DUPLICATE]} duplicate(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
