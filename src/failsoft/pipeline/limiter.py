"""An adaptive concurrency limit per model, with priority-aware, tenant-fair admission.

The limit itself, and the min-RTT probes that measure its baseline, are the
control law in ``gradient``; this module admits requests under it.

Admission by priority and tenant
--------------------------------
All priorities share one in-flight count, and each may fill it up to its
allowance: critical the whole limit, default ``default_share`` of it,
sheddable ``sheddable_share`` (rounded down, at least 1). So sheddable work
can never take more than its share, and the top of the limit is kept free for
critical work even when default traffic is heavy.

A request over its allowance waits in one bounded queue (``queue_size``
across priorities, see ``admission_queue``): critical first, then default,
then sheddable; within a priority the tenant with the fewest calls in flight
first (on a tie, the one whose newest waiter has waited longest), and a
tenant's newest waiter first. A freed slot goes to that waiter
if its priority's allowance has room; allowances shrink with priority, so
when it does not fit, no less important waiter would either. When the queue
is full, a newcomer evicts the oldest waiter of a lower priority, or of a
tenant holding at least two more places at its own priority; otherwise the
newcomer is shed. A waiter not served within ``queue_timeout_ms`` is shed.
A waiter that joins a *standing* lane (its tenant's waiters at its priority
have not all been served for a whole ``queue_timeout_ms``: that tenant offers
more than it gets, steadily) is shed sooner, after ``standing_timeout_rtts``
min RTTs (CoDel, as in Facebook's adaptive LIFO). Served newest first, it
would seldom be served later anyway; keeping it would only let the queue
grow old, and when the load drops every one of those stale waiters would be
served late. A burst into a queue that empties now and then still waits the
whole ``queue_timeout_ms``, and so does every waiter during a min-RTT probe.
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
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Annotated

from pydantic import Field, model_validator

from failsoft._options import StrictModel
from failsoft.clock import Clock
from failsoft.errors import Overloaded, Shed
from failsoft.observe.events import Event
from failsoft.pipeline.admission_queue import AdmissionQueue, TenantKey, Waiter
from failsoft.pipeline.gradient import Gradient
from failsoft.priority import ORDER, Priority

__all__ = [
    "AdaptiveLimiter",
    "LimitChanged",
    "LimiterOptions",
    "Permit",
    "Priority",
    "RequestShed",
    "TenantKey",
]

_MAX_LIMIT = 100_000
_RETRY_MIN_S = 0.05
_RETRY_MAX_S = 30.0
# Below 1e-9 a share x limit product such as 0.29 * 100 = 28.999999999999996
# would round down a whole slot.
_SHARE_EPSILON = 1e-9

Limit = Annotated[int, Field(ge=1, le=_MAX_LIMIT)]
Share = Annotated[float, Field(gt=0, le=1)]


# A fast model's min RTT is a fraction of a millisecond, less than an event-loop
# turn under load: a standing-queue timeout that short sheds a steady closed-loop
# client (16 connections, a limit below 16) for no reason.
_STANDING_FLOOR_S = 0.010


class LimiterOptions(StrictModel):
    enabled: bool = True
    initial_limit: Annotated[
        Limit, Field(description="the limit until the first min-RTT probe, and after it")
    ] = 32
    min_limit: Annotated[
        Limit,
        Field(
            description="the lowest limit, and the limit during a min-RTT probe: "
            "at most the calls the model serves at once without queueing"
        ),
    ] = 4
    max_limit: Limit = 1024
    smoothing: Annotated[
        Share, Field(description="how far the limit moves towards its target per window")
    ] = 0.2
    rtt_tolerance: Annotated[
        float,
        Field(
            ge=1,
            allow_inf_nan=False,
            description="the limit comes down once the RTT exceeds this times the min RTT "
            "(or the min RTT plus rtt_slack_ms, if that is more)",
        ),
    ] = 1.1
    rtt_slack_ms: Annotated[
        float,
        Field(
            ge=0,
            le=60_000,
            allow_inf_nan=False,
            description="the least RTT increase tolerated: the gateway's own event-loop "
            "noise, which for a sub-millisecond model is larger than any rtt_tolerance",
        ),
    ] = 2.0
    window_min_ms: Annotated[
        float,
        Field(
            ge=0,
            le=60_000,
            allow_inf_nan=False,
            description="a window of calls also spans at least this long, so that one "
            "event-loop stall among a fast model's calls cannot decide it",
        ),
    ] = 100.0
    long_window: Annotated[
        int,
        Field(
            ge=10,
            le=1_000_000,
            description="unused since the baseline is the probed min RTT; "
            "accepted so that older configurations still load",
        ),
    ] = 600
    min_rtt_interval_s: Annotated[
        float,
        Field(
            gt=0,
            le=86_400,
            allow_inf_nan=False,
            description="seconds from the end of one min-RTT probe to the next (before jitter)",
        ),
    ] = 10.0
    min_rtt_jitter: Annotated[
        float,
        Field(
            ge=0,
            le=1,
            description="each interval is stretched by a random part of it, up to this share",
        ),
    ] = 0.5
    knee_hold_s: Annotated[
        float,
        Field(
            ge=0,
            le=3600,
            allow_inf_nan=False,
            description="after calls queued at a limit, seconds before the limit may grow "
            "back to it; doubled each time it queues there again (0: no hold)",
        ),
    ] = 1.0
    knee_hold_max_s: Annotated[
        float,
        Field(ge=0, le=3600, allow_inf_nan=False, description="the longest knee hold"),
    ] = 16.0
    min_rtt_samples: Annotated[
        int,
        Field(ge=1, le=10_000, description="successful calls a min-RTT probe takes the median of"),
    ] = 25
    queue_size: Annotated[
        int, Field(ge=0, le=_MAX_LIMIT, description="waiting places across priorities")
    ] = 256
    queue_timeout_ms: Annotated[
        float, Field(gt=0, le=600_000, description="the longest a request waits before shed")
    ] = 100.0
    standing_timeout_rtts: Annotated[
        float,
        Field(
            ge=0,
            le=1000,
            allow_inf_nan=False,
            description="min RTTs a request waits in a standing queue before shed "
            "(0: queue_timeout_ms, as in any queue)",
        ),
    ] = 1.0
    sheddable_share: Annotated[
        Share, Field(description="the part of the limit sheddable requests may fill")
    ] = 0.5
    default_share: Annotated[
        Share, Field(description="the part of the limit default requests may fill")
    ] = 0.9

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
        if self.knee_hold_max_s < self.knee_hold_s:
            raise ValueError(
                f"knee_hold_max_s ({self.knee_hold_max_s}) must be >= "
                f"knee_hold_s ({self.knee_hold_s})"
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


class Permit:
    """One admitted request's slot; give it back exactly once with release or cancel."""

    __slots__ = ("_epoch", "_limiter", "_tenant")

    def __init__(self, limiter: AdaptiveLimiter, tenant: TenantKey, epoch: int) -> None:
        self._limiter: AdaptiveLimiter | None = limiter
        self._tenant = tenant
        self._epoch = epoch

    def release(self, ok: bool, rtt_s: float) -> None:
        """The call finished: sample it, then hand the slot on. Later calls do nothing."""
        limiter = self._limiter
        if limiter is not None:
            self._limiter = None
            limiter._finish(ok, rtt_s, self._tenant, self._epoch)

    def cancel(self) -> None:
        """The call never happened: free the slot without a sample. Later calls do nothing."""
        limiter = self._limiter
        if limiter is not None:
            self._limiter = None
            limiter._free(self._tenant)


