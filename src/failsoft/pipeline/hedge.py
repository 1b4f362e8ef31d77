"""Hedged requests: options, a latency tracker and the hedge delay.

A hedge is an extra copy of a request, sent to another replica when the
first attempt has not answered within a delay; the first answer wins and the
others are cancelled (Dean and Barroso, "The Tail at Scale"; Envoy's and
gRPC's hedging policies). The delay is a high quantile of recent successful
latency, so only the slowest few percent of requests are hedged and the tail
shrinks for little extra load. The delay is clamped to
``[min_delay_ms, max_delay_ms]``, and is ``min_delay_ms`` until enough
latencies have been seen.

When every replica is slow, hedging cannot help and would only add load, so
hedges also draw from a budget: a ``RetryBudget`` with its own ratio, floor
and window (``hedge_budget``), the same arithmetic as for retries.

``LatencyTracker`` keeps the last ``size`` successful latencies in a ring.
``observe`` is O(1). ``quantile`` answers from a sorted copy of the ring,
rebuilt only once at least ``refresh_every`` (``size // 16``, at least 1)
observations have arrived since the last rebuild. An answer can therefore
miss up to ``refresh_every - 1`` of the newest samples, and sorting costs at
most one sort per ``refresh_every`` observations, however often it is asked.
"""

from __future__ import annotations

import math
from typing import Annotated

from pydantic import Field, model_validator

from failsoft._options import StrictModel
from failsoft.clock import Clock
from failsoft.pipeline.retry import BudgetFloor, BudgetRatio, BudgetWindow, RetryBudget

MIN_SAMPLES = 20
"""Below this many samples a quantile is noise: ``quantile`` answers None."""


class HedgeOptions(StrictModel):
    enabled: bool = True
    delay_quantile: Annotated[float, Field(ge=0.5, le=0.999)] = 0.95
    min_delay_ms: Annotated[float, Field(gt=0.0)] = 2.0
    max_delay_ms: Annotated[float, Field(gt=0.0)] = 500.0
    max_hedges: Annotated[int, Field(ge=0, le=3)] = 1  # extra attempts per request
    budget_ratio: BudgetRatio = 0.1
    budget_min_per_s: BudgetFloor = 10.0
    budget_window_s: BudgetWindow = 10.0

    @model_validator(mode="after")
    def _delay_range(self) -> HedgeOptions:
        if self.max_delay_ms < self.min_delay_ms:
            raise ValueError(
                f"max_delay_ms ({self.max_delay_ms}) must be at least "
                f"min_delay_ms ({self.min_delay_ms})"
            )
        return self


class LatencyTracker:
    """Recent successful call latencies of one replica set; answers quantiles."""

    __slots__ = ("_count", "_next", "_refresh_every", "_samples", "_sorted", "_unsorted")

    def __init__(self, size: int = 512) -> None:
        if size < MIN_SAMPLES:
            raise ValueError(f"size must be at least {MIN_SAMPLES}, got {size}")
        self._samples = [0.0] * size
        self._next = 0
        self._count = 0
        self._refresh_every = max(1, size // 16)
        self._sorted: list[float] | None = None
        self._unsorted = 0  # observations since the sorted copy was built

    def __len__(self) -> int:
        """How many samples the ring holds (at most ``size``)."""
        return self._count

    @property
    def refresh_every(self) -> int:
        return self._refresh_every

    def observe(self, seconds: float) -> None:
        """Record one successful call's latency; NaN, infinite or negative values are dropped."""
        if not 0.0 <= seconds < math.inf:
            return
        self._samples[self._next] = seconds
        self._next += 1
        if self._next == len(self._samples):
            self._next = 0
        if self._count < len(self._samples):
            self._count += 1
        self._unsorted += 1

    def quantile(self, q: float) -> float | None:
        """The q-quantile (linear interpolation, numpy's default); None below MIN_SAMPLES."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"q must be within [0, 1], got {q}")
        if self._count < MIN_SAMPLES:
            return None
        if self._sorted is None or self._unsorted >= self._refresh_every:
            self._sorted = sorted(self._samples[: self._count])
            self._unsorted = 0
        return _interpolate(self._sorted, q)


def _interpolate(ordered: list[float], q: float) -> float:
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def hedge_delay(tracker: LatencyTracker, options: HedgeOptions) -> float:
    """Seconds to wait before hedging: the latency quantile clamped to [min, max]."""
    low = options.min_delay_ms / 1000.0
    observed = tracker.quantile(options.delay_quantile)
    if observed is None:
        return low
    return min(options.max_delay_ms / 1000.0, max(low, observed))


def hedge_budget(options: HedgeOptions, clock: Clock) -> RetryBudget:
    """The hedge budget the options describe (one per model version, like retries)."""
    return RetryBudget(
        options.budget_ratio, options.budget_min_per_s, options.budget_window_s, clock
    )
