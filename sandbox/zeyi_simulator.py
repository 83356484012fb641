"""The Zeyi simulator's old entry point, kept for callers of ``python -m sandbox.zeyi_simulator``
and ``from sandbox.zeyi_simulator import ...``: the simulator lives in ``sandbox.zeyi``."""
from __future__ import annotations

import sys

from sandbox.zeyi import DEFAULT_CREDENTIALS_PATH, SimulatorConfig, ZeyiSimulator, load_credentials
from sandbox.zeyi.cli import main

__all__ = ["DEFAULT_CREDENTIALS_PATH", "SimulatorConfig", "ZeyiSimulator", "load_credentials",
           "main"]

if __name__ == "__main__":
    sys.exit(main())
