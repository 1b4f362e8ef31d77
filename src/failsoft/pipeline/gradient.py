"""The control law of the adaptive concurrency limit: where the limit should be.

A server that is not queueing answers in about its minimum round-trip time
(min RTT); when calls take well longer, they queue inside it and the limit
comes down. The baseline is measured rather than learned from the traffic:
RTTs averaged under overload already include queueing inside the server, and
a limit that follows them settles far above the server's real concurrency.
So, as in Envoy's adaptive concurrency filter, the limiter re-measures the
min RTT now and then with a *probe*:

- The limit drops to ``min_limit`` until ``min_rtt_samples`` calls admitted
  during the probe have succeeded. Their median RTT is the new min RTT, and
  the limit goes back to where it was. Calls admitted before the probe do not
  count: they may have queued. A probe costs little: a fraction of a second
  at ``min_limit`` every ``min_rtt_interval_s``.
- The first probe starts when the first window (below) closes; until then
  there is no baseline and the limit stays at ``initial_limit``, so a fresh
  gateway admits as it would without probes. The next probe starts at the
  first window that closes ``min_rtt_interval_s`` after the last probe
  ended, stretched at random by up to ``min_rtt_jitter`` of it so that the
  gateways of a fleet do not probe in step.

Between probes, finished calls are grouped into windows of ``max(10, limit)``
calls and at least ``window_min_ms`` (100 ms, Envoy's update interval): about
one round trip of the whole limit when it is saturated, and long enough that
one event-loop stall among a fast model's calls cannot decide a window. A
window only counts calls admitted under the limit it judges: whenever the
limit changes, calls still in flight from before are no samples. When a
window closes:

- The mean RTT of its successful calls is the *short RTT*. The *tolerated*
  RTT is ``rtt_tolerance`` times the min RTT or the min RTT plus
  ``rtt_slack_ms``, whichever is more: the slack covers the gateway's own
  event-loop noise, which dwarfs a sub-millisecond model's RTT, and the
  tolerance the noise of a slower one. ``gradient = tolerated / short RTT``.
- While the gradient is at least 1 (no queueing beyond the tolerance) the
  target is ``limit + sqrt(limit)``, the allowance that lets the limit probe
  upwards, as in Gradient2 and Envoy. Below 1 the target is
  ``limit * max(gradient, 0.5)``, without that allowance: with it, the limit
  would settle well past the point where calls start to queue inside the
  server, where each call admitted beyond the server's own slots only waits
  there. One noisy window never more than halves the target.
- ``limit += smoothing * (target - limit)``, clamped to [min_limit, max_limit].
- A window whose calls queued takes the limit below their level in any case,
  and the level where they queued twice in a row is the *knee* (see
  ``knee``): the limit does not grow back into it for ``knee_hold_s``,
  doubled at each repeat up to ``knee_hold_max_s``. On a server of 4 slots,
  a fifth call in flight makes a fifth of the calls wait a whole service
  time while the mean RTT rises by a quarter: without the hold the limit
  steps into it every few windows, and the p99 doubles.
- When fewer than half the limit's requests were in flight or waiting during
  the window, the load says nothing about the limit and it stays put
  (Gradient2's "app limited" rule).
- Failed calls (errors, timeouts) carry no RTT. They shrink the limit by
  ``10% * the window's failure share``, so a window of nothing but failures
  cuts it by AIMD's x0.9, while a trickle of errors cannot grind it down to
  ``min_limit``: the growth from the successful calls outweighs it.
"""

from __future__ import annotations

import math
import random
import statistics
from typing import TYPE_CHECKING

from failsoft.clock import Clock
from failsoft.pipeline.knee import BELOW, Knee

if TYPE_CHECKING:
    from failsoft.pipeline.limiter import LimiterOptions

_MIN_WINDOW = 10
_MIN_GRADIENT = 0.5
_BACKOFF = 0.1
_MIN_RTT_S = 1e-6


