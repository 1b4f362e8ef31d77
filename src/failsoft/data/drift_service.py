"""Drift on the gateway: answers queued from the request path, sketched in batches.

The request path calls ``offer`` with a request's inputs and the answer's
outputs: two dictionary lookups and the rows of the tensors the profile reads
appended to its model version's buffers (``data/drift_queue.py``), never a
sketch update. When the queue is full the answer is dropped and counted
(``failsoft_drift_dropped_total``): serving never waits for drift. A task on
the event loop wakes every ``flush_every_s`` (on the injected clock), takes
what each model version has joined and updates the sketches in one call per
column and window; every ``evaluate_every_s`` it judges the windows
(``data/drift.py``), which emits ``DriftDetected`` / ``DriftCleared`` on the
event bus.

Profiles come from ``models.NAME.drift.profile`` (or ``profiles`` per
version). ``configure`` loads and checks them: a profile of another model,
or one without a column the model takes, is refused with its reason (at
start-up the gateway does not start; on a live change the old monitors
stay and the reason is logged and shown by ``/admin/drift``). A version
whose profile is unchanged keeps its windows across a configuration change.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from failsoft.clock import Clock
from failsoft.data.drift import STATUS_VALUES, DriftMonitor
from failsoft.data.drift_options import DriftOptions
from failsoft.data.drift_queue import PendingAnswers
from failsoft.data.profiles import Profile, ProfileError, check_fits
from failsoft.observe.events import EventBus

__all__ = ["DriftService", "profile_problems"]

log = logging.getLogger("failsoft.drift")

Tensors = Mapping[str, np.ndarray]


class DriftService:
    def __init__(self, bus: EventBus, clock: Clock) -> None:
        self._bus = bus
        self._clock = clock
        self.monitors: dict[tuple[str, str], DriftMonitor] = {}
        self._pending: dict[str, dict[str, PendingAnswers]] = {}  # model -> version -> answers
        self._options: dict[str, DriftOptions] = {}
        self._queued = 0
        self._capacity = 0
        self._row_capacity = 0
        self._rows_queued = 0
        self.dropped: dict[str, int] = {}
        self.sketched: dict[tuple[str, str], int] = {}
        self.problems: dict[str, str] = {}  # model -> why its drift is off
        self._task: asyncio.Task[None] | None = None
        self._next_evaluation = 0.0

    # -- configuration -----------------------------------------------------------

    def configure(self, models: Mapping[str, Any], *, strict: bool) -> None:
        """Monitors for every version with a profile; ProfileError (strict) or a problem
        noted per model (not strict) when a profile cannot be used."""
        self.flush()  # what is queued goes to the monitors it was offered for
        monitors: dict[tuple[str, str], DriftMonitor] = {}
        options_by_model: dict[str, DriftOptions] = {}
        problems: dict[str, str] = {}
        for name, model in models.items():
            options: DriftOptions | None = getattr(model, "drift", None)
            if options is None or not options.enabled:
                continue
            try:
                chosen = self._monitors_for(name, model, options)
            except ProfileError as error:
                if strict:
                    raise
                problems[name] = str(error)
                log.error("drift profile refused", extra={"model": name, "error": str(error)})
                chosen = {key: m for key, m in self.monitors.items() if key[0] == name}
            monitors.update(chosen)
            if chosen:
                options_by_model[name] = options
        self.monitors = monitors
        self._options = options_by_model
        self.problems = problems
        pending: dict[str, dict[str, PendingAnswers]] = {}
        for (model, version), monitor in monitors.items():
            pending.setdefault(model, {})[version] = _pending_for(monitor)
        self._pending = pending
        self._capacity = max((o.queue for o in options_by_model.values()), default=0)
        self._row_capacity = max((o.queue_rows for o in options_by_model.values()), default=0)

    def _monitors_for(
        self, name: str, model: Any, options: DriftOptions
    ) -> dict[tuple[str, str], DriftMonitor]:
        chosen: dict[tuple[str, str], DriftMonitor] = {}
        for version in model.versions:
            path = options.profile_for(version)
            if path is None:
                continue
            profile = _load(path)
            check_fits(profile, name, model.inputs, f"models.{name}.drift ({path})")
            old = self.monitors.get((name, version))
            if old is not None and old.profile.sha256 == profile.sha256 and old.options == options:
                chosen[(name, version)] = old  # its windows go on
            else:
                chosen[(name, version)] = DriftMonitor(
                    name, version, profile, options, self._bus.emit
                )
        return chosen

    # -- the request path --------------------------------------------------------

    def offer(self, model: str, version: str, inputs: Tensors, outputs: Tensors | None) -> None:
        """Queue one answer for sketching; never blocks, drops (counted) when full."""
        versions = self._pending.get(model)
        if versions is None:
            return
        pending = versions.get(version)
        if pending is None:
            return
        first = next(iter(inputs.values()), None)
        rows = len(first) if first is not None and first.ndim else 1
        if self._queued >= self._capacity or self._rows_queued + rows > self._row_capacity:
            self.dropped[model] = self.dropped.get(model, 0) + 1
            return
        self._queued += 1
        self._rows_queued += rows
        pending.add(inputs, outputs)

    # -- off the request path ----------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        clock = self._clock
        while True:
            flush = min((o.flush_every_s for o in self._options.values()), default=1.0)
            await clock.sleep(flush)
            try:
                self.flush()
                now = clock.now()
                if now >= self._next_evaluation:
                    every = min((o.evaluate_every_s for o in self._options.values()), default=5.0)
                    self._next_evaluation = now + every
                    self.evaluate()
            except Exception:  # a bug here must not stop drift for good, nor serving
                log.exception("drift update failed")

    def flush(self) -> int:
        """Sketch everything queued; how many answers were taken."""
        taken = self._queued
        if not taken:
            return 0
        self._queued = self._rows_queued = 0
        now = self._clock.now()
        for model, versions in self._pending.items():
            for version, pending in versions.items():
                if not pending.answers:
                    continue
                versions[version] = pending.fresh()
                key = (model, version)
                monitor = self.monitors[key]
                monitor.unusable += pending.unlike
                inputs, outputs = pending.tensors()
                monitor.update(inputs, outputs, now)
                self.sketched[key] = self.sketched.get(key, 0) + pending.answers
        return taken

    def evaluate(self) -> None:
        now = self._clock.now()
        for monitor in list(self.monitors.values()):
            monitor.evaluate(now)

    # -- reading -----------------------------------------------------------------

    def snapshot(self, model: str | None = None, *, cells: bool = False) -> dict[str, Any]:
        """What /admin/drift answers: per model version, each window's verdict and scores."""
        models: dict[str, Any] = {}
        now = self._clock.now()
        for (name, version), monitor in self.monitors.items():
            if model is not None and name != model:
                continue
            reports = (
                monitor.evaluate(now, cells=True, record=False)
                if cells
                else list(monitor.reports.values())
            )
            entry = models.setdefault(name, {"versions": {}, "dropped": self.dropped.get(name, 0)})
            profile = monitor.profile
            entry["versions"][version] = {
                "drifting": monitor.is_drifting,
                "rows": monitor.rows,
                "unusable": monitor.unusable,
                "profile": {
                    "sha256": profile.sha256,
                    "rows": profile.rows,
                    "source": profile.source,
                    "created_at": profile.created_at,
                },
                "windows": [report.to_json(cells=cells) for report in reports],
            }
        for name, problem in self.problems.items():
            if model is None or name == model:
                models.setdefault(name, {"versions": {}})["problem"] = problem
        return {"models": models, "queued": self._queued}

    def collect(self) -> Iterator[Metric]:
        """Prometheus families (registered with the gateway's metrics registry)."""
        distance = GaugeMetricFamily(
            "failsoft_drift_distance",
            "A feature's drift from its reference (PSI or Jensen-Shannon distance), less its "
            "small-sample bias, per window.",
            labels=["model", "version", "window", "feature", "measure"],
        )
        status = GaugeMetricFamily(
            "failsoft_drift_feature_status",
            "A feature's drift verdict: -1 too few rows, 0 ok, 1 warn, 2 alert.",
            labels=["model", "version", "window", "feature"],
        )
        drifting = GaugeMetricFamily(
            "failsoft_drift_drifting",
            "1 while a window of a model version drifts from its reference.",
            labels=["model", "version", "window"],
        )
        share = GaugeMetricFamily(
            "failsoft_drift_share",
            "The share of a window's judged features that alert.",
            labels=["model", "version", "window"],
        )
        for (model, version), monitor in list(self.monitors.items()):
            for report in list(monitor.reports.values()):
                labels = [model, version, report.window]
                drifting.add_metric(labels, 1.0 if report.drifting else 0.0)
                share.add_metric(labels, report.share)
                for score in report.features:
                    distance.add_metric([*labels, score.name, score.measure], score.corrected)
                    status.add_metric([*labels, score.name], STATUS_VALUES[score.status])
        dropped = CounterMetricFamily(
            "failsoft_drift_dropped",
            "Answers not sketched for drift because its queue was full.",
            labels=["model"],
        )
        for model, count in list(self.dropped.items()):
            dropped.add_metric([model], count)
        sketched = CounterMetricFamily(
            "failsoft_drift_sketched",
            "Answers sketched for drift.",
            labels=["model", "version"],
        )
        for (model, version), count in list(self.sketched.items()):
            sketched.add_metric([model, version], count)
        yield from (distance, status, drifting, share, dropped, sketched)


