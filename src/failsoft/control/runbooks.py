"""Runbooks: when an incident opens (or an event is emitted), run declared steps, safely.

A run is started at most once per (runbook, incident) and not again within
the runbook's ``cooldown_s``. Each step is said on the incident's timeline
(kind ``runbook``) and audited with the actor ``runbook:NAME``. In
``dry-run`` mode (the default) a step only says what it would do. A step
with ``approve: true`` waits for ``approve(incident)`` (the admin route
``POST /admin/incidents/N/approve``) up to ``approve_within_s``; the gate
is kept in its incident (``pending_approvals``, saved to the store with it),
so a restarted gateway re-arms it and its time still counts from the request. Actions go
through the same services as the admin API (flags, rollouts, revisions) and
are idempotent: a switch already in force is not set again, and the same
action on the same target is refused within ``action_cooldown_s`` and past
``max_actions_per_hour``. Webhooks go through a bounded queue (webhooks.py).
Nothing here runs on the request path: steps are tasks on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from failsoft.clock import Clock, within
from failsoft.control.incident_model import Incident
from failsoft.control.incidents import IncidentChanged, Incidents
from failsoft.control.runbook_model import RunbooksOptions, RunbookSpec, StepSpec, load_dir
from failsoft.control.slack import slack_payload
from failsoft.control.webhooks import Delivery, Notifier
from failsoft.errors import FailsoftError
from failsoft.observe.events import Event, EventBus

if TYPE_CHECKING:  # replica_ops reaches into the runtime; the runbooks need not load it
    from failsoft.control.replica_ops import Done

__all__ = ["Actions", "Runbooks"]

log = logging.getLogger("failsoft.runbooks")

RUNS_KEPT = 500
EJECT_S = 30.0  # an eject step without for_s
_REPLICAS = re.compile(r"every replica of (?P<model>\S+)/(?P<version>\S+) is out")


class Actions(Protocol):
    """The admin API's services, as a runbook uses them."""

    def flag_value(self, key: str) -> object | None: ...
    async def set_flag(self, key: str, data: dict[str, Any], actor: str) -> None: ...
    async def abort_rollout(self, key: str, actor: str) -> str: ...
    async def rollback_config(self, target: int | None, actor: str) -> str: ...
    async def eject(
        self, model: str, version: str, replica: str | None, seconds: float, actor: str
    ) -> Done: ...
    async def restart_workers(self, model: str, version: str, actor: str) -> Done: ...


@dataclass
class Run:
    runbook: str
    incident: int | None
    started_at: float
    mode: str
    state: str = "running"  # running, awaiting-approval, done, failed
    step: int = 0
    context: dict[str, str] = field(default_factory=dict)
    approved: asyncio.Event = field(default_factory=asyncio.Event)

    def as_json(self) -> dict[str, Any]:
        return {
            "runbook": self.runbook,
            "incident": self.incident,
            "started_at": self.started_at,
            "mode": self.mode,
            "state": self.state,
            "step": self.step,
        }


@dataclass(frozen=True)
class Pending:
    """A gate waiting for approval, as its incident keeps it (and the store with it)."""

    runbook: str
    step: int
    requested_at: float  # wall clock
    within_s: float
    context: dict[str, str]

    def as_json(self) -> dict[str, Any]:
        return {
            "runbook": self.runbook,
            "step": self.step,
            "requested_at": self.requested_at,
            "within_s": self.within_s,
            "context": dict(self.context),
        }

    @classmethod
    def from_json(cls, data: object) -> Pending | None:
        if not isinstance(data, dict):
            return None
        try:
            context = data.get("context") or {}
            return cls(
                str(data["runbook"]),
                int(data["step"]),
                float(data["requested_at"]),
                float(data["within_s"]),
                {str(k): str(v) for k, v in dict(context).items()},
            )
        except (KeyError, TypeError, ValueError):
            return None


