"""A circuit breaker per replica, after resilience4j's CircuitBreaker.

CLOSED: every call goes through and its outcome lands in a sliding window,
either the last ``window_size`` calls (``count``) or the last ``window_size``
seconds in one-second buckets (``time``). Once the window holds at least
``minimum_calls`` calls (capped at ``window_size`` for a count window, as
resilience4j does), the breaker opens when the failure rate or the slow-call
rate reaches its threshold. A call is slow when it took at least
``slow_call_ms``, whether it succeeded or failed.

OPEN: calls are refused for the open duration, then the next look at the
breaker (``allow()`` or ``state``) moves it to HALF_OPEN.

HALF_OPEN: ``half_open_calls`` probes are let through. One failed probe
re-opens the breaker, as does a share of slow probes reaching the slow-call
threshold; when every probe succeeds it closes with a fresh window. Each
re-open from HALF_OPEN doubles the open duration up to ``open_max_ms``;
closing resets it to ``open_ms``.

Outcomes recorded while OPEN, or in HALF_OPEN when no probe is outstanding,
belong to calls let through before the last transition and are ignored.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Literal, Protocol

from pydantic import Field, model_validator

from failsoft._options import StrictModel
from failsoft.clock import Clock
from failsoft.observe.events import Event

_MAX_WINDOW = 10_000

Rate = Annotated[float, Field(gt=0, le=1)]
Millis = Annotated[float, Field(gt=0)]


class BreakerOptions(StrictModel):
    enabled: bool = True
    window: Literal["count", "time"] = "count"
    window_size: Annotated[int, Field(ge=1, le=_MAX_WINDOW)] = 20
    minimum_calls: Annotated[int, Field(ge=1, le=_MAX_WINDOW)] = 10
    failure_rate_threshold: Rate = 0.5
    slow_call_rate_threshold: Rate = 1.0
    slow_call_ms: Millis = 1000.0
    open_ms: Millis = 5000.0
    open_max_ms: Millis = 60000.0
    half_open_calls: Annotated[int, Field(ge=1, le=1000)] = 3

    @model_validator(mode="after")
    def _open_max_covers_open(self) -> BreakerOptions:
        if self.open_max_ms < self.open_ms:
            raise ValueError(
                f"open_max_ms ({self.open_max_ms}) must be >= open_ms ({self.open_ms})"
            )
        return self


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(slots=True)
class BreakerTransition(Event):
    model: str
    version: str
    replica: str
    old: BreakerState
    new: BreakerState
    reason: str


class _Window(Protocol):
    calls: int
    failures: int
    slow: int

    def add(self, failed: bool, slow: bool) -> None: ...

    def expire(self) -> None: ...

    def clear(self) -> None: ...


_FAILED = 1
_SLOW = 2


class _CountWindow:
    """The last ``size`` outcomes as flag bytes in a ring, with running totals."""

    __slots__ = ("_next", "_ring", "_size", "calls", "failures", "slow")

    def __init__(self, size: int) -> None:
        self._size = size
        self._ring = bytearray(size)
        self._next = 0
        self.calls = self.failures = self.slow = 0

    def add(self, failed: bool, slow: bool) -> None:
        index = self._next
        if self.calls == self._size:
            self._forget(self._ring[index])
        else:
            self.calls += 1
        flags = (_FAILED if failed else 0) | (_SLOW if slow else 0)
        self._ring[index] = flags
        self.failures += failed
        self.slow += slow
        self._next = 0 if index + 1 == self._size else index + 1

    def _forget(self, flags: int) -> None:
        self.failures -= flags & _FAILED
        self.slow -= (flags & _SLOW) >> 1

    def expire(self) -> None:
        pass

    def clear(self) -> None:
        self._ring[:] = bytes(self._size)
        self._next = 0
        self.calls = self.failures = self.slow = 0


class _TimeWindow:
    """The last ``size`` seconds as per-second buckets in a ring, with running totals."""

    __slots__ = (
        "_calls",
        "_clock",
        "_failures",
        "_second",
        "_size",
        "_slow",
        "calls",
        "failures",
        "slow",
    )

    def __init__(self, size: int, clock: Clock) -> None:
        self._size = size
        self._clock = clock
        self._calls = [0] * size
        self._failures = [0] * size
        self._slow = [0] * size
        self._second = math.floor(clock.now())
        self.calls = self.failures = self.slow = 0

    def add(self, failed: bool, slow: bool) -> None:
        self.expire()
        # A clock that steps back lands in the newest bucket rather than
        # overwriting a slot that now belongs to a later second.
        index = self._second % self._size
        self._calls[index] += 1
        self._failures[index] += failed
        self._slow[index] += slow
        self.calls += 1
        self.failures += failed
        self.slow += slow

    def expire(self) -> None:
        second = math.floor(self._clock.now())
        gap = second - self._second
        if gap <= 0:
            return
        if gap >= self._size:
            self.clear()
        else:
            for passed in range(self._second + 1, second + 1):
                self._empty(passed % self._size)
        self._second = second

    def _empty(self, index: int) -> None:
        self.calls -= self._calls[index]
        self.failures -= self._failures[index]
        self.slow -= self._slow[index]
        self._calls[index] = self._failures[index] = self._slow[index] = 0

    def clear(self) -> None:
        for index in range(self._size):
            self._calls[index] = self._failures[index] = self._slow[index] = 0
        self.calls = self.failures = self.slow = 0


def _percent(rate: float) -> str:
    return f"{rate * 100:.1f}".rstrip("0").rstrip(".") + "%"


_CLOSED = BreakerState.CLOSED
_OPEN = BreakerState.OPEN
_HALF_OPEN = BreakerState.HALF_OPEN


class CircuitBreaker:
    """The breaker of one replica. Not thread-safe: use it from one event loop."""

    __slots__ = (
        "_clock",
        "_emit",
        "_enabled",
        "_minimum_calls",
        "_model",
        "_next_open_s",
        "_open_s",
        "_open_until",
        "_options",
        "_probes_ok",
        "_probes_slow",
        "_probes_taken",
        "_replica",
        "_slow_ms",
        "_state",
        "_times_opened",
        "_version",
        "_window",
    )

    def __init__(
        self,
        options: BreakerOptions,
        clock: Clock,
        emit: Callable[[Event], None],
        model: str,
        version: str,
        replica: str,
    ) -> None:
        self._options = options
        self._clock = clock
        self._emit = emit
        self._model = model
        self._version = version
        self._replica = replica
        self._enabled = options.enabled
        self._slow_ms = options.slow_call_ms
        self._window: _Window
        if options.window == "count":
            self._window = _CountWindow(options.window_size)
            self._minimum_calls = min(options.minimum_calls, options.window_size)
        else:
            self._window = _TimeWindow(options.window_size, clock)
            self._minimum_calls = options.minimum_calls
        self._state = _CLOSED
        self._next_open_s = options.open_ms / 1000.0
        self._open_s = 0.0
        self._open_until = 0.0
        self._times_opened = 0
        self._probes_taken = self._probes_ok = self._probes_slow = 0

    @property
    def state(self) -> BreakerState:
        if self._state is _OPEN:
            self._half_open_if_due()
        return self._state

    def allow(self, trial_ok: bool = True) -> bool:
        """Whether a call may go through now; in HALF_OPEN it takes a probe slot.

        ``trial_ok`` False (a request whose client cut its deadline short) is
        let through only while CLOSED: a trial must be able to show the replica
        well, and a 1 ms deadline cannot.
        """
        if not self._enabled or self._state is _CLOSED:
            return True
        if self._state is _OPEN and not self._half_open_if_due():
            return False
        if not trial_ok or self._probes_taken >= self._options.half_open_calls:
            return False
        self._probes_taken += 1
        return True

    def record(self, ok: bool, seconds: float) -> None:
        if not self._enabled:
            return
        slow = seconds * 1000.0 >= self._slow_ms
        if self._state is _CLOSED:
            self._window.add(not ok, slow)
            # Past minimum_calls, a fast success can only lower both rates.
            if not ok or slow or self._window.calls <= self._minimum_calls:
                self._judge_window()
        elif self._state is _HALF_OPEN and self._probes_taken > self._probes_ok:
            self._judge_probe(ok, slow)

    def release(self) -> None:
        """Give back a probe slot whose call said nothing about the replica."""
        if self._state is _HALF_OPEN and self._probes_taken > self._probes_ok:
            self._probes_taken -= 1

    def readmit(self, reason: str) -> None:
        """Close now: the replica just answered well (a call made in panic mode)."""
        if self._enabled and self._state is not _CLOSED:
            self._close(reason)

    def snapshot(self) -> dict[str, object]:
        state = self.state
        now = self._clock.now()
        window = self._window
        if state is _CLOSED:
            window.expire()
        calls = window.calls
        return {
            "state": state.value,
            "failure_rate": window.failures / calls if calls else 0.0,
            "slow_rate": window.slow / calls if calls else 0.0,
            "calls": calls,
            "open_until": max(0.0, self._open_until - now) if state is _OPEN else None,
            "times_opened": self._times_opened,
            "probes": self._probes_taken if state is _HALF_OPEN else 0,
        }

    def _judge_window(self) -> None:
        window = self._window
        calls = window.calls
        if calls < self._minimum_calls:
            return
        options = self._options
        failure_rate = window.failures / calls
        if failure_rate >= options.failure_rate_threshold:
            threshold = options.failure_rate_threshold
            self._open(
                f"failure rate {_percent(failure_rate)} >= {_percent(threshold)} over {calls} calls"
            )
            return
        slow_rate = window.slow / calls
        if slow_rate >= options.slow_call_rate_threshold:
            threshold = options.slow_call_rate_threshold
            self._open(
                f"slow call rate {_percent(slow_rate)} >= {_percent(threshold)} over {calls} calls"
            )

    def _judge_probe(self, ok: bool, slow: bool) -> None:
        if not ok:
            self._open("probe failed")
            return
        self._probes_ok += 1
        self._probes_slow += slow
        probes = self._options.half_open_calls
        slow_rate = self._probes_slow / probes
        if slow_rate >= self._options.slow_call_rate_threshold:
            self._open(f"{self._probes_slow} of {probes} probes slow")
        elif self._probes_ok >= probes:
            self._close(f"{probes} probes succeeded")

    def _half_open_if_due(self) -> bool:
        if self._clock.now() < self._open_until:
            return False
        self._probes_taken = self._probes_ok = self._probes_slow = 0
        self._move(_HALF_OPEN, f"open for {self._open_s:.1f}s")
        return True

    def _open(self, reason: str) -> None:
        self._open_s = self._next_open_s
        self._next_open_s = min(self._open_s * 2, self._options.open_max_ms / 1000.0)
        self._open_until = self._clock.now() + self._open_s
        self._times_opened += 1
        self._window.clear()
        self._move(_OPEN, reason)

    def _close(self, reason: str) -> None:
        self._next_open_s = self._options.open_ms / 1000.0
        self._window.clear()
        self._move(_CLOSED, reason)

    def _move(self, new: BreakerState, reason: str) -> None:
        old, self._state = self._state, new
        self._emit(BreakerTransition(self._model, self._version, self._replica, old, new, reason))
