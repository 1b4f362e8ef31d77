"""Wake-ups: the waits the store-following loops use, the backoff, and the LISTEN thread on a
real PostgreSQL, reached through a TCP proxy the test cuts and restores."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import make_url

from failsoft.control.wakeups import Backoff, Listener, Wakeups
from failsoft.store import Store
from failsoft.store.notify import FLAGS, REVISION
from tests._tcp_proxy import TcpProxy
from tests.store.conftest import POSTGRES_URL, Target

WITHIN_S = 10.0  # bound on every wait for a state


def test_the_backoff_doubles_to_its_ceiling_with_jitter_and_resets() -> None:
    backoff = Backoff(0.5, 4.0, random.Random(7))
    delays = [backoff.next_s() for _ in range(6)]
    ceilings = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    backoff.reset()
    assert 0.25 <= backoff.next_s() <= 0.5


async def test_a_wait_ends_on_its_wake_up_or_after_its_period() -> None:
    wakeups = Wakeups()
    wakeups.attach(asyncio.get_running_loop())
    started = time.monotonic()
    assert await wakeups.wait(FLAGS, 0.05) is False
    assert time.monotonic() - started >= 0.05
    wakeups.wake(FLAGS)
    assert await wakeups.wait(FLAGS, 5.0) is True
    wakeups.wake_threadsafe(REVISION)  # another topic: the flags still wait
    assert await wakeups.wait(FLAGS, 0.05) is False
    assert await wakeups.wait(REVISION, 5.0) is True
    wakeups.wake()  # every topic
    assert await wakeups.wait(FLAGS, 5.0) is True
    assert await wakeups.wait(REVISION, 5.0) is True


# -- the listener, on PostgreSQL ---------------------------------------------------------


@pytest.fixture
def pg_store(target: Target, tmp_path: Path) -> Iterator[Store]:
    store = target.open(tmp_path / "data", time.time)  # type: ignore[arg-type]
    yield store
    store.close()


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    server = make_url(POSTGRES_URL)
    with TcpProxy(server.host or "127.0.0.1", server.port or 5432) as running:
        yield running


async def until(condition: Callable[[], bool], what: str) -> None:
    end = time.monotonic() + WITHIN_S
    while not condition():
        assert time.monotonic() < end, f"not {what} within {WITHIN_S} s"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("target", ["postgresql"], indirect=True)
async def test_the_listener_wakes_on_notify_falls_back_when_cut_and_listens_again(
    pg_store: Store, proxy: TcpProxy
) -> None:
    wakeups = Wakeups()
    wakeups.attach(asyncio.get_running_loop())
    through_proxy = make_url(POSTGRES_URL).set(port=proxy.port).render_as_string(False)
    changes: list[bool] = []
    listener = Listener(
        pg_store.engine.listen_params(through_proxy),
        wakeups,
        backoff=Backoff(0.05, 0.2),
        on_change=changes.append,
    )
    listener.start()
    try:
        await until(lambda: listener.listening, "listening")
        assert wakeups.mode == "listen"
        assert await wakeups.wait(FLAGS, 1.0) is True  # woken once on connect: catch up
        spec = {"kind": "boolean", "value": True}

        await asyncio.to_thread(pg_store.set_flag, "demo.enabled", spec, actor="alice")
        started = time.monotonic()
        assert await wakeups.wait(FLAGS, 2.0) is True
        assert time.monotonic() - started < 1.0
        assert listener.heard == 1

        proxy.cut()
        await until(lambda: not listener.listening, "told the connection is lost")
        assert wakeups.mode == "poll"
        # A change while nobody listens: no wake-up (the loops poll meanwhile) ...
        await asyncio.to_thread(pg_store.clear_flag, "demo.enabled", actor="alice")
        assert await wakeups.wait(FLAGS, 0.3) is False

        proxy.restore()
        await until(lambda: listener.listening, "listening again")
        # ... but once it listens again, every loop is woken to read what it missed.
        assert await wakeups.wait(FLAGS, 1.0) is True
        assert await wakeups.wait(REVISION, 1.0) is True
        await asyncio.to_thread(pg_store.set_flag, "demo.enabled", spec, actor="alice")
        assert await wakeups.wait(FLAGS, 2.0) is True
        assert listener.connects == 2
        assert changes == [True, False, True]
    finally:
        listener.stop(wait_s=5.0)
    assert changes[-1] is False
