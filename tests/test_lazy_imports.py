"""What a cold Lambda container loads before its first answer: only what the callback and token
routes use. The events outbox, the stuck search, the outbound use cases, the Zeyi client and the
operator's table tooling load on first use, in the function that needs them (make bench)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

# Each test imports the app in a fresh interpreter of its own.
pytestmark = pytest.mark.process

ROOT = Path(__file__).resolve().parent.parent
ON_FIRST_USE = ("chalicelib.approvals.events", "chalicelib.approvals.stuck",
                "chalicelib.approvals.outbound", "chalicelib.protocol.zeyi_client",
                "chalicelib.runtime.tables", "boto3", "requests", "Crypto")


def _loaded_by(code: str) -> set[str]:
    """The modules a fresh interpreter holds after ``code`` (imports are once per process)."""
    completed = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=True)
    return set(json.loads(completed.stdout.splitlines()[-1]))


def test_importing_the_app_loads_none_of_what_only_some_handlers_use():
    loaded = _loaded_by("import app")
    assert "chalicelib.approvals.inbound" in loaded  # the callback's own path is there
    assert sorted(name for name in ON_FIRST_USE
                  if name in loaded or any(m.startswith(name + ".") for m in loaded)) == []


def test_the_events_function_is_still_subscribed_with_its_mapping():
    loaded = _loaded_by(
        "import app\n"
        "from chalicelib.approvals import stream_mapping as m\n"
        "(source,) = [s for s in app.app.event_sources if s.name == m.FUNCTION_NAME]\n"
        "assert (source.batch_size, source.starting_position) == (m.STREAM_BATCH_SIZE,"
        " m.STREAM_STARTING_POSITION)\n"
        "from chalicelib.approvals import events\n"
        "assert events.STREAM_MAPPING is m.STREAM_MAPPING")
    assert "chalicelib.approvals.events" in loaded
