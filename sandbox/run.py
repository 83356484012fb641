"""``make run``: the whole gateway on this machine, with no AWS account and no Zeyi.

Starts moto server (DynamoDB + Secrets Manager), creates the local stage's tables and secrets
with ``ops.bootstrap`` (the deploy path's own code), starts the Zeyi simulator, then the gateway
with ``chalice local --stage local``. Ctrl-C or SIGTERM stops all three. See docs/sandbox.md.

Ports: SANDBOX_GATEWAY_PORT (8000), SANDBOX_ZEYI_PORT (8001), SANDBOX_AWS_PORT (5000).
SANDBOX_AUTO_DECIDE=agree|refuse|terminate|by-suffix makes the simulator decide by itself.
SANDBOX_ENCRYPT=true encrypts both directions (the gateway's ZEYI_ENCRYPT and CALLBACK_ENCRYPTED).
"""
from __future__ import annotations

import os
import signal
import sys
import time

from sandbox.stack import (
    AWS_PORT_ENV,
    DEFAULT_LOG_DIR,
    GATEWAY_PORT_ENV,
    ZEYI_PORT_ENV,
    SandboxStack,
    StackError,
    ports_from_env,
)

AUTO_DECIDE_ENV = "SANDBOX_AUTO_DECIDE"
ENCRYPT_ENV = "SANDBOX_ENCRYPT"
SAMPLE_SEND = ('{"code":"HT-1","auditType":"CONTRACT","originatorUsername":"E1001",'
               '"orgCode":"ORG-1","auditFormList":[{"type":"text","key":"amount",'
               '"value":"100.00"}]}')


def build_stack(environ=os.environ) -> SandboxStack:
    """The stack ``make run`` starts, configured from the environment. Raises StackError."""
    ports = ports_from_env(environ)
    simulator_args = []
    rule = environ.get(AUTO_DECIDE_ENV, "").strip()
    if rule:
        simulator_args += ["--auto-decide", rule]
    gateway_env = {}
    if environ.get(ENCRYPT_ENV, "").strip().lower() in {"1", "true", "yes", "on"}:
        simulator_args += ["--encrypt-requests", "--encrypt-callbacks"]
        gateway_env = {"ZEYI_ENCRYPT": "true", "CALLBACK_ENCRYPTED": "true"}
    return SandboxStack(gateway_port=ports[GATEWAY_PORT_ENV], zeyi_port=ports[ZEYI_PORT_ENV],
                        aws_port=ports[AWS_PORT_ENV], log_dir=None,
                        simulator_args=simulator_args, gateway_env=gateway_env,
                        progress=lambda line: print(line, flush=True))


def banner(stack: SandboxStack) -> str:
    g, z = stack.gateway_url, stack.zeyi_url
    custom = [f"{name}={port}" for name, port, default in (
        (GATEWAY_PORT_ENV, stack.gateway_port, 8000), (ZEYI_PORT_ENV, stack.zeyi_port, 8001),
        (AWS_PORT_ENV, stack.aws_port, 5000)) if port != default]
    demo = " ".join([*custom, "make demo"])
    return f"""
Sandbox is up:
  gateway         {g}   chalice local, stage local (internal routes need no auth here)
  Zeyi simulator  {z}   control API under {z}/_control/
  AWS (moto)      {stack.aws_url}   DynamoDB + Secrets Manager; log in {DEFAULT_LOG_DIR}/moto.log

Try, in another terminal:
  {demo}
or by hand:
  curl -s -X POST {g}/audit/send -H 'Content-Type: application/json' -d '{SAMPLE_SEND}'
  curl -s {g}/audit/HT-1
  curl -s -X POST {z}/_control/approvals/HT-1/agree     # Zeyi agrees; it calls the gateway back
  curl -s {g}/audit/HT-1                                # now AGREED
  curl -s {z}/_control/requests                         # what the gateway sent to Zeyi

docs/sandbox.md explains the rest. Ctrl-C stops all three processes.
"""


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
            stack.start()
        except StackError as error:
            print(f"sandbox: {error}", file=sys.stderr)
            return 1
        print(banner(stack), flush=True)
        while True:
            dead = stack.dead()
            if dead:
                print(f"sandbox: {', '.join(dead)} stopped unexpectedly; stopping the rest",
                      file=sys.stderr)
                return 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\nsandbox: stopping...", flush=True)
        return 0
    finally:
        # A second Ctrl-C must not cut the clean-up short and leave a process behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stack.stop()
        print("sandbox: stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())
