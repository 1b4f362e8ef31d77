"""Passive outlier ejection: take a misbehaving replica out of rotation for a while.

After Envoy's outlier detection. Every finished call is ``record``-ed as ok
or failed, and a replica is ejected when either

- ``consecutive_failures`` calls in a row failed (a success resets the run), or
- a failure brings its failure rate over the current interval to
  ``failure_rate_threshold`` or more, having seen at least
  ``minimum_requests`` calls in that interval. Each replica's interval is a
  tumbling window of ``interval_ms`` that starts at its first call after the
  previous one ended. Only a failure can trigger this, so an ejection never
  follows a success.

An ejection lasts ``base_ejection_ms x times ejected``, capped at
``max_ejection_ms``. ``times_ejected`` is forgiven one step for every
``max_ejection_ms`` a replica then stays in service, so a replica that keeps
relapsing is kept out longer and longer, and one that recovered for good is
eventually treated as new. (Envoy forgives a step per healthy ``interval``;
with the defaults that would let a replica relapsing every minute come back
after the base time every time.)

The ejection cap: at no time are more than ``max_ejection_percent`` of the
replicas ejected, except that one may always be (with one or two replicas
the percentage alone would forbid any). An outlier refused by the cap keeps
its counters and is ejected at its next failure once there is room.

An ejection ends lazily, at the first ``is_ejected``, ``returned`` or
ejection after its time is up: the replica's counters are reset,
``ReplicaReturned`` is emitted, and the index is queued for ``returned`` so
the caller can start its slow start. Calls recorded while a replica is ejected (in flight when it
was ejected) are ignored. ``eject`` is the explicit ejection that active
health probes use: same cap, same escalation, and it works even when passive
ejection is disabled (``enabled: false`` makes ``record`` a no-op).

State per replica is a handful of numbers; nothing grows with traffic.
``record`` and ``is_ejected`` are on the hot path and trust their index;
``eject`` and ``snapshot`` check it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated

from pydantic import Field, model_validator

from failsoft._options import StrictModel
from failsoft.clock import Clock
from failsoft.observe.events import Event

CONSECUTIVE_FAILURES = "consecutive_failures"
FAILURE_RATE = "failure_rate"


class EjectionOptions(StrictModel):
    enabled: bool = True
    consecutive_failures: Annotated[int, Field(ge=1)] = 5
    failure_rate_threshold: Annotated[float, Field(gt=0, le=1)] = 0.5
    minimum_requests: Annotated[int, Field(ge=1)] = 10
    interval_ms: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 10000.0
    base_ejection_ms: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 30000.0
    max_ejection_ms: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 300000.0
    max_ejection_percent: Annotated[float, Field(gt=0, le=100)] = 50.0

    @model_validator(mode="after")
    def _max_covers_base(self) -> EjectionOptions:
        if self.max_ejection_ms < self.base_ejection_ms:
            raise ValueError("max_ejection_ms must be at least base_ejection_ms")
        return self


@dataclass(slots=True)
class ReplicaEjected(Event):
    model: str
    version: str
    replica: str
    reason: str
    seconds: float
    times: int


@dataclass(slots=True)
class ReplicaReturned(Event):
    model: str
    version: str
    replica: str


class _Replica:
    __slots__ = (
        "calls",
        "consecutive",
        "ejected_until",
        "failures",
        "in_service_since",
        "times",
        "window_start",
    )

    def __init__(self, now: float) -> None:
        self.consecutive = 0
        self.calls = 0
        self.failures = 0
        self.window_start = now
        self.ejected_until = 0.0  # meaningful while the index is in OutlierDetector._ejected
        self.times = 0
        self.in_service_since = now

    def reset_counters(self, now: float) -> None:
        self.consecutive = 0
        self.calls = 0
        self.failures = 0
        self.window_start = now


class OutlierDetector:
    """Tracks one version's replicas; ``record`` every finished call."""

    def __init__(
        self,
        names: Sequence[str],
        options: EjectionOptions,
        clock: Clock,
        emit: Callable[[Event], None],
        model: str,
        version: str,
    ) -> None:
        if not names:
            raise ValueError("an outlier detector needs at least one replica")
        self._names = list(names)
        self._options = options
        self._clock = clock
        self._emit = emit
        self._model = model
        self._version = version
        self._interval_s = options.interval_ms / 1000.0
        self._forgive_s = options.max_ejection_ms / 1000.0
        now = clock.now()
        self._replicas = [_Replica(now) for _ in self._names]
        self._ejected: set[int] = set()  # ejections not yet ended (maybe expired)
        self._next_return = math.inf  # no ejection in _ejected ends before this
        self._returned: dict[int, None] = {}  # an ordered set, at most one per replica

    def record(self, index: int, ok: bool) -> None:
        if not self._options.enabled:
            return
        replica = self._replicas[index]
        now = self._clock.now()
        if self._still_ejected(index, now):
            return
        self._roll_window(replica, now)
        replica.calls += 1
        if ok:
            replica.consecutive = 0
            return
        replica.failures += 1
        replica.consecutive += 1
        reason = self._outlier_reason(replica)
        if reason is not None:
            self._eject(index, reason, now)

    def is_ejected(self, index: int) -> bool:
        if index not in self._ejected:
            return False
        return self._still_ejected(index, self._clock.now())

    def returned(self) -> list[int]:
        self._end_expired(self._clock.now())
        if not self._returned:
            return []
        indices = list(self._returned)
        self._returned.clear()
        return indices

    def eject(self, index: int, reason: str, seconds: float | None = None) -> bool:
        """Eject now unless already ejected or the cap forbids it; say whether it happened.

        ``seconds`` (an operator's ejection) replaces the escalating duration.
        """
        self._check(index)
        now = self._clock.now()
        if self._still_ejected(index, now):
            return False
        return self._eject(index, reason, now, seconds)

    @property
    def quiet(self) -> bool:
        """True when no replica is ejected and none has returned unannounced (hot-path check)."""
        return not self._ejected and not self._returned

    def reinstate(self, index: int) -> bool:
        """End an ejection early: fresh evidence (a restart, passing probes) says it is well.

        Its ejection count stays, so a replica that fails again is ejected for longer.
        """
        self._check(index)
        if index not in self._ejected:
            return False
        self._replicas[index].ejected_until = self._clock.now()
        return not self._still_ejected(index, self._clock.now())

    def snapshot(self, index: int) -> dict[str, object]:
        self._check(index)
        replica = self._replicas[index]
        now = self._clock.now()
        remaining = max(0.0, replica.ejected_until - now) if index in self._ejected else 0.0
        in_window = now - replica.window_start < self._interval_s
        calls = replica.calls if in_window else 0
        return {
            "ejected": remaining > 0.0,
            "ejected_for_s": remaining,
            "times_ejected": self._times_ejected(index, now),
            "consecutive_failures": replica.consecutive,
            "interval_calls": calls,
            "failure_rate": replica.failures / calls if calls else 0.0,
        }

    def _outlier_reason(self, replica: _Replica) -> str | None:
        options = self._options
        if replica.consecutive >= options.consecutive_failures:
            return CONSECUTIVE_FAILURES
        if (
            replica.calls >= options.minimum_requests
            and replica.failures >= options.failure_rate_threshold * replica.calls
        ):
            return FAILURE_RATE
        return None

    def _eject(self, index: int, reason: str, now: float, asked: float | None = None) -> bool:
        self._end_expired(now)
        if not self._room_to_eject():
            return False
        replica = self._replicas[index]
        replica.times = self._times_ejected(index, now) + 1
        seconds = min(self._options.base_ejection_ms * replica.times, self._options.max_ejection_ms)
        seconds = seconds / 1000.0 if asked is None else asked
        replica.ejected_until = now + seconds
        self._ejected.add(index)
        self._next_return = min(self._next_return, replica.ejected_until)
        # Returned and ejected again before the caller asked: nothing to slow-start.
        self._returned.pop(index, None)
        self._emit(
            ReplicaEjected(
                self._model, self._version, self._names[index], reason, seconds, replica.times
            )
        )
        return True

    def _still_ejected(self, index: int, now: float) -> bool:
        """Whether ``index`` is ejected at ``now``; ends an ejection whose time is up."""
        if index not in self._ejected:
            return False
        replica = self._replicas[index]
        if now < replica.ejected_until:
            return True
        replica.in_service_since = now
        replica.reset_counters(now)
        self._ejected.discard(index)
        self._returned[index] = None
        self._emit(ReplicaReturned(self._model, self._version, self._names[index]))
        return False

    def _end_expired(self, now: float) -> None:
        if now < self._next_return:
            return
        for index in sorted(self._ejected):
            self._still_ejected(index, now)
        ends = [self._replicas[i].ejected_until for i in self._ejected]
        self._next_return = min(ends, default=math.inf)

    def _room_to_eject(self) -> bool:
        ejected = len(self._ejected)
        if ejected == 0:
            return True
        return (ejected + 1) * 100.0 <= self._options.max_ejection_percent * len(self._replicas)

    def _roll_window(self, replica: _Replica, now: float) -> None:
        if now - replica.window_start >= self._interval_s:
            replica.calls = 0
            replica.failures = 0
            replica.window_start = now

    def _times_ejected(self, index: int, now: float) -> int:
        """``times`` less the steps forgiven for time in service since the last return."""
        replica = self._replicas[index]
        if index in self._ejected or replica.times == 0:
            return replica.times
        forgiven = int((now - replica.in_service_since) // self._forgive_s)
        return max(0, replica.times - forgiven)

    def _check(self, index: int) -> None:
        if not 0 <= index < len(self._replicas):
            raise IndexError(f"replica index {index} out of range 0..{len(self._replicas) - 1}")
