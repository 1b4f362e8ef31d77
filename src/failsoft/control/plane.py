"""The control plane of one gateway: its store, artifact registry and revisions.

``open_plane`` runs before the server starts: it opens (and migrates) the
store, and decides which configuration to serve (``Revisions.boot``). The
background work it owns runs on the gateway's event loop, always off the
request path: audit checkpoints (about once a second), following revisions
other gateways applied and the flags they set (woken by NOTIFY on
PostgreSQL, ``wakeups.py``; polled every ``store.poll_s`` in any case),
heartbeats in the list of instances (``instances.py``), expiring flags, and
scheduled backups.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from failsoft.config import Config
from failsoft.control.instances import InstanceRegistry
from failsoft.control.registry import ArtifactLocations
from failsoft.control.revisions import SNAPSHOT, Apply, BootReport, Revisions
from failsoft.control.storecall import store_call
from failsoft.control.wakeups import Listener, Wakeups
from failsoft.observe.events import Event, EventBus
from failsoft.store import Store, StoreError
from failsoft.store.backup import backup
from failsoft.store.notify import FLAGS, REVISION, ROLLOUTS

if TYPE_CHECKING:
    from failsoft.control.flag_service import FlagService
    from failsoft.control.rollout_controller import RolloutController

log = logging.getLogger("failsoft.control")

ACTOR = "failsoft"  # the actor of what the gateway does by itself
CHECKPOINT_EVERY_S = 1.0
ARTIFACTS = "artifacts"  # the default artifact location, in the data directory
CLOSE_WITHIN_S = 5.0  # the last checkpoint on shutdown waits no longer for the store
EARLY_EVENTS_KEPT = 1000  # events from start-up, before the loop runs


@dataclass
class ControlPlane:
    store: Store
    registry: ArtifactLocations
    revisions: Revisions
    data_dir: Path
    options: Config
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    emitter: ThreadEmitter | None = None
    flags: FlagService | None = None  # set by the app, which has the runtime
    wakeups: Wakeups = field(default_factory=Wakeups)
    listener: Listener | None = None  # PostgreSQL with store.listen
    address: str = ""  # where this gateway serves, as others reach it (set by serve)
    instances: InstanceRegistry | None = None  # set by start
    rollouts: RolloutController | None = None  # set by the app, like flags

    def start(self) -> None:
        """Begin the background work (call on the running event loop)."""
        loop = asyncio.get_running_loop()
        if self.emitter is not None:
            self.emitter.attach(loop)
        self.wakeups.attach(loop)
        if self.listener is not None:
            self.listener.start()
        options = self.options.store
        self.instances = InstanceRegistry(
            self.store,
            address=self.address or "(not serving HTTP)",
            revision=lambda: self.revisions.revision,
            wakeups=lambda: self.wakeups.mode,
            heartbeat_s=options.heartbeat_s,
            expire_s=options.instance_expire_s,
        )
        self.tasks = [
            asyncio.ensure_future(self._checkpoints()),
            asyncio.ensure_future(
                self.revisions.watch(options.poll_s, actor=ACTOR, wake=self._wake(REVISION))
            ),
            asyncio.ensure_future(self.instances.run()),
        ]
        if self.flags is not None:
            self.flags.start()
            self.tasks.append(
                asyncio.ensure_future(self.flags.watch(options.poll_s, wake=self._wake(FLAGS)))
            )
        if self.rollouts is not None:
            self.rollouts.start()
            self.tasks.append(
                asyncio.ensure_future(
                    self.rollouts.watch(options.poll_s, wake=self._wake(ROLLOUTS))
                )
            )
        if self.options.store.backup_every_s > 0:
            self.tasks.append(asyncio.ensure_future(self._backups()))

    async def joined(self) -> None:
        """Wait (bounded) until this gateway is in the store's list of instances."""
        if self.instances is not None and not await self.instances.joined():
            log.warning("not yet in the list of instances: the store is slow or down")

    def _wake(self, topic: str) -> Callable[[float], Awaitable[bool]]:
        async def wait(timeout: float) -> bool:  # noqa: ASYNC109 (a poll period)
            return await self.wakeups.wait(topic, timeout)

        return wait

    async def close(self) -> None:
        if self.listener is not None:
            self.listener.stop()
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.instances is not None:
            await self.instances.leave()
        if self.flags is not None:
            await self.flags.close()
        if self.rollouts is not None:
            await self.rollouts.close()
        try:  # a last checkpoint, unless the store hangs
            await store_call(self.store, self.store.close, timeout=CLOSE_WITHIN_S)
        except StoreError as error:
            log.warning("control store not closed", extra={"error": error.message})

    async def _checkpoints(self) -> None:
        while True:
            await asyncio.sleep(CHECKPOINT_EVERY_S)
            with contextlib.suppress(StoreError):  # down: the next round signs what is new
                # No deadline: one call at a time, however long the store takes.
                await store_call(self.store, self.store.checkpoint, timeout=None)

    async def _backups(self) -> None:
        options = self.options.store
        folder = self.data_dir / "backups"
        while True:
            await asyncio.sleep(options.backup_every_s)
            name = time.strftime("failsoft-%Y%m%dT%H%M%SZ.tar", time.gmtime())
            try:
                await store_call(self.store, self.backup, folder / name, timeout=None)
            except (StoreError, OSError) as error:
                log.error("scheduled backup failed", extra={"error": str(error)})
                continue
            kept = sorted(folder.glob("failsoft-*.tar"))
            for old in kept[: -options.backup_keep]:
                old.unlink(missing_ok=True)
            log.info("backup written", extra={"path": str(folder / name)})

    def backup(self, out: Path) -> None:
        """A consistent snapshot of the store and every registered artifact (blocking).

        Each artifact is read from the locations (a good copy: a bad one is
        skipped and repaired) and archived by its digest; ``failsoft restore``
        puts them back into the locations it is given."""
        digests = sorted({row.sha256 for row in self.store.artifacts()})
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.artifacts-"))
        try:
            files = {digest: self.registry.fetch(digest, staging / digest) for digest in digests}
            backup(self.store, self.data_dir, out, artifacts=files)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


