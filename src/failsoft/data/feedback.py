"""Ground truth, late: true labels joined to logged predictions, and accuracy from them.

``AccuracyBoard`` keeps an index of the most recent predictions (model,
version, tenant, time, predicted labels, feature buckets by request id;
``prediction_index``), fed by the prediction log's writer as it makes
records; it is bounded (``index_records``), the oldest leaving first.
Feedback for an id that left the index is looked up in the log files
(``find_records``, bounded bytes per call); one not found there either is
counted ``unknown``. Feedback for an id
already judged is counted ``duplicate`` and changes nothing.

Accuracy (classification: the share of rows whose label matches) or error
(regression: mean absolute error and RMSE) is kept per model version, in
windows by the time of the prediction and in total, for every segment: the
whole version (``all``), each tenant (``tenant:NAME``) and each bucket of a
configured feature (``features[2]:4..5``). All is bounded: a fixed number
of windows, and at most ``MAX_SERIES`` segments.

Each joined item is also told to ``emit`` as a ``FeedbackJoined`` event (its
rows, how many were right, and for a regression each row's absolute error):
the accuracy SLO counts them by the time the feedback came.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from failsoft.data.prediction_index import IndexedPrediction, Predicted, PredictionIndex
from failsoft.data.prediction_options import FeedbackOptions
from failsoft.observe.events import Event

__all__ = ["AccuracyBoard", "FeedbackItem", "FeedbackJoined", "FeedbackResult", "parse_feedback"]

MAX_SERIES = 10_000
MAX_ITEMS = 100_000  # per call
MAX_PROBLEMS = 10
OUTCOMES = ("joined", "unknown", "duplicate", "invalid")


@dataclass(slots=True)
class FeedbackJoined(Event):
    """The labels of one prediction joined: ``rows`` judged, ``correct`` of them matching
    (classification), or each row's absolute error in ``errors`` (regression)."""

    model: str
    version: str
    tenant: str | None
    kind: str  # "classification" or "regression"
    rows: int
    correct: int
    errors: tuple[float, ...]


@dataclass(slots=True)
class FeedbackItem:
    request_id: str
    truth: list[Any]  # one value per row, or one for all rows


@dataclass
class FeedbackResult:
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    problems: list[str] = field(default_factory=list)

    def note(self, outcome: str, problem: str | None = None) -> None:
        self.counts[outcome] += 1
        if problem is not None and len(self.problems) < MAX_PROBLEMS:
            self.problems.append(problem)


def _scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | bool) and not (
        isinstance(value, float) and not math.isfinite(value)
    )


def parse_feedback(body: Any, result: FeedbackResult) -> list[FeedbackItem]:
    """One item (``{"request_id", "label"|"labels"|"value"|"values"}``) or a bulk body
    (``{"feedback": [items]}``); an item that is wrong is counted ``invalid`` and named."""
    if isinstance(body, dict) and "feedback" in body:
        raw = body["feedback"]
        if not isinstance(raw, list):
            raise ValueError("feedback must be a list of {request_id, label} objects")
        bulk = True
    else:
        raw = [body]
        bulk = False
    if len(raw) > MAX_ITEMS:
        raise ValueError(f"feedback holds {len(raw)} items; send at most {MAX_ITEMS} per call")
    items = []
    for index, entry in enumerate(raw):
        name = f"feedback[{index}]" if bulk else "body"
        if not isinstance(entry, dict):
            result.note("invalid", f"{name}: expected an object with request_id and label")
            continue
        request_id = entry.get("request_id")
        if not isinstance(request_id, str) or not 0 < len(request_id) <= 128:
            result.note("invalid", f"{name}.request_id: a string of 1 to 128 characters")
            continue
        truth: list[Any] | None = None
        for key in ("label", "value"):
            if key in entry:
                truth = [entry[key]]
        for key in ("labels", "values"):
            if key in entry and isinstance(entry[key], list):
                truth = entry[key]
        if not truth or not all(_scalar(value) for value in truth):
            result.note(
                "invalid",
                f"{name}: give label (or value) as a string or a finite number, or labels "
                "(values) as a list of them, one per row",
            )
            continue
        items.append(FeedbackItem(request_id, truth))
    return items


