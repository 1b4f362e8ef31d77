"""The doorbell the prediction log's writer waits on, on a loop whose clock the test moves."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from failsoft.data.doorbell import Doorbell


class MovedClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose time passes only when the test says so."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 1000.0
        self.timers = 0

    def time(self) -> float:
        return self.now

    def call_at(
        self, when: float, callback: Callable[..., object], *args: object, **kwargs: Any
    ) -> asyncio.TimerHandle:
        self.timers += 1
        return super().call_at(when, callback, *args, **kwargs)


@pytest.fixture
def loop() -> Iterator[MovedClockLoop]:
    moved = MovedClockLoop()
    yield moved
    moved.close()


def run(loop: MovedClockLoop, scenario: Callable[[], Awaitable[None]]) -> None:
    loop.run_until_complete(scenario())


async def turns(count: int = 3) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


def test_a_ring_wakes_the_waiter(loop: MovedClockLoop) -> None:
    async def scenario() -> None:
        bell = Doorbell(loop)
        waiting = loop.create_task(bell.wait(loop.now + 60))
        await turns()
        assert not waiting.done()
        bell.ring()
        await turns()
        assert waiting.done()

    run(loop, scenario)


def test_a_ring_with_nobody_waiting_wakes_the_next_wait_once(loop: MovedClockLoop) -> None:
    async def scenario() -> None:
        bell = Doorbell(loop)
        bell.ring()
        bell.ring()
        await bell.wait(loop.now + 60)  # returns at once: it was rung
        waiting = loop.create_task(bell.wait(loop.now + 60))
        await turns()
        assert not waiting.done()  # the two rings counted as one
        bell.ring()
        await waiting

    run(loop, scenario)


def test_the_deadline_ends_a_wait_and_one_timer_serves_many_waits(
    loop: MovedClockLoop,
) -> None:
    async def scenario() -> None:
        bell = Doorbell(loop)
        deadline = loop.now + 60
        for _ in range(3):  # woken early three times, by rings
            waiting = loop.create_task(bell.wait(deadline))
            await turns()
            bell.ring()
            await waiting
        assert loop.timers == 1  # the one timer of that deadline
        waiting = loop.create_task(bell.wait(deadline))
        await turns()
        assert not waiting.done()
        loop.now = deadline
        await turns()
        assert waiting.done()
        bell.cancel_timer()

    run(loop, scenario)


def test_a_deadline_already_past_returns_at_once(loop: MovedClockLoop) -> None:
    async def scenario() -> None:
        bell = Doorbell(loop)
        await bell.wait(loop.now - 1)
        await bell.wait(loop.now)

    run(loop, scenario)
