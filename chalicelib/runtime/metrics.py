"""CloudWatch metrics as Embedded Metric Format log lines, written with Powertools Metrics.

A metric is a JSON line on stdout that CloudWatch Logs turns into a metric: no API call, no
network, nothing on the request path but a ``print``. The namespace is the stage's
(``POWERTOOLS_METRICS_NAMESPACE``, set per stage in .chalice/config.json); every metric has the
``service`` dimension and at most one more, always from a small fixed set of values (a
disposition, an errorCode of ours, an outcome, a status, an operation, a function name): never a
code, a businessId, an appKey or a message, each of which would make a metric of its own.

The catalogue (docs/operations.md "Metrics, alarms and the dashboard" says what each is for):

===================  ============  ===========  ==========================================
name                 unit          dimension    one per
===================  ============  ===========  ==========================================
Callbacks            Count         disposition  callback recorded
TokensIssued         Count         -            token issued
Errors               Count         errorCode    refused or failed request, on any route
Sends                Count         outcome      send that reached the call to Zeyi
Cancels              Count         outcome      cancel that reached the call to Zeyi
ZeyiLatency          Milliseconds  operation    call to Zeyi (send, cancel), retries included
StuckApprovals       Count         status       scheduled search (zero included)
EventsPublished      Count         -            batch of stream records (zero included)
EventsFailed         Count         -            batch of stream records: records reported failed
ColdStart            Count         function     first invocation of a container
===================  ============  ===========  ==========================================

The callback's latency is API Gateway's own ``Latency`` metric for that one method (detailed
metrics on it, infra/resources.yaml): the time Zeyi waits, cold starts included, measured outside
the function and so at no cost on the callback's path, which writes one line: ``Callbacks``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit

NAMESPACE_ENV = "POWERTOOLS_METRICS_NAMESPACE"
SERVICE_ENV = "POWERTOOLS_SERVICE_NAME"
DEFAULT_NAMESPACE = "jinrun-approval-gateway"
DEFAULT_SERVICE = "approval-gateway"
COUNT = MetricUnit.Count
MILLISECONDS = MetricUnit.Milliseconds

CALLBACKS = "Callbacks"
TOKENS_ISSUED = "TokensIssued"
ERRORS = "Errors"
SENDS = "Sends"
CANCELS = "Cancels"
ZEYI_LATENCY = "ZeyiLatency"
STUCK_APPROVALS = "StuckApprovals"
EVENTS_PUBLISHED = "EventsPublished"
EVENTS_FAILED = "EventsFailed"
COLD_START = "ColdStart"


@dataclass(frozen=True)
class Metric:
    name: str
    unit: MetricUnit
    value: float
    dimension: tuple[str, str] | None = None


# One Powertools provider per dimension, kept for the container: a provider built per request
# costs about as much again as the line it writes.
_providers: dict[tuple[str, tuple[str, str] | None], EphemeralMetrics] = {}


def namespace() -> str:
    return os.environ.get(NAMESPACE_ENV, "").strip() or DEFAULT_NAMESPACE


def emit(metrics: list[Metric]) -> None:
    """Write ``metrics`` as EMF lines: one line per distinct dimension."""
    if not metrics:
        return
    service = os.environ.get(SERVICE_ENV, "").strip() or DEFAULT_SERVICE
    groups: dict[tuple[str, str] | None, list[Metric]] = {}
    for metric in metrics:
        groups.setdefault(metric.dimension, []).append(metric)
    for dimension, group in groups.items():
        provider = _providers.get((service, dimension))
        if provider is None:
            provider = EphemeralMetrics(service=service, default_dimensions=dict(
                [dimension] if dimension else []))
            _providers[(service, dimension)] = provider
        provider.namespace = namespace()
        for metric in group:
            provider.add_metric(name=metric.name, unit=metric.unit, value=metric.value)
        provider.flush_metrics()
