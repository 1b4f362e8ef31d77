"""Calling the control store from the event loop: on a thread of its own, with a deadline.

A store that refuses connections fails a call at once; one that hangs (a
partition, a stopped server: the connection stays open and nothing comes
back) would hold a call for as long as the hang lasts, since the driver has
no read timeout. So each call runs on a daemon thread of its own and the
caller waits at most ``timeout`` seconds, then gets ``StoreUnreachable``
naming the store: a change during a hang is refused with a clear error, as
during a refusal. The thread itself may stay blocked until the connection
breaks; being a daemon (unlike the default executor's threads, which the
event loop joins when it closes), it never keeps the gateway from exiting.
And a write it makes once the caller has given up is rolled back rather
than committed (``store.engine.deadline``), so a change reported refused
does not land later; only a commit already sent when the deadline passed
can (as with any timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from failsoft.store import Store, StoreUnreachable
from failsoft.store.engine import deadline
from failsoft.waiting import wait_at_most

__all__ = ["STORE_DEADLINE_S", "store_call"]

T = TypeVar("T")
STORE_DEADLINE_S = 10.0  # > the store's connect timeout (5 s): a refusal is told as such


async def store_call(
    store: Store,
    function: Callable[..., T],
    *args: Any,
    timeout: float | None = STORE_DEADLINE_S,  # noqa: ASYNC109 (the thread is not cancellable)
    **kwargs: Any,
) -> T:
    """``function(*args, **kwargs)`` on a daemon thread; StoreUnreachable after ``timeout``."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if done.done():  # the caller stopped waiting
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(result)  # type: ignore[arg-type]

    give_up_at = None if timeout is None else time.monotonic() + timeout

    def run() -> None:
        result: T | None = None
        error: BaseException | None = None
        try:
            with deadline(give_up_at):  # a write that comes too late is rolled back
                result = function(*args, **kwargs)
        except BaseException as raised:
            error = raised
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=run, name="failsoft-store-call", daemon=True).start()
    try:
        return await wait_at_most(done, timeout)
    except TimeoutError:
        raise StoreUnreachable(
            f"control store {store.url} did not answer within {timeout:g} s"
        ) from None
