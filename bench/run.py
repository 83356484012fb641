"""``python -m bench``: the gateway's callback next to the floor, warm and cold, and the AWS calls
of each operation (see bench/__init__.py). Exits 1 when a ratio is over its budget.

    python -m bench [--rounds 5] [--warm-calls 400] [--cold-runs 2] [--project DIR] [--json]

``--project`` times another checkout's app.py (say, main before a change) with this harness.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORKER = ROOT / "bench" / "worker.py"
# The budgets: metrics, correlation and tracing keep the gateway within 1.5x of the floor warm;
# cold, with what only some handlers use loaded on first use (the events outbox, the stuck
# search, the outbound use cases, the Zeyi client, the table tooling) and one boto3 session,
# within 1.3x. Against a zero-latency stand-in the ratio is the CPU the gateway adds, at its
# largest; next to DynamoDB's own milliseconds in a region it is small.
BUDGET = {"warm": 1.5, "cold": 1.3}
HANDLERS = ("gateway", "floor")
TRACE = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"


class StandIn:
    def __init__(self):
        self.process = subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "bench.stand_in"], cwd=ROOT, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True)
        self.ports = json.loads(self.process.stdout.readline())

    def close(self):
        self.process.stdin.close()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)


def worker_env(stand_in: StandIn, project: Path, scratch: Path) -> dict:
    """A Lambda function's environment: the stage's settings, the runtime's variables and an
    active, sampled trace."""
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(("AWS_", "POWERTOOLS_", "_X_AMZN"))}
    env.update({
        "PYTHONPATH": os.pathsep.join([str(project), str(ROOT)]),
        "PYTHONUNBUFFERED": "1",  # as the Lambda runtime writes each log line at once
        "PYTHONDONTWRITEBYTECODE": "1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{stand_in.ports['aws']}",
        "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(scratch / "no-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(scratch / "no-credentials"),
        "AWS_LAMBDA_FUNCTION_NAME": "jinrun-approval-gateway-bench",
        "LAMBDA_TASK_ROOT": str(project),
        "AWS_XRAY_DAEMON_ADDRESS": f"127.0.0.1:{stand_in.ports['xray']}",
        "_X_AMZN_TRACE_ID": TRACE,
        "APPROVALS_TABLE": "bench-approvals", "NONCES_TABLE": "bench-nonces",
        "OUTBOUND_SECRET_ID": "bench/outbound", "INBOUND_SECRET_ID": "bench/inbound",
        "TOKEN_SECRET_ID": "bench/token-key",
        "ZEYI_BASE_URL": f"http://127.0.0.1:{stand_in.ports['zeyi']}",
        "POWERTOOLS_SERVICE_NAME": "approval-gateway",
        "POWERTOOLS_METRICS_NAMESPACE": "jinrun-approval-gateway/bench",
        "POWERTOOLS_LOG_LEVEL": "INFO",
    })
    return env


def run_worker(args: list[str], env: dict, project: Path, log) -> tuple[dict, float]:
    """The worker's BENCH result and the seconds from its start to that line."""
    started = time.perf_counter()
    process = subprocess.Popen(  # noqa: S603
        [sys.executable, str(WORKER), *args], cwd=project, env=env, stdout=log,
        stderr=subprocess.PIPE, text=True)
    result, elapsed, other = None, 0.0, []
    for line in process.stderr:
        if line.startswith("BENCH ") and result is None:
            elapsed = time.perf_counter() - started
            result = json.loads(line[len("BENCH "):])
        else:
            other.append(line)
    process.wait(timeout=120)
    if process.returncode != 0 or result is None:
        raise RuntimeError(f"worker {' '.join(args)} failed (exit {process.returncode}):\n"
                           + "".join(other[-30:]))
    return result, elapsed


def measure(rounds: int, warm_calls: int, cold_runs: int, project: Path) -> dict:
    sys.path.insert(0, str(ROOT))
    from bench.worker import callback_event

    stand_in = StandIn()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-") as scratch_dir:
            scratch = Path(scratch_dir)
            env = worker_env(stand_in, project, scratch)
            event_file = scratch / "event.json"
            log = (scratch / "handler-output.log").open("w")
            warm = {h: [] for h in HANDLERS}
            cold = {h: [] for h in HANDLERS}
            for _ in range(rounds):
                for handler in HANDLERS:
                    result, _ = run_worker(["warm", handler, str(warm_calls)], env, project, log)
                    warm[handler].append(statistics.median(result["wall_us"]))
                for run in range(cold_runs):
                    for handler in (HANDLERS if run % 2 == 0 else HANDLERS[::-1]):
                        # A fresh nonce per run: nothing checks it, but the request is real.
                        event_file.write_text(json.dumps(callback_event(100 + run)))
                        _, seconds = run_worker(["cold", handler], {
                            **env, "BENCH_EVENT_FILE": str(event_file)}, project, log)
                        cold[handler].append(seconds * 1000)
            calls = {h: run_worker(["calls", h], env, project, log)[0]["calls"]
                     for h in HANDLERS}
            log.close()
    finally:
        stand_in.close()
    figures = {
        "warm": {h: statistics.median(warm[h]) for h in HANDLERS},
        "cold": {h: statistics.median(cold[h]) for h in HANDLERS},
        "samples": {"warm_calls_per_round": warm_calls, "rounds": rounds,
                    "cold_runs": rounds * cold_runs},
        "calls": calls,
    }
    for kind in ("warm", "cold"):
        figures[kind]["ratio"] = figures[kind]["gateway"] / figures[kind]["floor"]
        figures[kind]["budget"] = BUDGET[kind]
    return figures


def _calls(counts: dict) -> str:
    return ", ".join(f"{name} ×{count}" for name, count in sorted(counts.items())) or "none"


def table(figures: dict) -> str:
    warm, cold = figures["warm"], figures["cold"]
    rows = [
        "| | gateway | floor | ratio | budget |",
        "|---|---:|---:|---:|---:|",
        f"| warm callback (median µs per call) | {warm['gateway']:,.0f} | {warm['floor']:,.0f} |"
        f" {warm['ratio']:.2f}× | ≤ {warm['budget']}× |",
        f"| cold first callback (median ms, process start to answer) | {cold['gateway']:,.0f} |"
        f" {cold['floor']:,.0f} | {cold['ratio']:.2f}× | ≤ {cold['budget']}× |",
        "",
        "| operation | AWS calls (gateway) |",
        "|---|---|",
    ]
    for operation, counts in figures["calls"]["gateway"].items():
        rows.append(f"| {operation} | {_calls(counts)} |")
    for operation, counts in figures["calls"]["floor"].items():
        rows.append(f"| floor: {operation} | {_calls(counts)} |")
    samples = figures["samples"]
    rows += ["", f"{samples['rounds']} rounds of {samples['warm_calls_per_round']} warm calls,"
             f" {samples['cold_runs']} cold starts per handler; tracing sampled."]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warm-calls", type=int, default=400)
    parser.add_argument("--cold-runs", type=int, default=2)
    parser.add_argument("--project", type=Path, default=ROOT,
                        help="the checkout whose app.py is timed (default: this one)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    figures = measure(args.rounds, args.warm_calls, args.cold_runs, args.project.resolve())
    print(json.dumps(figures, indent=2) if args.json else table(figures))
    over = [kind for kind in ("warm", "cold") if figures[kind]["ratio"] > BUDGET[kind]]
    if over:
        print(f"over budget: {', '.join(over)}", file=sys.stderr)
        return 1
    return 0