def profile_problems(models: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """For check-config: drift profiles that are missing (a warning: configurations are
    often checked away from the machine that serves them), and those that do not fit."""
    missing: list[str] = []
    wrong: list[str] = []
    for name, model in models.items():
        options: DriftOptions = model.drift
        if not options.enabled:
            continue
        for version in model.versions:
            path = options.profile_for(version)
            if path is None:
                continue
            where = f"models.{name}.drift ({version})"
            if not Path(path).is_file():
                missing.append(f"{where}: profile not found: {path}")
                continue
            try:
                check_fits(_load(path), name, model.inputs, where)
            except ProfileError as error:
                wrong.append(str(error))
    return missing, wrong


_cache: dict[tuple[Path, int, int], Profile] = {}


def _load(path: Path) -> Profile:
    """A profile file, read again only when it changed (size or mtime)."""
    try:
        stat = path.stat()
    except OSError as error:
        raise ProfileError(f"{path}: cannot read: {error.strerror or error}") from None
    key = (path, stat.st_size, stat.st_mtime_ns)
    found = _cache.get(key)
    if found is None:
        found = Profile.load(path)
        if len(_cache) > 64:
            _cache.clear()
        _cache[key] = found
    return found


def _pending_for(monitor: DriftMonitor) -> PendingAnswers:
    """The queue of a monitor: the tensors its input and output columns read."""
    inputs = monitor.columns[: len(monitor.profile.inputs)]
    outputs = monitor.columns[len(monitor.profile.inputs) :]
    return PendingAnswers((c.column.tensor for c in inputs), (c.column.tensor for c in outputs))
