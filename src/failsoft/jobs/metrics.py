"""Prometheus families for this gateway's job workers (read when /metrics is scraped)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from failsoft.jobs.workers import Workers


class JobsCollector:
    def __init__(self, workers: Workers) -> None:
        self._workers = workers

    def collect(self) -> Iterator[Metric]:
        counts = self._workers.counts
        outcomes = CounterMetricFamily(
            "failsoft_jobs",
            "Jobs this gateway's workers leased, and what became of them: stored (result "
            "written), failed (cannot succeed), retried (backing off), fenced (the lease "
            "was taken over, so the result was not stored: the job ran twice)",
            labels=["outcome"],
        )
        for outcome in ("leased", "stored", "failed", "retried", "fenced"):
            outcomes.add_metric([outcome], getattr(counts, outcome))
        yield outcomes
        running = GaugeMetricFamily("failsoft_jobs_running", "Jobs this gateway runs now")
        running.add_metric([], self._workers.running)
        yield running
