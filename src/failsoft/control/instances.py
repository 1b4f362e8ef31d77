"""This gateway in the store's list of instances: registered, heartbeating, removed on exit.

Every ``heartbeat_s`` seconds, on the event loop but never on the request
path (the store call runs on a thread of its own, one at a time), the
gateway writes its row: id, address, host, pid, start time, the revision it
serves and how it hears of changes (``listen`` or ``poll``). Every few beats
it also removes the rows of gateways that stopped beating longer than
``expire_s`` ago. A store that is down costs a warning; beats resume when it
is back. On a clean stop the gateway removes its own row; after a SIGKILL
the row goes stale (no beat for ``STALE_AFTER_BEATS`` periods) and later
expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from typing import Any

from failsoft.control.storecall import store_call
from failsoft.store import Store, StoreError
from failsoft.store.instances import STALE_AFTER_BEATS
from failsoft.waiting import wait_at_most

__all__ = ["EXPIRE_EVERY_BEATS", "InstanceRegistry", "advertised", "new_instance_id"]

log = logging.getLogger("failsoft.control")

EXPIRE_EVERY_BEATS = 5
LEAVE_WITHIN_S = 3.0  # on shutdown, the row's removal waits no longer for the store
JOIN_WITHIN_S = 3.0  # at start-up, readiness waits no longer for the first beat
_UNSPECIFIED = ("", "0.0.0.0", "::")


def new_instance_id() -> str:
    """Unique across hosts and restarts, readable in a listing: ``host-pid-random``."""
    return f"{socket.gethostname()[:40]}-{os.getpid()}-{secrets.token_hex(3)}"


def advertised(url: str) -> str:
    """``http://0.0.0.0:8000`` as ``http://HOSTNAME:8000``: what other hosts can reach."""
    scheme, _, rest = url.partition("://")
    host, _, port = rest.rpartition(":")
    if host.strip("[]") in _UNSPECIFIED:
        host = socket.gethostname()
    return f"{scheme}://{host}:{port}"


class InstanceRegistry:
    def __init__(
        self,
        store: Store,
        *,
        address: str,
        revision: Callable[[], int],
        wakeups: Callable[[], str],
        heartbeat_s: float,
        expire_s: float,
        wall: Callable[[], float] = time.time,
        instance_id: str | None = None,
    ) -> None:
        self.id = instance_id or new_instance_id()
        self._store = store
        self._address = address
        self._revision = revision
        self._wakeups = wakeups
        self.heartbeat_s = heartbeat_s
        self._expire_s = max(expire_s, 2 * STALE_AFTER_BEATS * heartbeat_s)
        self._wall = wall
        self._started = wall()
        self._poke = asyncio.Event()
        self._joined = asyncio.Event()
        self.beats = 0  # beats that reached the store

    def poke(self) -> None:
        """Beat now (the revision served changed): the listing shows it at once."""
        self._poke.set()

    async def joined(self, within_s: float = JOIN_WITHIN_S) -> bool:
        """Wait, at most ``within_s``, for the first beat to reach the store.

        Start-up waits for it so that a gateway reporting ready is already in
        the listing; a slow or absent store only delays readiness by the bound.
        """
        with contextlib.suppress(TimeoutError):
            await wait_at_most(self._joined.wait(), within_s)
        return self._joined.is_set()

    async def run(self) -> None:
        """Beat until cancelled."""
        warned = False
        while True:
            try:
                await self.beat()
                if self.beats % EXPIRE_EVERY_BEATS == 1:
                    await store_call(
                        self._store, self._store.expire_instances, self._expire_s, timeout=None
                    )
            except StoreError as error:
                if not warned:
                    log.warning("heartbeat not stored", extra={"error": error.message})
                    warned = True
            else:
                warned = False
            with contextlib.suppress(TimeoutError):
                await wait_at_most(self._poke.wait(), self.heartbeat_s)
            self._poke.clear()

    async def beat(self) -> None:
        # No deadline: one beat at a time, however long the store takes.
        await store_call(
            self._store,
            self._store.beat_instance,
            self.id,
            address=self._address,
            host=socket.gethostname(),
            pid=os.getpid(),
            started_at=self._started,
            revision=self._revision(),
            heartbeat_s=self.heartbeat_s,
            wakeups=self._wakeups(),
            timeout=None,
        )
        self.beats += 1
        self._joined.set()

    async def leave(self) -> None:
        """Remove this gateway's row (a clean stop), unless the store does not answer."""
        with contextlib.suppress(StoreError):  # else the row goes stale, then expires
            await store_call(
                self._store, self._store.remove_instance, self.id, timeout=LEAVE_WITHIN_S
            )

    async def listing(self) -> dict[str, Any]:
        """Every registered gateway with its age and liveness, and which one this is."""
        rows = await store_call(self._store, self._store.instances)
        now = self._wall()
        return {
            "self": self.id,
            "stale_after_beats": STALE_AFTER_BEATS,
            "instances": [row.as_json(now) for row in rows],
        }
