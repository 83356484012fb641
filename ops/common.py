"""What every operator command shares: the AWS session, and one-line errors instead of tracebacks.

An operator command either succeeds or prints one line that says what is wrong and what to do:
missing credentials or region, an unreachable endpoint, a denied call, a missing resource. The
region comes from ``--region``, then ``AWS_REGION``, then ``AWS_DEFAULT_REGION``, then the
profile's config (boto3 itself ignores ``AWS_REGION``, which the AWS CLI and Lambda use).
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Callable

NO_CREDENTIALS = ("no AWS credentials found: set AWS_PROFILE (aws configure --profile NAME) or "
                  "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
NO_REGION = "no AWS region: set AWS_REGION (e.g. cn-north-1) or pass --region"
_REJECTED_CREDENTIALS = {
    "ExpiredToken", "ExpiredTokenException", "InvalidClientTokenId", "UnrecognizedClientException",
    "InvalidSignatureException", "SignatureDoesNotMatch", "AuthFailure",
}
_DENIED = {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation"}


# Exit statuses every command keeps to, so that a script can tell them apart (python -m ops
# --help lists them): done, nothing was to do, a next step is not due yet (the output says when).
ACTED, FAILED, USAGE, NOTHING_TO_DO, WAIT = 0, 1, 2, 3, 4
# The gateway's own structured logger (chalicelib.runtime.logs): service "approval-gateway".
GATEWAY_LOGGER = "approval-gateway"


@contextlib.contextmanager
def chalice_build_lock(project_dir):
    """Hold the project's build lock while chalice builds packages (package or deploy).

    chalice caches each Lambda zip under ``.chalice/deployments`` and writes it in place, while a
    second chalice run that finds the file takes it as complete: two builds at once (two
    terminals, or the tests' parallel workers) could ship a half-written zip. The second one
    waits here instead."""
    import fcntl
    from pathlib import Path

    directory = Path(project_dir) / ".chalice" / "deployments"
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".build.lock", "w", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextlib.contextmanager
def quiet_gateway():
    """Keep the gateway's JSON log lines and EMF metric lines (written for CloudWatch by the
    chalicelib code a command runs) out of an operator's terminal: the command says what
    happened in its own lines."""
    import logging

    gateway_logger = logging.getLogger(GATEWAY_LOGGER)
    was_disabled = gateway_logger.disabled
    before = os.environ.get("POWERTOOLS_METRICS_DISABLED")
    gateway_logger.disabled = True
    os.environ["POWERTOOLS_METRICS_DISABLED"] = "true"
    try:
        yield
    finally:
        gateway_logger.disabled = was_disabled
        if before is None:
            os.environ.pop("POWERTOOLS_METRICS_DISABLED", None)
        else:
            os.environ["POWERTOOLS_METRICS_DISABLED"] = before


class OpsError(Exception):
    """A failure the operator can act on; its message is the one line the command prints."""


def region_from_environment(explicit: str | None = None) -> str | None:
    return explicit or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None


def aws_session(region: str | None = None):
    """A boto3 session with a region and credentials. Raises OpsError when either is missing."""
    import boto3
    from botocore.exceptions import BotoCoreError

    try:
        session = boto3.session.Session(region_name=region_from_environment(region))
        if not session.region_name:
            raise OpsError(NO_REGION)
        if session.get_credentials() is None:
            raise OpsError(NO_CREDENTIALS)
    except BotoCoreError as exc:
        raise OpsError(describe_failure(exc)) from None
    return session


def client(session, service: str):
    """A client with second-scale timeouts and a few retries: an operator waits, but not
    minutes, on an unreachable endpoint."""
    from botocore.config import Config

    return session.client(service, config=Config(
        connect_timeout=5, read_timeout=30, retries={"mode": "standard", "total_max_attempts": 3}))


def error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return response.get("Error", {}).get("Code", "")


def describe_failure(exc: BaseException) -> str:
    """One line for an exception an operator command can meet; never a secret value (AWS error
    messages never repeat the request's values)."""
    from botocore.exceptions import (
        ClientError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        NoRegionError,
        PartialCredentialsError,
        ProfileNotFound,
        ReadTimeoutError,
    )

    from chalicelib.errors import GatewayError

    if isinstance(exc, OpsError):
        return str(exc)
    if isinstance(exc, GatewayError):
        return exc.message
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return NO_CREDENTIALS
    if isinstance(exc, NoRegionError):
        return NO_REGION
    if isinstance(exc, ProfileNotFound):
        return (f"AWS profile {exc.kwargs.get('profile')!r} is not configured (aws configure "
                "--profile NAME, or unset AWS_PROFILE)")
    if isinstance(exc, (EndpointConnectionError, ConnectTimeoutError)):
        return (f"cannot reach AWS at {exc.kwargs.get('endpoint_url')}: check the network and "
                "the region")
    if isinstance(exc, ReadTimeoutError):
        return f"AWS did not answer in time ({exc.kwargs.get('endpoint_url')}); try again"
    if isinstance(exc, ClientError):
        code = error_code(exc)
        message = exc.response.get("Error", {}).get("Message", "")
        if code in _REJECTED_CREDENTIALS:
            return f"AWS rejected the credentials ({code}): refresh them or choose another profile"
        denied = re.search(r"not authorized to perform: [\w:*-]+", str(exc))
        if code in _DENIED or denied:
            # moto answers a denial as XML even to JSON services: botocore then sees only the
            # HTTP status, and the denied action is in the raw text.
            why = denied.group(0) if denied and code not in _DENIED else message
            return f"not allowed: {exc.operation_name} was denied ({why})"
        return f"{exc.operation_name} failed: {code}: {message}"
    from botocore.exceptions import BotoCoreError

    if isinstance(exc, BotoCoreError):
        return str(exc)
    if isinstance(exc, OSError):
        return f"{exc.filename or 'file'}: {exc.strerror}" if exc.strerror else str(exc)
    raise exc


def run(action: Callable[[], int]) -> int:
    """Run a command's body: its exit status, or 1 with one line on stderr for a known failure.

    An unexpected exception still raises: that is a bug to see, not an operator error.
    """
    try:
        with quiet_gateway():
            return action()
    except BrokenPipeError:
        # The reader went away (`… --json | head`): what it wanted it has; no error line.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return ACTED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # describe_failure re-raises what it does not know
        print(f"error: {describe_failure(exc)}", file=sys.stderr)
        return 1
