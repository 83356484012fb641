"""``make run``'s processes share one terminal: a line from one never lands inside another's."""
import os
import subprocess
import sys

import pytest

from sandbox.stack import PROJECT_DIR

pytestmark = pytest.mark.process  # every test here starts a Python process

LINES = 3000
WRITER = """
import sys
from sandbox.terminal import say
name = sys.argv[1]
for number in range(int(sys.argv[2])):
    say(f"[{name}] line {number} " + "x" * 60)
"""


def test_unbuffered_processes_writing_at_once_keep_every_line_whole():
    read, write = os.pipe()
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(PROJECT_DIR))
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, name, str(LINES)], stderr=write,
                                cwd=PROJECT_DIR, env=env) for name in ("gateway", "events")]
    os.close(write)
    with os.fdopen(read, encoding="utf-8") as shared:
        lines = shared.read().splitlines()
    assert [writer.wait(timeout=60) for writer in writers] == [0, 0]
    for name in ("gateway", "events"):
        assert [line for line in lines if line.startswith(f"[{name}]")] == [
            f"[{name}] line {number} " + "x" * 60 for number in range(LINES)]
    assert len(lines) == 2 * LINES


# ----- what make run prints ------------------------------------------------------------------

def test_a_busy_ports_holder_is_cut_between_arguments_never_inside_one():
    from sandbox.stack import shortened

    command = ("/work/project/.venv/bin/python -m sandbox.gateway --stage local --host 127.0.0.1"
               " --port 8000 --setting=ALLOWED_SOURCE_IPS=127.0.0.1")
    cut = shortened(command, limit=80)
    assert cut.endswith(" …") and len(cut) <= 82
    kept = cut.removesuffix(" …").split(" ")
    assert kept == command.split(" ")[:len(kept)]  # whole arguments, in order
    assert shortened("python -m sandbox.zeyi --port 8001") == "python -m sandbox.zeyi --port 8001"


def test_the_pretty_printer_make_run_suggests_indents_and_keeps_chinese_readable():
    from sandbox.run import pretty_printer

    answer = '{"success":true,"result":{"code":"HT-1","remark":"同意"}}'
    shown = subprocess.run(pretty_printer(), shell=True, input=answer, capture_output=True,  # noqa: S602 - the banner's own command
                           text=True, timeout=30, check=True).stdout
    assert '"remark": "同意"' in shown
    assert len(shown.splitlines()) > 3


def test_make_runs_switches_for_the_allowlist_and_the_legacy_sign():
    from sandbox.run import build_stack

    stack = build_stack({"SANDBOX_ALLOWED_SOURCE_IPS": "127.0.0.1, 10.0.0.0/8",
                         "SANDBOX_LEGACY_SIGN": "true"})
    assert stack.gateway_settings == {"ALLOWED_SOURCE_IPS": "127.0.0.1, 10.0.0.0/8"}
    assert stack.inbound_legacy_sign is True and "--legacy-sign" in stack.simulator_args
    zeyi_only = build_stack({"SANDBOX_LEGACY_SIGN": "zeyi-only"})
    assert zeyi_only.inbound_legacy_sign is False and "--legacy-sign" in zeyi_only.simulator_args
    plain = build_stack({})
    assert (plain.gateway_settings, plain.inbound_legacy_sign) == ({}, False)
    assert "--legacy-sign" not in plain.simulator_args


@pytest.mark.parametrize(("name", "value"), [("SANDBOX_ALLOWED_SOURCE_IPS", "10.0.0.0/8,zeyi"),
                                             ("SANDBOX_LEGACY_SIGN", "sometimes")])
def test_a_bad_switch_stops_make_run_before_anything_starts(name, value):
    from sandbox.run import build_stack
    from sandbox.stack import StackError

    with pytest.raises(StackError, match=name):
        build_stack({name: value})
