"""Prometheus metrics, fed only by events from the bus.

Counters and latency histograms are plain Python numbers updated on the
event loop and turned into Prometheus families only when /metrics is
scraped: prometheus_client's own Counter/Histogram take a lock per update,
which costs more than the rest of the request accounting together.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from failsoft.control.registry import ArtifactCopyBad, ArtifactRepaired
from failsoft.data.input_checks import DataViolated
from failsoft.observe.events import (
    Event,
    ReplicaStateChanged,
    RequestFinished,
    WorkerRestarted,
)
from failsoft.pipeline.breaker import BreakerState, BreakerTransition
from failsoft.pipeline.fallback import FallbackUsed
from failsoft.pipeline.limiter import LimitChanged, RequestShed
from failsoft.pipeline.throttle import ThrottledLocally
from failsoft.pipeline.version import (
    AttemptFailed,
    AttemptStarted,
    PanicChanged,
    PoisonDetected,
    RetryDenied,
)
from failsoft.routing.ejection import ReplicaEjected, ReplicaReturned
from failsoft.routing.probes import HealthChanged

CONTENT_TYPE = CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
MAX_SERIES = 10_000  # label combinations kept per family; beyond this new ones are dropped
_BREAKER_VALUES = {BreakerState.CLOSED: 0, BreakerState.OPEN: 1, BreakerState.HALF_OPEN: 2}


class _Family:
    """A counter or gauge family: label values -> number, bounded."""

    def __init__(self, name: str, documentation: str, labels: list[str], gauge: bool = False):
        self.name = name
        self.documentation = documentation
        self.labels = labels
        self.gauge = gauge
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, *labels: str) -> None:
        values = self.values
        if labels in values:
            values[labels] += 1
        elif len(values) < MAX_SERIES:
            values[labels] = 1

    def set(self, value: float, *labels: str) -> None:
        if labels in self.values or len(self.values) < MAX_SERIES:
            self.values[labels] = value

    def collect(self) -> Metric:
        family_type = GaugeMetricFamily if self.gauge else CounterMetricFamily
        family = family_type(self.name, self.documentation, labels=self.labels)
        for labels, value in list(self.values.items()):
            family.add_metric(list(labels), value)
        return family


class _VersionStats:
    __slots__ = ("buckets", "count", "total_seconds")

    def __init__(self) -> None:
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.count = 0
        self.total_seconds = 0.0


class Metrics:
    """One registry per gateway, so tests and embedded gateways never collide."""

    def __init__(self) -> None:
        self.requests = _Family(
            "failsoft_requests",
            "Inference requests answered, by HTTP status code.",
            ["model", "version", "code"],
        )
        self.failures = _Family(
            "failsoft_request_failures",
            "Failed inference requests, by failure class (replica, request, client, data, "
            "overload).",
            ["model", "version", "class"],
        )
        self.attempts = _Family(
            "failsoft_attempts",
            "Calls to replicas: first tries, retries and hedges.",
            ["model", "version", "replica", "kind"],
        )
        self.attempt_failures = _Family(
            "failsoft_attempt_failures",
            "Failed calls charged to their replica.",
            ["model", "version", "replica", "class"],
        )
        self.retries_denied = _Family(
            "failsoft_retries_denied",
            "Retries not made: retry budget spent or no time left.",
            ["model", "version", "reason"],
        )
        self.breaker_state = _Family(
            "failsoft_breaker_state",
            "Circuit breaker state: 0 closed, 1 open, 2 half open.",
            ["model", "version", "replica"],
            gauge=True,
        )
        self.breaker_transitions = _Family(
            "failsoft_breaker_transitions",
            "Circuit breaker state changes, by new state.",
            ["model", "version", "replica", "state"],
        )
        self.ejected = _Family(
            "failsoft_replica_ejected",
            "1 while a replica is ejected as an outlier.",
            ["model", "version", "replica"],
            gauge=True,
        )
        self.ejections = _Family(
            "failsoft_ejections",
            "Outlier ejections of replicas.",
            ["model", "version", "replica"],
        )
        self.healthy = _Family(
            "failsoft_replica_healthy",
            "1 while a replica passes its active health probes.",
            ["model", "version", "replica"],
            gauge=True,
        )
        self.fallbacks = _Family(
            "failsoft_fallbacks",
            "Answers given by a fallback tier (degraded).",
            ["model", "version", "tier"],
        )
        self.shed = _Family(
            "failsoft_shed",
            "Requests refused by the adaptive concurrency limit, by priority.",
            ["model", "priority", "reason"],
        )
        self.limit = _Family(
            "failsoft_concurrency_limit",
            "The adaptive concurrency limit of each model.",
            ["model"],
            gauge=True,
        )
        self.throttled = _Family(
            "failsoft_throttled_locally",
            "Calls refused locally by adaptive client-side throttling.",
            ["model", "version"],
        )
        self.replica_up = _Family(
            "failsoft_replica_up",
            "1 when a replica process is up, 0 while it restarts.",
            ["model", "version", "replica"],
            gauge=True,
        )
        self.poison = _Family(
            "failsoft_poison_requests",
            "Requests judged poison (their input breaks healthy replicas); remembered "
            "ones are answered without a call.",
            ["model", "version", "remembered"],
        )
        self.panic = _Family(
            "failsoft_panic_routing",
            "1 while no replica of a version is eligible and every one is tried anyway.",
            ["model", "version"],
            gauge=True,
        )
        self.worker_restarts = _Family(
            "failsoft_worker_restarts",
            "Worker processes restarted by the supervisor.",
            ["model", "version", "replica", "reason"],
        )
        self.artifact_copies_bad = _Family(
            "failsoft_artifact_copies_bad",
            "Artifact copies skipped on read or scrub: missing, corrupt or unreadable.",
            ["location", "problem"],
        )
        self.artifact_repairs = _Family(
            "failsoft_artifact_repairs",
            "Artifact copies rewritten from a good copy.",
            ["location"],
        )
        self.data_violations = _Family(
            "failsoft_data_violations",
            "Requests that broke an input constraint, by the policy applied and the column "
            "of the first violation.",
            ["model", "version", "tensor", "column", "policy"],
        )
        self._families = [
            self.data_violations,
            self.requests,
            self.failures,
            self.attempts,
            self.attempt_failures,
            self.retries_denied,
            self.breaker_state,
            self.breaker_transitions,
            self.ejected,
            self.ejections,
            self.healthy,
            self.fallbacks,
            self.shed,
            self.limit,
            self.throttled,
            self.replica_up,
            self.poison,
            self.panic,
            self.worker_restarts,
            self.artifact_copies_bad,
            self.artifact_repairs,
        ]
        self._latency: dict[tuple[str, str], _VersionStats] = {}
        self.registry = CollectorRegistry()
        self.registry.register(self)

    def observe(self, event: Event) -> None:
        if type(event) is RequestFinished:
            self._request(event)
        elif type(event) is AttemptStarted:
            self.attempts.inc(event.model, event.version, event.replica, event.kind)
        elif type(event) is AttemptFailed:
            self.attempt_failures.inc(
                event.model, event.version, event.replica, event.failure_class.value
            )
        else:
            self._rare(event)

    def _request(self, event: RequestFinished) -> None:
        self.requests.inc(event.model, event.version, str(event.status))
        if event.failure_class is not None:
            self.failures.inc(event.model, event.version, event.failure_class.value)
        key = (event.model, event.version)
        stats = self._latency.get(key)
        if stats is None:
            if len(self._latency) >= MAX_SERIES:
                return
            stats = self._latency[key] = _VersionStats()
        stats.buckets[bisect_left(LATENCY_BUCKETS, event.seconds)] += 1
        stats.count += 1
        stats.total_seconds += event.seconds

    def _rare(self, event: Event) -> None:
        if isinstance(event, RetryDenied):
            self.retries_denied.inc(event.model, event.version, event.reason)
        elif isinstance(event, BreakerTransition):
            labels = (event.model, event.version, event.replica)
            self.breaker_state.set(_BREAKER_VALUES[event.new], *labels)
            self.breaker_transitions.inc(*labels, event.new.value)
        elif isinstance(event, ReplicaEjected):
            self.ejected.set(1, event.model, event.version, event.replica)
            self.ejections.inc(event.model, event.version, event.replica)
        elif isinstance(event, ReplicaReturned):
            self.ejected.set(0, event.model, event.version, event.replica)
        elif isinstance(event, HealthChanged):
            self.healthy.set(1 if event.healthy else 0, event.model, event.version, event.replica)
        elif isinstance(event, FallbackUsed):
            self.fallbacks.inc(event.model, event.version, event.tier)
        elif isinstance(event, RequestShed):
            self.shed.inc(event.model, event.priority.value, event.reason)
        elif isinstance(event, LimitChanged):
            self.limit.set(event.new, event.model)
        elif isinstance(event, ThrottledLocally):
            self.throttled.inc(event.model, event.version)
        elif isinstance(event, ReplicaStateChanged):
            self.replica_up.set(
                1 if event.available else 0, event.model, event.version, event.replica
            )
        elif isinstance(event, WorkerRestarted):
            self.worker_restarts.inc(event.model, event.version, event.replica, event.reason)
        elif isinstance(event, PoisonDetected):
            remembered = "false" if event.replicas else "true"
            self.poison.inc(event.model, event.version, remembered)
        elif isinstance(event, PanicChanged):
            self.panic.set(1 if event.active else 0, event.model, event.version)
        elif isinstance(event, ArtifactCopyBad):
            self.artifact_copies_bad.inc(event.location, event.problem)
        elif isinstance(event, ArtifactRepaired):
            self.artifact_repairs.inc(event.location)
        elif isinstance(event, DataViolated):
            self.data_violations.inc(
                event.model, event.version, event.tensor, event.column, event.policy
            )

    def collect(self) -> Iterator[Metric]:
        for family in self._families:
            yield family.collect()
        latency = HistogramMetricFamily(
            "failsoft_request_duration_seconds",
            "Time from request read to response ready.",
            labels=["model", "version"],
        )
        bounds = [*(repr(b) for b in LATENCY_BUCKETS), "+Inf"]
        for (model, version), stats in list(self._latency.items()):
            cumulative = 0
            buckets = []
            for bound, count in zip(bounds, stats.buckets, strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            latency.add_metric([model, version], buckets, stats.total_seconds)
        yield latency

    def render(self) -> bytes:
        return generate_latest(self.registry)


__all__ = ["CONTENT_TYPE", "Metrics"]
