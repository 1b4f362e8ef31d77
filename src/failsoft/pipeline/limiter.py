"""An adaptive concurrency limit per model, with priority-aware admission.

The limit
---------
The limit follows Netflix concurrency-limits' Gradient2 (Envoy's adaptive
concurrency filter works the same way). A server that is not queueing answers
in about its usual round-trip time; when the recent RTT rises well above the
long-term one, requests are queueing inside it and the limit comes down.

Finished calls are grouped into windows of ``max(10, limit)`` calls: about one
round trip of the whole limit when it is saturated, so the limit moves once
per round trip whatever the request rate. When a window closes:

- The mean RTT of its successful calls is the *short RTT*. The *long RTT*
  (the baseline) averages the short RTTs of the last ``long_window`` windows
  exponentially, after a plain mean over the first ten so that one odd window
  cannot set the baseline. While the long RTT is more than twice the short one
  it decays by 5% a window, so the baseline comes back down quickly after a
  long overload (as in Gradient2).
- ``gradient = clamp(rtt_tolerance * long / short, 0.5, 1)``: 1 while the short
  RTT stays within the tolerance of the baseline, lower as queueing builds up,
  and never below one half, so one noisy window cannot halve the limit.
- ``target = limit * gradient + sqrt(limit)``: the square root is the queue
  allowance, the headroom that lets the limit probe upwards while the latency
  holds, as in Gradient2 and Envoy.
- ``limit += smoothing * (target - limit)``, clamped to [min_limit, max_limit].
- When fewer than half the limit's requests were in flight or waiting during
  the window, the load says nothing about the limit and it stays put
  (Gradient2's "app limited" rule).
- Failed calls (errors, timeouts) carry no RTT. They shrink the limit by
  ``10% * the window's failure share``, so a window of nothing but failures
  cuts it by AIMD's x0.9, while a trickle of errors cannot grind it down to
  ``min_limit``: the growth from the successful calls outweighs it.

Admission by priority
---------------------
All priorities share one in-flight count, and each may fill it up to its
allowance: critical the whole limit, default ``default_share`` of it,
sheddable ``sheddable_share`` (rounded down, at least 1). So sheddable work
can never take more than its share, and the top of the limit is kept free for
critical work even when default traffic is heavy.

A request over its allowance waits in one bounded queue (``queue_size``
across priorities): critical first, then default, then sheddable, newest
first within a priority (under overload the oldest waiters are about to time
out anyway; serving the newest keeps the latency of admitted requests short).
A freed slot goes to the newest waiter of the most important non-empty
priority if that priority's allowance has room; allowances shrink with
priority, so when that one does not fit, no less important waiter would
either. When the queue is full, a newcomer evicts the oldest waiter of the
lowest priority below its own; if there is none, the newcomer is shed. A
waiter not served within ``queue_timeout_ms`` is shed.
With ``queue_size`` 0 there is no queue: a request over its allowance is shed
at once ("over limit").

Every shed request raises ``Overloaded`` with a ``retry_after_s`` estimating
how long the queue ahead needs to drain: each slot of the limit turns over
about once per short RTT, so ``short RTT * (waiting + 1) / limit``, clamped to
[0.05, 30] seconds. Before the first RTT is known the queue timeout stands in
for it.
"""

from __future__ import annotations

import asyncio
import math
import sys
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from functools import partial
from typing import Annotated

from pydantic import Field, model_validator

from failsoft._options import StrictModel
from failsoft.clock import Cancel, Clock
from failsoft.errors import Overloaded
from failsoft.observe.events import Event

_MAX_LIMIT = 100_000
_MIN_WINDOW = 10
_WARMUP_WINDOWS = 10
_MIN_GRADIENT = 0.5
_BACKOFF = 0.1
_BASELINE_DECAY = 0.95
_MIN_RTT_S = 1e-6
_RETRY_MIN_S = 0.05
_RETRY_MAX_S = 30.0
# Below 1e-9 a share x limit product such as 0.29 * 100 = 28.999999999999996
# would round down a whole slot.
_SHARE_EPSILON = 1e-9

Limit = Annotated[int, Field(ge=1, le=_MAX_LIMIT)]
Share = Annotated[float, Field(gt=0, le=1)]


