"""Incidents on the injected clock, fed through the real event bus: what opens one, what
joins one, the cause class, the timeline (from the first impacted request, bounded),
mitigation when the impact ends, and the store round trip (SQLite and PostgreSQL) that a
gateway restart relies on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from failsoft.clock import ManualClock
from failsoft.config import Config, parse_config
from failsoft.control.burn import BurnAlert
from failsoft.control.incident_model import Incident
from failsoft.control.incidents import IncidentChanged
from failsoft.control.operate import Operate
from failsoft.control.postmortem import render
from failsoft.control.rollout_controller import RolloutDecided
from failsoft.data.feedback import FeedbackJoined
from failsoft.errors import FailureClass, NotFound
from failsoft.observe.events import (
    Event,
    EventBus,
    FlagChanged,
    ReplicaStateChanged,
    RequestFinished,
)
from failsoft.pipeline.breaker import BreakerState, BreakerTransition
from failsoft.pipeline.fallback import FallbackUsed
from failsoft.pipeline.version import AttemptFailed, PanicChanged, PoisonDetected
from failsoft.routing.probes import HealthChanged
from failsoft.store import Store, StoreUnreachable
from failsoft.store.backup import backup, restore
from failsoft.store.engine import default_url
from failsoft.store.tables import slo_buckets
from tests.store.conftest import Target

EPOCH = 1_800_000_000.0


@dataclass(slots=True)
class RolloutRolledBack(Event):
    """As the rollouts module will emit it (matched by name, not imported)."""

    model: str
    rollout: str
    reason: str


def config(**incidents: Any) -> Config:
    python = {"backend": "python", "function": "tests._runtime_models:healthy"}
    model = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
        "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]}],
        "versions": {"v1": python, "v2": python},
        "default_version": "v1",
    }
    options = {"evaluate_every_s": 1, "quiet_s": 10, **incidents}
    return parse_config({"models": {"iris": model, "wine": model}, "incidents": options})


class Rig:
    def __init__(self, cfg: Config, store: Any = None, clock: ManualClock | None = None) -> None:
        self.clock = clock or ManualClock(EPOCH)
        self.bus = EventBus()
        self.operate = Operate(cfg, self.bus, self.clock, store, wall=self.clock.now)
        self.changes: list[IncidentChanged] = []
        self.bus.subscribe(self.changes.append, (IncidentChanged,))  # type: ignore[arg-type]

    def request(self, status: int = 200, degraded: bool = False, model: str = "iris") -> None:
        failure = FailureClass.REPLICA if status >= 500 else None
        self.bus.emit(RequestFinished(model, "v1", status, failure, 0.01, "v1/r0", degraded))

    def failing_replica(self, model: str = "iris") -> None:
        self.bus.emit(AttemptFailed(model, "v1", "r0", FailureClass.REPLICA, "503", 0.01))

    async def seconds(self, count: int, status: int = 200, degraded: bool = False) -> None:
        for _ in range(count):
            for _ in range(5):
                self.request(status, degraded)
            await self.clock.advance(1.0)

    @property
    def incidents(self) -> list[Incident]:
        return sorted(self.operate.incidents.incidents.values(), key=lambda i: i.id)


async def test_every_replica_out_opens_an_incident_with_cause_infra_and_its_history() -> None:
    rig = Rig(config())
    rig.operate.start()
    await rig.seconds(5)
    first_impact = rig.clock.now()
    rig.failing_replica()
    rig.bus.emit(FallbackUsed("iris", "v1", "version:v2", "replica r0 answered 503"))
    rig.request(200, degraded=True)
    await rig.clock.advance(0.5)
    rig.bus.emit(
        BreakerTransition("iris", "v1", "r0", BreakerState.CLOSED, BreakerState.OPEN, "50%")
    )
    await rig.clock.advance(0.25)
    rig.bus.emit(PanicChanged("iris", "v1", True))
    (incident,) = rig.incidents
    assert (incident.model, incident.cause, incident.state) == ("iris", "infra", "open")
    assert incident.first_impact_at == first_impact
    assert incident.mttd_s == pytest.approx(0.75)
    kinds = [entry["kind"] for entry in incident.timeline]
    assert kinds == ["attempt", "fallback", "impact", "breaker", "signal", "state"]
    assert incident.degraded == 1
    # More of the same: folded, counted.
    for _ in range(20):
        rig.failing_replica()
        rig.request(200, degraded=True)
    assert len(incident.timeline) == 6
    assert incident.degraded == 21
    await rig.operate.close()


async def test_signals_about_the_same_model_and_cause_join_one_incident() -> None:
    rig = Rig(config(join_window_s=600))
    rig.failing_replica()
    rig.request(503)
    rig.bus.emit(PanicChanged("iris", "v1", True))
    await rig.clock.advance(100)
    rig.bus.emit(PanicChanged("iris", "v2", True))  # same model, same cause: joins
    rig.failing_replica("wine")
    rig.bus.emit(PanicChanged("wine", "v1", True))  # another model: its own
    assert [(i.id, i.model, len(i.signals)) for i in rig.incidents] == [
        (1, "iris", 2),
        (2, "wine", 1),
    ]
    assert [c.what for c in rig.changes] == ["opened", "joined", "opened"]
    rig.operate.incidents.resolve(1, "alice", "done")
    rig.bus.emit(PanicChanged("iris", "v1", True))  # resolved: a new one
    assert [i.id for i in rig.incidents if i.model == "iris"] == [1, 3]


async def test_a_safe_halt_and_an_automatic_rollback_open_incidents() -> None:
    rig = Rig(config())
    rig.operate.start()  # subscribes to the rollout event, defined by name only
    rig.bus.emit(FlagChanged("checkout.banner", "blue", "alice"))
    assert rig.incidents == []
    rig.bus.emit(FlagChanged("failsoft.halt.iris.v2", True, "alice"))
    rig.bus.emit(RolloutRolledBack("wine", "r1", "errors 4% > 1%"))
    halted, rolled_back = rig.incidents
    assert (halted.model, halted.cause) == ("iris", "logic")
    assert "safe halt" in halted.signals[0]["text"]
    assert (rolled_back.model, rolled_back.cause) == ("wine", "logic")
    assert any("rollout=r1" in entry["text"] for entry in rolled_back.timeline)
    await rig.operate.close()


async def test_impact_ending_mitigates_and_returning_impact_reopens() -> None:
    rig = Rig(config(auto_resolve_s=30))
    rig.operate.start()
    rig.failing_replica()
    await rig.seconds(3, status=503)
    rig.bus.emit(PanicChanged("iris", "v1", True))
    (incident,) = rig.incidents
    rig.operate.incidents.acknowledge(incident.id, "bob")
    await rig.seconds(2, status=503)
    last_failure = rig.clock.now() - 1.0
    await rig.seconds(12)  # quiet_s (10) of good answers
    assert incident.state == "mitigated"
    assert incident.impact_ended_at == last_failure
    assert incident.mttm_s == pytest.approx(last_failure - incident.opened_at)
    await rig.seconds(1, status=503)
    assert incident.state == "acknowledged"  # back to where it was
    await rig.seconds(12)
    assert incident.state == "mitigated"
    await rig.seconds(31)
    assert incident.state == "resolved"
    assert incident.mttr_s is not None
    audits = [a[1] for a in rig.operate.incidents.pending_audits]
    assert audits == [
        "incident.opened",
        "incident.acknowledged",
        "incident.mitigated",
        "incident.reopened",
        "incident.mitigated",
        "incident.resolved",
    ]
    await rig.operate.close()


async def test_the_timeline_is_bounded_keeping_the_start_and_the_latest() -> None:
    rig = Rig(config(timeline_max=20))
    rig.failing_replica()
    rig.request(503)
    rig.bus.emit(PanicChanged("iris", "v1", True))
    (incident,) = rig.incidents
    for n in range(100):
        state = BreakerState.OPEN if n % 2 else BreakerState.CLOSED
        rig.bus.emit(BreakerTransition("iris", "v1", "r0", BreakerState.HALF_OPEN, state, "x"))
    assert len(incident.timeline) == 20
    assert incident.timeline_dropped > 0
    assert incident.timeline[0]["kind"] == "attempt"
    assert incident.timeline[-1]["text"].endswith("half_open -> open (x)")


async def test_people_get_clear_errors() -> None:
    rig = Rig(config())
    with pytest.raises(NotFound, match="no incident 7"):
        rig.operate.incidents.acknowledge(7, "bob")
    rig.bus.emit(PanicChanged("iris", "v1", True))
    with pytest.raises(Exception, match="text: give some text"):
        rig.operate.incidents.update(1, "bob", "  ")
    with pytest.raises(NotFound, match="no remediation item 3"):
        rig.operate.incidents.remediate(1, "bob", None, 3)


async def test_a_restart_keeps_incidents_budgets_and_timelines(
    target: Target, tmp_path: Path
) -> None:
    clock = ManualClock(EPOCH)
    store = target.open(tmp_path / "data", clock.now)  # type: ignore[arg-type]
    try:
        rig = Rig(config(), store, clock)
        assert rig.operate.boot() is None
        rig.operate.start()
        await rig.seconds(120)
        rig.failing_replica()
        await rig.seconds(3, status=503)
        rig.bus.emit(PanicChanged("iris", "v1", True))
        rig.operate.incidents.acknowledge(1, "bob")
        rig.operate.incidents.remediate(1, "bob", "page on v1 errors", None)
        await rig.seconds(2, status=503)
        before = rig.operate.incidents.get(1).as_json()
        budgets = rig.operate.slo_status()["slos"]
        await rig.operate.close()  # saves

        again = Rig(config(), store, clock)
        assert again.operate.boot() is None
        after = again.operate.incidents.get(1).as_json()
        assert after["timeline"][: len(before["timeline"])] == before["timeline"]
        assert after["timeline"][-1]["text"] == "gateway restarted; the incident carries on"
        for key in ("state", "cause", "opened_at", "first_impact_at", "failed", "remediation"):
            assert after[key] == before[key], key
        # The counts come back; an alert fires again at the next judgement (and joins).
        assert [{**r, "alerts": []} for r in again.operate.slo_status()["slos"]] == [
            {**r, "alerts": []} for r in budgets
        ]
        # Counting goes on from there, and the incident ends as it would have.
        again.operate.start()
        await again.seconds(12)
        assert again.operate.incidents.get(1).state == "mitigated"
        again.bus.emit(PanicChanged("iris", "v1", True))  # joins the one carried over
        assert len(again.incidents) == 1
        await again.operate.close()
        actions = [(e.action, e.actor) for e in store.audit_entries() if e.target == "incident:1"]
        assert actions == [
            ("incident.opened", "failsoft"),
            ("incident.acknowledged", "bob"),
            ("incident.remediation_added", "bob"),
            ("incident.mitigated", "failsoft"),
        ]
    finally:
        store.close()


async def test_the_postmortem_says_what_happened() -> None:
    rig = Rig(config())
    rig.operate.start()
    await rig.seconds(60)
    rig.failing_replica()
    await rig.seconds(2, status=503)
    rig.bus.emit(PanicChanged("iris", "v1", True))
    rig.operate.incidents.update(1, "bob", "v1 down; fallback on")
    rig.operate.incidents.remediate(1, "bob", "alert earlier", None)
    await rig.seconds(12)
    rig.operate.incidents.resolve(1, "bob", "replicas replaced")
    rig.operate.judge()
    incident = rig.operate.incidents.get(1)
    text = render(incident, rig.operate.slo_status()["slos"])
    for part in (
        "# Incident 1: iris: availability budget burning (1h/5m 14.4x)",
        "**Cause class:** infra",
        "| requests failed (5xx) | 10 |",
        "availability error budget burned",
        "| availability budget left now (99.9 % over 30 d) |",
        "| time to detect | first impacted request",
        "## Timeline (UTC)",
        "v1 down; fallback on (bob)",
        "resolved by bob: replicas replaced",
        "- [ ] 1. alert earlier (open)",
    ):
        assert part in text, part
    await rig.operate.close()


def fleet(rig: Rig, objective: str = "availability") -> list[tuple[str, int, int]]:
    rows = rig.operate.slo_status()["slos"]
    return [(r["model"], r["events"], r["bad"]) for r in rows if r["objective"] == objective]


async def test_gateways_sharing_a_store_write_their_own_rows_and_read_the_sum(
    target: Target, tmp_path: Path
) -> None:
    clock = ManualClock(EPOCH)
    first_dir, second_dir = tmp_path / "a", tmp_path / "b"
    first = target.open(first_dir, clock.now)  # type: ignore[arg-type]
    url = target.url or default_url(first_dir)
    second = Store.open(second_dir, url, schema=target.schema, wall=clock.now)
    data = config().model_dump(mode="json", exclude_defaults=True)
    data["models"]["iris"]["slo"] = {"accuracy_pct": 95.0}
    cfg = parse_config(data)
    try:
        rigs = [Rig(cfg, store, clock) for store in (first, second)]
        for rig in rigs:
            assert rig.operate.boot() is None
        await rigs[0].seconds(30)
        await rigs[1].seconds(10, status=503)
        for rig, (rows, correct) in zip(rigs, [(8, 7), (4, 1)], strict=True):
            rig.bus.emit(FeedbackJoined("iris", "v1", None, "classification", rows, correct, ()))
        rigs[1].bus.emit(PanicChanged("iris", "v1", True))
        rigs[0].bus.emit(PanicChanged("wine", "v1", True))
        for rig in rigs:
            assert await rig.operate.save()
        assert fleet(rigs[0]) == [("iris", 150, 0)]  # the other's not read yet
        for rig in rigs:
            assert await rig.operate.merge_peers()
        assert [fleet(rig) for rig in rigs] == [[("iris", 200, 50)]] * 2
        assert [fleet(rig, "accuracy") for rig in rigs] == [[("iris", 12, 4)]] * 2
        with first.engine.read() as conn:
            rows = conn.execute(
                select(slo_buckets.c.gateway, slo_buckets.c.valid, slo_buckets.c.failed).where(
                    slo_buckets.c.resolution == 3600
                )
            ).all()
        owners = {rig.operate.gateway: i for i, rig in enumerate(rigs)}
        assert sorted((owners[g], v, f) for g, v, f in rows) == [(0, 150, 0), (1, 50, 50)]

        # More traffic on one: the other reads only what changed, and the sum moves.
        await rigs[1].seconds(4)
        assert await rigs[1].operate.save()
        assert await rigs[0].operate.merge_peers()
        assert fleet(rigs[0]) == [("iris", 220, 50)]

        # Restarted (its data directory, so its id, kept): neither reset nor doubled.
        again = [Rig(cfg, store, clock) for store in (first, second)]
        for rig in again:
            assert rig.operate.boot() is None
        assert [fleet(rig) for rig in again] == [[("iris", 220, 50)]] * 2
        assert [fleet(rig, "accuracy") for rig in again] == [[("iris", 12, 4)]] * 2
        assert [[(i.id, i.model) for i in rig.incidents] for rig in again] == [
            [(1, "wine")],
            [(1, "iris")],
        ]
    finally:
        first.close()
        second.close()


async def test_an_outage_split_over_two_gateways_pages_on_the_fleets_events(
    tmp_path: Path,
) -> None:
    """50 events per gateway are under min_events (80) for each alone; 100 together page."""
    clock = ManualClock(EPOCH)
    url = default_url(tmp_path / "a")
    stores = [Store.open(tmp_path / name, url, wall=clock.now) for name in ("a", "b")]
    try:
        data = config().model_dump(mode="json", exclude_defaults=True)
        data["models"]["iris"]["slo"] = {"min_events": 80}
        rigs = [Rig(parse_config(data), store, clock) for store in stores]
        alerts: list[list[BurnAlert]] = [[], []]
        for rig, seen in zip(rigs, alerts, strict=True):
            rig.bus.subscribe(seen.append, (BurnAlert,))  # type: ignore[arg-type]
            assert rig.operate.boot() is None
        for _ in range(10):  # 5 failures a second on each
            for rig in rigs:
                for _ in range(5):
                    rig.request(503)
            await clock.advance(1.0)
        for rig in rigs:  # what the save loop does, then the judge loop
            rig.operate.judge()
            assert await rig.operate.save()
        assert alerts == [[], []]  # 50 events each: too few alone
        for rig in rigs:
            assert await rig.operate.merge_peers()
            rig.operate.judge()
        for seen in alerts:
            assert ("iris", "page", True) in {(a.model, a.severity, a.firing) for a in seen}
        assert all(fleet(rig) == [("iris", 100, 100)] for rig in rigs)
    finally:
        for store in stores:
            store.close()


async def test_a_restored_backup_carries_budgets_and_incidents(tmp_path: Path) -> None:
    clock = ManualClock(EPOCH)
    store = Store.open(tmp_path / "a", wall=clock.now)
    try:
        rig = Rig(config(), store, clock)
        assert rig.operate.boot() is None
        await rig.seconds(20, status=503)
        rig.bus.emit(PanicChanged("iris", "v1", True))
        assert await rig.operate.save()
        budgets = rig.operate.slo_status()["slos"]
        backup(store, tmp_path / "a", tmp_path / "backup.tar")
    finally:
        store.close()
    restore(tmp_path / "backup.tar", tmp_path / "b", wall=clock.now)
    restored = Store.open(tmp_path / "b", wall=clock.now)
    try:
        again = Rig(config(), restored, clock)
        assert again.operate.boot() is None
        assert [(i.id, i.model, i.cause) for i in again.incidents] == [(1, "iris", "infra")]
        assert [(r["events"], r["bad"]) for r in again.operate.slo_status()["slos"]] == [
            (r["events"], r["bad"]) for r in budgets
        ]
    finally:
        restored.close()


async def test_every_replica_unavailable_or_unhealthy_is_a_signal() -> None:
    rig = Rig(config())
    rig.bus.emit(HealthChanged("iris", "v1", "r0", False, "probe timed out"))
    rig.bus.emit(ReplicaStateChanged("wine", "v2", "r0", False, "exited 137"))
    iris, wine = rig.incidents
    assert "every replica of iris/v1 is out (1 of 1 unhealthy)" in iris.title
    assert "every replica of wine/v2 is out (1 of 1 unavailable)" in wine.title
    assert (iris.cause, wine.cause) == ("infra", "infra")
    rig.bus.emit(ReplicaStateChanged("wine", "v2", "r0", True, "started"))
    rig.bus.emit(ReplicaStateChanged("wine", "v2", "r0", False, "exited 137"))
    assert len(wine.signals) == 2  # out again: joins
    rig.bus.emit(ReplicaStateChanged("wine", "v9", "r0", False, "not served"))
    assert len(rig.incidents) == 2


async def test_an_incident_opened_before_any_request_suffered_detected_in_zero() -> None:
    rig = Rig(config())
    rig.bus.emit(ReplicaStateChanged("iris", "v1", "r0", False, "exited 137"))
    await rig.clock.advance(0.01)
    rig.request(200, degraded=True)
    (incident,) = rig.incidents
    assert incident.first_impact_at == rig.clock.now()
    assert incident.mttd_s == 0.0


async def test_the_cause_comes_from_recent_failures_only() -> None:
    rig = Rig(config(join_window_s=600))
    for _ in range(50):
        rig.bus.emit(PoisonDetected("iris", "v1", "r0", "nan in, crash"))
    await rig.clock.advance(3600)  # long ago now
    rig.failing_replica()
    rig.bus.emit(PanicChanged("iris", "v1", True))
    (incident,) = rig.incidents
    assert incident.cause == "infra"
    assert incident.failure_classes == {"replica": 1}


class Flaky:
    """A real store that refuses every call while ``down``."""

    def __init__(self, store: Store) -> None:
        self.real = store
        self.down = True

    def __getattr__(self, name: str) -> Any:
        if self.down and name == "engine":
            raise StoreUnreachable(f"control store {self.real.url} is unreachable")
        return getattr(self.real, name)


async def test_a_gateway_started_while_the_store_was_down_merges_when_it_answers(
    tmp_path: Path,
) -> None:
    clock = ManualClock(EPOCH)
    store = Store.open(tmp_path / "data", wall=clock.now)
    try:
        before = Rig(config(), store, clock)
        assert before.operate.boot() is None
        await before.seconds(60)
        before.failing_replica()
        before.bus.emit(PanicChanged("iris", "v1", True))
        await before.operate.close()

        flaky = Flaky(store)
        during = Rig(config(), flaky, clock)
        note = during.operate.boot()
        assert note is not None
        assert "start empty here and are merged when it answers" in note
        await during.seconds(30, status=503)
        during.bus.emit(RequestFinished("wine", "v1", 503, FailureClass.OVERLOAD, 0.01))
        during.bus.emit(PanicChanged("wine", "v1", True))
        during.operate.incidents.acknowledge(1, "bob")  # the wine incident, here
        assert not await during.operate.save()
        flaky.down = False
        assert await during.operate.save()
        assert [(i.id, i.model, i.state) for i in during.incidents] == [
            (1, "iris", "open"),
            (2, "wine", "acknowledged"),
        ]
        rows = {r["model"]: (r["events"], r["bad"]) for r in during.operate.slo_status()["slos"]}
        assert rows == {"iris": (450, 150), "wine": (1, 1)}

        after = Rig(config(), store, clock)
        assert after.operate.boot() is None
        rows = {r["model"]: (r["events"], r["bad"]) for r in after.operate.slo_status()["slos"]}
        assert rows == {"iris": (450, 150), "wine": (1, 1)}
        assert [(i.id, i.model) for i in after.incidents] == [(1, "iris"), (2, "wine")]
        actions = [(e.action, e.target) for e in store.audit_entries() if "incident" in e.target]
        assert actions == [
            ("incident.opened", "incident:1"),
            ("incident.opened", "incident:2"),
            ("incident.acknowledged", "incident:2"),
        ]
    finally:
        store.close()


async def test_buckets_past_their_window_leave_the_store(tmp_path: Path) -> None:
    clock = ManualClock(EPOCH)
    store = Store.open(tmp_path / "data", wall=clock.now)
    try:
        rig = Rig(config(), store, clock)
        assert rig.operate.boot() is None
        await rig.seconds(120)
        assert await rig.operate.save()
        await rig.clock.advance(4 * 86_400)  # past the minute buckets' 3 days
        await rig.seconds(1)
        assert await rig.operate.save()
        with store.engine.read() as conn:
            rows = conn.execute(select(slo_buckets.c.resolution, slo_buckets.c.start)).all()
        minutes = [start for resolution, start in rows if resolution == 60]
        hours = [start for resolution, start in rows if resolution == 3600]
        assert minutes == [int(clock.now() - 1) // 60 * 60]  # only the new one
        assert len(hours) == 2  # the old hour stays: the budget window is 30 days
        assert rig.operate.slo_status()["slos"][0]["events"] == 605
    finally:
        store.close()


async def test_the_rollout_controllers_rollback_opens_an_incident() -> None:
    rig = Rig(config())
    rig.bus.emit(RolloutDecided("iris", "r-1", "stepped", "started: 10%", "ops"))
    assert rig.incidents == []
    rig.bus.emit(RolloutDecided("iris", "r-1", "rolled-back", "errors 5% > 1%", "failsoft"))
    (incident,) = rig.incidents
    assert incident.cause == "logic"
    texts = [entry["text"] for entry in incident.timeline]
    assert any("action=stepped" in text for text in texts)
    assert any("action=rolled-back" in text for text in texts)
