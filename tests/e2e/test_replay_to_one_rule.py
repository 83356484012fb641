"""``python -m ops events replay --rule`` against the sandbox: two internal apps (two queues,
each with its rule on the stage's bus) get an approval's events; the replay of that period
reaches only the one named. (moto's replay keeps to its window and FilterArns as AWS does:
sandbox/moto_server.py.)"""
from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

from sandbox.stack import PROJECT_DIR, REGION
from tests.e2e.approval_events import EventCollector, subscribe
from tests.e2e.client import Sandbox


def _ops(stack, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, AWS_ENDPOINT_URL=stack.aws_url, AWS_ACCESS_KEY_ID="testing",
               AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION=REGION)
    env.pop("AWS_PROFILE", None)
    return subprocess.run([sys.executable, "-m", "ops", "events", *args, "--stage", "local"],
                          cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=120,
                          check=False)


def test_a_replay_reaches_only_the_named_consumer(sandbox: Sandbox, stack):
    sqs = stack.aws_client("sqs")
    purchasing = EventCollector(sqs, subscribe(stack, "e2e-replay-purchasing")).start()
    finance = EventCollector(sqs, subscribe(stack, "e2e-replay-finance")).start()
    try:
        code = sandbox.new_code("REPLAY")
        since = datetime.now(UTC) - timedelta(seconds=5)
        assert sandbox.send(code).status_code == 200
        first = purchasing.wait(code, 2, timeout_seconds=60, settle_seconds=0)
        assert len(first) == 2 and len(finance.wait(code, 2, settle_seconds=0)) == 2
        until = datetime.now(UTC) + timedelta(seconds=5)

        listed = _ops(stack, "replay-dlq", "--dry-run")
        assert "e2e-replay-finance" in listed.stdout and "e2e-replay-purchasing" in listed.stdout

        replay = _ops(stack, "replay", "--since", since.isoformat(), "--until",
                      until.isoformat(), "--rule", "e2e-replay-finance", "--wait", "60")
        assert replay.returncode == 0, replay.stdout + replay.stderr
        assert "to rule e2e-replay-finance only" in replay.stdout
        finance.wait(code, 2, settle_seconds=1.0)
        replayed = [e for e in finance.received(code) if e.get("replay-name")]
        assert sorted(e["detail"]["sequence"] for e in replayed) == [1, 2]
        # The same events (same eventId): the consumer drops what it already had.
        assert {e["detail"]["eventId"] for e in replayed} == {
            e["detail"]["eventId"] for e in first}
        assert [e for e in purchasing.received(code) if e.get("replay-name")] == []
        assert len(purchasing.received(code)) == 2
    finally:
        purchasing.stop()
        finance.stop()
