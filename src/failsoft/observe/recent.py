"""The recent notable events, kept for /admin/events: what a drill or a person polls.

A bounded ring of state changes (ejections, breaker transitions, probe
verdicts, worker restarts, faults, artifact copies found bad or repaired)
with wall-clock times, so a drill runner in another process can tell when
the gateway noticed a fault. Per-request events that can come by the
thousand (fallbacks, sheds) are folded: a repeat of the same kind for the
same model within a second only raises the count of the entry already kept.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections import deque
from collections.abc import Callable
from enum import Enum
from typing import Any

from failsoft.control.faults import FaultAdded, FaultEnded, ReplicaKilled
from failsoft.control.registry import (
    ArtifactCopyBad,
    ArtifactRepaired,
    ArtifactUnrecoverable,
    ArtifactWriteFailed,
)
from failsoft.data.drift import DriftCleared, DriftDetected
from failsoft.observe.events import Event, ReplicaStateChanged, WorkerRestarted
from failsoft.pipeline.breaker import BreakerTransition
from failsoft.pipeline.fallback import FallbackUsed
from failsoft.pipeline.limiter import RequestShed
from failsoft.pipeline.version import AttemptFailed, PanicChanged, PoisonDetected
from failsoft.routing.ejection import ReplicaEjected, ReplicaReturned
from failsoft.routing.probes import HealthChanged

KEPT: tuple[type[Event], ...] = (
    BreakerTransition,
    ReplicaEjected,
    ReplicaReturned,
    HealthChanged,
    ReplicaStateChanged,
    WorkerRestarted,
    FaultAdded,
    FaultEnded,
    ReplicaKilled,
    PanicChanged,
    ArtifactCopyBad,
    ArtifactRepaired,
    ArtifactWriteFailed,
    ArtifactUnrecoverable,
    DriftDetected,
    DriftCleared,
)
FOLDED: tuple[type[Event], ...] = (FallbackUsed, RequestShed, PoisonDetected, AttemptFailed)
FOLD_WINDOW_S = 1.0


class RecentEvents:
    def __init__(self, capacity: int = 1024, wall: Callable[[], float] = time.time) -> None:
        self._events: deque[dict[str, Any]] = deque(maxlen=capacity)
        self._wall = wall
        self._seq = itertools.count(1)
        self._last_folded: dict[tuple[str, str], dict[str, Any]] = {}

    def observe(self, event: Event) -> None:
        kind = type(event)
        if kind in FOLDED:
            self._fold(event)
        elif kind in KEPT:
            self._keep(event)

    def _keep(self, event: Event) -> dict[str, Any]:
        entry = {
            "seq": next(self._seq),
            "time": self._wall(),
            "type": type(event).__name__,
            **{
                key: value.value if isinstance(value, Enum) else value
                for key, value in dataclasses.asdict(event).items()  # type: ignore[call-overload]
            },
            "count": 1,
        }
        self._events.append(entry)
        return entry

    def _fold(self, event: Event) -> None:
        key = (type(event).__name__, str(getattr(event, "model", "")))
        last = self._last_folded.get(key)
        if last is not None and self._wall() - last["time"] < FOLD_WINDOW_S:
            last["count"] += 1
            return
        self._last_folded[key] = self._keep(event)

    def snapshot(self) -> dict[str, Any]:
        return {"now": self._wall(), "events": list(self._events)}
