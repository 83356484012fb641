"""``make run``: the whole gateway on this machine, with no AWS account and no Zeyi.

Starts moto server (DynamoDB, Secrets Manager, EventBridge, SQS), creates the local stage's
tables, secrets and event bus with ``ops.bootstrap`` (the deploy path's own code) and an
internal app's queue subscribed to the bus, starts the Zeyi simulator with its inbox page, the
gateway (Chalice's local server, stage ``local``), and the events poller (the approvals table's
stream → app.py's handler → the bus, as Lambda would run it). Ctrl-C or SIGTERM stops them all;
killed outright, they die with it. See docs/sandbox.md.

Ports: SANDBOX_GATEWAY_PORT (8000), SANDBOX_ZEYI_PORT (8001), SANDBOX_AWS_PORT (5000).
SANDBOX_AUTO_DECIDE=agree|refuse|terminate|by-suffix makes the simulator decide by itself.
SANDBOX_ENCRYPT=true encrypts both directions (the gateway's ZEYI_ENCRYPT and CALLBACK_ENCRYPTED).
SANDBOX_VERBOSE=true makes the simulator print every HTTP request it serves.
SANDBOX_ALLOWED_SOURCE_IPS sets the gateway's inbound IP allowlist (ALLOWED_SOURCE_IPS).
SANDBOX_LEGACY_SIGN=true has the simulator sign without the body, as Zeyi SDK 1.0.0 does, and
marks the inbound credential legacySign; =zeyi-only leaves the credential unmarked.
SANDBOX_LOG_DIR (.sandbox/logs) is where the gateway's and the events poller's JSON logs and
moto's log go.
"""
from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import signal
import sys
import time
from pathlib import Path

from sandbox.stack import (
    AWS_PORT_ENV,
    DEFAULT_LOG_DIR,
    GATEWAY_PORT_ENV,
    INTERNAL_APP_QUEUE,
    PROJECT_DIR,
    ZEYI_PORT_ENV,
    PortsBusyError,
    SandboxStack,
    StackError,
    port_is_free,
    ports_from_env,
)
from sandbox.terminal import say

AUTO_DECIDE_ENV = "SANDBOX_AUTO_DECIDE"
ENCRYPT_ENV = "SANDBOX_ENCRYPT"
VERBOSE_ENV = "SANDBOX_VERBOSE"
LOG_DIR_ENV = "SANDBOX_LOG_DIR"
ALLOWED_IPS_ENV = "SANDBOX_ALLOWED_SOURCE_IPS"
LEGACY_SIGN_ENV = "SANDBOX_LEGACY_SIGN"
LEGACY_ZEYI_ONLY = "zeyi-only"
STOP_WAIT_SECONDS = 10.0
SAMPLE_SEND = ('{"code":"HT-1","auditType":"CONTRACT","originatorUsername":"E1001",'
               '"orgCode":"ORG-1","auditFormList":[{"type":"text","key":"金额",'
               '"value":"100.00"}]}')


