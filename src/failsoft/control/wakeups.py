"""Wake-ups: a change another gateway made to the shared store is followed at once.

The loops that follow the store (``Revisions.watch``, ``FlagService.watch``)
wait on ``Wakeups.wait(topic, poll_s)``: it returns when the topic is woken,
or when ``poll_s`` has passed. Polling is therefore always the backstop, and
on SQLite it is the only path.

On PostgreSQL a ``Listener`` holds one dedicated connection, on a thread of
its own, that LISTENs on the store's channel (``store.notify``): the
transaction that applies a revision or flips a flag sends NOTIFY, and every
listening gateway wakes the matching loop within milliseconds of the commit.
When that connection is lost, the listener says so (the loops go on polling)
and connects again with a jittered exponential backoff; once it listens
again it wakes every loop, since a change may have been made while it was
not listening. Nothing here is on the request path, and a store that hangs
only holds the listener's own thread (TCP keepalives break a dead
connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

from failsoft.store.notify import CHANNEL_SQL, TOPICS
from failsoft.waiting import wait_at_most

__all__ = ["Backoff", "Listener", "Wakeups"]

log = logging.getLogger("failsoft.control")

NOTIFY_WAIT_S = 1.0  # how often the listening thread looks at its stop flag
KEEPALIVE = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 2}
APPLICATION_NAME = "failsoft-listen"


class Wakeups:
    """One wake-up per topic for the loops that follow the store (use on one event loop)."""

    def __init__(self) -> None:
        self._events = {topic: asyncio.Event() for topic in TOPICS}
        self._loop: asyncio.AbstractEventLoop | None = None
        self.mode = "poll"  # "listen" while a listener hears NOTIFY

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    async def wait(self, topic: str, timeout: float) -> bool:  # noqa: ASYNC109 (a poll period)
        """Wait for ``topic`` to be woken, at most ``timeout`` seconds; True when woken."""
        event = self._events[topic]
        try:
            await wait_at_most(event.wait(), timeout)
        except TimeoutError:
            return False
        finally:
            # Cleared before the caller reads the store: a wake-up during the read
            # is kept for the next wait, never lost.
            event.clear()
        return True

    def wake(self, topic: str | None = None) -> None:
        """Wake ``topic`` (every topic when None); on the event loop's thread."""
        for name, event in self._events.items():
            if topic is None or topic == name:
                event.set()

    def wake_threadsafe(self, topic: str | None = None) -> None:
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(self.wake, topic)


class Backoff:
    """Delays between reconnection attempts: doubling from ``first_s`` up to ``max_s``,
    each drawn uniformly in [half, all] of it so gateways do not reconnect in step."""

    def __init__(self, first_s: float, max_s: float, rng: random.Random | None = None) -> None:
        self.first_s = first_s
        self.max_s = max_s
        self._rng = rng or random.Random()
        self._failures = 0

    def next_s(self) -> float:
        delay = min(self.max_s, self.first_s * 2.0**self._failures)
        self._failures += 1
        return delay * self._rng.uniform(0.5, 1.0)

    def reset(self) -> None:
        self._failures = 0


class Listener:
    """LISTEN on the store's channel from a daemon thread; see the module's docstring."""

    def __init__(
        self,
        params: dict[str, Any],
        wakeups: Wakeups,
        *,
        backoff: Backoff | None = None,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        """``params``: psycopg connection parameters (``StoreEngine.listen_params``)."""
        self._params = {**params, **KEEPALIVE, "application_name": APPLICATION_NAME}
        self._wakeups = wakeups
        self._backoff = backoff or Backoff(0.5, 15.0)
        self._on_change = on_change
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="failsoft-listen", daemon=True)
        self.listening = False
        self.connects = 0  # successful LISTENs, in all
        self.heard = 0  # notifications received, in all

    def start(self) -> None:
        self._thread.start()

    def stop(self, wait_s: float = 0.0) -> None:
        """Stop listening (the thread ends within ``NOTIFY_WAIT_S``); wait up to ``wait_s``."""
        self._stop.set()
        if wait_s > 0 and self._thread.is_alive():
            self._thread.join(wait_s)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._listen()
            except Exception as error:  # the thread must live on: it is the only listener
                reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
                self._set(False, reason or type(error).__name__)
            if self._stop.wait(self._backoff.next_s()):
                break
        self._set(False, "stopped")

    def _listen(self) -> None:
        with psycopg.connect(**self._params, autocommit=True) as conn:
            row = conn.execute(f"SELECT {CHANNEL_SQL}").fetchone()
            assert row is not None
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(str(row[0]))))
            self.connects += 1
            self._backoff.reset()
            self._set(True, None)
            # What changed while nobody listened is read now.
            self._wakeups.wake_threadsafe()
            while not self._stop.is_set():
                for note in conn.notifies(timeout=NOTIFY_WAIT_S):
                    self.heard += 1
                    topic = note.payload if note.payload in TOPICS else None
                    self._wakeups.wake_threadsafe(topic)

    def _set(self, listening: bool, reason: str | None) -> None:
        if listening == self.listening:
            return
        self.listening = listening
        self._wakeups.mode = "listen" if listening else "poll"
        if listening:
            log.info("listening for changes to the store", extra={"connects": self.connects})
        elif reason != "stopped":
            log.warning(
                "not listening for changes to the store: following it by polling until "
                "the connection is back",
                extra={"error": reason},
            )
        if self._on_change is not None:
            self._on_change(listening)