class _Stat:
    __slots__ = ("abs_error", "correct", "count", "squared_error")

    def __init__(self) -> None:
        self.count = 0
        self.correct = 0
        self.abs_error = 0.0
        self.squared_error = 0.0

    def add(self, kind: str, predicted: Any, truth: Any) -> None:
        self.count += 1
        if kind == "regression":
            error = float(predicted) - float(truth)
            self.abs_error += abs(error)
            self.squared_error += error * error
        elif _same(predicted, truth):
            self.correct += 1

    def describe(self, kind: str) -> dict[str, Any]:
        if kind == "regression":
            n = max(self.count, 1)
            return {
                "count": self.count,
                "mae": self.abs_error / n,
                "rmse": math.sqrt(self.squared_error / n),
            }
        return {
            "count": self.count,
            "correct": self.correct,
            "accuracy": self.correct / self.count if self.count else None,
        }


def _same(predicted: Any, truth: Any) -> bool:
    if predicted == truth:
        return True
    # A label sent as "2" for a predicted class 2, or 2.0 for 2.
    return str(predicted) == str(truth) or (
        isinstance(truth, int | float) and isinstance(predicted, int | float) and predicted == truth
    )


class AccuracyBoard:
    def __init__(
        self, options: FeedbackOptions, emit: Callable[[Event], None] | None = None
    ) -> None:
        self.options = options
        self._emit = emit
        self._lock = threading.Lock()
        self._index = PredictionIndex(options.index_records)
        self._totals: dict[tuple[str, str, str], _Stat] = {}
        self._windows: dict[tuple[str, str, str, float], _Stat] = {}
        self._kinds: dict[tuple[str, str], str] = {}
        self.outcomes: dict[tuple[str, str], int] = {}  # (model, outcome) -> count

    # -- fed by the prediction log's writer -------------------------------------------

    def add_predicted(self, predicted: Predicted) -> None:
        """Index predictions the log has just made (a chunk of them, oldest first)."""
        with self._lock:
            self._index.add_many(predicted)

    def add_records(self, records: list[dict[str, Any]]) -> None:
        """Index stored records (those with a prediction to judge)."""
        predicted = Predicted()
        for record in records:
            predicted.append_record(record)
        self.add_predicted(predicted)

    # -- feedback ----------------------------------------------------------------------

    def prepare(self) -> None:
        """Bring the index's map of request ids up to date, if that means building it anew
        (tens of ms after a long time without feedback): call it on a worker thread, so
        that the event loop goes on serving meanwhile."""
        with self._lock:
            if not self._index.stale():
                return
            snapshot = self._index.snapshot()
        slots = PredictionIndex.map_of(snapshot)
        with self._lock:
            self._index.install(slots, snapshot)

    def missing(self, model: str, items: list[FeedbackItem]) -> set[str]:
        """The ids of ``items`` not in the index (to look up on disk)."""
        with self._lock:
            return {item.request_id for item in items if item.request_id not in self._index}

    def judge(
        self,
        model: str,
        tenant: str | None,
        items: list[FeedbackItem],
        result: FeedbackResult,
        from_disk: dict[str, dict[str, Any]] | None = None,
    ) -> FeedbackResult:
        """Join each item to its prediction and count it. ``tenant``: the caller's tenant,
        who may judge only its own predictions (others' are ``unknown`` to it)."""
        joined: list[FeedbackJoined] = []
        with self._lock:
            from_disk_now = Predicted()
            for record in (from_disk or {}).values():
                if record["request_id"] not in self._index:
                    from_disk_now.append_record(record)
            self._index.add_many(from_disk_now)
            for item in items:
                self._judge_one(model, tenant, item, result, joined)
        if self._emit is not None:  # outside the lock: observers may take their time
            for event in joined:
                self._emit(event)
        return result

    def _judge_one(
        self,
        model: str,
        tenant: str | None,
        item: FeedbackItem,
        result: FeedbackResult,
        joined: list[FeedbackJoined],
    ) -> None:
        entry = self._index.find(item.request_id)
        if entry is None or entry.model != model or (tenant is not None and entry.tenant != tenant):
            self._count(model, "unknown")
            result.note("unknown")
            return
        if entry.judged:
            self._count(model, "duplicate")
            result.note("duplicate")
            return
        truth = item.truth
        predictions, kind = entry.predictions, entry.kind
        rows = len(predictions)
        if len(truth) == 1 and rows > 1:
            truth = truth * rows
        if len(truth) != rows:
            self._count(model, "invalid")
            result.note(
                "invalid",
                f"{item.request_id}: {len(truth)} labels for a prediction of {rows} rows",
            )
            return
        if kind == "regression" and not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in truth
        ):
            self._count(model, "invalid")
            result.note("invalid", f"{item.request_id}: a regression needs numeric values")
            return
        self._index.mark_judged(entry)
        self._kinds[(entry.model, entry.version)] = kind
        window = math.floor(entry.time / self.options.window_s) * self.options.window_s
        for row, (predicted, actual) in enumerate(zip(predictions, truth, strict=True)):
            for segment in self._segments_of(entry, row):
                self._stat(entry, segment, None).add(kind, predicted, actual)
                self._stat(entry, segment, window).add(kind, predicted, actual)
        if self._emit is not None:
            pairs = list(zip(predictions, truth, strict=True))
            if kind == "regression":
                errors = tuple(abs(float(p) - float(t)) for p, t in pairs)
                correct = sum(1 for error in errors if error == 0)
            else:
                errors = ()
                correct = sum(1 for p, t in pairs if _same(p, t))
            joined.append(
                FeedbackJoined(model, entry.version, entry.tenant, kind, rows, correct, errors)
            )
        self._count(model, "joined")
        result.note("joined")

    @staticmethod
    def _segments_of(entry: IndexedPrediction, row: int) -> list[str]:
        found = ["all"]
        if entry.tenant is not None:
            found.append(f"tenant:{entry.tenant}")
        segments = entry.segments
        if segments is not None and row < len(segments):
            found.append(segments[row])
        return found

    def _stat(self, entry: IndexedPrediction, segment: str, window: float | None) -> _Stat:
        if window is None:
            key3 = (entry.model, entry.version, segment)
            stat = self._totals.get(key3)
            if stat is None:
                stat = _Stat()
                if len(self._totals) < MAX_SERIES:
                    self._totals[key3] = stat
            return stat
        key4 = (entry.model, entry.version, segment, window)
        stat = self._windows.get(key4)
        if stat is None:
            stat = _Stat()
            if len(self._windows) < MAX_SERIES:
                self._windows[key4] = stat
                self._prune_windows(entry.model, entry.version)
        return stat

    def _prune_windows(self, model: str, version: str) -> None:
        starts = sorted({k[3] for k in self._windows if k[0] == model and k[1] == version})
        for old in starts[: -self.options.windows]:
            for key in [k for k in self._windows if k[0] == model and k[1] == version]:
                if key[3] == old:
                    del self._windows[key]

    def _count(self, model: str, outcome: str) -> None:
        key = (model, outcome)
        if key in self.outcomes or len(self.outcomes) < MAX_SERIES:
            self.outcomes[key] = self.outcomes.get(key, 0) + 1

    # -- reading ---------------------------------------------------------------------

    def report(self, model: str | None = None) -> dict[str, Any]:
        """Accuracy (or error) per model and version: totals, segments, windows."""
        with self._lock:
            models: dict[str, Any] = {}
            for (name, version, segment), stat in sorted(self._totals.items()):
                if model is not None and name != model:
                    continue
                kind = self._kinds.get((name, version), "classification")
                entry = models.setdefault(name, {"versions": {}, "feedback": {}})
                found = entry["versions"].setdefault(
                    version, {"kind": kind, "segments": {}, "windows": []}
                )
                found["segments"][segment] = stat.describe(kind)
            for (name, version, segment, start), stat in sorted(self._windows.items()):
                if segment != "all" or name not in models:
                    continue
                kind = self._kinds.get((name, version), "classification")
                models[name]["versions"][version]["windows"].append(
                    {"start": start, "seconds": self.options.window_s, **stat.describe(kind)}
                )
            for (name, outcome), count in sorted(self.outcomes.items()):
                if model is None or name == model:
                    entry = models.setdefault(name, {"versions": {}, "feedback": {}})
                    entry["feedback"][outcome] = count
            return {"models": models, "indexed": len(self._index)}
