"""Online drift of one model version against its reference profile.

A ``DriftMonitor`` keeps, for every window (``drift.windows``: by default the
last 30 seconds in 5-second buckets and the last hour in 5-minute buckets), a
ring of buckets, each one sketch per column (the profile's input columns and,
with ``drift.outputs``, its output columns). ``update`` adds a batch of rows
to the current bucket of every window; a bucket older than its window is
dropped whole, so a window slides by one bucket at a time. A window whose
buckets are a whole number of a shorter window's (the hour's 5-minute buckets,
of the 30 seconds' 5-second ones) is not updated with every batch again: it
takes the shorter window's buckets as they close, merged, and when judged also
the one still open, so it holds the same rows for half the work.

``evaluate`` merges each window's buckets and scores every column against
the reference: PSI on the reference's quantile cells for numbers, the
Jensen-Shannon distance for labels (``data/distance.py``). A window is judged
only from ``min_count`` rows. A column *alerts* when the lower end of the
bias-corrected interval of its distance (one-sided at ``z``) is above the
alert threshold, and *warns* likewise above the warn threshold; the interval
counts both samples' sizes, so a small window or a small reference needs a
larger observed distance. A window *drifts* when more than ``alert_share``
of its judged columns alert (by default: any one). ``DriftDetected`` and
``DriftCleared`` are emitted when a window's verdict changes.

Everything here is synchronous and takes the time as an argument: the
caller owns the clock (``drift_service.py`` on the gateway, or a simulation).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from failsoft.data.distance import Distance, jensen_shannon, psi, reference_splits
from failsoft.data.drift_options import DriftOptions, DriftWindow
from failsoft.data.profiles import ColumnProfile, Profile, column_values, null_count
from failsoft.data.sketches import CategoricalSketch, NumericSketch
from failsoft.observe.events import Event

__all__ = [
    "DriftCleared",
    "DriftDetected",
    "DriftMonitor",
    "FeatureScore",
    "WindowReport",
]

Status = Literal["ok", "warn", "alert", "too_few"]
Sketch = NumericSketch | CategoricalSketch
STATUS_VALUES: dict[str, int] = {"too_few": -1, "ok": 0, "warn": 1, "alert": 2}
MAX_NAMED = 8  # features named in an event


@dataclass(slots=True)
class DriftDetected(Event):
    model: str
    version: str
    window: str
    features: list[str]  # the alerting ones, worst first
    worst: str
    measure: str
    distance: float  # the worst one's bias-corrected distance
    threshold: float
    share: float  # of judged features that alert
    rows: int


@dataclass(slots=True)
class DriftCleared(Event):
    model: str
    version: str
    window: str
    rows: int


@dataclass(slots=True)
class FeatureScore:
    name: str
    display: str
    role: Literal["input", "output"]
    measure: Literal["psi", "js"]
    value: float  # as observed
    corrected: float  # less the small-sample bias
    low: float  # the one-sided bounds of the interval
    high: float
    warn: float
    alert: float
    status: Status
    rows: int
    null_rate: float
    reference_null_rate: float
    cells: dict[str, Any] = field(default_factory=dict)  # reference vs now, for a chart

    def to_json(self, *, cells: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name,
            "display": self.display,
            "role": self.role,
            "measure": self.measure,
            "value": _round(self.value),
            "corrected": _round(self.corrected),
            "low": _round(self.low),
            "high": _round(self.high),
            "warn": self.warn,
            "alert": self.alert,
            "status": self.status,
            "rows": self.rows,
            "null_rate": _round(self.null_rate),
            "reference_null_rate": _round(self.reference_null_rate),
        }
        if cells:
            data["cells"] = self.cells
        return data


def _round(value: float) -> float | None:
    return None if not math.isfinite(value) else round(value, 6)


@dataclass(slots=True)
class WindowReport:
    window: str
    seconds: float
    rows: int
    judged: bool
    drifting: bool
    share: float
    features: list[FeatureScore]

    def worst(self, n: int) -> list[FeatureScore]:
        ranked = sorted(self.features, key=lambda f: (-_rank(f), f.name))
        return ranked[:n]

    def to_json(self, *, cells: bool = False) -> dict[str, Any]:
        return {
            "window": self.window,
            "seconds": self.seconds,
            "rows": self.rows,
            "judged": self.judged,
            "drifting": self.drifting,
            "share": round(self.share, 4),
            "features": [f.to_json(cells=cells) for f in self.worst(len(self.features))],
        }


def _rank(score: FeatureScore) -> float:
    """Worst first: by how far the distance is past its alert threshold."""
    return score.low / score.alert if score.alert > 0 else score.low


class _Bucket:
    __slots__ = ("index", "rows", "sketches")

    def __init__(self, index: int, columns: Sequence[ColumnProfile]) -> None:
        self.index = index
        self.rows = 0
        self.sketches: list[Sketch] = [
            NumericSketch() if isinstance(c.sketch, NumericSketch) else CategoricalSketch()
            for c in columns
        ]


class _Window:
    """A ring of buckets. A window is fed either every batch (``update``) or, when a
    shorter window's buckets tile its own, that window's buckets as they close
    (``fold``): the long window then costs a merge per closed bucket, not a second
    update per value. Merged, it also takes its source's bucket still open, so it
    holds the same rows either way."""

    def __init__(self, options: DriftWindow, columns: Sequence[ColumnProfile]) -> None:
        self.options = options
        self._columns = columns
        self._buckets: deque[_Bucket] = deque()
        self.source: _Window | None = None  # the shorter window that folds into this one
        self._folds_into: list[_Window] = []
        self._folded_through = -math.inf  # the newest bucket index already folded

    def fed_by(self, source: _Window) -> None:
        self.source = source
        source._folds_into.append(self)

    def _bucket_at(self, index: int) -> _Bucket:
        self._expire(index)
        if not self._buckets or self._buckets[-1].index != index:
            if self._buckets:
                self._fold(self._buckets[-1])  # it is closed
            self._buckets.append(_Bucket(index, self._columns))
        return self._buckets[-1]

    def _expire(self, index: int) -> None:
        oldest = index - self.options.buckets + 1
        while self._buckets and self._buckets[0].index < oldest:
            self._fold(self._buckets.popleft())

    def _fold(self, bucket: _Bucket) -> None:
        if bucket.index <= self._folded_through:
            return
        self._folded_through = bucket.index
        for into in self._folds_into:
            target = into._bucket_at(self._index_in(into, bucket))
            target.rows += bucket.rows
            for mine, theirs in zip(target.sketches, bucket.sketches, strict=True):
                _merge(mine, theirs)

    def _index_in(self, other: _Window, bucket: _Bucket) -> int:
        middle = (bucket.index + 0.5) * self.options.bucket_s  # robust to rounding
        return math.floor(middle / other.options.bucket_s)

    def _open(self) -> _Bucket | None:
        """The newest bucket when it is not folded yet."""
        if self._buckets and self._buckets[-1].index > self._folded_through:
            return self._buckets[-1]
        return None

    def update(self, now: float, rows: int, values: Sequence[np.ndarray | None]) -> None:
        bucket = self._bucket_at(math.floor(now / self.options.bucket_s))
        bucket.rows += rows
        for sketch, column in zip(bucket.sketches, values, strict=True):
            if column is not None:
                sketch.update(column)

    def merged(self, now: float) -> tuple[int, list[Sketch]]:
        chain = []  # the windows that fold into this one, directly or not, nearest first
        source = self.source
        while source is not None:
            chain.append(source)
            source = source.source
        for window in [*reversed(chain), self]:  # what expires folds on up the chain
            window._expire(math.floor(now / window.options.bucket_s))
        index = math.floor(now / self.options.bucket_s)
        oldest = index - self.options.buckets + 1
        buckets = list(self._buckets)
        for window in chain:  # and what has not reached this window yet
            open_bucket = window._open()
            if open_bucket is not None and window._index_in(self, open_bucket) >= oldest:
                buckets.append(open_bucket)
        merged: list[Sketch] = [
            NumericSketch() if isinstance(c.sketch, NumericSketch) else CategoricalSketch()
            for c in self._columns
        ]
        rows = 0
        for bucket in buckets:
            rows += bucket.rows
            for into, sketch in zip(merged, bucket.sketches, strict=True):
                _merge(into, sketch)
        return rows, merged


def _merge(into: Sketch, sketch: Sketch) -> None:
    if isinstance(into, NumericSketch) and isinstance(sketch, NumericSketch):  # noqa: SIM114 - two branches so mypy narrows both
        into.merge(sketch)
    elif isinstance(into, CategoricalSketch) and isinstance(sketch, CategoricalSketch):
        into.merge(sketch)


def chain_windows(windows: Sequence[_Window]) -> None:
    """Feed each window from the shorter-bucketed window nearest to it whose buckets
    tile its own (bucket_s a whole multiple), where there is one."""
    ordered = sorted(windows, key=lambda w: (w.options.bucket_s, w.options.seconds))
    for position, window in enumerate(ordered):
        for shorter in reversed(ordered[:position]):
            ratio = window.options.bucket_s / shorter.options.bucket_s
            if abs(ratio - round(ratio)) < 1e-9:
                window.fed_by(shorter)
                break


class DriftMonitor:
    """The drift of one model version: sliding windows of sketches, judged on demand."""

    def __init__(
        self,
        model: str,
        version: str,
        profile: Profile,
        options: DriftOptions,
        emit: Callable[[Event], None],
    ) -> None:
        self.model = model
        self.version = version
        self.profile = profile
        self.options = options
        self._emit = emit
        columns = list(profile.inputs)
        self._roles: list[Literal["input", "output"]] = ["input"] * len(columns)
        if options.outputs:
            columns += profile.outputs
            self._roles += ["output"] * len(profile.outputs)
        self.columns: list[ColumnProfile] = columns
        self._n_inputs = len(profile.inputs)
        self._windows = [_Window(window, columns) for window in options.windows]
        chain_windows(self._windows)
        self._fed = [window for window in self._windows if window.source is None]
        self._splits = [
            reference_splits(c.sketch, options.bins) if isinstance(c.sketch, NumericSketch) else []
            for c in columns
        ]
        self.drifting: dict[str, bool] = {window.name: False for window in options.windows}
        self.reports: dict[str, WindowReport] = {}
        self.rows = 0
        self.unusable = 0  # batches that fit no column, answers with a tensor unlike their batch's

    def update(
        self, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray] | None, now: float
    ) -> None:
        """Add a batch of rows (one request's, or many concatenated)."""
        values: list[np.ndarray | None] = []
        for index, column in enumerate(self.columns):
            source = inputs if index < self._n_inputs else outputs
            values.append(column_values(source, column.column) if source is not None else None)
        first = values[0] if values else None
        if first is None:
            self.unusable += 1
            return
        rows = len(first)
        self.rows += rows
        for window in self._fed:
            window.update(now, rows, values)

    def evaluate(
        self, now: float, *, cells: bool = False, record: bool = True
    ) -> list[WindowReport]:
        """Score every window; with ``record``, keep the reports and emit DriftDetected /
        DriftCleared where a verdict changed (without it, only look)."""
        reports = []
        for window in self._windows:
            report = self._judge(window, now, cells)
            reports.append(report)
            if record:
                self.reports[report.window] = report
                self._transition(report)
        return reports

    def _judge(self, window: _Window, now: float, cells: bool) -> WindowReport:
        options = self.options
        rows, sketches = window.merged(now)
        judged = rows >= options.min_count
        scores = [
            self._score(i, sketch, judged, cells)
            for i, sketch in enumerate(sketches)
            if sketch.count or cells
        ]
        counted = [s for s in scores if s.status != "too_few"]
        alerting = sum(1 for s in counted if s.status == "alert")
        share = alerting / len(counted) if counted else 0.0
        drifting = judged and alerting > 0 and share > options.alert_share
        return WindowReport(
            window.options.name, window.options.seconds, rows, judged, drifting, share, scores
        )

    def _score(self, index: int, current: Sketch, judged: bool, cells: bool) -> FeatureScore:
        reference = self.columns[index]
        options = self.options
        distance: Distance
        if isinstance(reference.sketch, NumericSketch) and isinstance(current, NumericSketch):
            distance = psi(reference.sketch, current, options.bins)
            warn, alert = options.psi_warn, options.psi_alert
        elif isinstance(reference.sketch, CategoricalSketch) and isinstance(
            current, CategoricalSketch
        ):
            distance = jensen_shannon(reference.sketch, current)
            warn, alert = options.js_warn, options.js_alert
        else:  # pragma: no cover - the buckets are made from the reference's kinds
            raise TypeError(f"column {reference.name}: sketch kinds differ")
        low, high = distance.interval(options.z)
        status: Status = "too_few"
        if judged and current.count:
            status = "alert" if low > alert else "warn" if low > warn else "ok"
        return FeatureScore(
            reference.name,
            reference.display,
            self._roles[index],
            distance.measure,
            distance.value,
            distance.corrected(),
            low,
            high,
            warn,
            alert,
            status,
            current.count,
            null_count(current) / current.count if current.count else 0.0,
            reference.null_rate,
            self._cells(index, current) if cells else {},
        )

    def _cells(self, index: int, current: Sketch) -> dict[str, Any]:
        """Reference and current shares on the reference's cells (for a chart)."""
        reference = self.columns[index].sketch
        if isinstance(reference, NumericSketch) and isinstance(current, NumericSketch):
            splits = self._splits[index]
            ref = reference.pmf(splits) if reference.finite_count else np.zeros(len(splits) + 1)
            now = current.pmf(splits) if current.finite_count else np.zeros(len(splits) + 1)
            return {
                "splits": [round(s, 6) for s in splits],
                "reference": [round(float(v), 6) for v in ref],
                "current": [round(float(v), 6) for v in now],
                "reference_range": [_round(reference.min), _round(reference.max)],
                "current_range": [_round(current.min), _round(current.max)],
            }
        assert isinstance(reference, CategoricalSketch)
        assert isinstance(current, CategoricalSketch)
        labels = sorted(set(reference.counts()) | set(current.counts()))[:50]
        ref_counts, now_counts = reference.counts(), current.counts()
        ref_total, now_total = max(reference.count, 1), max(current.count, 1)
        return {
            "labels": labels,
            "reference": [round(ref_counts.get(label, 0) / ref_total, 6) for label in labels],
            "current": [round(now_counts.get(label, 0) / now_total, 6) for label in labels],
        }

    def _transition(self, report: WindowReport) -> None:
        was = self.drifting[report.window]
        if report.drifting == was or (not report.judged and not was):
            return
        if not report.judged:
            return  # too few rows to say it is over: the verdict stands
        self.drifting[report.window] = report.drifting
        if report.drifting:
            alerting = [f for f in report.worst(len(report.features)) if f.status == "alert"]
            worst = alerting[0]
            self._emit(
                DriftDetected(
                    self.model,
                    self.version,
                    report.window,
                    [f.name for f in alerting[:MAX_NAMED]],
                    worst.name,
                    worst.measure,
                    round(worst.corrected, 4),
                    worst.alert,
                    round(report.share, 4),
                    report.rows,
                )
            )
        else:
            self._emit(DriftCleared(self.model, self.version, report.window, report.rows))

    @property
    def is_drifting(self) -> bool:
        return any(self.drifting.values())
