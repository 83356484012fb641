"""The sandbox's three real processes (moto server, Zeyi simulator, chalice local) on free
loopback ports, started with the same ``SandboxStack`` that ``make run`` uses, once per session.

Every test here is marked ``e2e``; each uses its own codes, so tests share the stack safely.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from sandbox.stack import SandboxStack, free_port
from tests.e2e.client import Sandbox

# Zeyi keeps retrying a callback long enough to outlast a gateway restart (~2 s) in the tests.
SIMULATOR_ARGS = ["--callback-max-tries", "40", "--callback-first-backoff", "0.1",
                  "--callback-max-backoff", "0.5", "--cancel-callback-delay", "0.5"]
HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    sandbox = SandboxStack(gateway_port=free_port(), zeyi_port=free_port(), aws_port=free_port(),
                           log_dir=tmp_path_factory.mktemp("sandbox-logs"),
                           simulator_args=SIMULATOR_ARGS)
    sandbox.start()
    yield sandbox
    sandbox.stop()


@pytest.fixture(scope="session")
def sandbox(stack) -> Sandbox:
    return Sandbox(stack.gateway_url, stack.zeyi_url)