class Priority(StrEnum):
    CRITICAL = "critical"
    DEFAULT = "default"
    SHEDDABLE = "sheddable"


# Most important first: the order waiters are served in.
_ORDER = (Priority.CRITICAL, Priority.DEFAULT, Priority.SHEDDABLE)
_RANK = {Priority.SHEDDABLE: 0, Priority.DEFAULT: 1, Priority.CRITICAL: 2}


class LimiterOptions(StrictModel):
    enabled: bool = True
    initial_limit: Limit = 32
    min_limit: Limit = 4
    max_limit: Limit = 1024
    smoothing: Share = 0.2
    rtt_tolerance: Annotated[float, Field(ge=1, allow_inf_nan=False)] = 1.5
    long_window: Annotated[int, Field(ge=10, le=1_000_000)] = 600
    queue_size: Annotated[int, Field(ge=0, le=_MAX_LIMIT)] = 256
    queue_timeout_ms: Annotated[float, Field(gt=0, le=600_000)] = 100.0
    sheddable_share: Share = 0.5
    default_share: Share = 0.9

    @model_validator(mode="after")
    def _consistent(self) -> LimiterOptions:
        if self.max_limit < self.min_limit:
            raise ValueError(
                f"max_limit ({self.max_limit}) must be >= min_limit ({self.min_limit})"
            )
        if not self.min_limit <= self.initial_limit <= self.max_limit:
            raise ValueError(
                f"initial_limit ({self.initial_limit}) must be within "
                f"[min_limit, max_limit] ([{self.min_limit}, {self.max_limit}])"
            )
        if self.sheddable_share > self.default_share:
            raise ValueError(
                f"sheddable_share ({self.sheddable_share}) must be <= "
                f"default_share ({self.default_share})"
            )
        return self


@dataclass(slots=True)
class LimitChanged(Event):
    model: str
    old: int
    new: int


@dataclass(slots=True)
class RequestShed(Event):
    model: str
    priority: Priority
    reason: str


class _Gradient:
    """Gradient2's limit estimate, fed one finished call at a time."""

    __slots__ = (
        "_demand",
        "_drops",
        "_long_factor",
        "_long_windows",
        "_max",
        "_min",
        "_ok",
        "_rtt_sum",
        "_samples",
        "_smoothing",
        "_tolerance",
        "_window_size",
        "estimate",
        "long_rtt",
        "short_rtt",
    )

    def __init__(self, options: LimiterOptions) -> None:
        self._min = float(options.min_limit)
        self._max = float(options.max_limit)
        self._smoothing = options.smoothing
        self._tolerance = options.rtt_tolerance
        self._long_factor = 2.0 / (options.long_window + 1)
        self._long_windows = 0
        self.estimate = float(options.initial_limit)
        self.short_rtt = 0.0
        self.long_rtt = 0.0
        self._window_size = max(_MIN_WINDOW, options.initial_limit)
        self._samples = self._ok = self._drops = self._demand = 0
        self._rtt_sum = 0.0

    @property
    def limit(self) -> int:
        return int(self.estimate)

    def add(self, ok: bool, rtt_s: float, demand: int) -> bool:
        """Count one finished call; True when it closed a window."""
        if not ok:
            self._drops += 1
        elif 0.0 <= rtt_s < math.inf:
            self._ok += 1
            self._rtt_sum += rtt_s
        self._samples += 1
        if demand > self._demand:
            self._demand = demand
        if self._samples < self._window_size:
            return False
        self._close_window()
        return True

    def _close_window(self) -> None:
        estimate = self.estimate
        if self._ok:
            short = max(self._rtt_sum / self._ok, _MIN_RTT_S)
            long = self._observe(short)
            if self._demand * 2 >= estimate:
                estimate = self._toward(estimate, long / short)
        if self._drops:
            estimate *= 1.0 - _BACKOFF * self._drops / self._samples
        self.estimate = min(max(estimate, self._min), self._max)
        self._window_size = max(_MIN_WINDOW, self.limit)
        self._samples = self._ok = self._drops = self._demand = 0
        self._rtt_sum = 0.0

    def _observe(self, short: float) -> float:
        self._long_windows += 1
        if self._long_windows <= _WARMUP_WINDOWS:
            factor = 1.0 / self._long_windows
        else:
            factor = self._long_factor
        # The baseline falls at once to a faster window and rises only slowly:
        # a plain average would follow the latency that queueing itself causes
        # under sustained overload, and the limit would creep up with it.
        rising = self.long_rtt + factor * (short - self.long_rtt)
        long = short if short < self.long_rtt else rising
        self.short_rtt = short
        self.long_rtt = long * _BASELINE_DECAY if long > 2.0 * short else long
        return long

    def _toward(self, estimate: float, long_over_short: float) -> float:
        gradient = min(max(self._tolerance * long_over_short, _MIN_GRADIENT), 1.0)
        target = estimate * gradient + math.sqrt(estimate)
        return estimate + self._smoothing * (target - estimate)


