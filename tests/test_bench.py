"""``make bench`` stays runnable: a tiny configuration runs end to end (timings are not checked:
a timed test on a shared machine is noise), and the AWS calls it counts are the exact ones."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.test_deploy import ROOT

pytestmark = pytest.mark.process  # every test here starts a Python process


def test_the_benchmark_runs_and_counts_each_operations_aws_calls():
    completed = subprocess.run(
        [sys.executable, "-m", "bench", "--rounds", "1", "--warm-calls", "5", "--cold-runs", "1",
         "--json"], cwd=ROOT, capture_output=True, text=True, timeout=240, check=False)
    assert completed.returncode in (0, 1), completed.stderr  # 1: over budget on a busy machine
    figures = json.loads(completed.stdout)
    for kind in ("warm", "cold"):
        assert figures[kind]["gateway"] > 0 and figures[kind]["floor"] > 0
        assert figures[kind]["ratio"] == figures[kind]["gateway"] / figures[kind]["floor"]
    calls = figures["calls"]["gateway"]
    # A warm callback: one DynamoDB round trip and no other AWS call.
    assert calls["callback (warm)"] == {"dynamodb.TransactWriteItems": 1}
    assert calls["callback (first in a container)"] == {
        "dynamodb.TransactWriteItems": 1, "secretsmanager.GetSecretValue": 2}
    assert calls["token (warm)"] == {"dynamodb.PutItem": 1}
    assert calls["send (warm)"] == {"dynamodb.GetItem": 1, "dynamodb.TransactWriteItems": 2}
    assert calls["cancel (warm)"] == {"dynamodb.GetItem": 1, "dynamodb.TransactWriteItems": 1}
    # A key costs a send one UpdateItem (its answer kept; the key itself rides in the claim's
    # transaction), and a cancel a PutItem (the key taken first) and that UpdateItem.
    assert calls["send with an Idempotency-Key (warm)"] == {
        "dynamodb.GetItem": 1, "dynamodb.TransactWriteItems": 2, "dynamodb.UpdateItem": 1}
    assert calls["cancel with an Idempotency-Key (warm)"] == {
        "dynamodb.GetItem": 1, "dynamodb.PutItem": 1, "dynamodb.TransactWriteItems": 1,
        "dynamodb.UpdateItem": 1}
    assert calls["status lookup"] == {"dynamodb.Query": 1}
    assert calls["stuck approvals search"] == {"dynamodb.Query": 3}
    assert figures["calls"]["floor"]["callback (warm)"] == {"dynamodb.TransactWriteItems": 1}
    assert ("| warm callback" in subprocess.run(
        [sys.executable, "-c", "from bench.run import table; import json, sys;"
         "print(table(json.load(sys.stdin)))"], cwd=ROOT, input=completed.stdout,
        capture_output=True, text=True, timeout=60, check=True).stdout)