def _share(limit: int, share: float) -> int:
    return max(1, int(limit * share + _SHARE_EPSILON))


class AdaptiveLimiter:
    """The concurrency limit of one model. Not thread-safe: use it from one event loop."""

    __slots__ = (
        "_allowance",
        "_clock",
        "_completed",
        "_emit",
        "_enabled",
        "_gradient",
        "_in_flight",
        "_model",
        "_options",
        "_queue",
        "_queue_size",
        "_shed_counts",
        "_timeout_s",
    )

    def __init__(
        self,
        options: LimiterOptions,
        clock: Clock,
        emit: Callable[[Event], None],
        model: str,
        rng: random.Random | None = None,
    ) -> None:
        self._options = options
        self._clock = clock
        self._emit = emit
        self._model = model
        self._enabled = options.enabled
        self._gradient = Gradient(options, clock, rng if rng is not None else random.Random())
        self._queue_size = options.queue_size
        self._timeout_s = options.queue_timeout_ms / 1000.0
        self._queue = AdmissionQueue()
        self._shed_counts = dict.fromkeys(ORDER, 0)
        self._in_flight = 0
        self._completed = 0  # calls finished (a sample), read by the worker autoscaler
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
        return len(self._queue)

    @property
    def completed(self) -> int:
        """Calls finished with a sample since this limiter was made."""
        return self._completed

    @property
    def rtts(self) -> tuple[float | None, float | None]:
        """The short RTT and the probed min RTT in seconds (None while unknown)."""
        return self._gradient.short_rtt or None, self._gradient.min_rtt or None

    @property
    def probing(self) -> bool:
        return self._enabled and self._gradient.probing

    @property
    def shed_total(self) -> int:
        return sum(self._shed_counts.values())

    async def acquire(self, priority: Priority, tenant: TenantKey = None) -> Permit:
        """A slot for one call, at once or after waiting; raises Overloaded when shed.

        ``tenant`` (a tenant's name, None for anonymous requests) only orders
        waiters fairly between tenants; each tenant's quota is checked before.
        """
        if self._in_flight < self._allowance[priority]:
            return self._admit(tenant)
        return await self._wait(priority, tenant)

    def try_acquire(self, priority: Priority, tenant: TenantKey = None) -> Permit | None:
        """A slot at once, or None when ``acquire`` would have to wait (or shed)."""
        if self._in_flight < self._allowance[priority]:
            return self._admit(tenant)
        return None

    def snapshot(self) -> dict[str, object]:
        gradient = self._gradient
        return {
            "enabled": self._enabled,
            "limit": gradient.limit,
            "in_flight": self._in_flight,
            "waiting": {p.value: self._queue.waiting(p) for p in ORDER},
            "short_rtt_ms": gradient.short_rtt * 1000.0 if gradient.short_rtt else None,
            "min_rtt_ms": gradient.min_rtt * 1000.0 if gradient.min_rtt else None,
            "probing_min_rtt": self._enabled and gradient.probing,
            "shed": {p.value: count for p, count in self._shed_counts.items()},
        }

    def _admit(self, tenant: TenantKey) -> Permit:
        self._in_flight += 1
        self._queue.started(tenant)
        return Permit(self, tenant, self._gradient.epoch)

    async def _wait(self, priority: Priority, tenant: TenantKey) -> Permit:
        if len(self._queue) >= self._queue_size and not self._make_room(priority, tenant):
            raise self._shed(priority, "queue full" if self._queue_size else "over limit")
        waiter = Waiter(priority, tenant, asyncio.get_running_loop().create_future())
        standing_s = self._queue.push(waiter, self._clock.now())
        timeout_s, reason = self._timeout_s, "queue timeout"
        # A probe cuts the throughput for a moment: no reason to shed sooner then.
        if standing_s >= self._timeout_s and not self._gradient.probing:
            short_s = max(
                self._options.standing_timeout_rtts * self._gradient.min_rtt, _STANDING_FLOOR_S
            )
            if self._options.standing_timeout_rtts > 0 and short_s < timeout_s:
                timeout_s, reason = short_s, "standing queue timeout"
        waiter.cancel_timer = self._clock.call_later(
            timeout_s, partial(self._time_out, waiter, reason)
        )
        try:
            outcome = await waiter.future
        except asyncio.CancelledError:
            self._abandon(waiter)
            raise
        if isinstance(outcome, Overloaded):
            raise outcome
        return outcome

    def _make_room(self, priority: Priority, tenant: TenantKey) -> bool:
        """Evict waiters until the queue has room for this newcomer; False if it cannot."""
        queue = self._queue
        while len(queue) >= self._queue_size:
            victim = queue.victim(priority, tenant)
            if victim is None:
                return False
            queue.remove(victim)
            victim.cancel_timer()
            if not victim.future.done():
                reason = (
                    "evicted by fair share"
                    if victim.priority is priority
                    else "evicted by higher priority"
                )
                victim.future.set_result(self._shed(victim.priority, reason))
        return True

    def _time_out(self, waiter: Waiter, reason: str) -> None:
        if not waiter.future.done():
            self._queue.remove(waiter)
            waiter.future.set_result(self._shed(waiter.priority, reason))

    def _abandon(self, waiter: Waiter) -> None:
        """The waiting task was cancelled: leave the queue, or give back a granted slot."""
        waiter.cancel_timer()
        future = waiter.future
        if future.done() and not future.cancelled():
            outcome = future.result()
            if isinstance(outcome, Permit):
                outcome.cancel()
            return
        self._queue.remove(waiter)

    def _finish(self, ok: bool, rtt_s: float, tenant: TenantKey, epoch: int) -> None:
        self._completed += ok
        if self._enabled:
            gradient = self._gradient
            old = gradient.limit
            demand = self._in_flight + len(self._queue)
            if gradient.add(ok, rtt_s, demand, epoch) and gradient.limit != old:
                self._set_allowances()
                self._emit(LimitChanged(self._model, old, gradient.limit))
        self._free(tenant)

    def _free(self, tenant: TenantKey) -> None:
        self._in_flight -= 1
        self._queue.finished(tenant)
        if len(self._queue):
            self._drain()

    def _drain(self) -> None:
        """Grant free slots to the best waiters, stopping at the first that does not fit."""
        queue = self._queue
        for priority in ORDER:
            allowance = self._allowance[priority]
            while (waiter := queue.next(priority)) is not None:
                if waiter.future.done():  # cancelled; its task has not cleaned up yet
                    queue.remove(waiter)
                    continue
                if self._in_flight >= allowance:
                    return
                queue.remove(waiter)
                waiter.cancel_timer()
                waiter.future.set_result(self._admit(waiter.tenant))

    def _shed(self, priority: Priority, reason: str) -> Shed:
        self._shed_counts[priority] += 1
        self._emit(RequestShed(self._model, priority, reason))
        return Shed(
            f"model {self._model!r} overloaded: {priority} request shed ({reason})",
            self._retry_after(),
        )

    def _retry_after(self) -> float:
        rtt = self._gradient.short_rtt or self._gradient.min_rtt or self._timeout_s
        seconds = rtt * (len(self._queue) + 1) / self._gradient.limit
        return min(max(seconds, _RETRY_MIN_S), _RETRY_MAX_S)

    def _set_allowances(self) -> None:
        if not self._enabled:
            self._allowance = dict.fromkeys(ORDER, sys.maxsize)
            return
        limit = self._gradient.limit
        options = self._options
        self._allowance = {
            Priority.CRITICAL: limit,
            Priority.DEFAULT: _share(limit, options.default_share),
            Priority.SHEDDABLE: _share(limit, options.sheddable_share),
        }
