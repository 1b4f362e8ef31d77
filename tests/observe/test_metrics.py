"""Metrics: events in, Prometheus text out, read back with prometheus_client's parser."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from failsoft.backends.autoscale import WorkersScaled
from failsoft.errors import FailureClass
from failsoft.observe import metrics as metrics_module
from failsoft.observe.events import (
    Event,
    ReplicaStateChanged,
    RequestFinished,
    WorkerRestarted,
)
from failsoft.observe.metrics import LATENCY_BUCKETS, MAX_SERIES, Metrics
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
from failsoft.priority import Priority
from failsoft.routing.ejection import ReplicaEjected, ReplicaReturned
from failsoft.routing.probes import HealthChanged

Labels = dict[str, str]
REPLICA = {"model": "m", "version": "v1", "replica": "r0"}


def fed(*events: Event) -> Metrics:
    metrics = Metrics()
    for event in events:
        metrics.observe(event)
    return metrics


def samples(metrics: Metrics, name: str) -> list[tuple[Labels, float]]:
    """Every sample called ``name`` in the rendered text, as (labels, value)."""
    text = metrics.render().decode()
    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


def value(metrics: Metrics, name: str, **labels: str) -> float:
    found = [v for sample_labels, v in samples(metrics, name) if sample_labels == labels]
    assert len(found) == 1, f"{name}{labels}: {samples(metrics, name)}"
    return found[0]


def finished(status: int, seconds: float, failure: FailureClass | None = None) -> RequestFinished:
    return RequestFinished("m", "v1", status, failure, seconds)


# --- requests and attempts ---------------------------------------------------------


def test_requests_are_counted_by_status_and_failures_by_class() -> None:
    metrics = fed(
        finished(200, 0.01),
        finished(200, 0.01),
        finished(502, 0.01, FailureClass.REPLICA),
        finished(400, 0.01, FailureClass.DATA),
    )
    assert value(metrics, "failsoft_requests_total", model="m", version="v1", code="200") == 2
    assert value(metrics, "failsoft_requests_total", model="m", version="v1", code="502") == 1
    failures = samples(metrics, "failsoft_request_failures_total")
    assert sorted((labels["class"], v) for labels, v in failures) == [
        ("data", 1),
        ("replica", 1),
    ]


def test_attempts_are_counted_by_kind_and_failures_by_replica() -> None:
    metrics = fed(
        AttemptStarted("m", "v1", "r0", "first"),
        AttemptStarted("m", "v1", "r1", "retry"),
        AttemptStarted("m", "v1", "r0", "first"),
        AttemptFailed("m", "v1", "r0", FailureClass.REPLICA, "boom", 0.2),
    )
    assert value(metrics, "failsoft_attempts_total", **REPLICA, kind="first") == 2
    r1 = {**REPLICA, "replica": "r1"}
    assert value(metrics, "failsoft_attempts_total", **r1, kind="retry") == 1
    assert value(metrics, "failsoft_attempt_failures_total", **REPLICA, **{"class": "replica"}) == 1


def test_denied_retries_are_counted_by_reason() -> None:
    metrics = fed(RetryDenied("m", "v1", "budget"), RetryDenied("m", "v1", "budget"))
    assert samples(metrics, "failsoft_retries_denied_total") == [
        ({"model": "m", "version": "v1", "reason": "budget"}, 2)
    ]


# --- the latency histogram ----------------------------------------------------------


def test_latency_buckets_are_cumulative_and_a_bound_is_inclusive() -> None:
    metrics = fed(finished(200, 0.0004), finished(200, 0.001), finished(200, 0.3))
    buckets = {
        labels["le"]: count
        for labels, count in samples(metrics, "failsoft_request_duration_seconds_bucket")
    }
    assert len(buckets) == len(LATENCY_BUCKETS) + 1
    assert buckets["0.0005"] == 1
    assert buckets["0.001"] == 2  # 1 ms falls in the le="0.001" bucket
    assert buckets["0.25"] == 2
    assert buckets["0.5"] == 3
    assert buckets["+Inf"] == 3


def test_latency_has_a_sum_and_a_count_and_slow_requests_land_in_inf() -> None:
    metrics = fed(finished(200, 0.25), finished(504, 30.0, FailureClass.REPLICA))
    labels = {"model": "m", "version": "v1"}
    assert value(metrics, "failsoft_request_duration_seconds_sum", **labels) == 30.25
    assert value(metrics, "failsoft_request_duration_seconds_count", **labels) == 2
    assert value(metrics, "failsoft_request_duration_seconds_bucket", **labels, le="10.0") == 1
    assert value(metrics, "failsoft_request_duration_seconds_bucket", **labels, le="+Inf") == 2


def test_each_version_has_its_own_latency_series() -> None:
    metrics = fed(finished(200, 0.1), RequestFinished("m", "v2", 200, None, 0.1))
    counts = samples(metrics, "failsoft_request_duration_seconds_count")
    assert sorted(labels["version"] for labels, _ in counts) == ["v1", "v2"]


# --- replica state --------------------------------------------------------------------


def test_breaker_transitions_set_the_state_gauge_and_are_counted() -> None:
    closed, opened, half = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN
    metrics = fed(
        BreakerTransition("m", "v1", "r0", closed, opened, "failure rate"),
        BreakerTransition("m", "v1", "r0", opened, half, "wait over"),
    )
    assert value(metrics, "failsoft_breaker_state", **REPLICA) == 2  # half open
    assert value(metrics, "failsoft_breaker_transitions_total", **REPLICA, state="open") == 1
    assert value(metrics, "failsoft_breaker_transitions_total", **REPLICA, state="half_open") == 1
    metrics.observe(BreakerTransition("m", "v1", "r0", half, closed, "probes passed"))
    assert value(metrics, "failsoft_breaker_state", **REPLICA) == 0


def test_an_ejection_sets_the_ejected_gauge_until_the_replica_returns() -> None:
    metrics = fed(ReplicaEjected("m", "v1", "r0", "consecutive_failures", 30.0, 1))
    assert value(metrics, "failsoft_replica_ejected", **REPLICA) == 1
    assert value(metrics, "failsoft_ejections_total", **REPLICA) == 1
    metrics.observe(ReplicaReturned("m", "v1", "r0"))
    assert value(metrics, "failsoft_replica_ejected", **REPLICA) == 0
    assert value(metrics, "failsoft_ejections_total", **REPLICA) == 1


def test_probe_verdicts_set_the_healthy_gauge() -> None:
    metrics = fed(HealthChanged("m", "v1", "r0", False, "not ready"))
    assert value(metrics, "failsoft_replica_healthy", **REPLICA) == 0
    metrics.observe(HealthChanged("m", "v1", "r0", True, "2 probes passed"))
    assert value(metrics, "failsoft_replica_healthy", **REPLICA) == 1


def test_a_restarting_worker_sets_replica_up_and_counts_the_restart() -> None:
    metrics = fed(
        ReplicaStateChanged("m", "v1", "r0", False, "exited"),
        WorkerRestarted("m", "v1", "r0", 4242, -9, "crashed"),
    )
    assert value(metrics, "failsoft_replica_up", **REPLICA) == 0
    assert value(metrics, "failsoft_worker_restarts_total", **REPLICA, reason="crashed") == 1
    metrics.observe(ReplicaStateChanged("m", "v1", "r0", True, "started"))
    assert value(metrics, "failsoft_replica_up", **REPLICA) == 1


def test_autoscaling_sets_the_workers_gauge_and_counts_changes() -> None:
    metrics = fed(
        WorkersScaled("m", "v1", 1, 2, "queueing", True),
        WorkersScaled("m", "v1", 2, 2, "failed its probe", False),
    )
    version = {"model": "m", "version": "v1"}
    assert value(metrics, "failsoft_workers", **version) == 2
    total = "failsoft_workers_scaled_total"
    assert value(metrics, total, **version, direction="up", ok="true") == 1
    assert value(metrics, total, **version, direction="none", ok="false") == 1
    metrics.observe(WorkersScaled("m", "v1", 2, 1, "cool", True))
    assert value(metrics, "failsoft_workers", **version) == 1


def test_panic_routing_is_a_gauge_per_version() -> None:
    metrics = fed(PanicChanged("m", "v1", True))
    assert value(metrics, "failsoft_panic_routing", model="m", version="v1") == 1
    metrics.observe(PanicChanged("m", "v1", False))
    assert value(metrics, "failsoft_panic_routing", model="m", version="v1") == 0


# --- degraded answers and overload ------------------------------------------------------


def test_fallbacks_are_counted_by_tier() -> None:
    metrics = fed(
        FallbackUsed("m", "v1", "heuristic", "down"),
        FallbackUsed("m", "v1", "heuristic", "down"),
        FallbackUsed("m", "v1", "static", "down"),
    )
    total = "failsoft_fallbacks_total"
    assert value(metrics, total, model="m", version="v1", tier="heuristic") == 2
    assert value(metrics, total, model="m", version="v1", tier="static") == 1


def test_poison_requests_are_counted_as_detected_or_remembered() -> None:
    metrics = fed(
        PoisonDetected("m", "v1", "r0,r1", "model error"),
        PoisonDetected("m", "v1", "", "remembered"),
        PoisonDetected("m", "v1", "", "remembered"),
    )
    total = "failsoft_poison_requests_total"
    assert value(metrics, total, model="m", version="v1", remembered="false") == 1
    assert value(metrics, total, model="m", version="v1", remembered="true") == 2


def test_sheds_are_counted_by_priority_and_the_limit_is_a_gauge() -> None:
    metrics = fed(
        RequestShed("m", Priority.SHEDDABLE, "queue full"),
        LimitChanged("m", 20, 14),
        LimitChanged("m", 14, 9),
    )
    shed = "failsoft_shed_total"
    assert value(metrics, shed, model="m", priority="sheddable", reason="queue full") == 1
    assert value(metrics, "failsoft_concurrency_limit", model="m") == 9


def test_local_throttling_is_counted_per_version() -> None:
    metrics = fed(ThrottledLocally("m", "v1", 0.4), ThrottledLocally("m", "v1", 0.5))
    assert value(metrics, "failsoft_throttled_locally_total", model="m", version="v1") == 2


def test_events_metrics_does_not_count_are_ignored() -> None:
    class Unrelated(Event):
        __slots__ = ()

    before = Metrics().render()
    assert fed(Unrelated()).render() == before


# --- bounded series -------------------------------------------------------------------


def test_label_combinations_beyond_max_series_are_dropped() -> None:
    metrics = fed(*(AttemptStarted("m", "v1", f"r{i}", "first") for i in range(MAX_SERIES + 5)))
    metrics.observe(AttemptStarted("m", "v1", "r0", "first"))  # a known series still counts
    attempts = samples(metrics, "failsoft_attempts_total")
    assert len(attempts) == MAX_SERIES
    assert value(metrics, "failsoft_attempts_total", **REPLICA, kind="first") == 2
    assert all(labels["replica"] != f"r{MAX_SERIES}" for labels, _ in attempts)


def test_gauges_and_latency_series_are_bounded_too(monkeypatch: pytest.MonkeyPatch) -> None:
    # A small bound: 10,000 histograms take seconds to render and parse.
    monkeypatch.setattr(metrics_module, "MAX_SERIES", 3)
    metrics = fed(
        *(HealthChanged("m", "v1", f"r{i}", False, "x") for i in range(5)),
        *(RequestFinished("m", f"v{i}", 200, None, 0.01) for i in range(5)),
    )
    metrics.observe(HealthChanged("m", "v1", "r0", True, "back"))  # a known gauge still moves
    assert len(samples(metrics, "failsoft_replica_healthy")) == 3
    assert value(metrics, "failsoft_replica_healthy", **REPLICA) == 1
    latency = samples(metrics, "failsoft_request_duration_seconds_count")
    assert sorted(labels["version"] for labels, _ in latency) == ["v0", "v1", "v2"]


def test_each_metrics_object_has_its_own_registry() -> None:
    first, second = Metrics(), Metrics()
    first.observe(finished(200, 0.01))
    assert samples(first, "failsoft_requests_total") != []
    assert samples(second, "failsoft_requests_total") == []
