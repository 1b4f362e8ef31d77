"""Desired state: configuration revisions in the control store, reconciled into this gateway.

The store is the truth. A change is proposed (``propose``): validated,
planned against what serves, stored as revision N+1, its artifacts resolved
to verified local files, and applied to the running gateway; the revision is
then marked ``applied``, or ``failed`` with the reason, and the gateway stays
on N. ``rollback`` proposes an earlier revision's configuration again.
``watch`` follows revisions that other gateways sharing the store applied
(woken by NOTIFY on PostgreSQL, polled every ``store.poll_s`` in any case).

Static stability: nothing here runs on the request path. Every store call
runs on a thread; when the store is unreachable a change fails with a clear
error and serving goes on from the compiled state. The configuration in
force is also kept in the data directory (``current-revision.json``), so a
gateway that starts while the store is down serves what it served before.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from failsoft.config import Config, ConfigError, ProcessBackend, parse_config
from failsoft.control.artifact_ref import ArtifactRef
from failsoft.control.follow import Wait, follow_store
from failsoft.control.plan import Plan, plan
from failsoft.control.registry import ArtifactLocations
from failsoft.control.storecall import store_call
from failsoft.data.schema import refuse_incompatible
from failsoft.errors import BadRequest, FailsoftError, FailureClass, NotFound
from failsoft.store import RevisionStatus, Store, StoreError, StoreUnreachable

log = logging.getLogger("failsoft.control")

SNAPSHOT = "current-revision.json"
ARTIFACT_CACHE = "artifact-cache"
Apply = Callable[[Config, int], Awaitable[None]]


class StoreUnavailable(FailsoftError):
    """The control store cannot be reached: changes wait, serving goes on (503)."""

    status = 503
    failure_class = FailureClass.OVERLOAD


class ChangeRefused(FailsoftError):
    """A revision that could not come up; the gateway stays on the one it serves (409)."""

    status = 409
    failure_class = FailureClass.CLIENT


@dataclass(frozen=True)
class Outcome:
    """What a proposal did: the plan, the revision it became, and its status."""

    plan: Plan
    revision: int | None
    status: str  # "planned", "applied", "unchanged"

    def as_json(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "status": self.status,
            "plan": self.plan.as_json(),
            "plan_text": self.plan.render(),
        }


def config_json(config: Config) -> dict[str, Any]:
    """How a configuration is stored: JSON with the keys that were set, paths absolute."""
    data: dict[str, Any] = config.model_dump(mode="json", exclude_unset=True)
    return data


class Revisions:
    def __init__(
        self,
        store: Store,
        registry: ArtifactLocations,
        data_dir: Path,
        apply: Apply,
    ) -> None:
        self._store = store
        self._registry = registry
        self._data_dir = Path(data_dir)
        self._apply = apply
        self._lock = asyncio.Lock()
        self._changes = 0  # changes this gateway made (``propose``): ``follow`` reads again
        self.revision = 0  # the revision this gateway serves (0: not from the store)
        self.config: Config | None = None  # the configuration it serves, as stored
        # name@version -> sha256 as resolved (immutable in the store), kept in the
        # snapshot so a gateway started while the store is down finds its artifacts.
        self._digests: dict[str, str] = {}

    # -- at start-up -----------------------------------------------------------

    def boot(self, file_config: Config | None, *, apply_file: bool, actor: str) -> BootReport:
        """The configuration to start on, and what the caller should be told.

        Synchronous: it runs before the server starts. An empty store makes the
        file revision 1. A store with revisions wins over the file, which is only
        applied with ``apply_file``; a store that cannot be reached leaves the
        last configuration this gateway served (or the file).
        """
        try:
            current = self._store.current_revision()
            if current is None or (apply_file and file_config is not None):
                if file_config is None:
                    raise ConfigError("store", ["the store holds no revision: give --config FILE"])
                stored = self._store.add_revision(config_json(file_config), actor=actor)
                return BootReport(file_config, stored.id, pending=True, note=None)
            served = parse_config(current.config, f"revision {current.id}")
        except StoreError as error:
            saved = self._snapshot()
            if saved is not None:
                config, revision = saved
            elif file_config is not None:
                config, revision = file_config, 0
            else:
                raise
            unreachable = (
                f"the control store is unreachable ({error.message}): serving the "
                "last configuration this gateway served"
            )
            return BootReport(config, revision, pending=False, note=unreachable)
        note = None
        if file_config is not None:
            difference = plan(served, file_config)
            if not difference.empty:
                note = (
                    f"the store's revision {current.id} differs from the file:\n"
                    f"{_indent(difference.render())}\n"
                    "serving the store's revision; apply the file with `failsoft apply FILE` "
                    "(or start with --apply)"
                )
        return BootReport(served, current.id, pending=False, note=note)

    async def started(self, report: BootReport, config: Config, *, actor: str) -> None:
        """The gateway serves ``report``'s revision: record it."""
        self.revision, self.config = report.revision, config
        if report.pending:
            await self._mark(report.revision, RevisionStatus.APPLIED, actor=actor)
        self._save_snapshot(config, report.revision)

    # -- changes ---------------------------------------------------------------

    async def propose(
        self,
        data: Any,
        *,
        actor: str,
        dry_run: bool = False,
        reason: str | None = None,
        rollback: bool = False,
    ) -> Outcome:
        """Validate, plan, store, resolve, apply; ``dry_run`` stops after the plan.

        A change to the inputs of a serving version must fit its model's
        ``compatibility`` (data/schema.py), except in a ``rollback``: going back
        to a revision that served is the way out of trouble, never refused for it.
        """
        if not isinstance(data, dict):
            raise BadRequest("a configuration is a JSON object with a 'models' key")
        try:
            config = parse_config(data, "the proposed configuration")
        except ConfigError as error:
            raise BadRequest("; ".join(error.problems)) from None
        async with self._lock:
            served = self.config
            changes = plan(served, config) if served is not None else Plan()
            if served is not None and not rollback:  # before anything is stored
                refuse_incompatible(served, config)
            if dry_run:
                return Outcome(changes, None, "planned")
            if served is not None and changes.empty:
                return Outcome(changes, self.revision, "unchanged")
            stored = await self._call(
                self._store.add_revision, config_json(config), actor=actor, reason=reason
            )
            try:
                runnable = await store_call(self._store, self.resolve, config, timeout=None)
                await self._apply(runnable, stored.id)
            except FailsoftError as error:
                await self._mark(
                    stored.id, RevisionStatus.FAILED, actor=actor, reason=error.message
                )
                raise ChangeRefused(
                    f"revision {stored.id} was not applied: {error.message}"
                ) from None
            self.revision, self.config = stored.id, config
            self._changes += 1
            self._save_snapshot(config, stored.id)
            try:
                await self._mark(stored.id, RevisionStatus.APPLIED, actor=actor)
            except StoreUnavailable:
                log.warning("revision applied but not marked so", extra={"revision": stored.id})
            return Outcome(changes, stored.id, "applied")

    async def rollback(self, target: int | None, *, actor: str) -> Outcome:
        """Apply an earlier revision's configuration again (default: the one before)."""
        if target is None:
            history = await self._call(
                self._store.revisions, status=RevisionStatus.SUPERSEDED.value, limit=1
            )
            if not history:
                raise NotFound("there is no earlier applied revision to roll back to")
            target = history[0].id
        old = await self._call(self._store.revision, target)
        if old is None:
            raise NotFound(f"there is no revision {target}")
        left = self.revision
        outcome = await self.propose(
            old.config, actor=actor, reason=f"rollback to revision {target}", rollback=True
        )
        if outcome.status == "applied" and left:
            reason = f"rolled back to revision {target}"
            await self._mark(left, RevisionStatus.ROLLED_BACK, actor=actor, reason=reason)
        return outcome

    async def history(self, limit: int) -> list[dict[str, Any]]:
        rows = await self._call(self._store.revisions, limit=limit)
        return [
            {
                "revision": row.id,
                "status": row.status,
                "actor": row.actor,
                "created_at": row.created_at,
                "applied_at": row.applied_at,
                "reason": row.reason,
                "serving": row.id == self.revision,
            }
            for row in rows
        ]

    async def diff(self, a: int, b: int) -> Plan:
        configs = []
        for number in (a, b):
            found = await self._call(self._store.revision, number)
            if found is None:
                raise NotFound(f"there is no revision {number}")
            configs.append(parse_config(found.config, f"revision {number}"))
        return plan(configs[0], configs[1])

    async def watch(self, every_s: float, *, actor: str, wake: Wait | None = None) -> None:
        """Apply revisions other gateways applied to the shared store (runs until cancelled).

        Between looks it waits ``every_s`` seconds, or less when ``wake`` (a
        ``Wakeups.wait`` for revisions) says the store changed."""
        await follow_store(
            self.follow, every_s, wake, log=log, unreachable="control store unreachable; serving on"
        )

    async def follow(self) -> bool:
        """Serve the store's applied revision if it is not the one served; True if applied.

        The store is read outside the lock (a hung store must not hold up a
        change, which has its own deadline); if this gateway changed what it
        serves meanwhile (``propose``), what was read may be older than that,
        and is read again."""
        while True:
            async with self._lock:  # a change under way finishes first
                changes = self._changes
            current = await store_call(self._store, self._store.current_revision)
            async with self._lock:
                if self._changes != changes:
                    continue
                if current is None or current.id == self.revision:
                    return False
                try:
                    config = parse_config(current.config, f"revision {current.id}")
                    runnable = await store_call(self._store, self.resolve, config, timeout=None)
                    await self._apply(runnable, current.id)
                except FailsoftError as error:
                    log.error(
                        "cannot apply the store's revision",
                        extra={"revision": current.id, "error": error.message},
                    )
                    return False
                self.revision, self.config = current.id, config
                self._save_snapshot(config, current.id)
            log.info("following the store's revision", extra={"revision": current.id})
            return True

    # -- artifacts -------------------------------------------------------------

    def resolve(self, config: Config) -> Config:
        """``config`` with every ``artifact`` fetched to a verified local file (blocking)."""
        models = {}
        for name, model in config.models.items():
            versions: dict[str, Any] = {}
            profiles: dict[str, Path] = {}
            for version_name, version in model.versions.items():
                local = version.worker if isinstance(version, ProcessBackend) else version
                artifact = getattr(local, "artifact", None)
                if artifact is None:
                    versions[version_name] = version
                    continue
                if model.drift.enabled and model.drift.profile_for(version_name) is None:
                    attached = self._attached_profile(artifact)
                    if attached is not None:
                        profiles[version_name] = attached
                path, digest = self._fetch(artifact, f"models.{name}.versions.{version_name}")
                file = local.model_copy(update={"path": path, "sha256": digest})
                versions[version_name] = (
                    version.model_copy(update={"worker": file})
                    if isinstance(version, ProcessBackend)
                    else file
                )
            update: dict[str, Any] = {"versions": versions}
            if profiles:  # drift against the profiles pushed beside the artifacts
                drift = model.drift
                update["drift"] = drift.model_copy(
                    update={"profiles": {**profiles, **drift.profiles}}
                )
            models[name] = model.model_copy(update=update)
        return config.model_copy(update={"models": models})

    def _attached_profile(self, text: str) -> Path | None:
        """The profile pushed beside an artifact (``model push --profile``), fetched; None
        when there is none or the store cannot say (drift is then off for it)."""
        try:
            ref = ArtifactRef.parse(text)
            found = self._store.find_artifact(ref) if ref.sha256 is not None else None
            name, version = (found.name, found.version) if found else (ref.name, ref.version)
            if name is None or version is None:
                return None
            profile = self._store.artifact(name, f"{version}.profile")
            if profile is None or profile.kind != "profile":
                return None
            destination = self._data_dir / ARTIFACT_CACHE / profile.sha256
            if not destination.is_file():
                self._registry.fetch(profile.sha256, destination)
            return destination
        except (StoreError, FailsoftError) as error:
            log.warning("drift profile not fetched", extra={"artifact": text, "error": str(error)})
            return None

    def _fetch(self, text: str, where: str) -> tuple[Path, str]:
        ref = ArtifactRef.parse(text)
        digest = ref.sha256
        if digest is None:
            try:
                found = self._store.find_artifact(ref)
            except StoreError as error:
                digest = self._digests.get(text)
                if digest is None:
                    raise StoreUnavailable(
                        f"{where}: cannot look up artifact {text}: {error.message}"
                    ) from None
            else:
                if found is None:
                    raise NotFound(
                        f"{where}: no artifact {text} in the registry "
                        "(push it with `failsoft model push`)"
                    )
                digest = self._digests[text] = found.sha256
        destination = self._data_dir / ARTIFACT_CACHE / digest
        if not destination.is_file():
            self._registry.fetch(digest, destination)
        return destination, digest

    # -- helpers ---------------------------------------------------------------

    async def _mark(
        self, revision: int, status: RevisionStatus, *, actor: str, reason: str | None = None
    ) -> None:
        await self._call(
            self._store.mark_revision, revision, status.value, actor=actor, reason=reason
        )

    async def _call(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return await store_call(self._store, function, *args, **kwargs)
        except StoreUnreachable as error:
            raise StoreUnavailable(error.message) from None
        except StoreError as error:
            raise BadRequest(error.message) from None

    def _save_snapshot(self, config: Config, revision: int) -> None:
        path = self._data_dir / SNAPSHOT
        tmp = path.with_suffix(".tmp")
        saved = {"revision": revision, "config": config_json(config), "artifacts": self._digests}
        tmp.write_bytes(orjson.dumps(saved))
        tmp.replace(path)

    def _snapshot(self) -> tuple[Config, int] | None:
        try:
            saved = orjson.loads((self._data_dir / SNAPSHOT).read_bytes())
            config = parse_config(saved["config"], "the last served revision")
            revision = int(saved["revision"])
            digests = saved.get("artifacts") or {}
            self._digests.update(
                {str(ref): digest for ref, digest in digests.items() if _is_sha256(digest)}
            )
            return config, revision
        except (OSError, ValueError, KeyError, TypeError, AttributeError, ConfigError):
            return None


@dataclass(frozen=True)
class BootReport:
    config: Config
    revision: int
    pending: bool  # stored now: mark it applied once the gateway serves it
    note: str | None  # what to tell the person who started the gateway


def _is_sha256(value: object) -> bool:
    return isinstance(value, str) and re.fullmatch(r"[0-9a-f]{64}", value) is not None


def _indent(text: str) -> str:
    return "\n".join(f"  {line}" for line in text.splitlines())
