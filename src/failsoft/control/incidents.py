"""Incidents: opened by failsoft's own signals, with a timeline of its own events.

An incident opens on a page-level burn alert, a version with every replica
out (panic), a safe halt, an automatic rollback or a drift alert. A signal
about the same model and cause class within ``join_window_s`` of the
incident's last one joins it instead of opening another.

The timeline is assembled from the events on the bus, with wall-clock times:
the first failed or degraded request, breaker opens, ejections, probe
verdicts, fallbacks, restarts, faults, configuration applies, flag flips,
rollout steps, and what people did (acknowledge, updates, resolve). Events
from before the incident opened are kept per model (bounded, within the join
window), so the timeline starts at the first impacted request: that is what
makes time to detect a measurement. Per-request events are folded: the first
of a kind goes on the timeline, the rest are counted.

Cause class (infra, data, logic, overload) comes from the failure classes
seen: replica failures are infra, input-contract failures data, poison
requests logic, sheds overload.

State changes are in memory at once; the owner (``Operate``) saves them to
the control store with an audit entry each (``pending_audits``). Nothing
here touches the store or waits.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from failsoft.control.burn import BurnAlert
from failsoft.control.faults import FaultAdded, FaultEnded, ReplicaKilled
from failsoft.control.incident_model import Incident, IncidentOptions, cause_of
from failsoft.errors import FailureClass, NotFound
from failsoft.observe.events import (
    ConfigApplied,
    Event,
    FlagChanged,
    ReplicaStateChanged,
    RequestFinished,
    WorkerRestarted,
)
from failsoft.pipeline.breaker import BreakerTransition
from failsoft.pipeline.fallback import FallbackUsed
from failsoft.pipeline.limiter import RequestShed
from failsoft.pipeline.version import AttemptFailed, PanicChanged, PoisonDetected
from failsoft.routing.ejection import ReplicaEjected, ReplicaReturned
from failsoft.routing.probes import HealthChanged

__all__ = ["IncidentChanged", "IncidentOptions", "Incidents", "generic_kinds"]

log = logging.getLogger("failsoft.incidents")

ACTOR = "failsoft"
PRE_EVENTS_KEPT = 200  # per model, before an incident opens
SIGNALS_KEPT = 50
REMEDIATION_KEPT = 100
INCIDENTS_KEPT = 500  # resolved ones beyond this leave memory (they stay in the store)
TEXT_LIMIT = 2000
_EXCLUDED = (FailureClass.CLIENT, FailureClass.DATA, FailureClass.REQUEST)


@dataclass(slots=True)
class IncidentChanged(Event):
    """An incident opened, was joined by a signal, or changed state."""

    id: int
    model: str
    cause: str
    state: str
    what: str  # opened, joined, acknowledged, mitigated, resolved, reopened, updated


@dataclass
class _Episode:
    """What one model went through recently: its impact and events before an incident."""

    run_start: float | None = None  # first impacted request of the current run
    last_impact: float | None = None
    last_good: float | None = None
    failed: int = 0
    degraded: int = 0
    classes: dict[str, int] = field(default_factory=dict)  # failure class -> count, recent
    classes_at: dict[str, float] = field(default_factory=dict)  # -> when last seen
    folded: set[str] = field(default_factory=set)
    folded_at: float = 0.0
    events: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=PRE_EVENTS_KEPT))


def generic_kinds(words: Iterable[str]) -> list[type[Event]]:
    """Event classes defined anywhere whose name holds one of ``words`` (rollouts, drift:
    built elsewhere, so they are matched by name, not imported)."""
    found: list[type[Event]] = []
    pending = list(Event.__subclasses__())
    while pending:
        kind = pending.pop()
        pending.extend(kind.__subclasses__())
        if any(word in kind.__name__ for word in words):
            found.append(kind)
    return found


def _rollback(kind: type[Event]) -> bool:
    name = kind.__name__
    return "RolledBack" in name or "Rollback" in name


def _drift_alert(kind: type[Event]) -> bool:
    name = kind.__name__
    return "Drift" in name and ("Alert" in name or "Detected" in name)


class Incidents:
    """The incidents of one gateway (see the module's docstring)."""

    def __init__(
        self,
        options: IncidentOptions,
        models: Iterable[str],
        wall: Callable[[], float],
        emit: Callable[[Event], None],
    ) -> None:
        self.options = options
        self._models = list(models)
        self._wall = wall
        self._emit = emit
        self._episodes: dict[str, _Episode] = {}
        self._global: deque[dict[str, Any]] = deque(maxlen=PRE_EVENTS_KEPT)
        self.incidents: dict[int, Incident] = {}
        self._active: dict[str, list[Incident]] = {}  # model -> its incidents not resolved
        self.next_id = 1
        self.dirty: set[int] = set()
        self._replica_counts: dict[tuple[str, str], int] = {}
        self._out: dict[tuple[str, str], dict[str, set[str]]] = {}  # version -> why -> replicas
        self._all_out: set[tuple[str, str]] = set()
        self.pending_audits: deque[tuple[int, str, str, dict[str, Any]]] = deque(maxlen=10_000)

    def configure(self, options: IncidentOptions, models: Iterable[str]) -> None:
        self.options = options
        self._models = list(models)

    def set_replicas(self, counts: dict[tuple[str, str], int]) -> None:
        """How many replicas each (model, version) has: all of them out is a signal."""
        self._replica_counts = dict(counts)
        self._out = {key: out for key, out in self._out.items() if key in counts}

    def _replica_out(self, model: str, version: str, replica: str, why: str, out: bool) -> None:
        key = (model, version)
        count = self._replica_counts.get(key)
        if count is None:
            return
        marks = self._out.setdefault(key, {})
        names = marks.setdefault(why, set())
        if out:
            names.add(replica)
        else:
            names.discard(replica)
        down = set().union(*marks.values())
        if len(down) < count:
            self._all_out.discard(key)
            return
        if key in self._all_out:
            return
        self._all_out.add(key)
        text = f"every replica of {model}/{version} is out ({len(down)} of {count} {why})"
        self.signal(model, "replicas", text, default_cause="infra")

    # -- the bus ----------------------------------------------------------------------

    def kinds(self) -> list[type[Event]]:
        """The event types to subscribe this observer to."""
        known: list[type[Event]] = [
            RequestFinished,
            AttemptFailed,
            BreakerTransition,
            ReplicaEjected,
            ReplicaReturned,
            HealthChanged,
            ReplicaStateChanged,
            WorkerRestarted,
            PanicChanged,
            FallbackUsed,
            RequestShed,
            PoisonDetected,
            FaultAdded,
            FaultEnded,
            ReplicaKilled,
            ConfigApplied,
            FlagChanged,
            BurnAlert,
        ]
        extra = [k for k in generic_kinds(("Rollout", "Rollback", "Drift")) if k not in known]
        return known + extra

    def observe(self, event: Event) -> None:
        if type(event) is RequestFinished:
            self._request(event)
            return
        now = self._wall()
        if isinstance(event, AttemptFailed):
            self._failure_class(event.model, event.failure_class.value)
            self._folded(
                now,
                event.model,
                f"attempt:{event.replica}",
                "attempt",
                f"first failed attempt on replica {event.version}/{event.replica}: "
                f"{event.message[:200]}",
            )
        elif isinstance(event, BreakerTransition):
            self._add(
                now,
                event.model,
                "breaker",
                f"breaker of {event.version}/{event.replica} {event.old} -> {event.new} "
                f"({event.reason})",
            )
        elif isinstance(event, ReplicaEjected):
            self._add(
                now,
                event.model,
                "ejection",
                f"replica {event.version}/{event.replica} ejected for {event.seconds:g} s "
                f"({event.reason})",
            )
        elif isinstance(event, ReplicaReturned):
            text = f"replica {event.version}/{event.replica} returned"
            self._add(now, event.model, "ejection", text)
        elif isinstance(event, HealthChanged):
            verdict = "healthy" if event.healthy else "unhealthy"
            text = f"probe: {event.version}/{event.replica} {verdict} ({event.reason})"
            self._add(now, event.model, "probe", text)
            out = not event.healthy
            self._replica_out(event.model, event.version, event.replica, "unhealthy", out)
        elif isinstance(event, ReplicaStateChanged):
            state = "available" if event.available else "unavailable"
            text = f"replica {event.version}/{event.replica} {state} ({event.reason})"
            self._add(now, event.model, "replica", text)
            out = not event.available
            self._replica_out(event.model, event.version, event.replica, "unavailable", out)
        elif isinstance(event, WorkerRestarted):
            text = (
                f"worker {event.version}/{event.replica} restarted (pid {event.pid}, "
                f"exit {event.exit_code}, {event.reason})"
            )
            self._add(now, event.model, "restart", text)
        elif isinstance(event, PanicChanged):
            self._panic(now, event)
        elif isinstance(event, FallbackUsed):
            text = f"fallback tier {event.tier} answered for {event.version}: {event.reason[:200]}"
            self._folded(now, event.model, f"fallback:{event.tier}", "fallback", text)
        elif isinstance(event, RequestShed):
            self._failure_class(event.model, FailureClass.OVERLOAD.value)
            self._folded(now, event.model, "shed", "shed", f"first request shed ({event.reason})")
        elif isinstance(event, PoisonDetected):
            self._failure_class(event.model, FailureClass.REQUEST.value)
            text = f"poison request ({event.reason[:200]})"
            self._folded(now, event.model, "poison", "poison", text)
        elif isinstance(event, FaultAdded):
            text = (
                f"fault {event.id} injected: {event.kind} on {event.version or '*'}/"
                f"{event.replica or '*'} for {event.duration_s:g} s"
            )
            self._add(now, event.model, "fault", text)
        elif isinstance(event, FaultEnded):
            text = f"fault {event.id} ended ({event.reason}; {event.injected} injected)"
            self._add(now, event.model, "fault", text)
        elif isinstance(event, ReplicaKilled):
            text = (
                f"fault {event.fault} killed worker {event.version}/{event.replica} "
                f"(pid {event.pid})"
            )
            self._add(now, event.model, "fault", text)
        elif isinstance(event, ConfigApplied):
            self._add(now, None, "config", f"configuration revision {event.revision} applied")
        elif isinstance(event, FlagChanged):
            self._flag(now, event)
        elif isinstance(event, BurnAlert):
            self._burn(now, event)
        else:
            model = getattr(event, "model", None)
            if isinstance(model, str):
                self._generic(now, model, event)

    # -- signals ---------------------------------------------------------------------

    def _panic(self, now: float, event: PanicChanged) -> None:
        if not event.active:
            self._add(
                now, event.model, "replica", f"a replica of {event.version} is available again"
            )
            return
        text = f"every replica of {event.model}/{event.version} is out"
        self.signal(event.model, "panic", text, default_cause="infra")

    def _burn(self, now: float, alert: BurnAlert) -> None:
        what = f"{alert.objective} burn {alert.rule}: {alert.long_burn:g}x / {alert.short_burn:g}x"
        scope = alert.model + (f" (tenant {alert.tenant})" if alert.tenant else "")
        if not alert.firing:
            self._add(now, alert.model, "alert", f"{alert.severity} alert cleared: {scope} {what}")
            return
        self._add(now, alert.model, "alert", f"{alert.severity} alert: {scope} {what}")
        if alert.severity == "page" and not alert.tenant:
            default = {"latency": "overload", "accuracy": "logic"}.get(alert.objective, "infra")
            self.signal(
                alert.model,
                "burn",
                f"{alert.objective} budget burning ({alert.rule})",
                default_cause=default,
            )

    def _flag(self, now: float, event: FlagChanged) -> None:
        state = "cleared" if event.value is None else f"set to {event.value!r}"
        model = self._model_of_switch(event.key)
        self._add(now, model, "flag", f"flag {event.key} {state} by {event.actor}")
        if model is not None and event.key.startswith("failsoft.halt.") and event.value is True:
            self.signal(
                model, "halt", f"safe halt: {event.key} by {event.actor}", default_cause="logic"
            )

    def _generic(self, now: float, model: str, event: Event) -> None:
        kind = type(event)
        fields = {
            name: value
            for name in getattr(event, "__dataclass_fields__", {})
            if isinstance(value := getattr(event, name, None), str | int | float | bool)
        }
        shown = ", ".join(f"{k}={v}" for k, v in fields.items() if k != "model")[:300]
        self._add(now, model, kind.__name__.lower(), f"{kind.__name__}: {shown}")
        if _rollback(kind) or getattr(event, "action", None) == "rolled-back":
            self.signal(model, "rollback", f"automatic rollback ({shown})", default_cause="logic")
        elif _drift_alert(kind):
            self.signal(model, "drift", f"drift alert ({shown})", default_cause="data")

    def _model_of_switch(self, key: str) -> str | None:
        if not key.startswith("failsoft."):
            return None
        target = key.split(".", 2)[-1] if key.count(".") >= 2 else ""
        matches = [m for m in self._models if target == m or target.startswith(m + ".")]
        return max(matches, key=len) if matches else None

    def signal(self, model: str, source: str, text: str, *, default_cause: str) -> Incident | None:
        """Open an incident for ``model``, or join the one open for the same cause."""
        if not self.options.enabled:
            return None
        now = self._wall()
        episode = self._episode(model)
        recent = {
            name: count
            for name, count in episode.classes.items()
            if now - episode.classes_at.get(name, now) <= self.options.join_window_s
        }
        cause = cause_of(recent, default_cause)
        signal = {"at": now, "source": source, "text": text}
        for incident in self.incidents.values():
            if (
                incident.active
                and incident.model == model
                and incident.cause == cause
                and now - incident.last_signal_at <= self.options.join_window_s
            ):
                incident.last_signal_at = now
                if len(incident.signals) < SIGNALS_KEPT:
                    incident.signals.append(signal)
                incident.note(now, "signal", f"joined: {text}", self.options.timeline_max)
                self.dirty.add(incident.id)
                self._emit(IncidentChanged(incident.id, model, cause, incident.state, "joined"))
                return incident
        return self._open(now, model, cause, source, text, signal, episode)

    def _open(
        self,
        now: float,
        model: str,
        cause: str,
        source: str,
        text: str,
        signal: dict[str, Any],
        episode: _Episode,
    ) -> Incident:
        incident = Incident(
            id=self.next_id,
            model=model,
            cause=cause,
            title=f"{model}: {text}",
            opened_at=now,
            last_signal_at=now,
            signals=[signal],
        )
        self.next_id += 1
        recent = self.options.join_window_s
        last = episode.last_impact
        if episode.run_start is not None and last is not None and now - last <= recent:
            incident.first_impact_at = episode.run_start
            incident.last_impact_at = last
            incident.failed, incident.degraded = episode.failed, episode.degraded
        incident.last_good_at = episode.last_good
        incident.failure_classes = {
            name: count
            for name, count in episode.classes.items()
            if now - episode.classes_at.get(name, now) <= recent
        }
        earlier = [e for e in (*self._global, *episode.events) if now - e["at"] <= recent]
        for entry in sorted(earlier, key=lambda e: e["at"]):
            incident.timeline.append(dict(entry))
        limit = self.options.timeline_max
        del incident.timeline[: max(0, len(incident.timeline) - limit + 2)]
        incident.note(now, "signal", text, limit)
        incident.note(
            now, "state", f"incident {incident.id} opened ({source}, cause {cause})", limit
        )
        self.incidents[incident.id] = incident
        self._forget_old()
        self.dirty.add(incident.id)
        self.pending_audits.append(
            (incident.id, "incident.opened", ACTOR, {"cause": cause, "signal": text})
        )
        log.warning(
            "incident opened",
            extra={"incident": incident.id, "model": model, "cause": cause, "signal": text},
        )
        self._emit(IncidentChanged(incident.id, model, cause, "open", "opened"))
        return incident

    def _reindex(self) -> None:
        """Index the incidents not resolved by model (the request path reads it)."""
        active: dict[str, list[Incident]] = {}
        for incident in self.incidents.values():
            if incident.active:
                active.setdefault(incident.model, []).append(incident)
        self._active = active

    def _forget_old(self) -> None:
        resolved = [i for i in self.incidents.values() if not i.active]
        for incident in sorted(resolved, key=lambda i: i.id)[
            : max(0, len(self.incidents) - INCIDENTS_KEPT)
        ]:
            del self.incidents[incident.id]
        self._reindex()

    # -- impact -----------------------------------------------------------------------

    def _request(self, event: RequestFinished) -> None:
        status = event.status
        if event.failure_class in _EXCLUDED or 400 <= status < 500:
            return
        failed = status >= 500
        degraded = not failed and event.degraded
        now = self._wall()
        episode = self._episodes.get(event.model)
        if episode is None:
            episode = self._episode(event.model)
        active = self._active.get(event.model, ())
        if not (failed or degraded):
            episode.last_good = now
            for incident in active:
                incident.good += 1
                incident.last_good_at = now
            return
        if failed and event.failure_class is not None:
            self._failure_class(event.model, event.failure_class.value)
        quiet = self.options.quiet_s
        if episode.last_impact is None or now - episode.last_impact > quiet:
            episode.run_start = now
            episode.failed = episode.degraded = 0
            what = (
                f"first failed request ({status} {event.failure_class})"
                if failed
                else f"first degraded request (served by {event.replica or 'a fallback'})"
            )
            self._add(now, event.model, "impact", what)
        episode.last_impact = now
        if failed:
            episode.failed += 1
        else:
            episode.degraded += 1
        for incident in active:
            if failed:
                incident.failed += 1
            else:
                incident.degraded += 1
            if incident.first_impact_at is None:
                incident.first_impact_at = now  # detected before any request suffered
            incident.last_impact_at = now
            if incident.state == "mitigated":
                incident.state = "acknowledged" if incident.acknowledged_at else "open"
                incident.mitigated_at = incident.impact_ended_at = None
                incident.note(now, "state", "impact resumed", self.options.timeline_max)
                self.pending_audits.append((incident.id, "incident.reopened", ACTOR, {}))
                self._emit(
                    IncidentChanged(
                        incident.id, incident.model, incident.cause, incident.state, "reopened"
                    )
                )
            self.dirty.add(incident.id)

    def _failure_class(self, model: str, name: str) -> None:
        episode = self._episode(model)
        classes, now = episode.classes, self._wall()
        if now - episode.classes_at.get(name, now) > self.options.join_window_s:
            classes[name] = 0  # seen long ago: this is a new episode of it
        if name in classes or len(classes) < 16:
            classes[name] = classes.get(name, 0) + 1
            episode.classes_at[name] = now
        for incident in self._active.get(model, ()):
            incident.failure_classes[name] = incident.failure_classes.get(name, 0) + 1

    # -- the timeline ----------------------------------------------------------------

    def _episode(self, model: str) -> _Episode:
        episode = self._episodes.get(model)
        if episode is None:
            if len(self._episodes) >= 4 * max(len(self._models), 64):
                self._episodes.clear()  # models removed long ago; never grows without bound
            episode = self._episodes[model] = _Episode()
        return episode

    def _add(self, now: float, model: str | None, kind: str, text: str) -> None:
        entry = {"at": now, "kind": kind, "text": text}
        limit = self.options.timeline_max
        if model is None:
            self._global.append(entry)
            targets = [i for found in self._active.values() for i in found]
        else:
            self._episode(model).events.append(entry)
            targets = list(self._active.get(model, ()))
        for incident in targets:
            incident.note(now, kind, text, limit)
            self.dirty.add(incident.id)

    def _folded(self, now: float, model: str, key: str, kind: str, text: str) -> None:
        """The first of a kind goes on the timeline; more within ``quiet_s`` of the last
        are only counted (by the impact)."""
        episode = self._episode(model)
        if now - episode.folded_at > self.options.quiet_s or len(episode.folded) > 256:
            episode.folded.clear()
        episode.folded_at = now
        if key in episode.folded:
            return
        episode.folded.add(key)
        self._add(now, model, kind, text)

    # -- every few seconds ------------------------------------------------------------

    def tick(self) -> list[Incident]:
        """Mitigate incidents whose impact ended, resolve after ``auto_resolve_s``."""
        now = self._wall()
        changed = []
        for incident in list(self.incidents.values()):
            if incident.state in ("open", "acknowledged"):
                last = incident.last_impact_at
                good = incident.last_good_at
                quiet = last is None or now - last >= self.options.quiet_s
                if quiet and good is not None and (last is None or good > last):
                    self._set_state(incident, "mitigated", ACTOR, now)
                    incident.impact_ended_at = last if last is not None else incident.opened_at
                    changed.append(incident)
            elif incident.state == "mitigated" and self.options.auto_resolve_s > 0:
                assert incident.mitigated_at is not None
                if now - incident.mitigated_at >= self.options.auto_resolve_s:
                    self._set_state(incident, "resolved", ACTOR, now)
                    changed.append(incident)
        return changed

    def _set_state(
        self, incident: Incident, state: str, actor: str, now: float, text: str = ""
    ) -> None:
        incident.state = state
        setattr(incident, f"{state}_at", now)
        if state == "resolved":
            self._reindex()
        said = {
            "acknowledged": f"acknowledged by {actor}",
            "mitigated": "impact ended: mitigated",
            "resolved": f"resolved by {actor}",
        }[state]
        incident.note(now, "state", said + (f": {text}" if text else ""), self.options.timeline_max)
        self.dirty.add(incident.id)
        self.pending_audits.append(
            (incident.id, f"incident.{state}", actor, {"text": text} if text else {})
        )
        log.info("incident " + state, extra={"incident": incident.id, "actor": actor})
        self._emit(IncidentChanged(incident.id, incident.model, incident.cause, state, state))

    # -- people -----------------------------------------------------------------------

    def get(self, incident_id: int) -> Incident:
        incident = self.incidents.get(incident_id)
        if incident is None:
            raise NotFound(f"there is no incident {incident_id}")
        return incident

    def acknowledge(self, incident_id: int, actor: str) -> Incident:
        incident = self.get(incident_id)
        if incident.state == "open":
            self._set_state(incident, "acknowledged", actor, self._wall())
        return incident

    def resolve(self, incident_id: int, actor: str, text: str = "") -> Incident:
        incident = self.get(incident_id)
        if incident.state != "resolved":
            now = self._wall()
            if incident.impact_ended_at is None:
                last = incident.last_impact_at
                incident.impact_ended_at = last if last is not None else now
            if incident.mitigated_at is None:
                incident.mitigated_at = now
            self._set_state(incident, "resolved", actor, now, _text(text, "text", empty=True))
        return incident

    def update(self, incident_id: int, actor: str, text: str) -> Incident:
        incident = self.get(incident_id)
        said = _text(text, "text")
        now = self._wall()
        incident.note(now, "update", said, self.options.timeline_max, actor=actor)
        self.dirty.add(incident.id)
        self.pending_audits.append((incident.id, "incident.updated", actor, {"text": said}))
        self._emit(
            IncidentChanged(incident.id, incident.model, incident.cause, incident.state, "updated")
        )
        return incident

    def remediate(
        self, incident_id: int, actor: str, text: str | None, close: int | None
    ) -> Incident:
        """Add a remediation item (``text``) or close item ``close``."""
        incident = self.get(incident_id)
        now = self._wall()
        limit = self.options.timeline_max
        if close is not None:
            item = next((i for i in incident.remediation if i["id"] == close), None)
            if item is None:
                raise NotFound(f"incident {incident_id} has no remediation item {close}")
            if item["done_at"] is None:
                item["done_at"] = now
                item["closed_by"] = actor
                incident.note(
                    now, "action", f"remediation {close} done: {item['text']}", limit, actor=actor
                )
                self.pending_audits.append(
                    (incident.id, "incident.remediation_done", actor, {"item": close})
                )
        else:
            said = _text(text or "", "text")
            if len(incident.remediation) >= REMEDIATION_KEPT:
                raise _bad(f"text: incident {incident_id} has {REMEDIATION_KEPT} remediation items")
            item_id = 1 + max((i["id"] for i in incident.remediation), default=0)
            incident.remediation.append(
                {"id": item_id, "text": said, "created_at": now, "by": actor, "done_at": None}
            )
            incident.note(now, "action", f"remediation {item_id} added: {said}", limit, actor=actor)
            self.pending_audits.append(
                (incident.id, "incident.remediation_added", actor, {"item": item_id, "text": said})
            )
        self.dirty.add(incident.id)
        return incident

    # -- restart ----------------------------------------------------------------------

    def load(self, stored: Iterable[Incident], next_id: int, *, merge: bool = False) -> None:
        """Incidents from the store; the active ones carry on.

        ``merge``: this gateway started while the store was down and opened
        incidents meanwhile: those are renumbered after the stored ones, and an
        episode seen here since is kept."""
        now = self._wall()
        stored = list(stored)
        if merge:
            self._renumber(max([next_id, *(i.id + 1 for i in stored)]))
        for incident in stored:
            self.incidents[incident.id] = incident
            if not incident.active:
                continue
            episode = self._episode(incident.model)
            if not (merge and episode.last_impact is not None):
                episode.run_start = incident.first_impact_at
                episode.last_impact = incident.last_impact_at
                episode.last_good = incident.last_good_at
                episode.classes = dict(incident.failure_classes)
                episode.classes_at = dict.fromkeys(incident.failure_classes, now)
            incident.note(
                now,
                "state",
                "gateway restarted; the incident carries on",
                self.options.timeline_max,
            )
            self.dirty.add(incident.id)
        self.next_id = max([self.next_id, next_id, *(i.id + 1 for i in stored)])
        self._forget_old()

    def _renumber(self, first: int) -> None:
        """Give the incidents in memory the ids from ``first`` on (audits follow)."""
        renamed = {old: first + n for n, old in enumerate(sorted(self.incidents))}
        self.incidents = {renamed[old]: i for old, i in self.incidents.items()}
        for incident in self.incidents.values():
            incident.id = renamed[incident.id]
        self.dirty = {renamed.get(i, i) for i in self.dirty}
        audits = [(renamed.get(i, i), *rest) for i, *rest in self.pending_audits]
        self.pending_audits.clear()
        self.pending_audits.extend(audits)  # type: ignore[arg-type]
        self.next_id = first + len(renamed)


def _bad(message: str) -> Exception:
    from failsoft.errors import BadRequest

    return BadRequest(message)


def _text(text: Any, name: str, *, empty: bool = False) -> str:
    if not isinstance(text, str) or (not text.strip() and not empty):
        raise _bad(f"{name}: give some text")
    if len(text) > TEXT_LIMIT:
        raise _bad(f"{name}: at most {TEXT_LIMIT} characters, not {len(text)}")
    return text.strip()
