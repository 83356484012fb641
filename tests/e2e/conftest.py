"""The sandbox's three real processes (moto server, Zeyi simulator, the gateway) on free
loopback ports, started with the same ``SandboxStack`` that ``make run`` uses, once per session;
and a headless Chromium for the inbox page, when the machine has one.

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
                           simulator_args=SIMULATOR_ARGS)
    sandbox.start()
    yield sandbox
    sandbox.stop()


@pytest.fixture(scope="session")
def sandbox(stack) -> Sandbox:
    return Sandbox(stack.gateway_url, stack.zeyi_url)


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium under Selenium; skips (one line, saying how to enable) without it."""
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    missing = [name for name, path in (("chromium", chromium), ("chromium-driver", driver_path))
               if path is None]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("selenium (make test installs it)")
    if missing:
        pytest.skip(f"browser tests need {' and '.join(missing)}; {HOW_TO_ENABLE_BROWSER_TESTS}")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in CHROMIUM_ARGS:
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()
