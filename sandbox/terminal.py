"""The terminal ``make run`` shares between its processes.

The gateway, the Zeyi simulator and the events poller all write to it, unbuffered (their
environment sets PYTHONUNBUFFERED so a line shows as it happens). ``print`` then issues two
writes, the text and its newline, and another process's line can land between them. One
``write`` of a whole line below PIPE_BUF is atomic on a pipe, and a terminal does not split it.
"""
from __future__ import annotations

import sys
import threading
from typing import TextIO

_LOCK = threading.Lock()  # and within one process, threads take turns


def say(line: str, stream: TextIO | None = None) -> None:
    """Write ``line`` and its newline in one write, then flush."""
    stream = stream or sys.stderr
    with _LOCK:
        stream.write(line + "\n")
        stream.flush()
