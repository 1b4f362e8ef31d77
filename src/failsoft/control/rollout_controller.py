"""The rollouts of one gateway: started, analysed, stepped, promoted or rolled back.

Each active rollout has a loop on the injected clock that, every
``check_s``, takes the window of both versions (``rollout_window.Windows``,
folded off the request path), probes the candidate (``Prober.probe_now``:
a golden inference on each replica, moving no counter), runs
``analysis.analyse`` and carries out ``rollouts.decide``:

- *fail* (at any check): the split goes at once (``Runtime.set_split``; the
  stable version serves all the model's default traffic from the next
  request), then the rollback is stored and audited, then verified: for
  ``VERIFY_S`` the versions' answers are counted and the stable's probes
  run; the verification is stored too.
- at the end of a step: *pass* moves to the next stage (or promotes);
  *inconclusive* extends the step (bounded), then holds or rolls back.

Every change of state is a row update with its audit entry (actor, the
decision, and each check with its value, threshold and sample size). A
gateway that restarts reads its active rollouts back (``boot``) and puts
the current stage's split in force before it serves: it resumes at the
same step, with a fresh window (a step's clock restarts with its window, so
no decision is made on the few requests seen before the restart).

Gateways sharing a store follow each other (``watch``/``poll``, every
``store.poll_s``): each analyses its own traffic, the first decision stored
wins and the others take it at their next poll; the store refuses to
revive a rollout once it has ended.

Promotion puts the candidate at 100% at once, then proposes a revision of
the configuration with the candidate as the model's default version; once
that is applied the split is no longer needed. The operator's ``pause``,
``resume``, ``promote`` and ``abort`` go through the same paths.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import ValidationError

from failsoft._options import validation_problems
from failsoft.clock import Clock
from failsoft.control.analysis import Analysis, analyse, disagree
from failsoft.control.follow import Wait, follow_store
from failsoft.control.revisions import Revisions, StoreUnavailable, config_json
from failsoft.control.rollout_window import Windows
from failsoft.control.rollouts import (
    ACTIVE,
    Decision,
    RolloutSpec,
    RolloutState,
    Stage,
    Status,
    decide,
    new_rollout_id,
)
from failsoft.control.storecall import store_call
from failsoft.errors import BadRequest, FailsoftError, NotFound
from failsoft.observe.events import Event
from failsoft.routing.split import BUCKETS, Split
from failsoft.runtime import Runtime
from failsoft.store import Store, StoreError, StoreUnreachable

__all__ = ["ACTOR", "VERIFY_S", "RolloutController"]

log = logging.getLogger("failsoft.rollouts")

ACTOR = "failsoft"  # the actor of what the analysis decides


@dataclass(slots=True)
class RolloutDecided(Event):
    """A rollout stepped, paused, held, was promoted, aborted or rolled back (``action``);
    incidents put it on their timeline, and open one on ``rolled-back``."""

    model: str
    rollout: str
    action: str
    reason: str
    actor: str


VERIFY_S = 1.0  # how long a rollback's verification counts answers
FOLD_EVERY_S = 0.5  # the windows fold their queued events this often (bounds the queue)


@dataclass
class _Run:
    spec: RolloutSpec
    state: RolloutState
    window_started: float  # on the injected clock
    due_s: float  # the current step ends this long after its window started
    task: asyncio.Task[None] | None = None
    ticks: int = 0
    actions: list[asyncio.Task[None]] = field(default_factory=list)
    seen: dict[str, Any] = field(default_factory=dict)  # the stored state, as last written/read

    @property
    def stages(self) -> list[Stage]:
        return self.spec.stages(self.state.stable)

    @property
    def stage(self) -> Stage:
        return self.stages[self.state.stage]


def _check_record(analysis: Analysis) -> dict[str, Any]:
    return analysis.to_dict()


class RolloutController:
    """The rollouts of one gateway (see the module's docstring)."""

    def __init__(
        self,
        store: Store,
        runtime: Runtime,
        revisions: Revisions | None = None,
        *,
        clock: Clock | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._runtime = runtime
        self._revisions = revisions
        self._clock = clock or runtime.clock
        self._wall = wall
        self.windows = Windows(runtime.bus)
        self._runs: dict[str, _Run] = {}  # active rollouts, by model
        self._ended: dict[str, _Run] = {}  # ended rollouts of this process, by id
        self._lock = asyncio.Lock()
        self._busy = 0  # tasks doing something other than waiting for the clock
        self._quiet = asyncio.Event()
        self._quiet.set()
        self._started = False
        self._folding: asyncio.Task[None] | None = None
        # Changes in force but not stored (the store was down), by rollout: retried by poll.
        self._unsaved: dict[str, tuple[_Run, str, str, dict[str, Any] | None]] = {}
        self._saves = 0  # changes of ours sent to the store: see poll

    # -- start-up and shutdown -----------------------------------------------------

    def boot(self) -> str | None:
        """Put the active rollouts' splits back in force, before serving (blocking).

        A note when something could not be resumed, else None.
        """
        try:
            rows = self._store.rollouts(active=True)
        except StoreError as error:
            return f"the control store is unreachable ({error.message}): no rollout resumed"
        notes = []
        for row in rows:
            try:
                spec = RolloutSpec.model_validate(row.spec)
                state = RolloutState.from_json(row.state)
            except (ValidationError, KeyError, ValueError) as error:
                notes.append(f"rollout {row.id} is not readable ({error}); left alone")
                continue
            model = self._runtime.models.get(spec.model)
            if model is None or state.candidate not in model.versions:
                notes.append(f"rollout {row.id}: {spec.model}/{state.candidate} is not served")
                continue
            if state.status is Status.PENDING:
                state = replace(state, status=Status.PROGRESSING)
            run = self._new_run(spec, state)
            run.seen = row.state
            self._runs[spec.model] = run
            self._install(run)
            log.info(
                "rollout resumed",
                extra={"rollout": state.id, "stage": run.stage.label, "status": state.status},
            )
        return "; ".join(notes) or None

    def start(self) -> None:
        """Start the loops of the active rollouts (on the running event loop)."""
        self._started = True
        self._folding = self._spawn(self._fold())
        for run in self._runs.values():
            self._loop(run)

    async def _fold(self) -> None:
        """Fold the windows' queued events every FOLD_EVERY_S, between the checks, so the
        queue stays short and a check's own fold is small."""
        while True:
            await self._sleep(FOLD_EVERY_S)
            self.windows.drain()

    async def close(self) -> None:
        self._started = False
        runs = (*self._runs.values(), *self._ended.values())
        tasks = [t for run in runs for t in (run.task, *run.actions) if t and not t.done()]
        if self._folding is not None:
            tasks.append(self._folding)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def drain(self) -> None:
        """Wait until every task of this controller waits for the clock or is done (tests:
        after moving a ManualClock on, the checks and verifications it woke have run)."""
        while self._busy:
            await self._quiet.wait()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """A task counted busy from now until it waits for the clock or ends."""
        self._busy += 1
        self._quiet.clear()

        async def counted() -> None:
            try:
                await work
            finally:
                self._idle()

        return asyncio.ensure_future(counted())

    def _idle(self) -> None:
        self._busy -= 1
        if not self._busy:
            self._quiet.set()

    async def _sleep(self, seconds: float) -> None:
        self._idle()
        try:
            await self._clock.sleep(seconds)
        finally:
            self._busy += 1
            self._quiet.clear()

    # -- reading ---------------------------------------------------------------------

    def find(self, key: str) -> tuple[RolloutSpec, RolloutState] | None:
        """The rollout with this id, or the active (else latest here) one of this model."""
        run = self._runs.get(key)
        if run is not None:
            return run.spec, run.state
        for run in self._runs.values():
            if run.state.id == key:
                return run.spec, run.state
        if key in self._ended:
            ended = self._ended[key]
            return ended.spec, ended.state
        latest = [run for run in self._ended.values() if run.spec.model == key]
        return (latest[-1].spec, latest[-1].state) if latest else None

    async def lookup(self, key: str) -> tuple[RolloutSpec, RolloutState]:
        """As ``find``, then the store (a rollout another gateway or process ran)."""
        found = self.find(key)
        if found is not None:
            return found
        try:
            row = await store_call(self._store, self._store.rollout, key)
            if row is None:
                rows = await store_call(self._store, self._store.rollouts, model=key)
                row = rows[0] if rows else None
        except StoreError as error:
            raise StoreUnavailable(error.message) from None
        if row is None:
            raise NotFound(f"there is no rollout {key!r} (give a rollout id or a model name)")
        return RolloutSpec.model_validate(row.spec), RolloutState.from_json(row.state)

    def describe(self, spec: RolloutSpec, state: RolloutState) -> dict[str, Any]:
        """A rollout as the admin API and ``failsoft rollout status`` show it."""
        stages = spec.stages(state.stable)
        run = self._runs.get(spec.model)
        live = run is not None and run.state.id == state.id
        stage = stages[min(state.stage, len(stages) - 1)]
        shown: dict[str, Any] = {
            "id": state.id,
            "model": state.model,
            "stable": state.stable,
            "candidate": state.candidate,
            "strategy": spec.strategy,
            "status": state.status.value,
            "stage": state.stage,
            "stages": [s.label for s in stages],
            "weight_pct": stage.weight_pct if state.active else None,
            "shadow": stage.shadow if state.active else None,
            "step_s": spec.step_s,
            "extensions": state.extensions,
            "max_extensions": spec.max_extensions,
            "on_inconclusive": spec.on_inconclusive,
            "tenants": spec.tenants,
            "reason": state.reason,
            "analysis": state.analysis,
            "history": list(state.history),
            "verified": state.verified,
            "spec": spec.model_dump(mode="json", exclude_defaults=True),
        }
        if live and run is not None and state.status is Status.PROGRESSING:
            shown["step_elapsed_s"] = round(self._clock.now() - run.window_started, 3)
            shown["step_due_s"] = run.due_s
            shown["events_dropped"] = self.windows.dropped
        return shown

    def active(self) -> list[tuple[RolloutSpec, RolloutState]]:
        return [(run.spec, run.state) for run in self._runs.values()]

    async def listed(self) -> list[dict[str, Any]]:
        """Every rollout: the active ones here, then the store's (newest first)."""
        shown = [self.describe(spec, state) for spec, state in self.active()]
        seen = {item["id"] for item in shown}
        try:
            rows = await store_call(self._store, self._store.rollouts)
        except StoreError:
            rows = []
        for row in rows[:50]:
            if row.id in seen:
                continue
            try:
                spec, state = (
                    RolloutSpec.model_validate(row.spec),
                    RolloutState.from_json(row.state),
                )
            except (ValidationError, KeyError, ValueError):
                continue
            shown.append(self.describe(spec, state))
        return shown

    # -- operator actions ----------------------------------------------------------

    def check(self, data: Any) -> RolloutSpec:
        """The rollout ``data`` asks for, or BadRequest naming the field; changes nothing."""
        if not isinstance(data, dict):
            raise BadRequest('a rollout is a JSON object: {"model": ..., "to": ...}')
        try:
            spec = RolloutSpec.model_validate(data)
        except ValidationError as error:
            problems = validation_problems(error, root="")
            raise BadRequest("; ".join(p.removeprefix(": ") for p in problems)) from None
        model = self._runtime.models.get(spec.model)
        if model is None:
            served = ", ".join(sorted(self._runtime.models)) or "none"
            raise BadRequest(f"model: no model {spec.model!r} is served (models: {served})")
        problems = spec.problems(model.config.default, list(model.versions))
        names = [output.name for output in model.config.outputs]
        for name in spec.outputs or ():
            if names and name not in names:
                problems.append(f"outputs: {name!r} is not an output of {spec.model!r}")
        running = self._runs.get(spec.model)
        if running is not None:
            problems.append(
                f"model: {spec.model!r} already has rollout {running.state.id} in progress "
                f"({running.state.status.value}, {running.stage.label}): promote or abort it first"
            )
        if problems:
            raise BadRequest("; ".join(problems))
        return spec

    async def start_rollout(self, data: Any, *, actor: str) -> RolloutState:
        """Validate, store (audited) and put the first stage in force."""
        spec = self.check(data)
        async with self._lock:
            spec = self.check(data)  # again: another start may have won the lock
            stable = self._runtime.models[spec.model].config.default
            rollout_id = new_rollout_id(spec.model)
            state = RolloutState(
                rollout_id,
                spec.model,
                stable,
                spec.to,
                Status.PENDING,
                0,
                self._wall(),
                reason="started",
            )
            stored = spec.model_dump(mode="json", exclude_defaults=True)
            stored.setdefault("model", spec.model)
            stored.setdefault("to", spec.to)
            added = await self._call(
                self._store.add_rollout,
                rollout_id,
                spec.model,
                stored,
                state.as_json(),
                actor=actor,
                status=Status.PENDING.value,
            )
            run = self._new_run(spec, state)
            run.seen = added.state
            self._runs[spec.model] = run
            first = run.stage
            self._decided(
                run, "stepped", f"started: {first.label}", actor, status=Status.PROGRESSING
            )
            self._install(run)
            await self._save(run, "stepped", actor, {"stage": first.label})
            if self._started:
                self._loop(run)
        log.info("rollout started", extra={"rollout": rollout_id, "actor": actor})
        return run.state

    async def pause(self, key: str, *, actor: str) -> RolloutState:
        async with self._lock:
            run = self._active(key, "pause")
            if run.state.status is Status.PAUSED:
                raise BadRequest(f"rollout {run.state.id} is paused already")
            self._decided(run, "paused", "paused by an operator", actor, status=Status.PAUSED)
            await self._save(run, "paused", actor)
            return run.state

    async def resume(self, key: str, *, actor: str) -> RolloutState:
        async with self._lock:
            run = self._active(key, "resume")
            if run.state.status is not Status.PAUSED:
                raise BadRequest(f"rollout {run.state.id} is not paused ({run.state.status})")
            self._decided(
                run,
                "resumed",
                f"resumed by an operator at {run.stage.label}; a fresh window",
                actor,
                status=Status.PROGRESSING,
                extensions=0,
            )
            self._fresh_window(run)
            await self._save(run, "resumed", actor)
            return run.state

    async def promote(self, key: str, *, actor: str) -> RolloutState:
        async with self._lock:
            run = self._active(key, "promote")
            await self._promote(run, "promoted by an operator", actor)
            return run.state

    async def abort(self, key: str, *, actor: str) -> RolloutState:
        async with self._lock:
            run = self._active(key, "abort")
            await self._roll_back(run, "aborted by an operator", actor, Status.ABORTED)
            return run.state

    def _active(self, key: str, verb: str) -> _Run:
        for run in self._runs.values():
            if key in (run.state.id, run.spec.model):
                return run
        ended = self.find(key)
        if ended is not None:
            raise BadRequest(
                f"rollout {ended[1].id} has ended ({ended[1].status.value}): nothing to {verb}"
            )
        raise NotFound(f"there is no rollout {key!r} in progress (give a rollout id or a model)")

    # -- the loop --------------------------------------------------------------------

    def _loop(self, run: _Run) -> None:
        if run.task is None or run.task.done():
            run.task = self._spawn(self._every_check(run))

    async def _every_check(self, run: _Run) -> None:
        while run.state.active:
            # Checks fall on a grid from the window's start, so a slow check (the store, a
            # probe) delays the next one without shifting the ones after.
            every = run.spec.check_s
            elapsed = self._clock.now() - run.window_started
            await self._sleep((math.floor(elapsed / every + 1e-9) + 1) * every - elapsed)
            try:
                async with self._lock:
                    if self._runs.get(run.spec.model) is not run or not run.state.active:
                        return
                    await self.tick(run.spec.model)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("rollout check failed", extra={"rollout": run.state.id})

    async def tick(self, model: str) -> Decision | None:
        """One analysis of ``model``'s rollout and what follows (the loop calls it; so may a
        test, holding no lock). None when the rollout is paused or gone."""
        run = self._runs.get(model)
        if run is None or run.state.status is not Status.PROGRESSING:
            return None
        run.ticks += 1
        serving = self._runtime.models.get(model)
        if serving is None or run.state.candidate not in serving.versions:
            reason = f"{model}/{run.state.candidate} is no longer served"
            await self._roll_back(run, reason, ACTOR, Status.ROLLED_BACK)
            return Decision("rollback", reason)
        probes = await self._probe(model, run.state.candidate)
        candidate, stable, paired = self.windows.windows(model, probes)
        analysis = analyse(run.spec.analysis, candidate, stable, paired)
        elapsed = self._clock.now() - run.window_started
        decision = decide(run.spec, run.state, analysis, elapsed, run.due_s)
        run.state = replace(run.state, analysis=_check_record(analysis))
        if decision.action == "wait":
            return decision
        detail = {"analysis": _check_record(analysis), "decision": decision.action}
        if decision.action == "rollback":
            await self._roll_back(run, decision.reason, ACTOR, Status.ROLLED_BACK, detail)
        elif decision.action == "promote":
            await self._promote(run, decision.reason, ACTOR, detail)
        elif decision.action == "advance":
            self._decided(
                run, "stepped", decision.reason, ACTOR, stage=run.state.stage + 1, extensions=0
            )
            self._install(run)
            await self._save(run, "stepped", ACTOR, detail)
        elif decision.action == "extend":
            self._decided(
                run, "extended", decision.reason, ACTOR, extensions=run.state.extensions + 1
            )
            run.due_s += run.spec.step_s
            await self._save(run, "extended", ACTOR, detail)
        elif decision.action == "hold":
            self._decided(run, "held", decision.reason, ACTOR, status=Status.PAUSED)
            await self._save(run, "held", ACTOR, detail)
        log.info(
            "rollout decision",
            extra={"rollout": run.state.id, "action": decision.action, "reason": decision.reason},
        )
        return decision

    async def _probe(self, model: str, version: str) -> tuple[int, int]:
        """One golden probe of each replica of ``version``: (passed, failed)."""
        unit = self._runtime.models[model].units.get(version)
        if unit is None:
            return 0, 0
        results = await unit.prober.probe_now()
        passed = sum(1 for problem in results.values() if problem is None)
        failed = sum(1 for problem in results.values() if problem not in (None, "not available"))
        return passed, failed

    # -- carrying out ------------------------------------------------------------------

    def _new_run(self, spec: RolloutSpec, state: RolloutState) -> _Run:
        return _Run(spec, state, self._clock.now(), spec.step_s)

    def _fresh_window(self, run: _Run) -> None:
        run.window_started = self._clock.now()
        run.due_s = run.spec.step_s
        spec, state = run.spec, run.state
        outputs = spec.outputs or self._label_outputs(spec.model)
        self.windows.watch(
            spec.model,
            state.stable,
            state.candidate,
            outputs,
            shadow_phase=run.stage.shadow > 0,
            accuracy_tolerance=spec.analysis.accuracy_tolerance,
        )
        tolerance = spec.analysis.disagreement_tolerance
        compared = spec.analysis.disagreement_outputs or (tuple(outputs) if outputs else None)
        self._runtime.mirror(spec.model).compare = lambda a, b: disagree(
            a, b, tolerance, outputs=compared
        )

    def _label_outputs(self, model: str) -> list[str] | None:
        outputs = self._runtime.models[model].config.outputs
        labelled = [output.name for output in outputs if output.labels is not None]
        return labelled or None

    def _install(self, run: _Run) -> None:
        """Put the current stage's split in force (and start its window)."""
        spec, state = run.spec, run.state
        stage = run.stage
        tenants = frozenset(spec.tenants) if spec.tenants else None
        split = Split(
            state.id,
            state.stable,
            state.candidate,
            stage.weight_pct * BUCKETS // 100,
            stage.shadow,
            tenants,
        )
        self._runtime.set_split(spec.model, split)
        self._fresh_window(run)

    def _decided(
        self, run: _Run, action: str, reason: str, actor: str, **changes: Any
    ) -> RolloutState:
        stage = changes.get("stage", run.state.stage)
        entry = {
            "at": self._wall(),
            "action": action,
            "actor": actor,
            "stage": stage,
            "reason": reason,
        }
        analysis = run.state.analysis
        if analysis is not None and action not in ("paused", "resumed"):
            entry["verdict"] = analysis.get("verdict")
            entry["checks"] = [
                {key: value for key, value in check.items() if key != "detail"}
                for check in analysis.get("checks", ())
            ]
        if "stage" in changes:
            changes["stage_started_at"] = self._wall()
        run.state = run.state.with_decision(entry, reason=reason, **changes)
        self._runtime.bus.emit(RolloutDecided(run.state.model, run.state.id, action, reason, actor))
        return run.state

    async def _roll_back(
        self,
        run: _Run,
        reason: str,
        actor: str,
        status: Status,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """Weights to the stable version now; then stored, audited and verified."""
        model = run.spec.model
        started = self._clock.now()
        self._runtime.set_split(model, None)  # from the next request on: the stable only
        switch_ms = 1000 * (self._clock.now() - started)
        action = "aborted" if status is Status.ABORTED else "rolled-back"
        self._decided(run, action, reason, actor, status=status)
        self._end(run)
        await self._save(run, action, actor, {**(detail or {}), "switch_ms": switch_ms})
        self.windows.watch(model, run.state.stable, run.state.candidate, None)
        verifying = self._spawn(self._verify(run, actor))
        run.actions.append(verifying)

    async def _verify(self, run: _Run, actor: str) -> None:
        """After a rollback: the stable answers everything, and its probes pass."""
        model, stable = run.spec.model, run.state.stable
        await self._sleep(VERIFY_S)
        answered = self.windows.answered(model)
        if self._runs.get(model) is None:  # no new rollout of the model meanwhile
            self.windows.unwatch(model)
        passed, failed = await self._probe(model, stable)
        total = sum(answered.values())
        share = answered.get(stable, 0) / total if total else None
        split = self._runtime.splits.get(model)
        ok = split is None and failed == 0 and passed > 0
        verified = {
            "ok": ok,
            "window_s": VERIFY_S,
            "split_removed": split is None,
            "answered": answered,
            "stable_share": share,
            "probes_passed": passed,
            "probes_failed": failed,
        }
        run.state = replace(run.state, verified=verified)
        try:
            await store_call(
                self._store,
                self._store.update_rollout,
                run.state.id,
                status=run.state.status.value,
                state=run.state.as_json(),
                actor=actor,
                action="verified",
                detail={"verified": verified},
            )
        except StoreError as error:
            log.warning("rollback verification not stored", extra={"error": error.message})
        log.info("rollback verified", extra={"rollout": run.state.id, **verified})

    async def _promote(
        self, run: _Run, reason: str, actor: str, detail: dict[str, Any] | None = None
    ) -> None:
        """The candidate at 100% now; then the default version through a revision."""
        spec, state = run.spec, run.state
        last = len(run.stages) - 1
        self._decided(run, "promoted", reason, actor, status=Status.PROMOTED, stage=last)
        self._install(run)
        self._end(run)
        self.windows.unwatch(spec.model)
        await self._save(run, "promoted", actor, detail)
        if self._revisions is None or self._revisions.config is None:
            return
        data = config_json(self._revisions.config)
        models = data.get("models", {})
        if spec.model not in models:
            return
        models[spec.model]["default_version"] = state.candidate
        try:
            outcome = await self._revisions.propose(
                data, actor=actor, reason=f"rollout {state.id} promoted {state.candidate}"
            )
        except FailsoftError as error:
            log.error(
                "promoted, but the default version is not changed; the split stays at 100%",
                extra={"rollout": state.id, "error": error.message},
            )
            return
        if self._runtime.models[spec.model].config.default == state.candidate:
            self._runtime.set_split(spec.model, None)
        log.info("rollout promoted", extra={"rollout": state.id, "revision": outcome.revision})

    def _end(self, run: _Run) -> None:
        model = run.spec.model
        if self._runs.get(model) is run:
            del self._runs[model]
        self._ended.pop(run.state.id, None)
        self._ended[run.state.id] = run
        while len(self._ended) > 100:
            del self._ended[next(iter(self._ended))]

    async def _save(
        self, run: _Run, action: str, actor: str, detail: dict[str, Any] | None = None
    ) -> None:
        """Store the state with its audit entry; the change is in force whatever the store."""
        self._saves += 1
        try:
            row = await store_call(
                self._store,
                self._store.update_rollout,
                run.state.id,
                status=run.state.status.value,
                state=run.state.as_json(),
                actor=actor,
                action=action,
                detail={"reason": run.state.reason, "stage": run.stage.label, **(detail or {})},
            )
            run.seen = row.state
        except StoreUnreachable as error:
            # In force here all the same; stored by a later poll, so that a restart does
            # not bring back what the store last said (a candidate rolled back meanwhile).
            self._unsaved[run.state.id] = (run, action, actor, detail)
            log.warning(
                "rollout change in force but not stored yet",
                extra={"rollout": run.state.id, "action": action, "error": error.message},
            )
        except StoreError as error:  # refused: another gateway ended it; the poll follows
            log.warning(
                "rollout change refused by the store",
                extra={"rollout": run.state.id, "action": action, "error": error.message},
            )
        else:
            self._unsaved.pop(run.state.id, None)

    # -- several gateways, one store ---------------------------------------------------

    async def watch(self, every_s: float, wake: Wait | None = None) -> None:
        """Follow what other gateways sharing the store did (runs until cancelled);
        between looks, ``every_s`` seconds or less when ``wake`` says the rollouts changed
        (a rollback on one gateway reaches the others at once on PostgreSQL)."""
        await follow_store(
            self.poll,
            every_s,
            wake,
            log=log,
            unreachable="control store unreachable; rollouts as they were",
        )

    async def poll(self) -> bool:
        """Read the store's rollouts once and follow changes made elsewhere: a rollout
        started, stepped, paused, resumed, rolled back, aborted or promoted by another
        gateway (or an operator talking to it). Each gateway analyses its own traffic; the
        first decision stored wins and the others follow it here. True when one changed."""
        for unsaved, action, actor, detail in list(self._unsaved.values()):
            await self._save(unsaved, action, actor, detail)
        saves = self._saves
        rows = await store_call(self._store, self._store.rollouts)
        latest: dict[str, Any] = {}
        for row in rows:  # newest first
            latest.setdefault(row.model, row)
        changed = False
        async with self._lock:
            if self._saves != saves:
                # A change of ours (a pause, a step) was stored while we read: these rows
                # may be older than it, and following them would undo it. Read again next time.
                return False
            for model, row in latest.items():
                if row.id in self._unsaved:
                    continue  # ours is newer than the store's
                run = self._runs.get(model)
                if run is not None and run.state.id == row.id:
                    if row.state != run.seen:
                        self._follow(run, row)
                        changed = True
                elif run is None and row.status in ACTIVE and row.id not in self._ended:
                    changed = self._adopt(row) or changed
        return changed

    def _adopt(self, row: Any) -> bool:
        """A rollout another gateway started: its current step in force here too."""
        try:
            spec = RolloutSpec.model_validate(row.spec)
            state = RolloutState.from_json(row.state)
        except (ValidationError, KeyError, ValueError):
            return False
        model = self._runtime.models.get(spec.model)
        if model is None or state.candidate not in model.versions:
            log.warning(
                "a rollout elsewhere names a version not served here", extra={"rollout": row.id}
            )
            return False
        run = self._new_run(spec, state)
        run.seen = row.state
        self._runs[spec.model] = run
        self._install(run)
        if self._started and state.status is not Status.PAUSED:
            self._loop(run)
        log.info("rollout followed", extra={"rollout": row.id, "stage": run.stage.label})
        return True

    def _follow(self, run: _Run, row: Any) -> None:
        """Take the stored state of a rollout another gateway changed."""
        try:
            stored = RolloutState.from_json(row.state)
        except (KeyError, ValueError):
            return
        run.seen = row.state
        before = run.state
        run.state = stored
        if stored.status in (Status.ROLLED_BACK, Status.ABORTED):
            self._runtime.set_split(run.spec.model, None)
            self.windows.unwatch(run.spec.model)
            self._end(run)
        elif stored.status is Status.PROMOTED:
            self._install(run)  # the last stage: the candidate at 100% until the new default
            self.windows.unwatch(run.spec.model)
            self._end(run)
        elif stored.stage != before.stage:
            self._install(run)
        elif stored.status is Status.PROGRESSING and before.status is Status.PAUSED:
            self._fresh_window(run)
        if run.state.active and self._started and stored.status is Status.PROGRESSING:
            self._loop(run)
        log.info(
            "rollout changed elsewhere",
            extra={"rollout": stored.id, "status": stored.status, "stage": run.stage.label},
        )

    async def _call(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return await store_call(self._store, function, *args, **kwargs)
        except StoreUnreachable as error:
            raise StoreUnavailable(error.message) from None
        except StoreError as error:
            raise BadRequest(error.message) from None
