"""The limit at which calls start to queue inside a server, remembered for a while.

A server with a few slots (a GPU, a small worker pool) serves N calls at once
in its own time; an N+1th call waits for a whole call to finish. A latency
limiter that only follows the mean RTT keeps growing into that extra call
every few windows, and each time a fifth of the calls at 4 slots waits twice
as long: the p99 of admitted calls doubles although the mean barely moves.

So the limiter remembers the *knee*: the lowest limit at which calls queued
twice in a row (once can be an event-loop stall). While a hold runs, the
limit may grow up to just below the knee, not into it. When the hold ends the
limit may test the knee again: if calls queue there again the hold doubles
(up to a cap), so a stable server sees the test ever more rarely; if they do
not, the server got faster or was given more slots, and the knee is
forgotten. Thread-unsafe, like the limiter that owns it.
"""

from __future__ import annotations

import math

from failsoft.clock import Clock

__all__ = ["BELOW", "Knee"]

# The highest limit estimate allowed below a held knee: the middle of the
# level under it, so the estimate's growth steps do not creep into it.
BELOW = 0.5


class Knee:
    """Which limit queued, and until when the limit stays below it."""

    __slots__ = (
        "_clock",
        "_hold_s",
        "_level",
        "_max_hold_s",
        "_start_hold_s",
        "_suspect",
        "_until",
    )

    def __init__(self, clock: Clock, hold_s: float, max_hold_s: float) -> None:
        self._clock = clock
        self._start_hold_s = hold_s
        self._max_hold_s = max_hold_s
        self._hold_s = 0.0
        self._until = -math.inf
        self._level = 0  # the knee; 0: none known
        self._suspect = 0  # a level that queued once; 0: none

    @property
    def level(self) -> int:
        """The knee, or 0 when none is known."""
        return self._level

    @property
    def hold_s(self) -> float:
        return self._hold_s

    def queued(self, level: int) -> None:
        """Calls admitted at ``level`` queued inside the server."""
        if level == self._level:
            self._hold(min(2.0 * self._hold_s, self._max_hold_s))
        elif level == self._suspect:
            self._level, self._suspect = level, 0
            self._hold(self._start_hold_s)
        else:
            self._suspect = level

    def passed(self, level: int) -> None:
        """Calls admitted at ``level`` did not queue."""
        if self._suspect and level >= self._suspect:
            self._suspect = 0
        if self._level and level >= self._level:
            self._level, self._hold_s = 0, 0.0

    def ceiling(self) -> float:
        """The highest the limit estimate may grow to now."""
        if self._level and self._clock.now() < self._until:
            return self._level - BELOW
        return math.inf

    def _hold(self, seconds: float) -> None:
        self._hold_s = seconds
        self._until = self._clock.now() + seconds