def _noop() -> None:
    pass


class _Waiter:
    __slots__ = ("cancel_timer", "future", "priority")

    def __init__(self, priority: Priority, future: asyncio.Future[Overloaded | None]) -> None:
        self.priority = priority
        # Resolves to None when granted a slot, or to the error to raise when shed.
        self.future = future
        self.cancel_timer: Cancel = _noop


class Permit:
    """One admitted request's slot; give it back exactly once with release or cancel."""

    __slots__ = ("_limiter",)

    def __init__(self, limiter: AdaptiveLimiter) -> None:
        self._limiter: AdaptiveLimiter | None = limiter

    def release(self, ok: bool, rtt_s: float) -> None:
        """The call finished: sample it, then hand the slot on. Later calls do nothing."""
        limiter = self._limiter
        if limiter is not None:
            self._limiter = None
            limiter._finish(ok, rtt_s)

    def cancel(self) -> None:
        """The call never happened: free the slot without a sample. Later calls do nothing."""
        limiter = self._limiter
        if limiter is not None:
            self._limiter = None
            limiter._free()


def _share(limit: int, share: float) -> int:
    return max(1, int(limit * share + _SHARE_EPSILON))


class AdaptiveLimiter:
    """The concurrency limit of one model. Not thread-safe: use it from one event loop."""

    __slots__ = (
        "_allowance",
        "_clock",
        "_emit",
        "_enabled",
        "_gradient",
        "_in_flight",
        "_model",
        "_options",
        "_queue_size",
        "_queues",
        "_shed_counts",
        "_timeout_s",
        "_waiting",
    )

    def __init__(
        self,
        options: LimiterOptions,
        clock: Clock,
        emit: Callable[[Event], None],
        model: str,
    ) -> None:
        self._options = options
        self._clock = clock
        self._emit = emit
        self._model = model
        self._enabled = options.enabled
        self._gradient = _Gradient(options)
        self._queue_size = options.queue_size
        self._timeout_s = options.queue_timeout_ms / 1000.0
        self._queues: dict[Priority, OrderedDict[_Waiter, None]] = {
            priority: OrderedDict() for priority in _ORDER
        }
        self._shed_counts = dict.fromkeys(_ORDER, 0)
        self._in_flight = 0
        self._waiting = 0
        self._allowance: dict[Priority, int] = {}
        self._set_allowances()

    @property
    def limit(self) -> int:
        return self._gradient.limit

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def waiting(self) -> int:
        return self._waiting

    async def acquire(self, priority: Priority) -> Permit:
        """A slot for one call, at once or after waiting; raises Overloaded when shed."""
        if self._in_flight < self._allowance[priority]:
            self._in_flight += 1
            return Permit(self)
        return await self._wait(priority)

    def snapshot(self) -> dict[str, object]:
        gradient = self._gradient
        return {
            "enabled": self._enabled,
            "limit": gradient.limit,
            "in_flight": self._in_flight,
            "waiting": {p.value: len(queue) for p, queue in self._queues.items()},
            "short_rtt_ms": gradient.short_rtt * 1000.0 if gradient.short_rtt else None,
            "long_rtt_ms": gradient.long_rtt * 1000.0 if gradient.long_rtt else None,
            "shed": {p.value: count for p, count in self._shed_counts.items()},
        }

    async def _wait(self, priority: Priority) -> Permit:
        if self._waiting >= self._queue_size and not self._make_room(priority):
            raise self._shed(priority, "queue full" if self._queue_size else "over limit")
        waiter = _Waiter(priority, asyncio.get_running_loop().create_future())
        self._queues[priority][waiter] = None
        self._waiting += 1
        waiter.cancel_timer = self._clock.call_later(
            self._timeout_s, partial(self._time_out, waiter)
        )
        try:
            shed = await waiter.future
        except asyncio.CancelledError:
            self._abandon(waiter)
            raise
        if shed is not None:
            raise shed
        return Permit(self)

    def _make_room(self, priority: Priority) -> bool:
        """Evict less important waiters until the queue has room; False if it cannot."""
        while self._waiting >= self._queue_size:
            victim = self._newest_below(priority)
            if victim is None:
                return False
            self._dequeue(victim)
            victim.cancel_timer()
            if not victim.future.done():
                victim.future.set_result(self._shed(victim.priority, "evicted by higher priority"))
        return True

    def _newest_below(self, priority: Priority) -> _Waiter | None:
        rank = _RANK[priority]
        for lower in reversed(_ORDER):
            if _RANK[lower] >= rank:
                return None
            queue = self._queues[lower]
            if queue:  # the oldest: served last (LIFO) and closest to timing out
                return next(iter(queue))
        return None

    def _time_out(self, waiter: _Waiter) -> None:
        if not waiter.future.done():
            self._dequeue(waiter)
            waiter.future.set_result(self._shed(waiter.priority, "queue timeout"))

    def _abandon(self, waiter: _Waiter) -> None:
        """The waiting task was cancelled: leave the queue, or give back a granted slot."""
        waiter.cancel_timer()
        future = waiter.future
        if future.done() and not future.cancelled() and future.result() is None:
            self._free()
        else:
            self._dequeue(waiter)

    def _dequeue(self, waiter: _Waiter) -> None:
        queue = self._queues[waiter.priority]
        if waiter in queue:
            del queue[waiter]
            self._waiting -= 1

    def _finish(self, ok: bool, rtt_s: float) -> None:
        if self._enabled:
            gradient = self._gradient
            old = gradient.limit
            if gradient.add(ok, rtt_s, self._in_flight + self._waiting) and gradient.limit != old:
                self._set_allowances()
                self._emit(LimitChanged(self._model, old, gradient.limit))
        self._free()

    def _free(self) -> None:
        self._in_flight -= 1
        if self._waiting:
            self._drain()

    def _drain(self) -> None:
        """Grant free slots to the best waiters, stopping at the first that does not fit."""
        for priority in _ORDER:
            queue = self._queues[priority]
            allowance = self._allowance[priority]
            while queue:
                # Newest first: under overload the oldest waiters are the ones about
                # to time out anyway, and serving the newest keeps admitted latency
                # short instead of making every admitted request wait nearly the
                # whole queue timeout (Facebook's adaptive LIFO, without the switch).
                waiter = next(reversed(queue))
                if waiter.future.done():  # cancelled; its task has not cleaned up yet
                    self._dequeue(waiter)
                    continue
                if self._in_flight >= allowance:
                    return
                self._dequeue(waiter)
                waiter.cancel_timer()
                self._in_flight += 1
                waiter.future.set_result(None)

    def _shed(self, priority: Priority, reason: str) -> Overloaded:
        self._shed_counts[priority] += 1
        self._emit(RequestShed(self._model, priority, reason))
        return Overloaded(
            f"model {self._model!r} overloaded: {priority} request shed ({reason})",
            self._retry_after(),
        )

    def _retry_after(self) -> float:
        rtt = self._gradient.short_rtt or self._timeout_s
        seconds = rtt * (self._waiting + 1) / self._gradient.limit
        return min(max(seconds, _RETRY_MIN_S), _RETRY_MAX_S)

    def _set_allowances(self) -> None:
        if not self._enabled:
            self._allowance = dict.fromkeys(_ORDER, sys.maxsize)
            return
        limit = self._gradient.limit
        options = self._options
        self._allowance = {
            Priority.CRITICAL: limit,
            Priority.DEFAULT: _share(limit, options.default_share),
            Priority.SHEDDABLE: _share(limit, options.sheddable_share),
        }
