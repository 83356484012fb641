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
