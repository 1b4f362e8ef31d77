"""Latency-aware load balancing: the cheapest replica by peak-EWMA cost.

While calls are in flight and there are up to ``FULL_SCAN_MAX`` eligible
replicas, ``pick`` compares them all and sends the call to the cheapest:
the gateway knows every replica's load exactly, so it needs none of the
randomness that protects distributed balancers from herding, and under load
the two-choice draw too often leaves an idle replica out while a busy one
gets the call. Otherwise (all idle, or many replicas) it draws two distinct
replicas at random and keeps the cheaper (Mitzenmacher's power of two
choices, as in Finagle, Linkerd and Envoy), which costs O(1). A replica's
cost is

    latency_ms * (outstanding + 1)

- **Near costs are equal.** Between replicas with as many calls in flight,
  costs up to ``TIE_TOLERANCE`` (50%) above the cheapest, plus
  ``TIE_MARGIN_MS`` (1 ms), count as a tie, and a tie is broken at random
  with the injected RNG (the order of the drawn pair, or one draw among the
  tied replicas of a scan). Replicas with different numbers of calls in
  flight are compared exactly, so an idle replica still beats a busy one
  that looks alike, and a stuck call turns a replica away at once. A peak-EWMA estimate is
  about the slowest recent call, so the estimates of alike replicas differ
  by whichever had the last hiccup: measured on the demo's two iris
  workers at 100 calls/s, one was more than 20% (+0.5 ms) above the other
  15-65% of the time, never 50% (+1 ms) above. Both decay at the same rate
  while the faster-looking one takes every call, so without the tie, at
  low concurrency, one replica took all the traffic for seconds at a time,
  and a sick one could go unvisited (and unnoticed) while a healthy one
  took everything. A failure penalty or a real slowdown moves a cost well
  past the tolerance, so traffic is spread only between replicas that look
  alike.
- **Peak EWMA** (Finagle, tower): a finished call slower than the estimate
  replaces it at once, so a replica that turns slow is avoided on the next
  pick; a faster one pulls the estimate down with weight ``1 - w``, where
  ``w = exp(-elapsed / ewma_decay_ms)`` and ``elapsed`` is the time since the
  previous sample. A failed call counts as at least ``failure_penalty_ms``,
  so a replica that fails fast does not look fast.
- **Idle decay.** While a replica has no call in flight, the latency used
  for picking is the estimate discounted by ``exp(-idle / ewma_decay_ms)``
  (Finagle and tower decay towards zero the same way). Without it a replica
  that was slow or failed once would lose every pair it is drawn into and,
  at low traffic, never be tried again. As soon as one call is in flight
  the full estimate applies again, so a recovering replica is probed with
  one call at a time rather than a burst; and silence from a replica with
  calls in flight (a hung one) is never mistaken for good news.
- **Outstanding calls.** The ``(outstanding + 1)`` factor turns a hung
  replica away quickly: its calls never finish, so its cost grows with every
  call sent to it although no sample says it is slow.
- **Slow start** (Envoy): after ``begin_slow_start`` a replica's weight
  rises linearly from ``slow_start_min_weight`` to 1 over ``slow_start_ms``;
  while ramping it takes part in a pick only with probability equal to its
  weight. Its estimate is reset to the median of the other replicas', so a
  returning replica is neither flooded (a stale low estimate) nor starved
  (a stale high one). ``slow_start_ms = 0`` disables the ramp; the reset
  still happens.

State is a few flat lists indexed by replica; ``pick`` reads the clock once
and builds no containers. Indices on the hot path (``pick``, ``started``,
``finished``, ``cancelled``) are trusted; the other methods check them.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence
from typing import Annotated

from pydantic import Field

from failsoft._options import StrictModel
from failsoft.clock import Clock

INITIAL_EWMA_MS = 1.0
# The latency used for picking never goes below this, so that a cost is never
# zero and still grows with the outstanding calls.
_FLOOR_MS = 1e-3
FULL_SCAN_MAX = 8  # up to this many eligible replicas, compare them all
# Costs up to this share above the cheapest, plus this margin, are a tie.
TIE_TOLERANCE = 0.5
TIE_MARGIN_MS = 1.0
_TIE_FACTOR = 1.0 + TIE_TOLERANCE


class BalancerOptions(StrictModel):
    ewma_decay_ms: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 10000.0
    failure_penalty_ms: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 1000.0
    slow_start_ms: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 10000.0
    slow_start_min_weight: Annotated[float, Field(gt=0, le=1)] = 0.1


class PeakEwmaBalancer:
    """Picks a replica index per call; told when calls start, finish or are cancelled."""

    def __init__(
        self, size: int, options: BalancerOptions, clock: Clock, rng: random.Random
    ) -> None:
        if size < 1:
            raise ValueError(f"a balancer needs at least one replica, got {size}")
        self._size = size
        self._clock = clock
        self._rng = rng
        self._decay_s = options.ewma_decay_ms / 1000.0
        self._penalty_ms = options.failure_penalty_ms
        self._ramp_s = options.slow_start_ms / 1000.0
        self._min_weight = options.slow_start_min_weight
        now = clock.now()
        self._ewma_ms = [INITIAL_EWMA_MS] * size
        self._stamp = [now] * size
        self._outstanding = [0] * size
        self._busy = 0  # calls in flight on all replicas
        self._ramp_start = [-math.inf] * size
        self._ramp_until = -math.inf  # some replica is ramping until then
        self._costs = [math.inf] * size  # scratch for the full scan, reused

    def pick(self, eligible: Sequence[int]) -> int:
        count = len(eligible)
        if count == 1:
            return eligible[0]
        if count == 0:
            raise ValueError("no eligible replica to pick from")
        if count <= FULL_SCAN_MAX and self._busy:
            return self._cheapest(eligible)
        draw = self._rng.random
        # int(random() * n) is what random.choice once did; randrange costs several times more.
        first = int(draw() * count)
        second = int(draw() * (count - 1))
        if second >= first:
            second += 1
        a, b = eligible[first], eligible[second]
        now = self._clock.now()
        if now < self._ramp_until:
            # Slow start: a ramping replica takes part in a comparison only with
            # probability equal to its weight, so its share grows with the ramp
            # instead of waiting until it wins a cost comparison outright.
            a_in = self._admitted(a, now)
            if a_in != self._admitted(b, now):
                return a if a_in else b
        cost_a, cost_b = self._cost(a, now), self._cost(b, now)
        if self._outstanding[a] == self._outstanding[b]:
            # Alike within the tolerance: keep ``a``, the first of a random draw.
            cost_b = cost_b * _TIE_FACTOR + TIE_MARGIN_MS
        return b if cost_a > cost_b else a

    def _cheapest(self, eligible: Sequence[int]) -> int:
        now = self._clock.now()
        ramping = now < self._ramp_until
        costs, outstanding = self._costs, self._outstanding
        cheapest, best = math.inf, -1
        for index in eligible:
            # Slow start: a ramping replica takes part only with probability = its weight.
            if ramping and not self._admitted(index, now):
                costs[index] = math.inf
                continue
            cost = costs[index] = self._cost(index, now)
            if cost < cheapest:
                cheapest, best = cost, index
        if best < 0:  # every one ramping and left out this time
            return eligible[int(self._rng.random() * len(eligible))]
        # One of the replicas that tie with the cheapest, each as likely: as cheap, or
        # as many calls in flight and within the tolerance.
        limit = cheapest * _TIE_FACTOR + TIE_MARGIN_MS
        busy = outstanding[best]
        ties = 0
        for index in eligible:
            cost = costs[index]
            if cost == cheapest or (cost <= limit and outstanding[index] == busy):
                ties += 1
        skip = int(self._rng.random() * ties) if ties > 1 else 0
        for index in eligible:
            cost = costs[index]
            if cost == cheapest or (cost <= limit and outstanding[index] == busy):
                if not skip:
                    return index
                skip -= 1
        return best  # not reached: the cheapest is within its own tie

    def _admitted(self, index: int, now: float) -> bool:
        weight = self._weight(index, now)
        return weight >= 1.0 or self._rng.random() < weight

    def started(self, index: int) -> None:
        self._outstanding[index] += 1
        self._busy += 1

    def finished(self, index: int, seconds: float, ok: bool) -> None:
        self._release(index)
        sample_ms = seconds * 1000.0
        if not ok:
            sample_ms = max(sample_ms, self._penalty_ms)
        self._observe(index, sample_ms, self._clock.now())

    def cancelled(self, index: int, elapsed: float | None = None) -> None:
        """A call given up on (a hedge loser): no latency sample.

        ``elapsed``, when given, is how long the call had run: a lower bound
        on that replica's latency, so it can raise the estimate, never lower it.
        """
        self._release(index)
        if elapsed is not None and elapsed * 1000.0 > self._ewma_ms[index]:
            self._ewma_ms[index] = elapsed * 1000.0
            self._stamp[index] = self._clock.now()

    def begin_slow_start(self, index: int) -> None:
        self._check(index)
        now = self._clock.now()
        others = [self._latency_ms(i, now) for i in range(self._size) if i != index]
        self._ewma_ms[index] = statistics.median(others) if others else INITIAL_EWMA_MS
        self._stamp[index] = now
        self._ramp_start[index] = now
        self._ramp_until = max(self._ramp_until, now + self._ramp_s)

    def weight(self, index: int) -> float:
        self._check(index)
        return self._weight(index, self._clock.now())

    def snapshot(self, index: int) -> dict[str, float]:
        self._check(index)
        now = self._clock.now()
        return {
            "ewma_ms": self._latency_ms(index, now),
            "outstanding": float(self._outstanding[index]),
            "weight": self._weight(index, now),
        }

    def _cost(self, index: int, now: float) -> float:
        return self._latency_ms(index, now) * (self._outstanding[index] + 1)

    def _latency_ms(self, index: int, now: float) -> float:
        value = self._ewma_ms[index]
        if not self._outstanding[index]:
            value *= math.exp((self._stamp[index] - now) / self._decay_s)
        return max(value, _FLOOR_MS)

    def _observe(self, index: int, sample_ms: float, now: float) -> None:
        current = self._ewma_ms[index]
        if sample_ms > current:
            self._ewma_ms[index] = sample_ms
        else:
            keep = math.exp(-(now - self._stamp[index]) / self._decay_s)
            self._ewma_ms[index] = current * keep + sample_ms * (1.0 - keep)
        self._stamp[index] = now

    def _weight(self, index: int, now: float) -> float:
        elapsed = now - self._ramp_start[index]
        if elapsed >= self._ramp_s:
            return 1.0
        return self._min_weight + (1.0 - self._min_weight) * (elapsed / self._ramp_s)

    def _release(self, index: int) -> None:
        # Never below zero: a stray report must not make a replica look idler than idle.
        if self._outstanding[index] > 0:
            self._outstanding[index] -= 1
            self._busy -= 1

    def _check(self, index: int) -> None:
        if not 0 <= index < self._size:
            raise IndexError(f"replica index {index} out of range 0..{self._size - 1}")
