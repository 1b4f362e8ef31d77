"""Waiting with a deadline without losing a cancellation.

On Python 3.11, ``asyncio.wait_for`` returns the awaited result when the
waiting task is cancelled in the same turn of the event loop as that result
comes: the cancellation is lost. A background loop stopped by cancelling its
task then runs on, and whoever awaits the cancelled task waits forever; a
test caught ``Operate.close`` hanging so, its save loop cancelled just as a
store call on a thread returned. ``asyncio.timeout`` delivers both the
result's arrival and the cancellation, so the cancellation wins.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

__all__ = ["wait_at_most"]

T = TypeVar("T")


async def wait_at_most(awaitable: Awaitable[T], timeout_s: float | None) -> T:
    """``await awaitable``, or TimeoutError after ``timeout_s`` seconds (None: no limit)."""
    async with asyncio.timeout(timeout_s):
        return await awaitable