class Runbooks:
    def __init__(
        self,
        options: RunbooksOptions,
        incidents: Incidents,
        bus: EventBus,
        clock: Clock,
        wall: Callable[[], float],
        actions: Actions | None,
        *,
        poll_s: float = 0.25,
    ) -> None:
        self.options = options
        self.specs: list[RunbookSpec] = []
        self._bus = bus
        self._subscribed: set[str] = set()
        self._incidents = incidents
        self._clock = clock
        self._wall = wall
        self.actions = actions
        self._poll_s = poll_s
        self.notifier = Notifier(options.webhook, clock)
        self.runs: deque[Run] = deque(maxlen=RUNS_KEPT)
        self._started: dict[tuple[str, int], Run] = {}  # (runbook, incident): once each
        self._last_run: dict[str, float] = {}
        self._acted: dict[str, float] = {}  # action target -> when last done
        self._hour: deque[float] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        bus.subscribe(self.observe, (IncidentChanged,))
        self.configure(options)

    def configure(self, options: RunbooksOptions) -> None:
        """Take a new configuration's runbooks (runs under way go on as they were)."""
        self.options = options
        self.specs = [*options.runbooks, *load_dir(options.dir)]
        self.notifier.options = options.webhook
        with contextlib.suppress(RuntimeError):  # no running loop yet: start() does it
            asyncio.get_running_loop()
            self._prepare_clients()
        names = {spec.trigger.event for spec in self.specs if spec.trigger.event}
        new = names - self._subscribed
        if new:
            from failsoft.control.incidents import generic_kinds

            kinds = [k for k in generic_kinds(new) if k.__name__ in new]
            self._bus.subscribe(self.observe, kinds)
            self._subscribed.update(k.__name__ for k in kinds)

    # -- triggers ---------------------------------------------------------------------

    def observe(self, event: Event) -> None:
        if not self.options.enabled:
            return
        if isinstance(event, IncidentChanged):
            if event.what != "opened":
                return
            incident = self._incidents.incidents.get(event.id)
            if incident is None:
                return
            for spec in self.specs:
                if self._matches(spec, incident):
                    self._start(spec, incident)
            return
        name = type(event).__name__
        model = str(getattr(event, "model", "") or "")
        for spec in self.specs:
            if spec.trigger.event == name and (
                not spec.trigger.model or model in spec.trigger.model
            ):
                self._start(
                    spec, None, {"model": model, "version": str(getattr(event, "version", ""))}
                )

    @staticmethod
    def _matches(spec: RunbookSpec, incident: Incident) -> bool:
        trigger = spec.trigger
        if trigger.incident != "opened":
            return False
        if trigger.cause and incident.cause not in trigger.cause:
            return False
        if trigger.model and incident.model not in trigger.model:
            return False
        source = incident.signals[0]["source"] if incident.signals else ""
        return not trigger.signal or source in trigger.signal

    def _start(
        self, spec: RunbookSpec, incident: Incident | None, context: dict[str, str] | None = None
    ) -> Run | None:
        now = self._clock.now()
        if incident is not None and (spec.name, incident.id) in self._started:
            return None  # idempotent: one run per runbook and incident
        last = self._last_run.get(spec.name)
        if last is not None and now - last < spec.cooldown_s:
            if incident is not None:
                self._say(
                    incident.id,
                    spec.name,
                    "skipped",
                    f"runbook {spec.name} not run: in its cooldown ({spec.cooldown_s:g} s)",
                    {},
                )
            return None
        self._last_run[spec.name] = now
        run = Run(spec.name, incident.id if incident else None, self._wall(), spec.mode)
        run.context = dict(context or {})
        if incident is not None:
            run.context["model"] = incident.model
            run.context["incident"] = str(incident.id)
            found = _REPLICAS.search(incident.signals[0]["text"] if incident.signals else "")
            if found:
                run.context["version"] = found["version"]
            self._started[(spec.name, incident.id)] = run
            if len(self._started) > RUNS_KEPT:
                self._started.pop(next(iter(self._started)))
        self.runs.append(run)
        task = asyncio.ensure_future(self._run(spec, run))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return run

    # -- a run ------------------------------------------------------------------------

    async def _run(self, spec: RunbookSpec, run: Run, resumed: Pending | None = None) -> None:
        """Run the steps; ``resumed``: from a gate a restart found pending (its time runs on)."""
        actor = f"runbook:{spec.name}"
        if resumed is None:
            self._say(
                run.incident,
                spec.name,
                "started",
                f"runbook {spec.name} started ({spec.mode})",
                {"mode": spec.mode},
            )
        first = resumed.step if resumed is not None else 0
        try:
            for index, step in enumerate(spec.steps):
                if index < first:
                    continue
                run.step = index
                what = self._describe(step, run.context)
                if spec.mode == "dry-run":
                    gate = " after approval" if step.approve else ""
                    self._say(
                        run.incident,
                        spec.name,
                        "dry-run",
                        f"dry-run: would {what}{gate}",
                        {"step": index},
                    )
                    continue
                waiting = resumed if index == first else None
                if step.approve and not await self._approval(spec, run, what, waiting):
                    run.state = "failed"
                    return
                ok = await self._act(spec, run, step, what, actor)
                if not ok and step.action == "wait":
                    run.state = "failed"
                    return
            run.state = "done"
            self._say(run.incident, spec.name, "finished", f"runbook {spec.name} finished", {})
        except asyncio.CancelledError:
            raise
        except Exception as error:  # a broken step must not break the gateway
            run.state = "failed"
            log.exception("runbook failed", extra={"runbook": spec.name})
            self._say(
                run.incident,
                spec.name,
                "failed",
                f"runbook {spec.name} failed ({type(error).__name__})",
                {},
            )

    async def _approval(
        self, spec: RunbookSpec, run: Run, what: str, resumed: Pending | None = None
    ) -> bool:
        run.state = "awaiting-approval"
        command = f"failsoft incident approve {run.incident}"
        if resumed is None:
            pending = Pending(spec.name, run.step, self._wall(), spec.approve_within_s, run.context)
            self._say(
                run.incident,
                spec.name,
                "awaiting-approval",
                f"waiting for approval to {what} ({command})",
                {},
            )
            self._keep(run.incident, pending)
        else:
            pending = resumed
            self._say(
                run.incident,
                spec.name,
                "awaiting-approval",
                f"still waiting for approval to {what} after a restart ({command})",
                {"requested_at": pending.requested_at},
            )
        # The time to approve counts from the request, across restarts (wall clock).
        left = pending.requested_at + pending.within_s - self._wall()
        if left > 0:
            await self._approved(run, left)
        self._drop(run.incident, pending)  # not when cancelled (shutdown): it stays pending
        if not run.approved.is_set():
            self._say(
                run.incident,
                spec.name,
                "not-approved",
                f"not approved within {spec.approve_within_s:g} s: stopped",
                {},
            )
            return False
        run.state = "running"
        return True

    async def _approved(self, run: Run, within_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            await within(self._clock, within_s, run.approved.wait())

    def approve(self, incident_id: int, actor: str) -> int:
        """Release the approval gates waiting on ``incident_id``; how many were."""
        count = 0
        for run in self.runs:
            if run.incident == incident_id and run.state == "awaiting-approval":
                run.approved.set()
                count += 1
                self._say(
                    incident_id,
                    run.runbook,
                    "approved",
                    f"runbook {run.runbook} step {run.step + 1} approved by {actor}",
                    {"by": actor},
                )
        return count

    # -- approvals that outlive the process ----------------------------------------------

    def _keep(self, incident_id: int | None, pending: Pending) -> None:
        """Write the gate into its incident, which the store keeps (operate.py saves it)."""
        incident = self._incidents.incidents.get(incident_id) if incident_id else None
        if incident is None:
            return
        incident.pending_approvals.append(pending.as_json())
        self._incidents.dirty.add(incident.id)

    def _drop(self, incident_id: int | None, pending: Pending) -> None:
        incident = self._incidents.incidents.get(incident_id) if incident_id else None
        if incident is None:
            return
        key = (pending.runbook, pending.step)
        incident.pending_approvals = [
            p for p in incident.pending_approvals if (p.get("runbook"), p.get("step")) != key
        ]
        self._incidents.dirty.add(incident.id)

    def _prepare_clients(self) -> None:
        """The webhook clients the configuration may need, built ahead of any notice: for
        its URLs, and for plain HTTP when a runbook notifies (its URL may come later)."""
        urls = list(self.options.webhooks.values())
        if any(step.action == "webhook" for spec in self.specs for step in spec.steps):
            urls.append("http:")
        self.notifier.prepare(urls)

    async def start(self) -> None:
        """Build the webhook clients before serving (their imports would stall requests
        later); re-arm the approval gates the incidents loaded from the store still hold."""
        self._prepare_clients()
        await self.notifier.ready()
        specs = {spec.name: spec for spec in self.specs}
        for incident in list(self._incidents.incidents.values()):
            for data in list(incident.pending_approvals):
                pending = Pending.from_json(data)
                spec = specs.get(pending.runbook) if pending is not None else None
                valid = (
                    pending is not None
                    and spec is not None
                    and spec.mode == "act"
                    and 0 <= pending.step < len(spec.steps)
                    and spec.steps[pending.step].approve
                    and incident.active
                )
                if not valid or pending is None or spec is None:
                    incident.pending_approvals.remove(data)
                    self._incidents.dirty.add(incident.id)
                    name = data.get("runbook", "?") if isinstance(data, dict) else "?"
                    self._say(
                        incident.id,
                        str(name),
                        "dropped",
                        f"runbook {name}: its pending approval was dropped after a restart "
                        "(the runbook or its step changed, or the incident is resolved)",
                        {},
                    )
                    continue
                run = Run(spec.name, incident.id, pending.requested_at, spec.mode)
                run.context = dict(pending.context)
                run.step = pending.step
                run.state = "awaiting-approval"
                self._started[(spec.name, incident.id)] = run
                self._last_run[spec.name] = self._clock.now()
                self.runs.append(run)
                task = asyncio.ensure_future(self._run(spec, run, pending))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    # -- actions ----------------------------------------------------------------------

    def _describe(self, step: StepSpec, context: dict[str, str]) -> str:
        model, version = _fill(step.model, context), _fill(step.version, context)
        lasting = f" for {step.for_s:g} s" if step.for_s else ""
        return {
            "webhook": f"notify webhook {step.webhook}",
            "kill_switch": f"set kill switch {_fill(step.key or '', context)}{lasting}",
            "safe_halt": f"safe-halt {model}{lasting}",
            "disable_version": f"switch {model}/{version} off{lasting} (the fallback answers)",
            "rollout_abort": f"abort the rollout of {_fill(step.rollout or step.model, context)}",
            "config_rollback": "roll the configuration back to "
            + (f"revision {step.revision}" if step.revision else "the previous revision"),
            "eject": f"eject {_replica(step, context)} of {model}/{version} for "
            f"{step.for_s or EJECT_S:g} s",
            "restart_workers": f"restart the workers of {model}/{version}, one at a time",
            "wait": f"verify the incident is {step.until} within {step.within_s:g} s",
        }[step.action]

    def _limited(self, target: str) -> str | None:
        now = self._clock.now()
        last = self._acted.get(target)
        if last is not None and now - last < self.options.action_cooldown_s:
            return f"in its cooldown ({self.options.action_cooldown_s:g} s)"
        while self._hour and now - self._hour[0] >= 3600:
            self._hour.popleft()
        if len(self._hour) >= self.options.max_actions_per_hour:
            return f"rate limit ({self.options.max_actions_per_hour} actions per hour)"
        return None

    def _done(self, target: str) -> None:
        now = self._clock.now()
        self._acted[target] = now
        self._hour.append(now)

    async def _act(
        self, spec: RunbookSpec, run: Run, step: StepSpec, what: str, actor: str
    ) -> bool:
        context = run.context
        if step.action == "wait":
            return await self._wait(spec, run, step)
        if step.action == "webhook":
            return self._notify(spec, run, step)
        if self.actions is None:
            self._say(
                run.incident,
                spec.name,
                "skipped",
                f"cannot {what}: this gateway has no control store",
                {},
            )
            return False
        key = self._switch_key(step, context)
        if key is not None and self.actions.flag_value(key) is True:
            self._say(
                run.incident, spec.name, "unchanged", f"already in force: {key}", {"key": key}
            )
            return True  # idempotent: nothing to do, and no action spent
        target = f"{step.action}:{what}"
        limited = self._limited(target)
        if limited is not None:
            self._say(run.incident, spec.name, "skipped", f"not done ({limited}): {what}", {})
            return False
        try:
            if key is not None:
                data: dict[str, Any] = {"kind": "boolean", "value": True}
                if step.for_s:
                    data["expires_in_s"] = step.for_s
                await self.actions.set_flag(key, data, actor)
                detail: dict[str, Any] = {"key": key}
            elif step.action in ("eject", "restart_workers"):
                model, version = _fill(step.model, context), _fill(step.version, context)
                if step.action == "eject":
                    replica = _fill(step.replica, context) if step.replica else None
                    seconds = step.for_s or EJECT_S
                    done = await self.actions.eject(model, version, replica, seconds, actor)
                else:
                    done = await self.actions.restart_workers(model, version, actor)
                if not done.changed:  # idempotent: nothing to do, and no action spent
                    self._say(run.incident, spec.name, "unchanged", done.text, {})
                    return True
                detail = {"result": done.text}
            elif step.action == "rollout_abort":
                state = await self.actions.abort_rollout(
                    _fill(step.rollout or step.model, context), actor
                )
                detail = {"rollout": state}
            else:
                status = await self.actions.rollback_config(step.revision, actor)
                detail = {"status": status}
        except FailsoftError as error:
            self._say(run.incident, spec.name, "refused", f"could not {what}: {error}", {})
            return False
        self._done(target)
        self._say(run.incident, spec.name, step.action, f"done: {what}", detail)
        return True

    @staticmethod
    def _switch_key(step: StepSpec, context: dict[str, str]) -> str | None:
        model = _fill(step.model, context)
        if step.action == "kill_switch":
            return _fill(step.key or "", context)
        if step.action == "safe_halt":
            return f"failsoft.halt.{model}"
        if step.action == "disable_version":
            return f"failsoft.disable.{model}.{_fill(step.version, context)}"
        return None

    def _notify(self, spec: RunbookSpec, run: Run, step: StepSpec) -> bool:
        url = self.options.webhooks.get(step.webhook or "")
        if url is None:
            self._say(
                run.incident,
                spec.name,
                "skipped",
                f"no webhook named {step.webhook!r} is configured",
                {},
            )
            return False
        incident = self._incidents.incidents.get(run.incident) if run.incident else None
        payload: dict[str, Any] = {
            "runbook": spec.name,
            "text": _fill(step.text, run.context) or f"runbook {spec.name}",
            "incident": None,
        }
        if incident is not None:
            payload["incident"] = {
                "id": incident.id,
                "model": incident.model,
                "cause": incident.cause,
                "state": incident.state,
                "title": incident.title,
                "opened_at": incident.opened_at,
            }
        if step.format == "slack":
            base = self.options.public_url
            link = f"{base.rstrip('/')}/status" if base else None
            payload = slack_payload(payload["text"], spec.name, payload["incident"], link)
        name = spec.name

        def done(ok: bool, attempts: int, detail: str) -> None:
            said = "delivered" if ok else "not delivered"
            self._say(
                run.incident,
                name,
                "webhook",
                f"webhook {step.webhook} {said} after {attempts} attempt(s) ({detail})",
                {"attempts": attempts, "delivered": ok},
            )

        if not self.notifier.send(Delivery(url, payload, done)):
            self._say(
                run.incident,
                spec.name,
                "skipped",
                f"webhook {step.webhook}: the queue is full, notice dropped",
                {},
            )
            return False
        self._say(run.incident, spec.name, "webhook", f"webhook {step.webhook} queued", {})
        return True

    async def _wait(self, spec: RunbookSpec, run: Run, step: StepSpec) -> bool:
        states = ("mitigated", "resolved") if step.until == "mitigated" else ("resolved",)
        start = self._clock.now()
        while True:
            incident = self._incidents.incidents.get(run.incident) if run.incident else None
            if incident is not None and incident.state in states:
                took = self._clock.now() - start
                self._say(
                    run.incident,
                    spec.name,
                    "verified",
                    f"verified: incident {step.until} {took:.1f} s after the check began",
                    {"after_s": round(took, 3)},
                )
                return True
            left = start + step.within_s - self._clock.now()
            if left <= 0:
                self._say(
                    run.incident,
                    spec.name,
                    "not-verified",
                    f"not {step.until} within {step.within_s:g} s: stopped",
                    {},
                )
                return False
            await self._clock.sleep(min(self._poll_s, left))

    # -- the timeline and the audit ----------------------------------------------------

    def _say(
        self,
        incident_id: int | None,
        runbook: str,
        action: str,
        text: str,
        detail: dict[str, Any],
    ) -> None:
        log.info(text, extra={"runbook": runbook, "incident": incident_id})
        incident = self._incidents.incidents.get(incident_id) if incident_id else None
        if incident is None:
            return
        actor = f"runbook:{runbook}"
        limit = self._incidents.options.timeline_max
        incident.note(self._wall(), "runbook", text, limit, actor=actor, action=action, **detail)
        self._incidents.dirty.add(incident.id)
        self._incidents.pending_audits.append(
            (incident.id, f"runbook.{action}", actor, {"text": text, **detail})
        )

    def listed(self) -> dict[str, Any]:
        return {
            "runbooks": [
                {"name": s.name, "mode": s.mode, "steps": len(s.steps)} for s in self.specs
            ],
            "runs": [run.as_json() for run in reversed(self.runs)],
            "webhooks": {
                "delivered": self.notifier.delivered,
                "failed": self.notifier.failed,
                "dropped": self.notifier.dropped,
            },
        }

    async def drain(self) -> None:
        """Wait for the runs under way (tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        await self.notifier.drain()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.notifier.close()


def _replica(step: StepSpec, context: dict[str, str]) -> str:
    return f"replica {_fill(step.replica, context)}" if step.replica else "the replica faring worst"


def _fill(text: str, context: dict[str, str]) -> str:
    for name in ("model", "version", "incident"):
        text = text.replace("{" + name + "}", context.get(name, ""))
    return text
