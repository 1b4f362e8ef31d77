"""Injected time: strategies read a Clock and wait with its sleep, never time.* directly.

``SystemClock`` is the real one. ``ManualClock`` is for tests (after trio's
MockClock): time stands still until the test calls ``advance``, and every
``sleep`` whose wake-up time has been reached then completes, in order. A
test drives breakers, backoff, hedging and budgets through hours of
simulated time without sleeping.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

T = TypeVar("T")


class Clock(Protocol):
    def now(self) -> float:
        """Monotonic seconds."""
        ...

    async def sleep(self, seconds: float) -> None: ...

    def call_later(self, seconds: float, callback: Callable[[], None]) -> Cancel:
        """Run ``callback`` after ``seconds``; the returned function cancels it."""
        ...


Cancel = Callable[[], None]


class SystemClock:
    # The C function itself: strategies read the clock a dozen times per request.
    now = staticmethod(time.monotonic)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def call_later(self, seconds: float, callback: Callable[[], None]) -> Cancel:
        return asyncio.get_running_loop().call_later(seconds, callback).cancel


class ManualClock:
    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._order), future))
        await future

    def call_later(self, seconds: float, callback: Callable[[], None]) -> Cancel:
        due = self._now + seconds  # from now, not from when the task first runs

        async def later() -> None:
            await self.sleep(due - self._now)
            callback()

        task = asyncio.ensure_future(later())

        def cancel() -> None:
            task.cancel()

        return cancel

    @property
    def sleeping(self) -> int:
        """How many sleeps are pending (cancelled ones included until they would wake)."""
        return sum(1 for _, _, future in self._sleepers if not future.done())

    def next_wakeup(self) -> float | None:
        pending = [when for when, _, future in self._sleepers if not future.done()]
        return min(pending) if pending else None

    async def advance(self, seconds: float) -> None:
        """Move time forward, waking sleepers in order and letting each run."""
        target = self._now + seconds
        while self._sleepers and self._sleepers[0][0] <= target:
            when, _, future = heapq.heappop(self._sleepers)
            self._now = max(self._now, when)
            if not future.done():
                future.set_result(None)
            await settle()
        self._now = target
        await settle()


async def within(clock: Clock, seconds: float, awaitable: Awaitable[T]) -> T:
    """``awaitable``'s result, or TimeoutError once ``seconds`` pass on ``clock``.

    asyncio.wait_for on the injected clock: a test's ManualClock decides when
    the time is up.
    """
    task = asyncio.ensure_future(awaitable)
    expired = False

    def expire() -> None:
        nonlocal expired
        if not task.done():
            expired = True
            task.cancel()

    cancel_timer = clock.call_later(max(seconds, 0.0), expire)
    try:
        return await task
    except asyncio.CancelledError:
        if expired:
            raise TimeoutError from None
        raise
    finally:
        cancel_timer()
        if not task.done():
            task.cancel()


async def settle(rounds: int = 20) -> None:
    """Let ready tasks run until they block (a few event-loop turns)."""
    for _ in range(rounds):
        await asyncio.sleep(0)