class ThreadEmitter:
    """Registry calls run on threads; their events go to the bus on the event loop.

    Events from before the loop runs (an artifact fetched, or repaired, while
    the gateway starts) are kept and emitted once it does (``attach``): the
    observers that report them are subscribed by then."""

    def __init__(self, bus: EventBus) -> None:
        self._bus = bus
        self._loop: asyncio.AbstractEventLoop | None = None
        self._early: list[Event] = []
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        with self._lock:
            loop = self._loop
            if loop is None:
                if len(self._early) < EARLY_EVENTS_KEPT:
                    self._early.append(event)
                return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:  # not the loop's thread
            running = None
        if running is loop:
            self._bus.emit(event)
        else:
            loop.call_soon_threadsafe(self._bus.emit, event)

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            self._loop = loop
            early, self._early = self._early, []
        for event in early:
            self._bus.emit(event)


def open_plane(
    config: Config,
    data_dir: Path,
    *,
    apply_file: bool,
    apply: Apply,
    bus: EventBus,
) -> tuple[ControlPlane, BootReport]:
    """Open the store in ``data_dir`` and choose what to serve."""
    folder = Path(data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    # A gateway that served before starts while the store is down, on what it served.
    served_before = (folder / SNAPSHOT).is_file()
    store = Store.open(folder, config.store.url, unreachable_ok=served_before)
    try:
        listen = _listen_params(store, config)
    except StoreError:
        store.close()
        raise
    locations = config.artifacts.locations or [str(folder / ARTIFACTS)]
    emitter = ThreadEmitter(bus)
    registry = ArtifactLocations(locations, emit=emitter)
    holder: list[ControlPlane] = []

    async def applied(new: Config, revision: int) -> None:
        await apply(new, revision)
        if holder and holder[0].instances is not None:
            holder[0].instances.poke()  # its row shows the new revision at once

    revisions = Revisions(store, registry, folder, applied)
    report = revisions.boot(config, apply_file=apply_file, actor="config-file")
    plane = ControlPlane(store, registry, revisions, folder, config, emitter=emitter)
    holder.append(plane)
    if listen is not None:
        plane.listener = Listener(listen, plane.wakeups)
    return plane, report


def _listen_params(store: Store, config: Config) -> dict[str, Any] | None:
    """Where this gateway LISTENs for changes (None: it polls only); checked before any use."""
    if store.dialect != "postgresql":
        if config.store.listen_url is not None:
            raise StoreError("store.listen_url: LISTEN applies to a PostgreSQL store only")
        return None
    if not config.store.listen:
        return None
    try:
        return store.engine.listen_params(config.store.listen_url)
    except StoreError as error:
        raise StoreError(f"store.listen_url: {error.message}") from None
