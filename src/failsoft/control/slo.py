"""SLOs and error budgets: counted from the event bus in time buckets, bounded in memory.

Each model has an availability objective (its ``objective_pct``: good =
answered, a degraded answer counts as answered), and optionally a quality
objective (the share of answers not degraded), a latency objective (the
share of answers under a threshold) and an accuracy objective (the share of
labelled rows predicted right, from the feedback joined to the prediction
log), over a rolling 28- or 30-day window. With ``per_tenant`` each tenant
of the model is a series of its own too.

What counts: a request refused for its own sake (client, data or poison
failures, a tenant over its quota: 4xx) is no event of the SLO; an answer is
good; a 5xx (a replica failure, a shed, a safe halt) is bad. For accuracy
an event is one labelled row, counted when its feedback arrives (so a burn
shows when the labels come in): good when the label matches (classification)
or the value is within ``accuracy_tolerance`` of the truth (regression).

Counting is one observer of ``RequestFinished``: it adds to the current
minute of its series (plain integers on the event loop). Minutes go into two
rings: one-minute buckets over 3 days (every burn-rate window) and one-hour
buckets over 30 days (the budget). A series therefore costs a fixed
~175 KB, whatever the traffic (twice that once other gateways' sums are
read), and at most ``MAX_SERIES`` series are kept.
The buckets changed since the last save are written to the control store
every few seconds (``Operate``), and loaded again at start-up: a restart
does not reset a budget. Times are wall-clock epoch seconds from ``wall``
(a test passes its ManualClock's ``now``).

Gateways sharing a store: each counts and saves its own buckets (rows of
its own id), and every few seconds reads the sums of the other gateways'
buckets (``merge_peers``) into a second pair of rings per series, made on
first use. Budgets, burn rates and alerts read both: the whole fleet's
traffic, whichever gateway served it. The Prometheus counters stay this
process's own (Prometheus sums the gateways itself).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
from pydantic import Field

from failsoft._options import StrictModel
from failsoft.control.burn import (
    RULES,
    WINDOWS,
    BurnAlert,
    RuleSubject,
    burn_rate,
    rule_label,
    window_label,
)
from failsoft.data.feedback import FeedbackJoined
from failsoft.errors import FailureClass
from failsoft.observe.events import Event, RequestFinished

if TYPE_CHECKING:
    from failsoft.config import ModelConfig

__all__ = ["COUNTS", "MAX_SERIES", "Bucket", "SloBook", "SloOptions", "rule_subjects"]

log = logging.getLogger("failsoft.slo")

MAX_SERIES = 256
MINUTES = 3 * 24 * 60  # one-minute buckets: the longest burn window (3 d)
HOURS = 30 * 24  # one-hour buckets: the longest SLO window (30 d)
VALID, FAILED, DEGRADED, SLOW, LABELLED, WRONG = range(6)
COUNTS = ("valid", "failed", "degraded", "slow", "labelled", "wrong")  # a bucket's columns
WIDTH = len(COUNTS)
MINUTE_COUNT = np.int32  # 2^31 events a minute is far beyond a gateway; sums are int64
_EXCLUDED = (FailureClass.CLIENT, FailureClass.DATA, FailureClass.REQUEST)
OBJECTIVES = ("availability", "quality", "latency", "accuracy")


class SloOptions(StrictModel):
    """A model's SLOs besides availability (its ``objective_pct``)."""

    window_days: Literal[28, 30] = Field(default=30, description="the rolling SLO window")
    quality_pct: Annotated[float, Field(gt=0, lt=100)] | None = Field(
        default=None, description="objective: the share of answers not degraded"
    )
    latency_ms: Annotated[float, Field(gt=0, le=600_000)] | None = Field(
        default=None, description="latency objective: answers faster than this are good"
    )
    latency_pct: Annotated[float, Field(gt=0, lt=100)] = Field(
        default=99.0, description="latency objective: the share of answers under latency_ms"
    )
    accuracy_pct: Annotated[float, Field(gt=0, lt=100)] | None = Field(
        default=None,
        description="objective: the share of labelled rows predicted right (needs "
        "predictions.enabled and feedback)",
    )
    accuracy_tolerance: Annotated[float, Field(ge=0, le=1e12)] = Field(
        default=0.0,
        description="regression: a predicted value within this of the truth is right",
    )
    per_tenant: bool = Field(default=False, description="also a series per tenant")
    min_events: Annotated[int, Field(ge=1, le=10_000_000)] = Field(
        default=100, description="an alert needs this many events in its long window"
    )


