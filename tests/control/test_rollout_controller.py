"""RolloutController on a ManualClock: a step in force and audited when start returns; a
failing candidate rolled back at the next check and the rollback verified; a good one
stepped up and promoted; too little evidence extended, then held, with the sample sizes;
bad input refused naming the field with nothing changed; operator actions; a new
controller on the same store resuming at the same step; and a poll of the store that a
pause overtakes leaving the pause in force.

The replicas are real (python backend, started) and so is the store (SQLite and
PostgreSQL); the data plane's events are emitted on the real bus as the server emits them.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from failsoft.clock import ManualClock
from failsoft.config import parse_config
from failsoft.control.rollout_controller import VERIFY_S, RolloutController
from failsoft.control.rollouts import Status
from failsoft.errors import BadRequest, FailureClass, NotFound
from failsoft.observe.events import EventBus, RequestFinished, VersionAnswered
from failsoft.pipeline.version import AttemptFailed, AttemptStarted
from failsoft.routing.split import BUCKETS
from failsoft.runtime import Runtime
from failsoft.store import Store, StoreError, StoreUnreachable
from tests.store.conftest import Target

EPOCH = 1_800_000_000.0
TICK_S = 0.25
PYTHON = {"backend": "python", "function": "tests._runtime_models:healthy"}
FAST = {
    "model": "m",
    "to": "v2",
    "steps": [10, 50, 100],
    "step_s": 10,
    "check_every_s": 5,
    "analysis": {
        "min_requests": 50,
        "min_latency_samples": 50,
        "min_output_samples": 50,
        "error_rate_max_increase": 0.05,
        "contract_violation_max_rate": 0.05,
    },
}


def make_runtime(clock: ManualClock) -> Runtime:
    model = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
        "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1], "labels": [0, 1]}],
        "versions": {"v1": PYTHON, "v2": PYTHON},
        "default_version": "v1",
        "health_check": {"inputs": {"x": [[2.0, 1.0]]}, "expect": {"label": [1]}},
    }
    return Runtime(parse_config({"models": {"m": model}}), EventBus(), clock=clock)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(EPOCH)


@pytest.fixture
def store(target: Target, tmp_path: Path, clock: ManualClock) -> Any:
    opened = target.open(tmp_path / "data", clock.now)  # type: ignore[arg-type]
    yield opened
    opened.close()


class Gateway:
    def __init__(self, store: Store, clock: ManualClock) -> None:
        self.clock = clock
        self.runtime = make_runtime(clock)
        self.rollouts = RolloutController(store, self.runtime, clock=clock, wall=clock.now)

    def traffic(self, version: str, requests: int, *, failing: float = 0.0, label: int = 1) -> None:
        """What the data plane emits for ``requests`` answered by ``version``."""
        bus = self.runtime.bus
        for index in range(requests):
            bus.emit(AttemptStarted("m", version, "r0", "first"))
            if index < failing * requests:
                bus.emit(AttemptFailed("m", version, "r0", FailureClass.REPLICA, "500", 0.002))
                continue
            bus.emit(RequestFinished("m", version, 200, None, 0.002, f"m/{version}/r0"))
            bus.emit(VersionAnswered("m", version, {"label": np.array([label])}))

    async def start(self, data: Any) -> Any:
        """Start a rollout, and let its loop begin waiting for the clock."""
        state = await self.rollouts.start_rollout(data, actor="ops")
        await self.rollouts.drain()
        return state

    async def step(self, seconds: float) -> None:
        """Move the clock on, and let the checks it wakes run to their end; in steps shorter
        than a probe's timeout, so no real inference in flight meets a jump of the clock."""
        for _ in range(round(seconds / TICK_S)):
            await self.clock.advance(TICK_S)
            await self.rollouts.drain()


@pytest.fixture
async def gateway(store: Store, clock: ManualClock) -> Any:
    made = Gateway(store, clock)
    await made.runtime.start()
    assert made.rollouts.boot() is None
    made.rollouts.start()
    yield made
    await made.rollouts.close()
    await made.runtime.close()


