"""Prometheus metrics, fed only by events from the bus."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from failsoft.observe.events import (
    Event,
    ReplicaStateChanged,
    RequestFinished,
    WorkerRestarted,
)

CONTENT_TYPE = CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)


class Metrics:
    """One registry per gateway, so tests and embedded gateways never collide."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "failsoft_requests", "Inference requests answered, by HTTP status code.",
            ["model", "version", "code"], registry=self.registry,
        )
        self.latency = Histogram(
            "failsoft_request_duration_seconds", "Time from request read to response ready.",
            ["model", "version"], buckets=_LATENCY_BUCKETS, registry=self.registry,
        )
        self.failures = Counter(
            "failsoft_request_failures", "Failed inference requests, by failure class.",
            ["model", "version", "class"], registry=self.registry,
        )
        self.replica_up = Gauge(
            "failsoft_replica_up", "1 when a replica is in rotation, 0 when it is not.",
            ["model", "version", "replica"], registry=self.registry,
        )
        self.worker_restarts = Counter(
            "failsoft_worker_restarts", "Worker processes restarted by the supervisor.",
            ["model", "version", "replica", "reason"], registry=self.registry,
        )
        # Resolving label children is the slow part of prometheus_client; cache them.
        self._request_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def observe(self, event: Event) -> None:
        if isinstance(event, RequestFinished):
            key = (event.model, event.version, event.status)
            children = self._request_children.get(key)
            if children is None:
                children = (
                    self.requests.labels(event.model, event.version, str(event.status)),
                    self.latency.labels(event.model, event.version),
                )
                if len(self._request_children) < 10_000:
                    self._request_children[key] = children
            children[0].inc()
            children[1].observe(event.seconds)
            if event.failure_class is not None:
                self.failures.labels(event.model, event.version, event.failure_class.value).inc()
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