class Gradient:
    """The limit estimate, fed one finished call at a time, and its min-RTT probes."""

    __slots__ = (
        "_clock",
        "_demand",
        "_drops",
        "_interval_s",
        "_jitter",
        "_knee",
        "_max",
        "_min",
        "_next_probe_at",
        "_ok",
        "_probe_rtts",
        "_probe_size",
        "_rng",
        "_rtt_sum",
        "_samples",
        "_slack_s",
        "_smoothing",
        "_tolerance",
        "_window_min_s",
        "_window_size",
        "_window_start",
        "epoch",
        "estimate",
        "min_rtt",
        "probing",
        "short_rtt",
    )

    def __init__(self, options: LimiterOptions, clock: Clock, rng: random.Random) -> None:
        self._min = float(options.min_limit)
        self._max = float(options.max_limit)
        self._smoothing = options.smoothing
        self._tolerance = options.rtt_tolerance
        self._slack_s = options.rtt_slack_ms / 1000.0
        self._clock = clock
        self._rng = rng
        self._interval_s = options.min_rtt_interval_s
        self._jitter = options.min_rtt_jitter
        self._probe_size = options.min_rtt_samples
        self._knee = Knee(clock, options.knee_hold_s, options.knee_hold_max_s)
        self.estimate = float(options.initial_limit)
        self.short_rtt = 0.0
        self.min_rtt = 0.0
        self._next_probe_at = -math.inf  # the first window starts the first probe
        self._probe_rtts: list[float] = []
        self._window_min_s = options.window_min_ms / 1000.0
        self._window_size = max(_MIN_WINDOW, options.initial_limit)
        self._window_start = clock.now()
        self._samples = self._ok = self._drops = self._demand = 0
        self._rtt_sum = 0.0
        # A permit carries the epoch it was admitted in, and the epoch moves on
        # whenever the limit does: a window or a probe only judges calls that
        # were admitted under the limit it is judging.
        self.epoch = 0
        self.probing = False

    @property
    def limit(self) -> int:
        return int(self._min) if self.probing else int(self.estimate)

    def add(self, ok: bool, rtt_s: float, demand: int, epoch: int) -> bool:
        """Count one finished call admitted in ``epoch``; True when the limit may have moved."""
        if epoch != self.epoch:
            return False
        usable = ok and 0.0 <= rtt_s < math.inf
        if self.probing:
            if usable:
                self._probe_rtts.append(rtt_s)
                if len(self._probe_rtts) >= self._probe_size:
                    self._end_probe()
                    return True
            return False
        if not ok:
            self._drops += 1
        elif usable:
            self._ok += 1
            self._rtt_sum += rtt_s
        self._samples += 1
        if demand > self._demand:
            self._demand = demand
        if (
            self._samples < self._window_size
            or self._clock.now() - self._window_start < self._window_min_s
        ):
            return False
        before = self.limit
        self._close_window()
        if self._clock.now() >= self._next_probe_at:
            self.probing = True
        if self.probing or self.limit != before:
            self.epoch += 1
        return True

    def _close_window(self) -> None:
        estimate = self.estimate
        if self._ok:
            self.short_rtt = max(self._rtt_sum / self._ok, _MIN_RTT_S)
            if self.min_rtt and self._demand * 2 >= estimate:
                estimate = self._toward(estimate, self.short_rtt)
        if self._drops:
            estimate *= 1.0 - _BACKOFF * self._drops / self._samples
        self.estimate = min(max(estimate, self._min), self._max)
        self._new_window()

    def _toward(self, estimate: float, short: float) -> float:
        tolerated = max(self._tolerance * self.min_rtt, self.min_rtt + self._slack_s)
        gradient = tolerated / short
        level = int(estimate)
        if gradient < 1.0:
            if level > self._min:  # nothing to hold the limit below
                self._knee.queued(level)
            target = estimate * max(gradient, _MIN_GRADIENT)
            return min(estimate + self._smoothing * (target - estimate), level - BELOW)
        self._knee.passed(level)
        grown = estimate + self._smoothing * math.sqrt(estimate)
        return max(estimate, min(grown, self._knee.ceiling()))

    def _end_probe(self) -> None:
        self.min_rtt = max(statistics.median(self._probe_rtts), _MIN_RTT_S)
        self._probe_rtts.clear()
        self.probing = False
        self.epoch += 1
        stretch = 1.0 + self._jitter * self._rng.random()
        self._next_probe_at = self._clock.now() + self._interval_s * stretch
        self._new_window()

    def _new_window(self) -> None:
        self._window_size = max(_MIN_WINDOW, self.limit)
        self._window_start = self._clock.now()
        self._samples = self._ok = self._drops = self._demand = 0
        self._rtt_sum = 0.0
