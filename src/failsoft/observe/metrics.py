"""Prometheus metrics, fed only by events from the bus.

Request counters and latency histograms are plain Python numbers updated on
the event loop and turned into Prometheus families only when /metrics is
scraped: prometheus_client's own Counter/Histogram take a lock per update,
which costs more than the rest of the request accounting together.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from failsoft.errors import FailureClass
from failsoft.observe.events import (
    Event,
    ReplicaStateChanged,
    RequestFinished,
    WorkerRestarted,
)

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
MAX_SERIES = 10_000  # label combinations kept; beyond this new ones are dropped


class _VersionStats:
    __slots__ = ("buckets", "codes", "count", "failures", "total_seconds")

    def __init__(self) -> None:
        self.codes: dict[int, int] = {}
        self.failures: dict[FailureClass, int] = {}
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.count = 0
        self.total_seconds = 0.0


class _RequestCollector:
    def __init__(self) -> None:
        self.stats: dict[tuple[str, str], _VersionStats] = {}

    def record(self, event: RequestFinished) -> None:
        key = (event.model, event.version)
        stats = self.stats.get(key)
        if stats is None:
            if len(self.stats) >= MAX_SERIES:
                return
            stats = self.stats[key] = _VersionStats()
        stats.codes[event.status] = stats.codes.get(event.status, 0) + 1
        stats.buckets[bisect_left(LATENCY_BUCKETS, event.seconds)] += 1
        stats.count += 1
        stats.total_seconds += event.seconds
        if event.failure_class is not None:
            stats.failures[event.failure_class] = stats.failures.get(event.failure_class, 0) + 1

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "failsoft_requests",
            "Inference requests answered, by HTTP status code.",
            labels=["model", "version", "code"],
        )
        failures = CounterMetricFamily(
            "failsoft_request_failures",
            "Failed inference requests, by failure class.",
            labels=["model", "version", "class"],
        )
        latency = HistogramMetricFamily(
            "failsoft_request_duration_seconds",
            "Time from request read to response ready.",
            labels=["model", "version"],
        )
        for (model, version), stats in list(self.stats.items()):
            for code, count in sorted(stats.codes.items()):
                requests.add_metric([model, version, str(code)], count)
            for failure_class, count in sorted(stats.failures.items()):
                failures.add_metric([model, version, failure_class.value], count)
            cumulative = 0
            buckets = []
            for bound, count in zip((*LATENCY_BUCKETS, float("inf")), stats.buckets, strict=True):
                cumulative += count
                buckets.append((_bound_label(bound), cumulative))
            latency.add_metric([model, version], buckets, stats.total_seconds)
        yield requests
        yield failures
        yield latency


def _bound_label(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


class Metrics:
    """One registry per gateway, so tests and embedded gateways never collide."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._requests = _RequestCollector()
        self.registry.register(self._requests)
        self.replica_up = Gauge(
            "failsoft_replica_up",
            "1 when a replica is in rotation, 0 when it is not.",
            ["model", "version", "replica"],
            registry=self.registry,
        )
        self.worker_restarts = Counter(
            "failsoft_worker_restarts",
            "Worker processes restarted by the supervisor.",
            ["model", "version", "replica", "reason"],
            registry=self.registry,
        )

    def observe(self, event: Event) -> None:
        if isinstance(event, RequestFinished):
            self._requests.record(event)
        elif isinstance(event, ReplicaStateChanged):
            self.replica_up.labels(event.model, event.version, event.replica).set(
                1 if event.available else 0
            )
        elif isinstance(event, WorkerRestarted):
            self.worker_restarts.labels(
                event.model, event.version, event.replica, event.reason
            ).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
