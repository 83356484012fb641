"""Cold-start hygiene and client configuration: what every Lambda container pays."""
from __future__ import annotations

import subprocess
import sys

from chalicelib import aws


def test_importing_the_app_leaves_route_specific_libraries_unloaded():
    # requests (~90 ms) and pycryptodome (~50 ms) serve only the outbound routes and encryption;
    # boto3 (~190 ms) loads with the first client, not at import.
    code = ("import sys, app; print(','.join(m for m in ('requests', 'Crypto', 'boto3', "
            "'chalicelib.outbound', 'chalicelib.zeyi_client') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, timeout=60).stdout.strip()
    assert loaded == ""


def test_aws_clients_fail_fast_and_are_shared(aws_env):
    client = aws.client("dynamodb")
    assert aws.client("dynamodb") is client
    config = client.meta.config
    assert config.retries["mode"] == "standard" and config.retries["total_max_attempts"] == 3
    assert config.connect_timeout == 1.0 and config.read_timeout == 3.0


def test_app_never_runs_in_debug_mode():
    import app

    assert app.app.debug is False
