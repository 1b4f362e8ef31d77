"""What each version of a model in a rollout did in the current analysis window.

The observer on the event bus does as little as the request path can
afford: for a model in a rollout it appends the event to a bounded queue
(``MAX_PENDING``; when full, events are dropped and counted). ``drain`` —
called by the controller, off the request path — folds the queue into
per-version tallies and sketches, and ``windows`` hands them to the analysis.

Counted per version, on the same window for both:

- attempts (first tries, retries, hedges, shadow calls) and the replica-caused
  failures among them: the failure attribution has already charged poison
  inputs, client deadlines and shedding to the request or the client, so
  ``AttemptFailed`` is only what the version's replicas did. An attempt
  rate: a retry that hides a failure from the client does not hide it here;
- output-contract violations (``ContractBroken``);
- latencies of requests the version answered itself (not from a fallback tier
  or the cache); in a shadow phase the candidate's are its shadow calls';
- output sketches (DataSketches) of the compared outputs;
- shadow pairs and how many disagreed (``ShadowCompared``);
- rows labelled by feedback during the window (``FeedbackJoined``), charged
  to the version that made the prediction, and how many it got wrong.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from failsoft.control.analysis import LATENCY_SKETCH_K, PairedWindow, VersionWindow
from failsoft.data.feedback import FeedbackJoined
from failsoft.data.sketches import NumericSketch, OutputSketches
from failsoft.observe.events import Event, EventBus, RequestFinished, VersionAnswered
from failsoft.pipeline.shadow import ShadowCompared
from failsoft.pipeline.version import AttemptFailed, AttemptStarted, ContractBroken

__all__ = ["MAX_PENDING", "Tally", "Windows"]

MAX_PENDING = 200_000
KINDS: tuple[type[Event], ...] = (
    AttemptStarted,
    AttemptFailed,
    ContractBroken,
    RequestFinished,
    VersionAnswered,
    ShadowCompared,
    FeedbackJoined,
)


@dataclass
class Tally:
    """One version's window."""

    attempts: int = 0
    failures: int = 0
    contract: int = 0
    answered: int = 0  # requests it answered itself (the latency samples)
    labelled: int = 0
    mislabelled: int = 0
    latencies: NumericSketch = field(default_factory=lambda: NumericSketch(LATENCY_SKETCH_K))
    outputs: OutputSketches = field(default_factory=OutputSketches)

    def window(self, probes: tuple[int, int], with_outputs: bool) -> VersionWindow:
        requests = max(self.attempts, self.failures, self.contract)
        return VersionWindow(
            requests=requests,
            replica_failures=self.failures,
            contract_violations=self.contract,
            latencies_ms=self.latencies if self.latencies.count else None,
            probe_passes=probes[0],
            probe_failures=probes[1],
            outputs=self.outputs if with_outputs else None,
            labelled=self.labelled,
            mislabelled=self.mislabelled,
        )


@dataclass
class _Watch:
    stable: str
    candidate: str
    outputs: frozenset[str] | None
    shadow_phase: bool
    tolerance: float = 0.0  # regression: right within this
    tallies: dict[str, Tally] = field(default_factory=dict)
    pairs: int = 0
    disagreements: int = 0
    shadow_failures: int = 0  # shadow calls the candidate did not answer (in attempts too)

    def tally(self, version: str) -> Tally:
        found = self.tallies.get(version)
        if found is None:
            found = self.tallies[version] = Tally()
        return found