@dataclass(frozen=True)
class Objective:
    name: str
    target_pct: float


@dataclass(frozen=True)
class Bucket:
    """One stored bucket: its series, size (60 or 3600 s), start (epoch s) and counts
    (``COUNTS``)."""

    series: str
    resolution: int
    start: int
    counts: tuple[int, ...]


def series_name(model: str, tenant: str) -> str:
    return f"{model}:{tenant}" if tenant else model


class _Ring:
    """Fixed buckets of one size; a slot is reused (zeroed) when its time comes round."""

    __slots__ = ("counts", "size", "stamps")

    def __init__(self, size: int, dtype: type[np.integer[Any]] = np.int64) -> None:
        self.size = size
        self.stamps = np.full(size, -1, dtype=np.int64)
        self.counts = np.zeros((size, WIDTH), dtype=dtype)

    def add(self, index: int, values: list[int]) -> None:
        slot = index % self.size
        if self.stamps[slot] != index:
            self.stamps[slot] = index
            self.counts[slot] = 0
        self.counts[slot] += values

    def put(self, index: int, values: Iterable[int]) -> None:
        slot = index % self.size
        self.stamps[slot] = index
        self.counts[slot] = list(values)

    def get(self, index: int) -> tuple[int, ...]:
        slot = index % self.size
        if self.stamps[slot] != index:
            return (0,) * WIDTH
        return tuple(int(x) for x in self.counts[slot])

    def windows(self, last: int, counts: Iterable[int]) -> dict[int, np.ndarray]:
        """The sums over several windows (in buckets) ending at ``last``, in one pass."""
        ages = last - self.stamps
        kept = (ages >= 0) & (ages < self.size)
        by_age = np.zeros((self.size, WIDTH), dtype=np.int64)
        by_age[ages[kept]] = self.counts[kept]
        running = np.cumsum(by_age, axis=0)
        return {count: running[min(count, self.size) - 1] for count in counts}

    def total(self, last: int, count: int) -> np.ndarray:
        """The sums of the ``count`` buckets up to and including index ``last``."""
        mask = (self.stamps > last - count) & (self.stamps <= last)
        summed: np.ndarray = self.counts[mask].sum(axis=0, dtype=np.int64)
        return summed


class _Peers:
    """The other gateways' buckets of one series, summed (as last read from the store)."""

    __slots__ = ("hours", "minutes")

    def __init__(self) -> None:
        self.minutes = _Ring(MINUTES, MINUTE_COUNT)
        self.hours = _Ring(HOURS)


