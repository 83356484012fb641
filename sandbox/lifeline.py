"""Children of ``make run`` die with it, even when it is killed with SIGKILL and cannot stop
them: each child asks Linux for a signal when its parent goes (``PR_SET_PDEATHSIG``).

The stack passes its PID in ``SANDBOX_PARENT_PID``; a child whose parent is already gone by the
time it asks exits at once. Elsewhere than Linux this does nothing (``make run`` still stops its
children on Ctrl-C, SIGTERM and SIGHUP).
"""
from __future__ import annotations

import os
import signal
import sys

PARENT_PID_ENV = "SANDBOX_PARENT_PID"
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Be killed when the process that started this one exits (Linux; else a no-op)."""
    expected = os.environ.get(PARENT_PID_ENV, "")
    if not expected.isdigit() or not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != int(expected):  # the parent died before the request took effect
        os._exit(1)
