"""boto3 clients, created once per container, lazily, with short timeouts.

botocore's defaults (legacy retries, 60 s connect and read timeouts) would outlast Zeyi's deadline
and API Gateway's 29 s; ``standard`` retries with a few attempts and second-scale timeouts fail
fast enough to answer with an envelope. ``AWS_ENDPOINT_URL`` (read by botocore itself) points every
client at moto server in the sandbox and the tests.
"""
from __future__ import annotations

import threading

from chalicelib.runtime.settings import load_settings

_clients: dict[str, object] = {}
_session = None
_lock = threading.Lock()


def client(service: str):
    """The container's one client for ``service``; boto3 is imported on first use."""
    existing = _clients.get(service)
    if existing is not None:
        return existing
    with _lock:
        if service not in _clients:
            global _session
            import boto3
            from botocore.config import Config

            settings = load_settings()
            config = Config(
                connect_timeout=settings.aws_connect_timeout_seconds,
                read_timeout=settings.aws_read_timeout_seconds,
                retries={"mode": "standard", "total_max_attempts": 3},
                # DynamoDB checks every request itself (so does moto server, for the tests);
                # botocore's own walk of a callback's transaction first was a fifth of a warm
                # callback's time (make bench, cProfile).
                parameter_validation=service != "dynamodb",
                # Presigned POSTs and GETs (chalicelib.approvals.files) must be SigV4: botocore
                # still presigns a POST with SigV2 otherwise, which newer regions refuse.
                signature_version="s3v4" if service == "s3" else None,
            )
            # One session for every client: each new session loads botocore's endpoint and
            # partition data again, which made a cold callback's second client (Secrets Manager,
            # then DynamoDB) cost half again as much as its first (make bench, cProfile).
            # Sessions are not thread-safe, and clients are made under the lock only.
            if _session is None:
                _session = boto3.session.Session()
            _clients[service] = _session.client(service, config=config)
        return _clients[service]


def reset() -> None:
    """Forget every client, so the next call reads the environment again (tests, sandbox)."""
    global _session
    with _lock:
        _clients.clear()
        _session = None
