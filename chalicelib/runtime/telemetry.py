"""What every invocation reports about itself: its log keys, its metrics, its trace.

``begin`` opens the scope of one invocation (an HTTP request or a Lambda function's call): every
log line from then on carries the function, the Lambda request id, API Gateway's request id and
the correlation id (chalicelib.runtime.correlation); the code is added by whoever learns it. Metrics
recorded during the invocation are written together by ``end``, after the answer is built: on
the request path they cost a list append. A failure to write them is logged, never raised.

The scope lives in a context variable: each thread of the local sandbox's server has its own.
"""
from __future__ import annotations

import contextlib
from contextvars import ContextVar
from dataclasses import dataclass, field

from chalicelib.errors import (
    GatewayError,
    UpstreamOutcomeUnknownError,
    UpstreamRejectedError,
    UpstreamSystemError,
    UpstreamUnavailableError,
)
from chalicelib.runtime import correlation, metrics, tracing
from chalicelib.runtime.logs import logger

# Zeyi's own errorCodes are Zeyi's to choose: as a metric dimension each would make a metric.
UPSTREAM_REJECTED = "UPSTREAM_REJECTED"
UPSTREAM_SYSTEM_ERROR = "UPSTREAM_SYSTEM_ERROR"
# The outcome of a send or cancel that reached the call to Zeyi.
FAILED = "FAILED"
UPSTREAM_UNAVAILABLE = "UPSTREAM_UNAVAILABLE"
UPSTREAM_OUTCOME_UNKNOWN = "UPSTREAM_OUTCOME_UNKNOWN"


@dataclass
class Scope:
    function: str
    correlation_id: str
    metrics: list[metrics.Metric] = field(default_factory=list)


_scope: ContextVar[Scope | None] = ContextVar("telemetry_scope", default=None)
_cold = True


def begin(function: str, *, lambda_request_id: str | None = None,
          api_request_id: str | None = None, correlation_given: object = None) -> Scope:
    """Open the scope of one invocation of ``function`` (a name of .chalice/config.json)."""
    global _cold
    logger.clear_state()  # keys appended while handling the previous invocation
    if isinstance(correlation_given, str) and not correlation_given.strip():
        correlation_given = None
    correlation_id, problem = correlation.accept(correlation_given)
    keys = {"function": function, "correlationId": correlation_id}
    if lambda_request_id:
        keys["lambdaRequestId"] = lambda_request_id
    if api_request_id:
        keys["apiRequestId"] = api_request_id
    logger.append_keys(**keys)
    if problem:
        logger.warning("correlation id replaced", extra={"reason": problem})
    scope = Scope(function, correlation_id)
    if _cold:
        _cold = False
        scope.metrics.append(metrics.Metric(metrics.COLD_START, metrics.COUNT, 1,
                                            ("function", function)))
    _scope.set(scope)
    tracing.begin_invocation()
    return scope


def end(scope: Scope) -> None:
    """Close the scope: write its metrics."""
    _scope.set(None)
    try:
        metrics.emit(scope.metrics)
    except Exception:
        logger.exception("metrics could not be written")


@contextlib.contextmanager
def invocation(function: str, **given):
    """``begin`` … ``end`` around the enclosed block, whatever it raises; yields the scope."""
    scope = begin(function, **given)
    try:
        yield scope
    finally:
        end(scope)


def current() -> Scope | None:
    return _scope.get()


def count(name: str, dimension: tuple[str, str] | None = None, value: float = 1) -> None:
    """Record a count in the current scope (nothing outside one)."""
    scope = _scope.get()
    if scope is not None:
        scope.metrics.append(metrics.Metric(name, metrics.COUNT, value, dimension))


def milliseconds(name: str, value: float, dimension: tuple[str, str] | None = None) -> None:
    scope = _scope.get()
    if scope is not None:
        scope.metrics.append(metrics.Metric(name, metrics.MILLISECONDS, round(value, 3),
                                            dimension))


def error(exc: GatewayError | None) -> None:
    """Count a refused or failed request by its errorCode (None: an unexpected exception)."""
    count(metrics.ERRORS, ("errorCode", error_code_of(exc)))


def error_code_of(exc: GatewayError | None) -> str:
    """The errorCode as a metric dimension: ours as it is, Zeyi's folded into one value."""
    if exc is None:
        return GatewayError.error_code
    if isinstance(exc, UpstreamRejectedError):
        return UPSTREAM_REJECTED
    if isinstance(exc, UpstreamSystemError):
        return UPSTREAM_SYSTEM_ERROR
    return exc.error_code


def zeyi_outcome_of(exc: GatewayError) -> str | None:
    """What a failed send or cancel came to at Zeyi; None when it failed before the call."""
    if isinstance(exc, UpstreamRejectedError):
        return FAILED
    if isinstance(exc, UpstreamUnavailableError):
        return UPSTREAM_UNAVAILABLE
    if isinstance(exc, UpstreamOutcomeUnknownError):
        return UPSTREAM_OUTCOME_UNKNOWN
    return None


class zeyi_outcome:  # noqa: N801 - used as a context manager, named for what it counts
    """Count the enclosed send or cancel under ``metric`` by its outcome: ``accepted`` when it
    returns, or what its exception says of Zeyi (no count when it failed before the call)."""

    def __init__(self, metric: str, *, accepted: str):
        self._metric = metric
        self._accepted = accepted

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, traceback) -> bool:
        if exc is None:
            count(self._metric, ("outcome", self._accepted))
        elif isinstance(exc, GatewayError) and (outcome := zeyi_outcome_of(exc)):
            count(self._metric, ("outcome", outcome))
        return False
