"""Adaptive client-side throttling toward remote replicas (Google SRE book, ch. 21).

Each version counts, over a sliding window, the calls it sent to its remote
replicas and the calls they accepted (answered, even with an error of the
client's or the model's; not refused, reset, timed out or 5xx). When the
replicas start refusing, the gateway refuses locally too, with probability

    max(0, (requests - k * accepts) / (requests + 1))

so a backend that is already drowning is not sent work it will only reject,
while a trickle still reaches it to notice when it recovers. ``k`` = 2 lets
twice the accepted traffic through before any local rejection. Below
``min_requests`` calls in the window nothing is rejected: at a handful of
calls one refusal would otherwise throttle half the next ones.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Annotated

from pydantic import Field

from failsoft._options import StrictModel
from failsoft.clock import Clock
from failsoft.observe.events import Event
from failsoft.pipeline.window import SlidingCounts


class ThrottleOptions(StrictModel):
    enabled: bool = True
    k: Annotated[float, Field(ge=1.0, le=100.0)] = 2.0
    window_s: Annotated[float, Field(gt=0, le=3600)] = 60.0
    min_requests: Annotated[int, Field(ge=0, le=1_000_000)] = 20


@dataclass(slots=True)
class ThrottledLocally(Event):
    model: str
    version: str
    probability: float


class AdaptiveThrottle:
    __slots__ = ("_counts", "_enabled", "_k", "_minimum", "_rng")

    def __init__(self, options: ThrottleOptions, clock: Clock, rng: random.Random) -> None:
        self._enabled = options.enabled
        self._k = options.k
        self._minimum = options.min_requests
        self._rng = rng
        self._counts = SlidingCounts(options.window_s, clock)  # first: requests, second: accepts

    def rejection_probability(self) -> float:
        counts = self._counts
        counts.rotate()
        requests = counts.first
        if requests < self._minimum:
            return 0.0
        return max(0.0, (requests - self._k * counts.second) / (requests + 1))

    def allow(self) -> bool:
        """Whether to send this call; counts it as a request either way."""
        if not self._enabled:
            return True
        probability = self.rejection_probability()
        self._counts.add_first()
        return probability <= 0.0 or self._rng.random() >= probability

    def accepted(self) -> None:
        """The replica took the call (it answered)."""
        if self._enabled:
            self._counts.add_second()
