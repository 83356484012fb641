"""Cold-start hygiene and client configuration: what every Lambda container pays."""
from __future__ import annotations

import subprocess
import sys

import pytest

from chalicelib.runtime import aws


@pytest.mark.process
def test_importing_the_app_leaves_route_specific_libraries_unloaded():
    # requests (~90 ms) and pycryptodome (~50 ms) serve only the outbound routes and encryption;
    # boto3 (~190 ms) loads with the first client, not at import; the stuck-approvals search
    # serves one scheduled function. The X-Ray SDK is never loaded (chalicelib/runtime/tracing.py).
    code = ("import sys, app; print(','.join(m for m in ('requests', 'Crypto', 'boto3', "
            "'chalicelib.approvals.outbound', 'chalicelib.protocol.zeyi_client', 'chalicelib.approvals.stuck', "
            "'aws_xray_sdk', 'wrapt') if m in sys.modules))")
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


def test_every_stage_answers_before_its_lambda_times_out():
    # A call to Zeyi ends at its deadline; the write of its result (three tries of at most
    # connect + read timeout each) must still fit before Lambda kills the function, or Zeyi's
    # answer is lost and the caller gets API Gateway's error instead of our envelope.
    import json
    from pathlib import Path

    config = json.loads((Path(__file__).resolve().parent.parent / ".chalice" / "config.json")
                        .read_text(encoding="utf-8"))
    for name, stage in config["stages"].items():
        env = {**config.get("environment_variables", {}), **stage.get("environment_variables", {})}
        timeout = stage.get("lambda_timeout", config["lambda_timeout"])
        deadline = float(env.get("ZEYI_DEADLINE_SECONDS", 15))
        aws_call = 3 * (float(env.get("AWS_CONNECT_TIMEOUT_SECONDS", 1))
                        + float(env.get("AWS_READ_TIMEOUT_SECONDS", 3)))
        assert deadline + aws_call <= timeout, (name, deadline, aws_call, timeout)
        assert timeout < 29, f"{name}: API Gateway answers by itself after 29 s"
