"""Fixtures shared by every test: no real AWS ever, moto server on loopback, fresh tables and
secrets per test, and builders for signed requests."""
from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import os
import subprocess
import threading
import time
from pathlib import Path

import botocore.loaders
import botocore.session
import pytest
from hypothesis import settings as hypothesis_settings

from chalicelib.runtime import aws, settings
from tests.moto_server import MotoServer

REGION = "us-east-1"
APPROVALS_TABLE = "test-approvals"
NONCES_TABLE = "test-nonces"
OUTBOUND_SECRET_ID = "test/zeyi-outbound"
INBOUND_SECRET_ID = "test/zeyi-inbound"
TOKEN_SECRET_ID = "test/token-key"
EVENT_BUS_NAME = "test-approval-events"

OUTBOUND = {"appKey": "0867ef5f23ef446483749e19e1692b40",
            "appSecret": "5f1c9a2b7e3d4c6a8b0e1f2a3c4d5e6f", "iv": "0102030405060708"}
INBOUND = {"appKey": "jinrun-inbound-test-key",
           "appSecret": "fedcba9876543210fedcba9876543210", "iv": "0102030405060708"}
INBOUND_ROTATED = {"appKey": "jinrun-inbound-next-key",
                   "appSecret": "0123456789abcdef0123456789abcdef"}
TOKEN_KEYS = {"keys": ["test-token-key-0123456789abcdefghijklmnopqrstuvwxyz"]}


# aws.client() makes each client in a botocore session of its own, as a Lambda container does once;
# the tests forget every client at each test, and each new session parsed the service's JSON
# model again: 0.1 s of CPU per client, most of a moto test's own cost. One loader for the whole
# process parses each model once; the clients and sessions are still new each test.
botocore.session.create_loader = functools.lru_cache(maxsize=None)(botocore.loaders.create_loader)

# Property tests: the counts their modules give (examples(n)) in every run; HYPOTHESIS_PROFILE=deep
# runs each with DEEP_EXAMPLES instead, for a deep run before a release or after changing what
# they cover. The lifecycle model has its own knob (LIFECYCLE_EXAMPLES).
DEEP_EXAMPLES = 2000
hypothesis_settings.register_profile("deep", max_examples=DEEP_EXAMPLES)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def examples(fast: int) -> int:
    """``fast`` examples in an ordinary run, the deep profile's count in a deep one."""
    return max(fast, DEEP_EXAMPLES) if os.environ.get("HYPOTHESIS_PROFILE") == "deep" else fast