class Windows:
    """The analysis windows of every model in a rollout (see the module's docstring)."""

    def __init__(self, bus: EventBus, max_pending: int = MAX_PENDING) -> None:
        self._watched: dict[str, _Watch] = {}
        self._pending: deque[Event] = deque()
        self._max = max_pending
        self.dropped = 0
        bus.subscribe(self._observe, KINDS)

    # -- the request path --------------------------------------------------------

    def _observe(self, event: Event) -> None:
        if getattr(event, "model", None) not in self._watched:
            return
        if len(self._pending) >= self._max:
            self.dropped += 1
            return
        self._pending.append(event)

    # -- the controller ----------------------------------------------------------

    def watch(
        self,
        model: str,
        stable: str,
        candidate: str,
        outputs: Collection[str] | None,
        *,
        shadow_phase: bool = False,
        accuracy_tolerance: float = 0.0,
    ) -> None:
        """Count ``model``'s versions from now on, in a fresh window (a new stage)."""
        self.drain()
        names = frozenset(outputs) if outputs else None
        self._watched[model] = _Watch(stable, candidate, names, shadow_phase, accuracy_tolerance)

    def unwatch(self, model: str) -> None:
        self.drain()
        self._watched.pop(model, None)

    def drain(self) -> None:
        """Fold the queued events into the tallies."""
        outputs: dict[tuple[str, str], list[dict[str, Any]]] = {}
        pending = self._pending
        while pending:
            event = pending.popleft()
            watch = self._watched.get(getattr(event, "model", ""))
            if watch is None:
                continue
            if isinstance(event, AttemptStarted):
                watch.tally(event.version).attempts += 1
            elif isinstance(event, AttemptFailed):
                watch.tally(event.version).failures += 1
            elif isinstance(event, ContractBroken):
                watch.tally(event.version).contract += 1
            elif isinstance(event, RequestFinished):
                self._latency(watch, event)
            elif isinstance(event, FeedbackJoined):
                tally = watch.tally(event.version)
                tally.labelled += event.rows
                if event.kind == "regression":
                    tally.mislabelled += sum(1 for e in event.errors if e > watch.tolerance)
                else:
                    tally.mislabelled += event.rows - event.correct
            elif isinstance(event, VersionAnswered):
                outputs.setdefault((event.model, event.version), []).append(event.outputs)
            elif isinstance(event, ShadowCompared):
                if event.candidate != watch.candidate:
                    continue
                if event.ok:
                    watch.pairs += 1
                    watch.disagreements += not event.agreed
                    if watch.shadow_phase:
                        tally = watch.tally(event.candidate)
                        tally.latencies.update([1000.0 * event.seconds])
                else:
                    watch.shadow_failures += 1
        for (model, version), answers in outputs.items():
            watch = self._watched[model]
            self._sketch(watch.tally(version).outputs, answers, watch.outputs)

    @staticmethod
    def _latency(watch: _Watch, event: RequestFinished) -> None:
        served = event.replica
        if event.status != 200 or "/fallback" in served or served.endswith("/cache"):
            return
        if not served.startswith(f"{event.model}/{event.version}/"):
            return
        tally = watch.tally(event.version)
        tally.answered += 1
        tally.latencies.update([1000.0 * event.seconds])

    @staticmethod
    def _sketch(
        sketches: OutputSketches, answers: list[dict[str, Any]], names: frozenset[str] | None
    ) -> None:
        """One update per output for many answers: the sketches' cost is per call."""
        by_name: dict[str, list[np.ndarray]] = {}
        for answer in answers:
            for name, array in answer.items():
                if names is None or name in names:
                    by_name.setdefault(name, []).append(np.asarray(array).reshape(-1))
        if by_name:
            sketches.update({name: np.concatenate(parts) for name, parts in by_name.items()})

    def windows(
        self, model: str, probes: tuple[int, int]
    ) -> tuple[VersionWindow, VersionWindow, PairedWindow | None]:
        """(candidate, stable, paired) for the analysis; ``probes`` = the candidate's
        (passed, failed). In a shadow phase the candidate answers nobody, so output
        distributions are left out (its answers are judged pair by pair instead)."""
        self.drain()
        watch = self._watched[model]
        shadow_phase = watch.shadow_phase
        candidate = watch.tally(watch.candidate).window(probes, not shadow_phase)
        stable = watch.tally(watch.stable).window((0, 0), not shadow_phase)
        paired = PairedWindow(watch.pairs, watch.disagreements) if shadow_phase else None
        return candidate, stable, paired

    def answered(self, model: str) -> dict[str, int]:
        """Requests each version answered itself in this window."""
        self.drain()
        watch = self._watched.get(model)
        if watch is None:
            return {}
        return {version: tally.answered for version, tally in watch.tallies.items()}
