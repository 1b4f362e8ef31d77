"""The loop a gateway runs to follow a store it shares with others.

Revisions, flags and rollouts are each followed the same way: wait for a
wake-up (``Wakeups.wait`` on PostgreSQL) or the poll period, whichever comes
first; look at the store; while the store is unreachable, warn once and keep
serving what is in force, then look again next time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from failsoft.store import StoreError

__all__ = ["Wait", "follow_store"]

Wait = Callable[[float], Awaitable[bool]]  # wait at most this long for a wake-up


async def follow_store(
    look: Callable[[], Awaitable[object]],
    every_s: float,
    wake: Wait | None,
    *,
    log: logging.Logger,
    unreachable: str,
) -> None:
    """Call ``look`` after each wake-up or ``every_s`` seconds (runs until cancelled);
    log ``unreachable`` once while the store cannot be reached."""
    warned = False
    while True:
        if wake is None:
            await asyncio.sleep(every_s)
        else:
            await wake(every_s)
        try:
            await look()
        except StoreError as error:
            if not warned:
                log.warning(unreachable, extra={"error": error.message})
                warned = True
            continue
        warned = False
