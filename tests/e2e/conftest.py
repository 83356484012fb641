"""The sandbox's three real processes (moto server, Zeyi simulator, the gateway) on free
loopback ports, started with the same ``SandboxStack`` that ``make run`` uses, once per session
(under ``make test``'s pytest-xdist, once per worker that runs one of these tests: each its own
ports and log folder); and a headless Chromium for the inbox page, when the machine has one.

Every test here is marked ``e2e``; each uses its own codes, so tests share the stack safely.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from sandbox.stack import PROJECT_DIR, SandboxStack, free_port
from tests.e2e.client import Sandbox

# Zeyi keeps retrying a callback long enough to outlast a gateway restart (~2 s) in the tests.
SIMULATOR_ARGS = ["--callback-max-tries", "40", "--callback-first-backoff", "0.1",
                  "--callback-max-backoff", "0.5", "--cancel-callback-delay", "0.5"]
# moto server applies one request at a time; with the burst test's 200 approvals in flight, and
# make test's other worker busy on the same two cores, a request can wait in its queue longer
# than the 3 s read timeout the gateway keeps for DynamoDB's own millisecond answers. The tests
# are about what the gateway does with its answers, not about how fast the emulator gives them.
GATEWAY_ENV = {"AWS_READ_TIMEOUT_SECONDS": "15"}
HERE = Path(__file__).resolve().parent
ARTIFACTS_DIR = PROJECT_DIR / "build" / "test-artifacts"
"""Screenshots a reviewer can look at (git-ignored, like all of build/)."""
HOW_TO_ENABLE_BROWSER_TESTS = (
    "as root: apt-get install chromium chromium-driver fonts-wqy-zenhei (.ci/run does this)")
# Debian's chromium driven by Debian's chromium-driver: Selenium's own driver and browser
# downloads are not reachable here, and the two packages always match each other's version.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-dev-shm-usage", "--window-size=1400,1100"]


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    sandbox = SandboxStack(gateway_port=free_port(), zeyi_port=free_port(), aws_port=free_port(),
                           log_dir=tmp_path_factory.mktemp("sandbox-logs"),
                           simulator_args=SIMULATOR_ARGS, gateway_env=GATEWAY_ENV,
                           aws_request_log=False)
    sandbox.start()
    yield sandbox
    sandbox.stop()


@pytest.fixture(scope="session")
def sandbox(stack) -> Sandbox:
    return Sandbox(stack.gateway_url, stack.zeyi_url)


@pytest.fixture(scope="session")
def approval_events(stack):
    """Every approval event on the stage's bus, collected all session by an internal app of the
    tests' own (its queue and rule), so the sandbox's internal app queue stays make demo's."""
    from tests.e2e.approval_events import EventCollector, subscribe

    collector = EventCollector(stack.aws_client("sqs"), subscribe(stack, "e2e-tests")).start()
    yield collector
    collector.stop()


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, saying how to enable them; None when they can.

    A browser test module skips itself with this at import, so ``make test`` shows one line for
    the whole module instead of one per test."""
    missing = [name for name, program in (("chromium", "chromium"),
                                          ("chromium-driver", "chromedriver"))
               if shutil.which(program) is None]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (make test installs it)")
    if not missing:
        return None
    return f"browser tests need {' and '.join(missing)}; {HOW_TO_ENABLE_BROWSER_TESTS}"


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium under Selenium."""
    reason = browser_missing()
    if reason is not None:
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for argument in CHROMIUM_ARGS:
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        yield driver
    finally:
        driver.quit()
