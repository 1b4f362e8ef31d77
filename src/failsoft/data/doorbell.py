"""A cheap wake-up for one task that waits often: rung from the event loop's thread.

``await asyncio.wait_for(event.wait(), timeout)`` makes a task, a timer and
three futures at every wait. The prediction log waits once for every 64
records, so at thousands of requests a second that bookkeeping was a share of
the log's cost on the loop worth measuring (``benchmarks/serve.py --candidate
assurance``). A ``Doorbell`` makes one future per wait and one timer per
deadline, however many waits share that deadline.
"""

from __future__ import annotations

import asyncio
import math

__all__ = ["Doorbell"]


class Doorbell:
    """``ring()`` wakes the waiter (or the next ``wait``, if none waits now);
    ``wait(deadline)`` also returns at ``deadline`` on the loop's clock. Not
    thread-safe: ring it on the loop's thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._waiter: asyncio.Future[None] | None = None
        self._rung = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf

    def ring(self) -> None:
        waiter = self._waiter
        if waiter is None:
            self._rung = True
        elif not waiter.done():
            waiter.set_result(None)

    async def wait(self, deadline: float) -> None:
        """Until rung (a ring since the last wait counts) or ``deadline``."""
        if self._rung:
            self._rung = False
            return
        loop = self._loop
        if deadline <= loop.time():
            return
        if deadline != self._timer_at:
            self.cancel_timer()
            self._timer = loop.call_at(deadline, self._at_deadline)
            self._timer_at = deadline
        waiter = self._waiter = loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    def cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._timer_at = math.inf

    def _at_deadline(self) -> None:
        self._timer = None
        self._timer_at = math.inf
        self.ring()
