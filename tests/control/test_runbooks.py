"""Runbooks on the injected clock: triggers, dry-run, approval, cooldowns, idempotency."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from failsoft.clock import ManualClock
from failsoft.control.incident_model import Incident, IncidentOptions
from failsoft.control.incidents import Incidents
from failsoft.control.runbook_model import RunbooksOptions, load_dir
from failsoft.control.runbooks import Runbooks
from failsoft.errors import NotFound
from failsoft.observe.events import EventBus

REPO = Path(__file__).resolve().parents[2]
DOWN = "every replica of iris/v1 is out (2 of 2 ejected)"


class Services:
    """The flags, rollouts and revisions as a runbook sees them, in memory."""

    def __init__(self) -> None:
        self.flags: dict[str, Any] = {}
        self.calls: list[tuple[str, str, str]] = []

    def flag_value(self, key: str) -> object | None:
        return self.flags.get(key, {}).get("value")

    async def set_flag(self, key: str, data: dict[str, Any], actor: str) -> None:
        self.flags[key] = data
        self.calls.append(("flag", key, actor))

    async def abort_rollout(self, key: str, actor: str) -> str:
        if key != "iris":
            raise NotFound(f"there is no rollout {key!r} in progress")
        self.calls.append(("abort", key, actor))
        return "aborted"

    async def rollback_config(self, target: int | None, actor: str) -> str:
        self.calls.append(("rollback", str(target), actor))
        return "applied"


def book(**runbook: Any) -> dict[str, Any]:
    return {
        "name": "down",
        "trigger": {"incident": "opened", "cause": ["infra"], "signal": ["replicas"]},
        "steps": [{"action": "disable_version", "model": "{model}", "version": "{version}"}],
        **runbook,
    }


class World:
    def __init__(self, *runbooks: dict[str, Any], **options: Any) -> None:
        self.clock = ManualClock(1000.0)
        self.bus = EventBus()
        self.incidents = Incidents(
            IncidentOptions(), ["iris", "other"], self.clock.now, self.bus.emit
        )
        self.services = Services()
        self.runbooks = Runbooks(
            RunbooksOptions.model_validate({"runbooks": list(runbooks), **options}),
            self.incidents,
            self.bus,
            self.clock,
            self.clock.now,
            self.services,
        )

    def open(self, model: str = "iris", text: str = DOWN) -> Incident:
        found = self.incidents.signal(model, "replicas", text, default_cause="infra")
        assert found is not None
        return found

    async def settle(self, seconds: float = 0.0) -> None:
        await self.clock.advance(0)  # the runs just started take their first step now
        await self.clock.advance(seconds)


def said(incident: Incident) -> list[str]:
    return [e["text"] for e in incident.timeline if e["kind"] == "runbook"]


async def test_an_infra_incident_starts_the_matching_runbook_only() -> None:
    other = book(name="data", trigger={"incident": "opened", "cause": ["data"]})
    world = World(book(mode="act"), other)
    incident = world.open()
    await world.settle()
    assert [r.runbook for r in world.runbooks.runs] == ["down"]
    assert world.services.calls == [("flag", "failsoft.disable.iris.v1", "runbook:down")]
    assert said(incident)[0] == "runbook down started (act)"
    assert "done: switch iris/v1 off (the fallback answers)" in said(incident)
    audits = [(a[1], a[2]) for a in world.incidents.pending_audits if a[1].startswith("runbook")]
    assert ("runbook.disable_version", "runbook:down") in audits


async def test_dry_run_is_the_default_and_changes_nothing() -> None:
    world = World(book())
    incident = world.open()
    await world.settle()
    assert world.services.calls == []
    assert "dry-run: would switch iris/v1 off (the fallback answers)" in said(incident)


async def test_an_approval_gate_waits_and_a_late_approval_is_too_late() -> None:
    step = {"action": "safe_halt", "model": "{model}", "approve": True}
    world = World(book(mode="act", steps=[step], approve_within_s=60))
    incident = world.open()
    await world.settle(30)
    assert world.services.calls == []
    assert world.runbooks.runs[0].state == "awaiting-approval"
    assert world.runbooks.approve(incident.id, "alice") == 1
    await world.settle(1)
    assert world.services.calls == [("flag", "failsoft.halt.iris", "runbook:down")]
    assert any("approved by alice" in text for text in said(incident))

    late = World(book(mode="act", steps=[step], approve_within_s=60))
    second = late.open()
    await late.settle(61)
    assert late.services.calls == []
    assert late.runbooks.runs[0].state == "failed"
    assert late.runbooks.approve(second.id, "alice") == 0
    assert "not approved within 60 s: stopped" in said(second)


async def restarted(world: World, *runbooks: dict[str, Any]) -> World:
    """Another process: the incidents as the store gave them back, on the same clock."""
    again = World(*runbooks)
    again.clock = world.clock
    stored = [Incident.from_json(i.as_json()) for i in world.incidents.incidents.values()]
    again.incidents = Incidents(
        IncidentOptions(), ["iris", "other"], world.clock.now, again.bus.emit
    )
    again.incidents.load(stored, world.incidents.next_id)
    again.runbooks = Runbooks(
        again.runbooks.options,
        again.incidents,
        again.bus,
        world.clock,
        world.clock.now,
        again.services,
    )
    await again.runbooks.start()
    return again


async def test_a_pending_approval_outlives_a_restart_and_its_time_counts_from_the_request() -> None:
    steps = [
        {"action": "kill_switch", "key": "ops.paged"},
        {"action": "safe_halt", "model": "{model}", "approve": True},
    ]
    runbook = book(mode="act", steps=steps, approve_within_s=60)
    world = World(runbook)
    incident = world.open()
    await world.settle(20)
    [pending] = incident.pending_approvals
    assert (pending["runbook"], pending["step"], pending["within_s"]) == ("down", 1, 60.0)
    assert pending["context"]["model"] == "iris"
    assert world.services.calls == [("flag", "ops.paged", "runbook:down")]
    await world.runbooks.close()  # the process stops; the gate stays in the incident

    again = await restarted(world, runbook)
    kept = again.incidents.incidents[incident.id]
    await again.settle(30)  # 50 s since the request: still in time
    assert again.runbooks.runs[0].state == "awaiting-approval"
    assert any(t.startswith("still waiting for approval") for t in said(kept))
    assert again.runbooks.approve(incident.id, "alice") == 1
    await again.settle(1)
    assert again.services.calls == [("flag", "failsoft.halt.iris", "runbook:down")]
    assert kept.pending_approvals == []
    assert said(kept).count("runbook down started (act)") == 1  # resumed, not run again
    assert "runbook down finished" in said(kept)

    late = World(runbook)
    second = late.open()
    await late.settle(40)
    await late.runbooks.close()
    after = await restarted(late, runbook)
    await after.settle(21)  # 61 s since the request, 21 since the restart
    kept = after.incidents.incidents[second.id]
    assert "not approved within 60 s: stopped" in said(kept)
    assert after.runbooks.approve(second.id, "alice") == 0
    assert after.services.calls == []
    assert kept.pending_approvals == []


async def test_a_pending_approval_of_a_runbook_gone_is_dropped_on_restart() -> None:
    step = {"action": "safe_halt", "model": "{model}", "approve": True}
    world = World(book(mode="act", steps=[step]))
    incident = world.open()
    await world.settle(1)
    await world.runbooks.close()
    again = await restarted(world, book(name="other", mode="act", steps=[step]))
    kept = again.incidents.incidents[incident.id]
    assert kept.pending_approvals == []
    assert again.runbooks.runs == type(again.runbooks.runs)()
    assert any("pending approval was dropped" in t for t in said(kept))


async def test_a_runbook_runs_once_per_incident_and_not_within_its_cooldown() -> None:
    world = World(book(mode="act", cooldown_s=100))
    first = world.open()
    world.open()  # the same cause within the join window: joins incident 1
    await world.settle()
    assert len(world.runbooks.runs) == 1
    world.incidents.resolve(first.id, "alice")
    await world.settle(50)
    second = world.open()
    await world.settle()
    assert len(world.runbooks.runs) == 1
    assert any("in its cooldown (100 s)" in text for text in said(second))


async def test_actions_are_idempotent_and_rate_limited() -> None:
    twice = [{"action": "disable_version"}, {"action": "disable_version"}]
    world = World(book(mode="act", steps=twice, cooldown_s=0))
    incident = world.open()
    await world.settle()
    assert len(world.services.calls) == 1  # the switch already in force is not set again
    assert "already in force: failsoft.disable.iris.v1" in said(incident)

    aborts = [{"action": "rollout_abort", "rollout": "iris"}] * 2
    limited = World(book(mode="act", steps=aborts), action_cooldown_s=30)
    incident = limited.open()
    await limited.settle()
    assert [c[0] for c in limited.services.calls] == ["abort"]
    assert any("in its cooldown (30 s)" in text for text in said(incident))

    hourly = [{"action": "config_rollback"}]
    capped = World(
        book(mode="act", steps=hourly, cooldown_s=0), action_cooldown_s=0, max_actions_per_hour=2
    )
    for model in ("iris", "other", "iris"):
        found = capped.open(model, f"every replica of {model}/v1 is out")
        await capped.settle()
        capped.incidents.resolve(found.id, "alice")
    assert [c[0] for c in capped.services.calls] == ["rollback", "rollback"]
    assert any("rate limit (2 actions per hour)" in t for t in said(capped.incidents.get(3)))


async def test_a_refused_action_is_said_not_raised() -> None:
    world = World(book(mode="act", steps=[{"action": "rollout_abort", "rollout": "nope"}]))
    incident = world.open()
    await world.settle()
    assert "could not abort the rollout of nope: there is no rollout 'nope' in progress" in said(
        incident
    )


async def test_wait_verifies_mitigation_or_says_it_did_not_come() -> None:
    wait = {"action": "wait", "until": "mitigated", "within_s": 20}
    world = World(book(mode="act", steps=[wait]))
    incident = world.open()
    await world.settle(5)
    world.incidents.resolve(incident.id, "alice")
    await world.settle(1)
    assert world.runbooks.runs[0].state == "done"
    assert any(t.startswith("verified: incident mitigated") for t in said(incident))

    slow = World(book(mode="act", steps=[wait]))
    incident = slow.open()
    await slow.settle(21)
    assert slow.runbooks.runs[0].state == "failed"
    assert "not mitigated within 20 s: stopped" in said(incident)


def test_bad_runbooks_are_refused_naming_the_field(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="exactly one of incident"):
        RunbooksOptions.model_validate({"runbooks": [book(trigger={})]})
    with pytest.raises(ValidationError, match=r"webhook .pager. is not in runbooks\.webhooks"):
        RunbooksOptions.model_validate(
            {"runbooks": [book(steps=[{"action": "webhook", "webhook": "pager"}])]}
        )
    (tmp_path / "bad.yaml").write_text("runbooks: [{name: x, steps: []}]")
    with pytest.raises(ValidationError, match=r"dir: bad.yaml: runbooks\[0\]"):
        RunbooksOptions.model_validate({"dir": str(tmp_path)})


def test_the_bundled_runbook_loads() -> None:
    (bundled,) = load_dir(str(REPO / "runbooks"))
    assert bundled.name == "all-replicas-out"
    assert [s.action for s in bundled.steps] == ["webhook", "disable_version", "wait"]
    assert bundled.steps[1].approve


async def test_an_event_triggers_a_runbook_and_a_new_configuration_brings_new_ones() -> None:
    from failsoft.observe.events import ConfigApplied

    world = World()
    world.bus.emit(ConfigApplied(7))
    await world.settle()
    assert world.services.calls == []
    on_apply = {
        "name": "undo",
        "mode": "act",
        "trigger": {"event": "ConfigApplied"},
        "steps": [{"action": "config_rollback", "revision": 6}],
    }
    world.runbooks.configure(RunbooksOptions.model_validate({"runbooks": [on_apply]}))
    world.bus.emit(ConfigApplied(8))
    await world.settle()
    assert world.services.calls == [("rollback", "6", "runbook:undo")]
    assert [(r.runbook, r.incident, r.state) for r in world.runbooks.runs] == [
        ("undo", None, "done")
    ]
