"""Two event counts over a sliding time window, kept in a ring of buckets.

The window is a ring of ``BUCKETS + 1`` counters, each ``window / BUCKETS``
wide; the counts cover the current bucket and the ``BUCKETS`` before it, so
the span counted is at least one window and less than
``window + window / BUCKETS``. Time comes only from the injected clock.
Used by the retry and hedge budgets (requests, retries) and the adaptive
client-side throttle (requests, accepts).
"""

from __future__ import annotations

import math

from failsoft.clock import Clock

BUCKETS = 10
_SLOTS = BUCKETS + 1


class SlidingCounts:
    __slots__ = ("_bucket", "_clock", "_firsts", "_seconds", "_width", "first", "second")

    def __init__(self, window_s: float, clock: Clock) -> None:
        if not 0.0 < window_s < math.inf:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        self._width = window_s / BUCKETS
        self._clock = clock
        self._firsts = [0] * _SLOTS
        self._seconds = [0] * _SLOTS
        self.first = 0  # totals over the window, valid after rotate()
        self.second = 0
        self._bucket = self._bucket_now()

    def add_first(self) -> None:
        slot = self.rotate()
        self._firsts[slot] += 1
        self.first += 1

    def add_second(self) -> None:
        slot = self.rotate()
        self._seconds[slot] += 1
        self.second += 1

    def rotate(self) -> int:
        """Clear the buckets that left the window; return the current bucket's slot."""
        bucket = self._bucket_now()
        passed = bucket - self._bucket
        # A clock that steps back (passed < 0) keeps counting into the current bucket.
        if passed >= _SLOTS:
            self._clear()
        elif passed > 0:
            for gone in range(self._bucket + 1, bucket + 1):
                self._clear_slot(gone % _SLOTS)
        if passed > 0:
            self._bucket = bucket
        return self._bucket % _SLOTS

    def _bucket_now(self) -> int:
        return math.floor(self._clock.now() / self._width)

    def _clear_slot(self, slot: int) -> None:
        self.first -= self._firsts[slot]
        self.second -= self._seconds[slot]
        self._firsts[slot] = 0
        self._seconds[slot] = 0

    def _clear(self) -> None:
        self._firsts = [0] * _SLOTS
        self._seconds = [0] * _SLOTS
        self.first = 0
        self.second = 0
