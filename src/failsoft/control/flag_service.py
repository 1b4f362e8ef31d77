"""The flags of one gateway: validated, stored with an audit entry, and in force at once.

``set`` checks a flag before anything changes (its key, its spec, its
expiry, and for a gateway switch under ``failsoft.`` that the model,
version or feature exists in the served configuration), writes it to the
control store (audited) and recompiles this gateway's switches
(``Runtime.set_flags``) in the same call: a switch is in force when the
call returns, a few milliseconds after it was made. ``clear`` removes one
the same way.

Expiry needs no polling: a flag with ``expires_at`` has a timer on the
injected clock. When it fires the flag leaves the runtime at that moment,
and is cleared from the store with the audit entry ``flag.cleared``
(reason ``expired``), unless someone set it again meanwhile. If the store is
down then, the flag is out of force all the same and the store is cleared
on a later poll.

Several gateways sharing a store follow each other: ``watch`` reads the
store's flags when woken (PostgreSQL NOTIFY, ``wakeups.py``: within a
second of the change) and every ``store.poll_s`` in any case, and
recompiles when they changed. The
flags in force are also kept in the data directory (``current-flags.json``,
next to ``current-revision.json``), so a gateway that starts while the store
is down obeys the switches it obeyed before.

Nothing here runs on the request path: the data plane reads the compiled
switches, and OFREP evaluates the specs kept in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError

from failsoft._options import validation_problems
from failsoft.clock import Cancel, Clock
from failsoft.config import ModelConfig
from failsoft.control.flags import FEATURES, KEY_PATTERN, PREFIX, FlagSpec
from failsoft.control.follow import Wait, follow_store
from failsoft.control.revisions import StoreUnavailable
from failsoft.control.storecall import store_call
from failsoft.errors import BadRequest, NotFound
from failsoft.observe.events import FlagChanged
from failsoft.runtime import Runtime
from failsoft.store import Store, StoreError, StoreUnreachable
from failsoft.store.encoding import utc_text

__all__ = ["SNAPSHOT", "FlagService", "switch_problem"]

log = logging.getLogger("failsoft.flags")

SNAPSHOT = "current-flags.json"
ACTOR = "failsoft"  # the actor of an expiry
MAX_EXPIRY_S = 366 * 86_400.0  # a timer further out than a year is a mistake
SWITCH_KINDS = ("halt", "disable", "feature")
_KEY = re.compile(KEY_PATTERN)


def switch_problem(key: str, spec: FlagSpec, models: Mapping[str, ModelConfig]) -> str | None:
    """What is wrong with a gateway switch (a key under ``failsoft.``), or None.

    A model name may hold dots, so every model whose name the key could
    start with is tried; the switch is valid when one reading names a model,
    version or feature that exists.
    """
    if not key.startswith(PREFIX):
        return None
    kind, _, target = key[len(PREFIX) :].partition(".")
    if kind not in SWITCH_KINDS:
        return (
            f"key: {key!r} is under the reserved prefix {PREFIX!r} but is no switch: use "
            f"{PREFIX}halt.MODEL[.VERSION], {PREFIX}disable.MODEL.VERSION or "
            f"{PREFIX}feature.MODEL.FEATURE"
        )
    if spec.kind != "boolean":
        return f"kind: the switch {key!r} is a boolean, not a {spec.kind}"
    readings = [
        (name, (target[len(name) + 1 :] or None) if target != name else None)
        for name in models
        if target == name or target.startswith(name + ".")
    ]
    if not readings:
        named = target.split(".")[0] or "(none)"
        return f"key: {key!r}: no model {named!r} is served (models: {', '.join(sorted(models))})"
    problems = []
    for model, name in sorted(readings, key=lambda reading: -len(reading[0])):
        versions = models[model].versions
        if kind == "halt" and (name is None or name in versions):
            return None
        if kind == "disable" and name is not None and name in versions:
            return None
        if kind == "feature" and name in FEATURES:
            return None
        if kind == "feature":
            problems.append(
                f"key: {key!r}: a feature of model {model!r} is one of {', '.join(FEATURES)}"
                + (f", not {name!r}" if name else "")
            )
        elif name is None:
            problems.append(f"key: {key!r} needs a version: {PREFIX}disable.{model}.VERSION")
        else:
            problems.append(
                f"key: {key!r}: model {model!r} has no version {name!r} "
                f"(versions: {', '.join(versions)})"
            )
    return problems[0]


def _stored_form(spec: FlagSpec) -> dict[str, Any]:
    """A spec as the store keeps it: the keys that differ from their defaults."""
    data: dict[str, Any] = spec.model_dump(mode="json", exclude_defaults=True)
    data.setdefault("value", spec.value)  # a required field, even when it looks like a default
    return data


class FlagService:
    """The flags of one gateway (see the module's docstring)."""

    def __init__(
        self,
        store: Store,
        runtime: Runtime,
        data_dir: Path,
        *,
        clock: Clock | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        """``clock`` schedules expiries (default: the runtime's); ``wall`` is epoch seconds,
        which ``expires_at`` is in (a test passes its ManualClock's ``now`` to both)."""
        self._store = store
        self._runtime = runtime
        self._snapshot = Path(data_dir) / SNAPSHOT
        self._clock = clock or runtime.clock
        self._wall = wall
        self._flags: dict[str, FlagSpec] = {}  # in force, as evaluated
        self._seen: dict[str, Any] = {}  # the store's flags as last read or written
        self._timers: dict[str, Cancel] = {}
        self._expired: dict[str, Any] = {}  # out of force, still to clear from the store
        self._tasks: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()
        self._started = False

    # -- reading ---------------------------------------------------------------------

    def get(self, key: str) -> FlagSpec | None:
        return self._flags.get(key)

    def list(self) -> dict[str, FlagSpec]:
        """Every flag in force, by key (sorted)."""
        return dict(sorted(self._flags.items()))

    def stored(self, spec: FlagSpec) -> dict[str, Any]:
        return _stored_form(spec)

    # -- start-up and shutdown -------------------------------------------------------

    def boot(self) -> str | None:
        """Load the flags in force, before the gateway serves (blocking); a note, or None.

        From the store; when it cannot be reached, from the copy in the data
        directory, so the gateway obeys the switches it obeyed before.
        """
        try:
            raw = self._store.flags()
        except StoreError as error:
            saved = self._read_snapshot()
            self._install(saved)
            if not saved:
                return None
            return (
                f"the control store is unreachable ({error.message}): obeying the "
                f"{len(saved)} flag(s) this gateway had in force"
            )
        self._install(raw)
        self._save_snapshot()
        return None

    def start(self) -> None:
        """Schedule the expiries (call on the running event loop)."""
        self._started = True
        self._schedule_all()
        if self._expired:
            self._spawn(self._clear_expired())

    async def close(self) -> None:
        self._started = False
        for cancel in self._timers.values():
            cancel()
        self._timers.clear()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def drain(self) -> None:
        """Wait for the expiries under way (tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # -- changes ---------------------------------------------------------------------

    def check(self, key: str, data: Any) -> FlagSpec:
        """The flag ``key`` would be, or BadRequest naming the field; changes nothing.

        ``data`` is a spec as JSON; instead of ``expires_at`` (epoch seconds) it
        may give ``expires_in_s``, counted on this gateway's clock.
        """
        if not isinstance(key, str) or not _KEY.fullmatch(key):
            raise BadRequest(
                f"key: {key!r} is not a flag key (letters, digits, '_', '.', '-'; "
                "at most 200; starting with a letter or digit)"
            )
        if not isinstance(data, dict):
            raise BadRequest('a flag is a JSON object: {"kind": ..., "value": ...}')
        data = dict(data)
        if "expires_in_s" in data:
            seconds = data.pop("expires_in_s")
            if "expires_at" in data:
                raise BadRequest("expires_in_s: give expires_at or expires_in_s, not both")
            if type(seconds) not in (int, float) or not 0 < seconds <= MAX_EXPIRY_S:
                raise BadRequest(
                    f"expires_in_s: {seconds!r} is not a number of seconds in (0, {MAX_EXPIRY_S:g}]"
                )
            data["expires_at"] = self._wall() + seconds
        try:
            spec = FlagSpec.model_validate(data)
        except ValidationError as error:
            problems = validation_problems(error, root="")
            raise BadRequest("; ".join(p.removeprefix(": ") for p in problems)) from None
        now = self._wall()
        if spec.expires_at is not None:
            if spec.expires_at <= now:
                raise BadRequest(
                    f"expires_at: {utc_text(spec.expires_at)} is in the past "
                    f"(now {utc_text(now)}): nothing would be in force"
                )
            if spec.expires_at - now > MAX_EXPIRY_S:
                raise BadRequest(
                    f"expires_at: {utc_text(spec.expires_at)} is more than a year away"
                )
        problem = switch_problem(key, spec, self._runtime.config.models)
        if problem is not None:
            raise BadRequest(problem)
        return spec

    async def set(self, key: str, data: Any, *, actor: str) -> FlagSpec:
        """Validate, store (audited) and apply; the flag as it is now in force."""
        spec = self.check(key, data)
        stored = _stored_form(spec)
        async with self._lock:
            await self._call(self._store.set_flag, key, stored, actor=actor)
            self._seen[key] = stored
            self._expired.pop(key, None)
            self._flags[key] = spec
            self._apply()
            self._schedule(key, spec)
        self._runtime.bus.emit(FlagChanged(key, spec.value, actor))
        log.info("flag set", extra={"key": key, "actor": actor})
        return spec

    async def clear(self, key: str, *, actor: str) -> None:
        """Remove the flag ``key`` (audited) and apply; NotFound when there is none."""
        async with self._lock:
            removed = await self._call(self._store.clear_flag, key, actor=actor)
            self._seen.pop(key, None)
            self._expired.pop(key, None)
            here = self._flags.pop(key, None) is not None
            self._unschedule(key)
            if here:
                self._apply()
        if not removed and not here:
            raise NotFound(f"there is no flag {key!r}")
        self._runtime.bus.emit(FlagChanged(key, None, actor))
        log.info("flag cleared", extra={"key": key, "actor": actor})

    def reapply(self) -> None:
        """Compile the switches again (after a configuration change added models)."""
        self._apply()

    # -- following the store ---------------------------------------------------------

    async def watch(self, every_s: float, wake: Wait | None = None) -> None:
        """Pick up flags other gateways changed in the shared store (runs until cancelled);
        between looks, ``every_s`` seconds or less when ``wake`` says the flags changed."""
        await follow_store(
            self.poll,
            every_s,
            wake,
            log=log,
            unreachable="control store unreachable; flags as they were",
        )

    async def poll(self) -> bool:
        """Read the store's flags once and follow them; True when something changed."""
        if self._expired:
            await self._clear_expired()
        async with self._lock:
            raw = await store_call(self._store, self._store.flags)
            if raw == self._seen:
                return False
            self._install(raw)
        log.info("flags changed in the store", extra={"flags": len(self._flags)})
        return True

    # -- inside ----------------------------------------------------------------------

    def _install(self, raw: Mapping[str, Any]) -> None:
        """Put the flags of ``raw`` (as stored) in force; the expired ones are left out."""
        now = self._wall()
        flags: dict[str, FlagSpec] = {}
        for key, data in raw.items():
            try:
                spec = FlagSpec.model_validate(data)
            except ValidationError as error:
                log.error(
                    "a stored flag is not valid; ignored",
                    extra={"key": key, "error": "; ".join(validation_problems(error))},
                )
                continue
            if spec.expires_at is not None and spec.expires_at <= now:
                self._expired[key] = data
                continue
            flags[key] = spec
        self._seen = dict(raw)
        self._flags = flags
        self._apply()
        self._schedule_all()

    def _apply(self) -> None:
        self._runtime.set_flags(self._flags, self._wall())
        if self._started:
            self._save_snapshot()

    def _schedule_all(self) -> None:
        for cancel in self._timers.values():
            cancel()
        self._timers.clear()
        for key, spec in self._flags.items():
            self._schedule(key, spec)

    def _schedule(self, key: str, spec: FlagSpec) -> None:
        self._unschedule(key)
        if spec.expires_at is None or not self._started:
            return
        delay = max(0.0, spec.expires_at - self._wall())
        self._timers[key] = self._clock.call_later(
            delay, lambda: self._spawn(self._expire(key, spec))
        )

    def _unschedule(self, key: str) -> None:
        cancel = self._timers.pop(key, None)
        if cancel is not None:
            cancel()

    def _spawn(self, work: Any) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _expire(self, key: str, spec: FlagSpec) -> None:
        """``spec`` reached its expiry: out of force now, then cleared from the store."""
        async with self._lock:
            if self._flags.get(key) is not spec:
                return  # set again or cleared meanwhile
            del self._flags[key]
            self._timers.pop(key, None)
            self._apply()
            self._expired[key] = self._seen.get(key, _stored_form(spec))
        self._runtime.bus.emit(FlagChanged(key, None, ACTOR))
        log.info("flag expired", extra={"key": key})
        await self._clear_expired()

    async def _clear_expired(self) -> None:
        """Clear expired flags from the store, each only if nobody set it again since."""
        for key, data in list(self._expired.items()):
            try:
                await store_call(
                    self._store,
                    self._store.clear_flag,
                    key,
                    actor=ACTOR,
                    reason="expired",
                    only_if=data,
                )
            except StoreError as error:
                log.warning(
                    "an expired flag is not cleared from the store yet",
                    extra={"key": key, "error": error.message},
                )
                return
            if self._expired.get(key) is data:
                del self._expired[key]
            if self._seen.get(key) == data:
                del self._seen[key]

    async def _call(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return await store_call(self._store, function, *args, **kwargs)
        except StoreUnreachable as error:
            raise StoreUnavailable(error.message) from None
        except StoreError as error:
            raise BadRequest(error.message) from None

    def _save_snapshot(self) -> None:
        saved = {key: _stored_form(spec) for key, spec in self._flags.items()}
        tmp = self._snapshot.with_suffix(".tmp")
        try:
            tmp.write_bytes(orjson.dumps({"flags": saved}, option=orjson.OPT_SORT_KEYS))
            tmp.replace(self._snapshot)
        except OSError as error:
            log.warning("cannot keep the flags in the data directory", extra={"error": str(error)})

    def _read_snapshot(self) -> dict[str, Any]:
        try:
            saved = orjson.loads(self._snapshot.read_bytes())
        except (OSError, ValueError):
            return {}
        flags = saved.get("flags") if isinstance(saved, dict) else None
        return dict(flags) if isinstance(flags, dict) else {}
