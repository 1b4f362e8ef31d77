"""Store calls from the event loop: a deadline, daemon threads, and start-up events kept."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from failsoft.control.plane import ThreadEmitter
from failsoft.control.storecall import store_call
from failsoft.observe.events import Event, EventBus
from failsoft.store import Store, StoreUnreachable


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store.open(tmp_path)
    yield opened
    opened.close()


async def test_a_call_answers_or_raises_as_the_function_does(store: Store) -> None:
    assert (await store_call(store, store.add_revision, {"models": {}}, actor="ci")).id == 1
    with pytest.raises(ZeroDivisionError):
        await store_call(store, lambda: 1 / 0)


async def test_a_hung_call_is_given_up_and_its_late_write_rolled_back(store: Store) -> None:
    release = threading.Event()

    def hangs_then_writes() -> None:
        release.wait(10)
        store.add_revision({"models": {}}, actor="late")

    started = time.monotonic()
    with pytest.raises(StoreUnreachable, match=r"did not answer within 0\.2 s") as raised:
        await store_call(store, hangs_then_writes, timeout=0.2)
    assert time.monotonic() - started < 2
    assert store.url in raised.value.message
    calls = [t for t in threading.enumerate() if t.name == "failsoft-store-call"]
    assert calls
    assert all(t.daemon for t in calls)  # never keeps the process from exiting
    release.set()
    for thread in calls:
        thread.join(10)
    assert store.revisions() == []  # the write came after the caller gave up


async def test_a_call_cancelled_as_its_answer_comes_is_cancelled(store: Store) -> None:
    # The cancel is queued to run after the answer is handed to the loop and before the
    # caller resumes: asyncio.wait_for dropped such a cancellation, and a save loop
    # stopped this way ran on, so the gateway's shutdown waited for it for ever.
    loop = asyncio.get_running_loop()
    caller: asyncio.Task[str] | None = None

    def answers() -> str:
        assert caller is not None
        cancel = caller.cancel
        loop.call_soon_threadsafe(lambda: loop.call_soon(cancel))
        return "answered"

    caller = loop.create_task(store_call(store, answers))
    with pytest.raises(asyncio.CancelledError):
        await caller


def test_events_from_start_up_wait_for_the_loop() -> None:
    bus = EventBus()
    seen: list[tuple[Event, str]] = []
    bus.subscribe(lambda event: seen.append((event, threading.current_thread().name)))
    emit = ThreadEmitter(bus)
    early = Event()
    emit(early)  # before the loop runs: nobody has subscribed the reporters yet
    assert seen == []

    async def run() -> None:
        emit.attach(asyncio.get_running_loop())
        late = Event()
        # From a thread: handed to the loop, before the thread's own result.
        await asyncio.to_thread(emit, late)
        assert [event for event, _ in seen] == [early, late]

    asyncio.run(asyncio.wait_for(run(), 5))
    assert {name for _, name in seen} == {threading.current_thread().name}