def actions(store: Store) -> list[tuple[str, str]]:
    return [(e.action, e.actor) for e in store.audit_entries() if e.action.startswith("rollout")]


async def test_start_puts_the_first_step_in_force_and_audits_it(
    gateway: Gateway, store: Store
) -> None:
    state = await gateway.start(FAST)
    split = gateway.runtime.splits["m"]
    assert (split.stable, split.candidate, split.weight) == ("v1", "v2", BUCKETS // 10)
    assert state.status is Status.PROGRESSING
    assert actions(store) == [("rollout.started", "ops"), ("rollout.stepped", "ops")]
    row = store.rollout(state.id)
    assert row is not None
    assert row.status == "progressing"
    assert row.state["stage"] == 0


async def test_a_failing_candidate_is_rolled_back_at_the_next_check_and_verified(
    gateway: Gateway, store: Store
) -> None:
    state = await gateway.start(FAST)
    gateway.traffic("v1", 600)
    gateway.traffic("v2", 80, failing=0.25)
    await gateway.step(5)  # the first check: enough samples, the error rate fails
    assert "m" not in gateway.runtime.splits  # the stable serves all, from the next request
    shown = gateway.rollouts.describe(*gateway.rollouts.find(state.id))  # type: ignore[misc]
    assert shown["status"] == "rolled-back"
    failed = [c for c in shown["analysis"]["checks"] if c["verdict"] == "fail"]
    assert failed[0]["name"] == "replica error rate"
    assert failed[0]["value"] == pytest.approx(0.25)
    assert failed[0]["samples"] == 80
    assert failed[0]["stable_samples"] == 600
    entry = next(e for e in store.audit_entries() if e.action == "rollout.rolled-back")
    assert entry.actor == "failsoft"
    audited = entry.detail["analysis"]["checks"][0]
    assert {"value", "threshold", "samples", "verdict"} <= set(audited)
    assert entry.detail["switch_ms"] < 1000
    gateway.traffic("v1", 20)
    await gateway.step(VERIFY_S)
    verified = gateway.rollouts.find(state.id)[1].verified  # type: ignore[index]
    assert verified is not None
    assert verified["ok"] is True
    assert verified["stable_share"] == 1.0
    assert verified["probes_passed"] >= 1
    assert ("rollout.verified", "failsoft") in actions(store)


async def test_a_good_candidate_steps_up_and_is_promoted(gateway: Gateway, store: Store) -> None:
    state = await gateway.start(FAST)
    gateway.traffic("v1", 900)
    gateway.traffic("v2", 100)
    await gateway.step(5)  # mid-step: the checks pass, but the step is not over
    assert gateway.runtime.splits["m"].weight == BUCKETS // 10
    await gateway.step(5)
    assert gateway.runtime.splits["m"].weight == BUCKETS // 2  # 50%
    gateway.traffic("v1", 500)
    gateway.traffic("v2", 500)
    await gateway.step(10)
    promoted = gateway.rollouts.find(state.id)
    assert promoted is not None
    assert promoted[1].status is Status.PROMOTED
    assert gateway.runtime.splits["m"].weight == BUCKETS  # no revisions here: the split stays
    assert [a for a, _ in actions(store)] == [
        "rollout.started",
        "rollout.stepped",
        "rollout.stepped",
        "rollout.promoted",
    ]


async def test_too_little_evidence_extends_then_holds_with_the_sample_sizes(
    gateway: Gateway, store: Store
) -> None:
    state = await gateway.start({**FAST, "max_extensions": 2})
    for _ in range(6):  # 3 windows of 10 s, a trickle of traffic
        gateway.traffic("v1", 9)
        gateway.traffic("v2", 1)
        await gateway.step(5)
    held = gateway.rollouts.find(state.id)
    assert held is not None
    assert held[1].status is Status.PAUSED
    assert [a for a, _ in actions(store)][-3:] == [
        "rollout.extended",
        "rollout.extended",
        "rollout.held",
    ]
    last = held[1].history[-1]
    samples = {c["name"]: c["samples"] for c in last["checks"]}
    assert samples["replica error rate"] == 6  # below the minimum of 50: no decision on it
    assert all(c["verdict"] != "pass" for c in last["checks"] if c["name"] != "golden probes")
    assert gateway.runtime.splits["m"].weight == BUCKETS // 10  # held where it was


async def test_bad_input_is_refused_naming_the_field_and_nothing_changes(
    gateway: Gateway, store: Store
) -> None:
    cases = [
        ({"model": "m", "to": "v9"}, "to: version 'v9' of 'm' is not loaded"),
        ({"model": "nope", "to": "v2"}, "model: no model 'nope' is served"),
        ({"model": "m", "to": "v1"}, "to: 'v1' is already the default version"),
        ({"model": "m", "to": "v2", "steps": [10, 60]}, "steps: the last step is 60"),
        ({"model": "m", "to": "v2", "steps": [50, 10, 100]}, "steps: [50, 10, 100] must increase"),
        (
            {"model": "m", "to": "v2", "strategy": "ab", "weights": {"v1": 60, "v2": 50}},
            "weights: v1 60 + v2 50 = 110, they must add up to 100",
        ),
        (
            {"model": "m", "to": "v2", "strategy": "ab", "weights": {"v0": 50, "v2": 50}},
            "weights: name the stable version 'v1'",
        ),
        ({"model": "m", "to": "v2", "step_s": -1}, "step_s: Input should be greater than 0"),
        ({"model": "m", "to": "v2", "colour": "red"}, "colour: unknown key"),
        ([1, 2], "a rollout is a JSON object"),
    ]
    for data, message in cases:
        with pytest.raises(BadRequest) as refused:
            await gateway.rollouts.start_rollout(data, actor="ops")
        assert message in refused.value.message, (data, refused.value.message)
    assert store.rollouts() == []
    assert gateway.runtime.splits == {}
    await gateway.start(FAST)
    with pytest.raises(BadRequest, match=r"model: 'm' already has rollout m-.* in progress"):
        await gateway.rollouts.start_rollout(FAST, actor="ops")
    assert len(store.rollouts()) == 1


async def test_pause_holds_resume_moves_on_abort_goes_back_at_once(
    gateway: Gateway, store: Store
) -> None:
    state = await gateway.start(FAST)
    await gateway.rollouts.pause("m", actor="ana")
    gateway.traffic("v1", 900)
    gateway.traffic("v2", 100)
    await gateway.step(20)
    assert gateway.runtime.splits["m"].weight == BUCKETS // 10  # paused: nothing moves it
    with pytest.raises(BadRequest, match="is paused already"):
        await gateway.rollouts.pause(state.id, actor="ana")
    await gateway.rollouts.resume(state.id, actor="ana")
    await gateway.rollouts.abort("m", actor="bob")
    assert "m" not in gateway.runtime.splits
    with pytest.raises(BadRequest, match="has ended \\(aborted\\): nothing to promote"):
        await gateway.rollouts.promote("m", actor="bob")
    with pytest.raises(NotFound):
        await gateway.rollouts.abort("other", actor="bob")
    assert ("rollout.paused", "ana") in actions(store)
    assert ("rollout.resumed", "ana") in actions(store)
    assert ("rollout.aborted", "bob") in actions(store)


async def test_a_new_controller_resumes_at_the_same_step(
    gateway: Gateway, store: Store, clock: ManualClock
) -> None:
    state = await gateway.start(FAST)
    gateway.traffic("v1", 900)
    gateway.traffic("v2", 100)
    await gateway.step(10)
    assert gateway.runtime.splits["m"].weight == BUCKETS // 2
    await gateway.rollouts.close()
    restarted = Gateway(store, clock)
    assert restarted.rollouts.boot() is None
    split = restarted.runtime.splits["m"]
    assert (split.rollout, split.weight) == (state.id, BUCKETS // 2)
    resumed = restarted.rollouts.find("m")
    assert resumed is not None
    assert resumed[1].stage == 1
    assert resumed[1].status is Status.PROGRESSING


async def test_gateways_sharing_a_store_follow_each_others_rollouts(
    gateway: Gateway, store: Store, clock: ManualClock
) -> None:
    other = Gateway(store, clock)
    await other.runtime.start()
    try:
        assert other.rollouts.boot() is None
        state = await gateway.start(FAST)
        assert await other.rollouts.poll() is True  # started elsewhere: in force here too
        split = other.runtime.splits["m"]
        assert (split.rollout, split.weight) == (state.id, BUCKETS // 10)
        assert await other.rollouts.poll() is False  # nothing new
        await other.rollouts.pause("m", actor="ana")  # an operator, on the other gateway
        assert await gateway.rollouts.poll() is True
        assert gateway.rollouts.find("m")[1].status is Status.PAUSED  # type: ignore[index]
        await gateway.rollouts.resume("m", actor="ana")
        await other.rollouts.poll()
        gateway.traffic("v1", 600)
        gateway.traffic("v2", 80, failing=0.25)
        await gateway.step(5)  # this gateway's analysis fails the candidate
        assert "m" not in gateway.runtime.splits
        assert await other.rollouts.poll() is True
        assert "m" not in other.runtime.splits  # rolled back there too
        assert other.rollouts.find(state.id)[1].status is Status.ROLLED_BACK  # type: ignore[index]
        with pytest.raises(StoreError, match="has ended \\(rolled-back\\)"):  # a late write
            store.update_rollout(
                state.id, status="progressing", state={}, actor="late", action="stepped"
            )
    finally:
        await other.runtime.close()


async def test_a_rollback_while_the_store_is_down_holds_and_is_stored_later(
    gateway: Gateway, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = await gateway.start(FAST)
    writes = store.update_rollout

    def down(*args: Any, **kwargs: Any) -> Any:
        raise StoreUnreachable("the store is down (test)")

    monkeypatch.setattr(store, "update_rollout", down)
    gateway.traffic("v1", 600)
    gateway.traffic("v2", 80, failing=0.25)
    await gateway.step(5)
    assert "m" not in gateway.runtime.splits  # in force, whatever the store
    row = store.rollout(state.id)
    assert row is not None
    assert row.status == "progressing"  # not stored yet
    monkeypatch.setattr(store, "update_rollout", writes)
    await gateway.rollouts.poll()
    row = store.rollout(state.id)
    assert row is not None
    assert row.status == "rolled-back"
    restarted = Gateway(store, gateway.clock)
    assert restarted.rollouts.boot() is None
    assert restarted.runtime.splits == {}  # a restart does not bring the candidate back


class ReadHeldBack:
    """The store, but once ``armed``, ``rollouts`` hands back what it read only when the
    test says so: a poll whose read is overtaken by a change this gateway makes meanwhile."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.armed = False
        self.read = threading.Event()
        self.go_on = threading.Event()

    def rollouts(self, **kwargs: Any) -> Any:
        rows = self._store.rollouts(**kwargs)
        if not self.armed:
            return rows
        self.armed = False
        self.read.set()
        assert self.go_on.wait(30), "the test never let the read go on"
        return rows

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


async def test_a_poll_that_read_before_a_pause_does_not_undo_it(
    store: Store, clock: ManualClock
) -> None:
    held = ReadHeldBack(store)
    gateway = Gateway(held, clock)  # type: ignore[arg-type]
    await gateway.runtime.start()
    try:
        assert gateway.rollouts.boot() is None
        await gateway.start(FAST)
        held.armed = True
        polling = asyncio.ensure_future(gateway.rollouts.poll())
        await asyncio.to_thread(held.read.wait, 30)  # the rows read say "progressing"
        await gateway.rollouts.pause("m", actor="ana")
        held.go_on.set()
        assert await polling is False  # its rows may predate the pause: read again next time
        assert gateway.rollouts.find("m")[1].status is Status.PAUSED  # type: ignore[index]
        assert await gateway.rollouts.poll() is False  # the store says paused too
        assert gateway.rollouts.find("m")[1].status is Status.PAUSED  # type: ignore[index]
    finally:
        held.go_on.set()
        await gateway.rollouts.close()
        await gateway.runtime.close()
