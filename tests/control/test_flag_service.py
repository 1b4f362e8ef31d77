"""FlagService: flags checked before anything changes, stored with an audit entry, in force
at once; expiry reverting on its own (on a ManualClock); followers of a shared store; a
gateway starting while its store is down.

Runs on SQLite and on PostgreSQL (the store suite's ``target`` fixture).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from failsoft.clock import ManualClock
from failsoft.config import parse_config
from failsoft.control.flag_service import SNAPSHOT, FlagService
from failsoft.control.flags import Context
from failsoft.control.revisions import StoreUnavailable
from failsoft.errors import BadRequest, NotFound
from failsoft.observe.events import EventBus, FlagChanged
from failsoft.runtime import Runtime
from failsoft.store import Store, StoreError, StoreUnreachable
from tests.store.conftest import Target

EPOCH = 1_800_000_000.0  # the tests' wall clock starts here (ManualClock.now)


def runtime(clock: ManualClock) -> Runtime:
    python = {"backend": "python", "function": "tests._runtime_models:healthy"}
    model = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
        "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]}],
        "versions": {"v1": python, "v2": python},
        "default_version": "v1",
    }
    config = parse_config({"models": {"m": model, "m.x": model}})
    return Runtime(config, EventBus(), clock=clock)


class Gateway:
    """A runtime and its flag service over one store (not started: no replicas load)."""

    def __init__(self, store: Store, data_dir: Path, clock: ManualClock) -> None:
        self.store = store
        self.runtime = runtime(clock)
        self.flags = FlagService(store, self.runtime, data_dir, clock=clock, wall=clock.now)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(EPOCH)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def store(target: Target, data_dir: Path, clock: ManualClock) -> Any:
    opened = target.open(data_dir, clock.now)  # type: ignore[arg-type]
    yield opened
    opened.close()


@pytest.fixture
async def gateway(store: Store, data_dir: Path, clock: ManualClock) -> Any:
    made = Gateway(store, data_dir, clock)
    assert made.flags.boot() is None
    made.flags.start()
    yield made
    await made.flags.close()


def actions(store: Store) -> list[tuple[str, str, str]]:
    return [(e.action, e.target, e.actor) for e in store.audit_entries()]


BOOL = {"kind": "boolean", "value": True}


async def test_a_switch_is_in_force_when_set_returns_and_audited(gateway: Gateway) -> None:
    spec = await gateway.flags.set("failsoft.halt.m.v1", BOOL, actor="ops")

    assert spec.value is True
    assert gateway.runtime.switches["m"].halted_versions == {"v1"}
    assert gateway.store.flags() == {"failsoft.halt.m.v1": BOOL}
    assert actions(gateway.store)[-1] == ("flag.set", "flag:failsoft.halt.m.v1", "ops")

    await gateway.flags.clear("failsoft.halt.m.v1", actor="ops")
    assert gateway.runtime.switches == {}
    assert gateway.store.flags() == {}
    assert actions(gateway.store)[-1] == ("flag.cleared", "flag:failsoft.halt.m.v1", "ops")
    with pytest.raises(NotFound, match=r"there is no flag 'failsoft\.halt\.m\.v1'"):
        await gateway.flags.clear("failsoft.halt.m.v1", actor="ops")


async def test_every_switch_kind_compiles_for_its_model(gateway: Gateway) -> None:
    await gateway.flags.set("failsoft.halt.m.x", BOOL, actor="ops")  # model "m.x", halted
    await gateway.flags.set("failsoft.disable.m.v2", BOOL, actor="ops")
    await gateway.flags.set(
        "failsoft.feature.m.hedging", {"kind": "boolean", "value": False}, actor="ops"
    )

    switches = gateway.runtime.switches
    assert switches["m.x"].halted
    assert switches["m"].disabled_versions == {"v2"}
    assert switches["m"].features_off == {"hedging"}
    assert not switches["m"].halted


async def test_a_targeted_switch_is_evaluated_per_request(gateway: Gateway) -> None:
    spec = {**BOOL, "value": False, "rules": [{"when": {"tenants": ["acme"]}, "value": True}]}
    await gateway.flags.set("failsoft.halt.m.v1", spec, actor="ops")

    switches = gateway.runtime.switches["m"]
    assert not switches.halted_versions
    acme = switches.for_request(Context("k", "acme"), EPOCH, "m")
    other = switches.for_request(Context("k", "other"), EPOCH, "m")
    assert acme.halted_versions == {"v1"}
    assert not other.halted_versions


BAD = [
    ("colour", {"kind": "boolean", "value": "yes"}, "value: 'yes' is not a boolean"),
    (
        "limit",
        {"kind": "integer", "value": 1, "rules": [{"when": {"tenants": ["a"]}, "value": 1.5}]},
        "rules[0].value: 1.5 is not a integer",
    ),
    ("limit", {"kind": "integer", "value": 1, "colour": 2}, "colour: unknown key"),
    ("limit", {"kind": "number", "value": 1}, "kind: Input should be"),
    ("limit", {"value": 1}, "kind: Field required"),
    ("bad key!", BOOL, "key: 'bad key!' is not a flag key"),
    ("ok", [1, 2], "a flag is a JSON object"),
    ("ok", {**BOOL, "expires_at": EPOCH - 1}, "expires_at: 2027-01-15T07:59:59"),
    ("ok", {**BOOL, "expires_at": EPOCH}, "is in the past"),
    ("ok", {**BOOL, "expires_in_s": -5}, "expires_in_s: -5 is not a number of seconds"),
    ("ok", {**BOOL, "expires_in_s": 5, "expires_at": EPOCH + 9}, "not both"),
    ("ok", {**BOOL, "expires_in_s": 400 * 86_400}, "expires_in_s: 34560000"),
    ("failsoft.halt.m.v9", BOOL, "key: 'failsoft.halt.m.v9': model 'm' has no version 'v9'"),
    ("failsoft.halt.nope", BOOL, "no model 'nope' is served (models: m, m.x)"),
    ("failsoft.disable.m", BOOL, "needs a version: failsoft.disable.m.VERSION"),
    (
        "failsoft.feature.m.turbo",
        {**BOOL, "value": False},
        "one of hedging, caching, shadowing, retries, not 'turbo'",
    ),
    ("failsoft.pause.m", BOOL, "reserved prefix 'failsoft.' but is no switch"),
    ("failsoft.halt.m", {"kind": "string", "value": "yes"}, "kind: the switch"),
]


@pytest.mark.parametrize(("key", "data", "message"), BAD)
async def test_a_bad_flag_is_refused_naming_the_field_and_nothing_changes(
    gateway: Gateway, key: str, data: Any, message: str
) -> None:
    await gateway.flags.set("kept", {"kind": "string", "value": "a"}, actor="ops")
    before = actions(gateway.store)

    with pytest.raises(BadRequest) as refused:
        await gateway.flags.set(key, data, actor="ops")

    assert message in refused.value.message
    assert gateway.store.flags() == {"kept": {"kind": "string", "value": "a"}}
    assert list(gateway.flags.list()) == ["kept"]
    assert gateway.runtime.switches == {}
    assert actions(gateway.store) == before


async def test_an_expiry_reverts_the_flip_on_its_own_at_that_moment(
    gateway: Gateway, clock: ManualClock
) -> None:
    await gateway.flags.set("failsoft.halt.m", {**BOOL, "expires_in_s": 60}, actor="ops")
    assert gateway.runtime.switches["m"].halted

    await clock.advance(59.9)
    assert gateway.runtime.switches["m"].halted
    await clock.advance(0.1)
    assert gateway.runtime.switches == {}  # out of force at once, before the store hears of it
    assert gateway.flags.get("failsoft.halt.m") is None

    await gateway.flags.drain()
    assert gateway.store.flags() == {}
    entry = gateway.store.audit_entries()[-1]
    assert (entry.action, entry.target, entry.actor) == (
        "flag.cleared",
        "flag:failsoft.halt.m",
        "failsoft",
    )
    assert entry.detail == {"reason": "expired"}


async def test_a_flag_set_again_outlives_its_old_expiry(
    gateway: Gateway, clock: ManualClock
) -> None:
    await gateway.flags.set("failsoft.halt.m", {**BOOL, "expires_in_s": 60}, actor="ops")
    await gateway.flags.set("failsoft.halt.m", BOOL, actor="ops")

    await clock.advance(120)
    await gateway.flags.drain()

    assert gateway.runtime.switches["m"].halted
    assert gateway.store.flags() == {"failsoft.halt.m": BOOL}
    assert [a for a, _, _ in actions(gateway.store)] == ["flag.set", "flag.set"]


async def test_followers_pick_up_flags_set_cleared_and_expired_elsewhere(
    target: Target, tmp_path: Path, clock: ManualClock
) -> None:
    shared = tmp_path / "shared"
    stores = [target.open(shared, clock.now) for _ in range(2)]  # type: ignore[arg-type]
    leader, follower = (Gateway(s, shared, clock) for s in stores)
    for gateway in (leader, follower):
        gateway.flags.boot()
        gateway.flags.start()
    try:
        await leader.flags.set("failsoft.disable.m.v1", BOOL, actor="ops")
        assert "m" not in follower.runtime.switches
        assert await follower.flags.poll()
        assert follower.runtime.switches["m"].disabled_versions == {"v1"}
        assert not await follower.flags.poll()  # nothing new

        banner = {"kind": "string", "value": "x", "expires_in_s": 30}
        await leader.flags.set("banner", banner, actor="ops")
        assert await follower.flags.poll()
        assert follower.flags.get("banner") is not None
        await clock.advance(30)  # both expire it locally; the store is cleared once
        await leader.flags.drain()
        await follower.flags.drain()
        assert follower.flags.get("banner") is None
        await follower.flags.poll()
        cleared = [a for a in actions(leader.store) if a[0] == "flag.cleared"]
        assert cleared == [("flag.cleared", "flag:banner", "failsoft")]

        await leader.flags.clear("failsoft.disable.m.v1", actor="ops")
        assert await follower.flags.poll()
        assert follower.runtime.switches == {}
    finally:
        for gateway in (leader, follower):
            await gateway.flags.close()
            gateway.store.close()


class DownStore:
    """A store that cannot be reached."""

    def flags(self) -> dict[str, Any]:
        raise StoreError("connection refused")


async def test_a_gateway_starting_while_the_store_is_down_obeys_its_last_flags(
    gateway: Gateway, data_dir: Path, clock: ManualClock
) -> None:
    await gateway.flags.set("failsoft.halt.m.v2", BOOL, actor="ops")
    assert (data_dir / SNAPSHOT).is_file()

    restarted = Gateway(DownStore(), data_dir, clock)  # type: ignore[arg-type]
    note = restarted.flags.boot()

    assert note is not None
    assert "unreachable (connection refused)" in note
    assert "obeying the 1 flag(s)" in note
    assert restarted.runtime.switches["m"].halted_versions == {"v2"}


async def test_a_change_while_the_store_is_down_is_refused_and_nothing_changes(
    gateway: Gateway, data_dir: Path, clock: ManualClock
) -> None:
    class Refusing:
        def set_flag(self, *args: Any, **kwargs: Any) -> None:
            raise StoreUnreachable("control store at sqlite:///x is unreachable")

    down = FlagService(Refusing(), gateway.runtime, data_dir, clock=clock, wall=clock.now)  # type: ignore[arg-type]

    with pytest.raises(StoreUnavailable, match="unreachable") as refused:
        await down.set("failsoft.halt.m", BOOL, actor="ops")

    assert refused.value.status == 503
    assert gateway.runtime.switches == {}


async def test_every_flip_is_an_event_on_the_bus(gateway: Gateway, clock: ManualClock) -> None:
    seen: list[FlagChanged] = []
    gateway.runtime.bus.subscribe(seen.append, (FlagChanged,))  # type: ignore[arg-type]
    await gateway.flags.set("failsoft.halt.m", {**BOOL, "expires_in_s": 60}, actor="ops")
    await gateway.flags.set("banner", {"kind": "string", "value": "blue"}, actor="ann")
    await gateway.flags.clear("banner", actor="ann")
    await clock.advance(60)
    assert [(e.key, e.value, e.actor) for e in seen] == [
        ("failsoft.halt.m", True, "ops"),
        ("banner", "blue", "ann"),
        ("banner", None, "ann"),
        ("failsoft.halt.m", None, "failsoft"),
    ]