class _Series:
    __slots__ = (
        "changes",
        "dirty_hours",
        "dirty_minutes",
        "hours",
        "judged",
        "minute",
        "minutes",
        "model",
        "peers",
        "pending",
        "totals",
    )

    def __init__(self, model: str) -> None:
        self.model = model
        self.minutes = _Ring(MINUTES, MINUTE_COUNT)
        self.hours = _Ring(HOURS)
        self.minute = -1
        self.pending = [0] * WIDTH
        self.dirty_minutes: set[int] = set()
        self.dirty_hours: set[int] = set()
        self.changes = 0
        self.totals = [0] * WIDTH  # since this process started (Prometheus counters)
        self.judged: tuple[int, int] = (-1, -1)  # (minute, changes) when alerts were judged
        self.peers: _Peers | None = None

    def windows(self, now_minute: int) -> dict[int, np.ndarray]:
        """Every burn window's sums ending at ``now_minute``: this gateway's and its peers'."""
        spans = [w // 60 for w in WINDOWS]
        sums = self.minutes.windows(now_minute, spans)
        if self.peers is not None:
            theirs = self.peers.minutes.windows(now_minute, spans)
            sums = {span: sums[span] + theirs[span] for span in spans}
        return {w: sums[w // 60] for w in WINDOWS}

    def hours_total(self, last: int, count: int) -> np.ndarray:
        """The sums of the ``count`` hours up to ``last``: this gateway's and its peers'."""
        summed = self.hours.total(last, count)
        if self.peers is not None:
            summed = summed + self.peers.hours.total(last, count)
        return summed

    def flush(self) -> None:
        pending = self.pending
        if self.minute < 0 or not any(pending):
            return
        self.minutes.add(self.minute, pending)
        self.hours.add(self.minute // 60, pending)
        self.dirty_minutes.add(self.minute)
        self.dirty_hours.add(self.minute // 60)
        totals = self.totals
        for index in range(WIDTH):
            totals[index] += pending[index]
        self.pending = [0] * WIDTH
        self.changes += 1


@dataclass(frozen=True)
class _Plan:
    """What one model counts."""

    objectives: tuple[Objective, ...]
    options: SloOptions
    latency_s: float | None
    accuracy: bool


def _plan(config: ModelConfig) -> _Plan:
    slo = config.slo
    objectives = [Objective("availability", config.objective_pct)]
    if slo.quality_pct is not None:
        objectives.append(Objective("quality", slo.quality_pct))
    if slo.latency_ms is not None:
        objectives.append(Objective("latency", slo.latency_pct))
    if slo.accuracy_pct is not None:
        objectives.append(Objective("accuracy", slo.accuracy_pct))
    latency_s = None if slo.latency_ms is None else slo.latency_ms / 1000.0
    return _Plan(tuple(objectives), slo, latency_s, slo.accuracy_pct is not None)


def rule_subjects(models: Mapping[str, ModelConfig]) -> list[RuleSubject]:
    """Every objective of every model, as the Prometheus rules see it."""
    return [
        RuleSubject(name, objective.name, objective.target_pct, plan.options.min_events)
        for name, plan in sorted((name, _plan(config)) for name, config in models.items())
        for objective in plan.objectives
    ]


def _bad_and_valid(objective: str, counts: Any) -> tuple[int, int]:
    valid, failed, degraded, slow, labelled, wrong = (int(x) for x in counts)
    if objective == "availability":
        return failed, valid
    if objective == "accuracy":
        return wrong, labelled
    answered = valid - failed
    return (degraded if objective == "quality" else slow), answered


class SloBook:
    """Every SLO of one gateway: counting, burn rates, alerts (see the module's docstring)."""

    def __init__(
        self,
        models: Mapping[str, ModelConfig],
        emit: Callable[[Event], None],
        wall: Callable[[], float],
    ) -> None:
        self._emit = emit
        self._wall = wall
        self._plans: dict[str, _Plan] = {}
        self._series: dict[tuple[str, str], _Series] = {}
        self._firing: dict[tuple[str, str, str, str], bool] = {}
        self._dropped = False
        self.configure(models)

    def configure(self, models: Mapping[str, ModelConfig]) -> None:
        """Count the models of this configuration (a model removed keeps its buckets)."""
        self._plans = {name: _plan(config) for name, config in models.items()}

    # -- counting (on the event loop, per request) ----------------------------------

    def observe(self, event: Event) -> None:
        """Count one finished request (subscribed to ``RequestFinished`` only)."""
        assert isinstance(event, RequestFinished)
        status = event.status
        if 400 <= status < 500:
            return  # refused for the request's own sake
        plan = self._plans.get(event.model)
        if plan is None:
            return
        if status >= 500:
            if event.failure_class in _EXCLUDED:
                return  # a deadline the client cut short, a poison request
            index = FAILED
            slow = False
        else:
            index = DEGRADED if event.degraded else -1
            slow = plan.latency_s is not None and event.seconds > plan.latency_s
        minute = int(self._wall() // 60)
        self._count((event.model, ""), minute, index, slow)
        if event.tenant and plan.options.per_tenant:
            self._count((event.model, event.tenant), minute, index, slow)

    def observe_feedback(self, event: Event) -> None:
        """Count the rows of one joined feedback item (subscribed to ``FeedbackJoined``)."""
        assert isinstance(event, FeedbackJoined)
        plan = self._plans.get(event.model)
        if plan is None or not plan.accuracy or not event.rows:
            return
        if event.kind == "regression":
            tolerance = plan.options.accuracy_tolerance
            wrong = sum(1 for error in event.errors if error > tolerance)
        else:
            wrong = event.rows - event.correct
        minute = int(self._wall() // 60)
        self._labels((event.model, ""), minute, event.rows, wrong)
        if event.tenant and plan.options.per_tenant:
            self._labels((event.model, event.tenant), minute, event.rows, wrong)

    def _pending(self, key: tuple[str, str], minute: int) -> list[int] | None:
        """The current minute's counts of a series (the minute before is flushed)."""
        series = self._series.get(key)
        if series is None:
            series = self._new_series(*key)
            if series is None:
                return None
        if series.minute != minute:
            series.flush()
            series.minute = minute
        return series.pending

    def _count(self, key: tuple[str, str], minute: int, index: int, slow: bool) -> None:
        pending = self._pending(key, minute)
        if pending is None:
            return
        pending[VALID] += 1
        if index >= 0:
            pending[index] += 1
        if slow:
            pending[SLOW] += 1

    def _labels(self, key: tuple[str, str], minute: int, rows: int, wrong: int) -> None:
        pending = self._pending(key, minute)
        if pending is not None:
            pending[LABELLED] += rows
            pending[WRONG] += wrong

    def _new_series(self, model: str, tenant: str) -> _Series | None:
        if len(self._series) >= MAX_SERIES:
            if not self._dropped:
                log.warning(
                    "too many SLO series; new ones are not counted",
                    extra={"max_series": MAX_SERIES, "model": model, "tenant": tenant},
                )
                self._dropped = True
            return None
        series = self._series[(model, tenant)] = _Series(model)
        return series

    # -- reading ----------------------------------------------------------------------

    def flush(self) -> None:
        for series in self._series.values():
            series.flush()

    def status(self) -> list[dict[str, Any]]:
        """Every objective of every series: budget left, burn rates, alerts firing."""
        self.flush()
        now_minute = int(self._wall() // 60)
        rows: list[dict[str, Any]] = []
        for (model, tenant), series in sorted(self._series.items()):
            plan = self._plans.get(model)
            if plan is None:
                continue
            windows = series.windows(now_minute)
            days = plan.options.window_days
            whole = series.hours_total(now_minute // 60, days * 24)
            for objective in plan.objectives:
                rows.append(self._row(model, tenant, objective, plan, windows, whole, days))
        return rows

    def _row(
        self,
        model: str,
        tenant: str,
        objective: Objective,
        plan: _Plan,
        windows: Mapping[int, np.ndarray],
        whole: np.ndarray,
        days: int,
    ) -> dict[str, Any]:
        name, target = objective.name, objective.target_pct
        bad, valid = _bad_and_valid(name, whole)
        allowed = valid * (1.0 - target / 100.0)
        budget_left = 1.0 - (bad / allowed) if allowed > 0 else (1.0 if bad == 0 else 0.0)
        burns: dict[str, float] = {}
        counts: dict[int, int] = {}
        for seconds, summed in windows.items():
            w_bad, w_valid = _bad_and_valid(name, summed)
            burns[window_label(seconds)] = round(burn_rate(w_bad, w_valid, target), 4)
            counts[seconds] = w_valid
        firing = [
            rule_label(rule)
            for rule in RULES
            if self._firing.get((model, tenant, name, rule_label(rule)), False)
        ]
        return {
            "model": model,
            "tenant": tenant,
            "objective": name,
            "target_pct": target,
            "window_days": days,
            "events": valid,
            "bad": bad,
            "budget_left": round(budget_left, 6),
            "burn": burns,
            "alerts": firing,
            "min_events": plan.options.min_events,
            "latency_ms": plan.options.latency_ms if name == "latency" else None,
            "tolerance": plan.options.accuracy_tolerance if name == "accuracy" else None,
        }

    def counters(self) -> list[tuple[tuple[str, str, str], int, int]]:
        """Events and bad events of every objective since this process started:
        ((model, tenant, objective), events, bad), for Prometheus."""
        self.flush()
        out = []
        for (model, tenant), series in sorted(self._series.items()):
            plan = self._plans.get(model)
            if plan is None:
                continue
            for objective in plan.objectives:
                bad, valid = _bad_and_valid(objective.name, series.totals)
                out.append(((model, tenant, objective.name), valid, bad))
        return out

    def allowed_bad(self, model: str) -> float | None:
        """How many failed requests the model's availability budget allows in its window."""
        series, plan = self._series.get((model, "")), self._plans.get(model)
        if series is None or plan is None:
            return None
        series.flush()
        hour = int(self._wall() // 3600)
        valid = int(series.hours_total(hour, plan.options.window_days * 24)[VALID])
        return valid * (1.0 - plan.objectives[0].target_pct / 100.0)

    def subjects(self) -> list[RuleSubject]:
        return [
            RuleSubject(model, objective.name, objective.target_pct, plan.options.min_events)
            for model, plan in sorted(self._plans.items())
            for objective in plan.objectives
        ]

    # -- alerting (every few seconds, off the request path) ---------------------------

    def evaluate(self) -> list[BurnAlert]:
        """Fire and clear the burn-rate alerts; the ones that changed (also emitted)."""
        self.flush()
        now_minute = int(self._wall() // 60)
        changed: list[BurnAlert] = []
        for (model, tenant), series in list(self._series.items()):
            plan = self._plans.get(model)
            if plan is None or series.judged == (now_minute, series.changes):
                continue  # nothing new since the last judgement
            series.judged = (now_minute, series.changes)
            windows = series.windows(now_minute)
            for objective in plan.objectives:
                for rule in RULES:
                    alert = self._judge(model, tenant, objective, plan, rule, windows)
                    if alert is not None:
                        changed.append(alert)
        for alert in changed:
            self._emit(alert)
        return changed

    def _judge(
        self,
        model: str,
        tenant: str,
        objective: Objective,
        plan: _Plan,
        rule: Any,
        windows: Mapping[int, np.ndarray],
    ) -> BurnAlert | None:
        name = objective.name
        long_bad, long_valid = _bad_and_valid(name, windows[rule.long_s])
        short_bad, short_valid = _bad_and_valid(name, windows[rule.short_s])
        long_burn = burn_rate(long_bad, long_valid, objective.target_pct)
        short_burn = burn_rate(short_bad, short_valid, objective.target_pct)
        firing = (
            long_valid >= plan.options.min_events
            and long_burn >= rule.factor
            and short_burn >= rule.factor
        )
        label = rule_label(rule)
        key = (model, tenant, name, label)
        if self._firing.get(key, False) == firing:
            return None
        self._firing[key] = firing
        log.log(
            logging.WARNING if firing else logging.INFO,
            "SLO burn alert " + ("firing" if firing else "cleared"),
            extra={"model": model, "tenant": tenant, "objective": name, "rule": label},
        )
        return BurnAlert(
            model,
            tenant,
            name,
            rule.severity,
            firing,
            round(long_burn, 4),
            round(short_burn, 4),
            label,
        )

    # -- persistence ------------------------------------------------------------------

    def changed_buckets(self) -> list[Bucket]:
        """The buckets changed since the last call (their full counts), to save."""
        self.flush()
        out: list[Bucket] = []
        for (model, tenant), series in self._series.items():
            name = series_name(model, tenant)
            for minute in sorted(series.dirty_minutes):
                out.append(Bucket(name, 60, minute * 60, series.minutes.get(minute)))
            for hour in sorted(series.dirty_hours):
                out.append(Bucket(name, 3600, hour * 3600, series.hours.get(hour)))
            series.dirty_minutes.clear()
            series.dirty_hours.clear()
        return out

    def mark_unsaved(self, buckets: Iterable[Bucket]) -> None:
        """Buckets a save did not get into the store: save them next time."""
        for bucket in buckets:
            model, _, tenant = bucket.series.partition(":")
            series = self._series.get((model, tenant))
            if series is None:
                continue
            if bucket.resolution == 60:
                series.dirty_minutes.add(bucket.start // 60)
            else:
                series.dirty_hours.add(bucket.start // 3600)

    def load(self, buckets: Iterable[Bucket], *, merge: bool = False) -> int:
        """Put stored buckets back; how many were loaded. ``merge``: add them to what was
        counted here meanwhile (the store was down at start-up), to be saved again."""
        loaded = 0
        for bucket in buckets:
            model, _, tenant = bucket.series.partition(":")
            series = self._series.get((model, tenant)) or self._new_series(model, tenant)
            if series is None:
                continue
            if bucket.resolution == 60:
                ring, index, dirty = series.minutes, bucket.start // 60, series.dirty_minutes
            elif bucket.resolution == 3600:
                ring, index, dirty = series.hours, bucket.start // 3600, series.dirty_hours
            else:
                continue
            if merge:
                ring.add(index, list(bucket.counts))
                dirty.add(index)
            else:
                ring.put(index, bucket.counts)
            series.changes += 1
            loaded += 1
        return loaded

    def merge_peers(self, buckets: Iterable[Bucket]) -> int:
        """Take in the other gateways' buckets (each the sum over all of them, as the
        store holds it now: it replaces what was read before); how many were taken."""
        taken = 0
        for bucket in buckets:
            model, _, tenant = bucket.series.partition(":")
            series = self._series.get((model, tenant)) or self._new_series(model, tenant)
            if series is None:
                continue
            peers = series.peers
            if peers is None:
                peers = series.peers = _Peers()
            if bucket.resolution == 60:
                peers.minutes.put(bucket.start // 60, bucket.counts)
            elif bucket.resolution == 3600:
                peers.hours.put(bucket.start // 3600, bucket.counts)
            else:
                continue
            series.changes += 1
            taken += 1
        return taken

    def oldest_kept(self) -> tuple[int, int]:
        """Epoch seconds before which minute and hour buckets are of no use any more."""
        now = int(self._wall())
        return now - MINUTES * 60, now - HOURS * 3600