E2E_DIR = Path(__file__).resolve().parent / "e2e"
PROCESS_FIXTURES = {"moto_server"}
"""Fixtures that start a process: a test using one, however indirectly, is marked ``process``."""


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Mark ``process`` every test that starts one: the end-to-end tests (tests/e2e/, or marked
    ``e2e``) and every test on moto server, so ``make check`` (``-m "not process"``) leaves them
    out without anyone marking them by hand. A test that starts one itself (``subprocess``)
    carries the mark explicitly; the ``_processes_are_marked`` guard says so when one is missing.
    tryfirst: xdist's own hook reads the marks (``xdist_group``) when a run chooses ``--dist
    loadgroup``."""
    for item in items:
        if PROCESS_FIXTURES.intersection(getattr(item, "fixturenames", ())) \
                or item.get_closest_marker("e2e") is not None \
                or E2E_DIR in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.process)
    _spread(items)


def _spread(items) -> None:
    """The tests marked ``spread`` (the lifecycle model's shards) go evenly through the run, the
    first at its start. make test's ``--dist worksteal`` gives each worker a contiguous share of
    the collection, so they start on different workers instead of queuing on one, each behind
    the other (about 3 minutes on one worker, measured). Every worker sorts alike, as xdist
    requires."""
    spread = [item for item in items if item.get_closest_marker("spread") is not None]
    if not spread:
        return
    rest = [item for item in items if item.get_closest_marker("spread") is None]
    step = len(items) / len(spread)
    for index, item in enumerate(spread):
        rest.insert(int(index * step), item)
    items[:] = rest


@pytest.fixture(autouse=True)
def _processes_are_marked(request, monkeypatch):
    """In a run that leaves the ``process`` tests out (``make check``), a test that starts a
    process anyway fails, saying how to mark it, instead of slowing the inner loop unseen."""
    if "not process" not in (request.config.option.markexpr or "") \
            or request.node.get_closest_marker("process") is not None:
        return

    def refuse(self, args, *rest, **kwargs):
        raise AssertionError(
            f"{request.node.nodeid} starts a process ({args!r}) but is not marked `process`; "
            "mark it (@pytest.mark.process, or pytestmark = pytest.mark.process for a module) "
            "so that `make check` leaves it to `make test`")

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)


@pytest.fixture(autouse=True)
def _no_real_aws(monkeypatch, tmp_path):
    """Every test runs with fake credentials and no AWS config files, so nothing can reach AWS."""
    for name in list(os.environ):
        if name.startswith("AWS_") or name in {"BOTO_CONFIG"}:
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    # Unroutable endpoint by default: a test that forgets the `aws` fixture fails fast, offline.
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    for name, value in {
        settings.APPROVALS_TABLE: APPROVALS_TABLE,
        settings.NONCES_TABLE: NONCES_TABLE,
        settings.OUTBOUND_SECRET_ID: OUTBOUND_SECRET_ID,
        settings.INBOUND_SECRET_ID: INBOUND_SECRET_ID,
        settings.TOKEN_SECRET_ID: TOKEN_SECRET_ID,
        settings.ZEYI_BASE_URL: "http://127.0.0.1:9",
        settings.EVENT_BUS_NAME: EVENT_BUS_NAME,
    }.items():
        monkeypatch.setenv(name, value)
    aws.reset()
    yield
    aws.reset()


@pytest.fixture(scope="session")
def moto_server():
    server = MotoServer().start()
    yield server
    server.stop()


@pytest.fixture
def aws_env(moto_server, monkeypatch):
    """A clean moto server with both tables and the three secrets, reached over HTTP."""
    moto_server.reset()
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server.url)
    aws.reset()
    make_tables(aws.client("dynamodb"))
    secrets = aws.client("secretsmanager")
    for secret_id, value in {
        OUTBOUND_SECRET_ID: OUTBOUND,
        INBOUND_SECRET_ID: {"credentials": [INBOUND, INBOUND_ROTATED]},
        TOKEN_SECRET_ID: TOKEN_KEYS,
    }.items():
        secrets.create_secret(Name=secret_id, SecretString=json.dumps(value))
    yield moto_server
    aws.reset()


def make_tables(dynamodb) -> None:
    """Both tables as the bootstrap leaves them (the same definitions, point-in-time recovery,
    TTL on the nonces), made where neither exists in five calls. ``ensure_tables`` first looks
    at what is there, ten calls more for each of some 400 tests; the bootstrap's tests, the IAM
    tests and the sandbox still make the tables through it (tests/test_bootstrap.py pins that
    the two agree)."""
    from chalicelib.runtime.tables import (
        NONCE_TTL_ATTRIBUTE,
        approvals_table_definition,
        nonces_table_definition,
    )

    for definition in (approvals_table_definition(APPROVALS_TABLE),
                       nonces_table_definition(NONCES_TABLE)):
        dynamodb.create_table(**definition)
        dynamodb.update_continuous_backups(
            TableName=definition["TableName"],
            PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True})
    dynamodb.update_time_to_live(TableName=NONCES_TABLE, TimeToLiveSpecification={
        "Enabled": True, "AttributeName": NONCE_TTL_ATTRIBUTE})


@pytest.fixture
def empty_aws(moto_server, monkeypatch):
    """A clean moto server with nothing in it, reached over HTTP."""
    moto_server.reset()
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server.url)
    aws.reset()
    yield moto_server
    aws.reset()


class Clock:
    """The store's wall clock, moved forward by tests, so leases are tested without sleeping."""

    def __init__(self, start: float | None = None):
        self.start = start  # None: the real time
        self.skipped_seconds = 0.0

    def __call__(self) -> float:
        return (time.time() if self.start is None else self.start) + self.skipped_seconds


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def store(aws_env, clock):
    """The real approval store on moto server, on the test's clock."""
    from chalicelib.approvals.store import DynamoDBApprovalStore

    return DynamoDBApprovalStore(aws.client("dynamodb"), APPROVALS_TABLE, NONCES_TABLE,
                                 clock=clock)


@pytest.fixture
def gateway(aws_env, tmp_path):
    """Chalice's test client for app.py. Its config has no environment variables, so each test's
    monkeypatched settings are the ones the app reads (Chalice would otherwise overlay a stage's)."""
    from chalice.test import Client

    import app as gateway_app

    project = tmp_path / "project"
    (project / ".chalice").mkdir(parents=True)
    (project / ".chalice" / "config.json").write_text(json.dumps(
        {"version": "2.0", "app_name": "jinrun-approval-gateway", "stages": {"test": {}}}))
    gateway_app._secrets = None
    gateway_app._zeyi.clear()
    with Client(gateway_app.app, stage_name="test", project_dir=str(project)) as client:
        yield client
    gateway_app._secrets = None
    gateway_app._zeyi.clear()


@pytest.fixture
def atomic_requests(aws_env):
    """One DynamoDB request at a time, as DynamoDB itself guarantees per request and moto server
    does not: its threaded server runs concurrent requests on shared tables without a lock (a
    failed transaction restores a deep copy of every table it touched, wiping writes made
    meanwhile, and readers can see half-applied updates). Requests of different threads still
    interleave freely, so the store's read-then-conditional-write race is what is tested."""
    lock = threading.Lock()
    held = threading.local()

    def before_send(**kwargs):
        lock.acquire()
        held.value = True

    def after_attempt(**kwargs):
        if getattr(held, "value", False):
            held.value = False
            lock.release()

    events = aws.client("dynamodb").meta.events
    events.register("before-send.dynamodb", before_send)
    events.register_first("needs-retry.dynamodb", after_attempt)
    yield
    events.unregister("before-send.dynamodb", before_send)
    events.unregister("needs-retry.dynamodb", after_attempt)


def retry_once_after_success(client, operation):
    """Make botocore resend the first ``operation`` after it succeeded, as it does when the
    answer is lost to a read timeout."""
    fired = []

    def retry_after_success(response=None, attempts=None, **kwargs):
        if not fired and response is not None and response[0].status_code == 200:
            fired.append(attempts)
            return 0  # retry now
        return None

    client.meta.events.register_first(f"needs-retry.dynamodb.{operation}", retry_after_success)
    return fired


def post(gateway, path, payload):
    """POST ``payload`` (JSON, or bytes as they are) through Chalice's test client: (status,
    envelope)."""
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    response = gateway.http.post(path, body=raw, headers={"Content-Type": "application/json"})
    return response.status_code, json.loads(response.body)


@pytest.fixture
def zeyi(monkeypatch):
    """The Zeyi simulator (below), and the gateway's settings pointing at it."""
    with simulator() as sim:
        monkeypatch.setenv("ZEYI_BASE_URL", sim.url)
        yield sim


@contextlib.contextmanager
def simulator(**config):
    """The Zeyi simulator in this process on a free loopback port: the fake Zeyi of the tests,
    checking every signature with its own code."""
    from sandbox.zeyi_protocol import Credential as ZeyiCredential
    from sandbox.zeyi_simulator import SimulatorConfig, ZeyiSimulator

    sim = ZeyiSimulator(SimulatorConfig(
        outbound=ZeyiCredential.from_json(OUTBOUND), inbound=ZeyiCredential.from_json(INBOUND),
        port=config.pop("port", 0), **config))
    sim.start()
    try:
        yield sim
    finally:
        sim.stop(timeout_seconds=2.0)




@pytest.fixture
def logs():
    """The gateway's log lines (JSON) written while the test runs."""
    from chalicelib.runtime.logs import logger

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logger.registered_formatter)
    std_logger = logging.getLogger(logger.name)
    std_logger.addHandler(handler)
    logger.clear_state()
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    std_logger.removeHandler(handler)


@pytest.fixture
def faults(aws_env):
    """moto server's PutEvents faults (sandbox.aws_faults), none before or after the test."""
    from tests.events_support import injected_faults

    with injected_faults(aws_env.url) as injector:
        yield injector
