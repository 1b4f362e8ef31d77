"""wait_at_most keeps a cancellation that comes with the result (asyncio.wait_for loses it)."""

from __future__ import annotations

import asyncio

import pytest

from failsoft.waiting import wait_at_most


async def test_a_cancellation_in_the_same_turn_as_the_result_is_kept() -> None:
    loop = asyncio.get_running_loop()
    result: asyncio.Future[int] = loop.create_future()
    waiting = loop.create_task(wait_at_most(result, 10.0))
    await asyncio.sleep(0)
    result.set_result(1)
    waiting.cancel()  # before the waiter has seen the result
    with pytest.raises(asyncio.CancelledError):
        await waiting


async def test_the_result_comes_back_and_a_deadline_raises_timeout_error() -> None:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[str] = loop.create_future()
    ready.set_result("done")
    assert await wait_at_most(ready, 10.0) == "done"
    assert await wait_at_most(asyncio.sleep(0, "no limit"), None) == "no limit"
    never: asyncio.Future[None] = loop.create_future()
    with pytest.raises(TimeoutError):
        await wait_at_most(never, 0.0)
    assert never.cancelled()