def _on(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def _off(value: str | None) -> bool:
    return (value or "").strip().lower() in {"0", "false", "no", "off"}


def build_stack(environ=os.environ) -> SandboxStack:
    """The stack ``make run`` starts, configured from the environment. Raises StackError."""
    ports = ports_from_env(environ)
    simulator_args = []
    rule = environ.get(AUTO_DECIDE_ENV, "").strip()
    if rule:
        simulator_args += ["--auto-decide", rule]
    if _on(environ.get(VERBOSE_ENV)):
        simulator_args.append("--verbose")
    gateway_env = {}
    if _on(environ.get(ENCRYPT_ENV)):
        simulator_args += ["--encrypt-requests", "--encrypt-callbacks"]
        gateway_env = {"ZEYI_ENCRYPT": "true", "CALLBACK_ENCRYPTED": "true"}
    gateway_settings = {}
    allowed = environ.get(ALLOWED_IPS_ENV, "").strip()
    if allowed:
        for entry in allowed.split(","):
            try:
                ipaddress.ip_network(entry.strip(), strict=False)
            except ValueError:
                raise StackError(f"{ALLOWED_IPS_ENV}: {entry.strip()!r} is not an IP or CIDR"
                                 " (e.g. 127.0.0.1 or 10.0.0.0/8, comma-separated)") from None
        gateway_settings["ALLOWED_SOURCE_IPS"] = allowed
    legacy = environ.get(LEGACY_SIGN_ENV, "").strip().lower()
    if legacy and legacy != LEGACY_ZEYI_ONLY and not _on(legacy) and not _off(legacy):
        raise StackError(f"{LEGACY_SIGN_ENV}={legacy!r}: use true, false or {LEGACY_ZEYI_ONLY}")
    if _on(legacy) or legacy == LEGACY_ZEYI_ONLY:
        simulator_args.append("--legacy-sign")
    log_dir = Path(environ.get(LOG_DIR_ENV, "").strip() or DEFAULT_LOG_DIR)
    return SandboxStack(gateway_port=ports[GATEWAY_PORT_ENV], zeyi_port=ports[ZEYI_PORT_ENV],
                        aws_port=ports[AWS_PORT_ENV], log_dir=None, terminal_log_dir=log_dir,
                        simulator_args=simulator_args, gateway_env=gateway_env,
                        gateway_settings=gateway_settings, inbound_legacy_sign=_on(legacy),
                        progress=lambda line: say(line, sys.stdout))


def pretty_printer() -> str:
    """A command that pretty-prints JSON from stdin with Chinese left readable: jq when it is
    installed, else Python's json.tool (``--no-ensure-ascii`` since 3.9; make needs python3)."""
    if shutil.which("jq"):
        return "jq ."
    return "python3 -m json.tool --no-ensure-ascii"


def _shown(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(PROJECT_DIR)) if path.is_relative_to(PROJECT_DIR) else str(path)


def banner(stack: SandboxStack) -> str:
    g, z = stack.gateway_url, stack.zeyi_url
    logs = _shown(stack.terminal_log_dir)
    custom = [f"{name}={port}" for name, port, default in (
        (GATEWAY_PORT_ENV, stack.gateway_port, 8000), (ZEYI_PORT_ENV, stack.zeyi_port, 8001),
        (AWS_PORT_ENV, stack.aws_port, 5000)) if port != default]
    demo = " ".join([*custom, "make demo"])
    notes = []
    if "ALLOWED_SOURCE_IPS" in stack.gateway_settings:
        notes.append(f"  allowlist       {stack.gateway_settings['ALLOWED_SOURCE_IPS']}: Zeyi's"
                     " routes refuse other source IPs (every caller here is 127.0.0.1)")
    if "--legacy-sign" in stack.simulator_args:
        notes.append("  legacy sign     the simulator signs without the body (Zeyi SDK 1.0.0); the"
                     " inbound credential " + ("takes it (legacySign)" if stack.inbound_legacy_sign
                                               else "is not marked: expect SIGN_INVALID"))
    switches = "".join(f"{note}\n" for note in notes)
    return f"""
Sandbox is up:
  gateway         {g}   the app, stage local (internal routes need no auth here)
  approver inbox  {z}/  open it in a browser: agree, refuse, terminate, watch callbacks
  Zeyi simulator  {z}   Zeyi's API, and its control API under {z}/_control/
  AWS (moto)      {stack.aws_url}   DynamoDB, Secrets Manager, EventBridge, SQS
  events          the approvals stream → bus jinrun-approval-events-local → queue
                  {INTERNAL_APP_QUEUE} (the internal app; README, "Approval events")
  logs            {logs}/gateway.log and events.log (JSON logs), {logs}/moto.log
{switches}
Try, in another terminal:
  {demo}
or by hand ($J pretty-prints the JSON answers):
  J='{pretty_printer()}'
  curl -s -X POST {g}/audit/send -H 'Content-Type: application/json' \\
    -d '{SAMPLE_SEND}' | $J
  curl -s {g}/audit/HT-1 | $J        # PENDING
  curl -s -X POST '{z}/_control/approvals/HT-1/agree?waitSeconds=10' | $J
                     # Zeyi agrees, and answers once its callback has reached the gateway
  curl -s {g}/audit/HT-1 | $J        # AGREED, with the callback it applied
  curl -s {z}/_control/requests | $J  # what the gateway sent to Zeyi
  AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1 \\
    .venv/bin/python examples/approval_events_consumer.py --endpoint-url {stack.aws_url} \\
    --queue {INTERNAL_APP_QUEUE} --once               # act on the events, as an app would

Below: one line per request to the gateway ([gateway]), per Zeyi call, decision and callback
try ([zeyi]), and per approval event published ([events]). docs/sandbox.md explains the rest.
Ctrl-C stops every process.
"""


def _offer_to_stop(error: PortsBusyError) -> bool:
    """At a terminal, offer to stop an earlier sandbox of this project that holds the ports;
    True when it was stopped and the ports are free."""
    ours = sorted({holder.pid for holder in error.holders if holder.ours})
    if not ours or not sys.stdin.isatty():
        return False
    try:
        answer = input(f"sandbox: stop the earlier sandbox (PIDs {' '.join(map(str, ours))})"
                       " now? [y/N] ")
    except EOFError:
        return False
    if answer.strip().lower() not in {"y", "yes"}:
        return False
    for pid in ours:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_WAIT_SECONDS
    while time.monotonic() < deadline and not all(map(port_is_free, error.ports)):
        time.sleep(0.2)
    return all(map(port_is_free, error.ports))


def main() -> int:
    def _terminate(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    try:
        stack = build_stack()
    except StackError as error:
        print(f"sandbox: {error}", file=sys.stderr)
        return 2
    try:
        try:
            try:
                stack.start()
            except PortsBusyError as error:
                print(f"sandbox: {error}", file=sys.stderr, flush=True)
                if not _offer_to_stop(error):
                    return 1
                stack.start()
        except StackError as error:
            print(f"sandbox: {error}", file=sys.stderr)
            return 1
        print(banner(stack), flush=True)
        while True:
            dead = stack.dead()
            if dead:
                say(f"sandbox: {', '.join(dead)} stopped unexpectedly; stopping the rest")
                return 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        say("\nsandbox: stopping...", sys.stdout)
        return 0
    finally:
        # A second Ctrl-C must not cut the clean-up short and leave a process behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stack.stop()
        say("sandbox: stopped", sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
