"""The instances table and the NOTIFY a change sends, on SQLite and PostgreSQL.

Liveness is measured on the injected wall clock: a row is alive for three
heartbeat periods after its last beat, stale after, and removed by
``expire_instances`` once older than the expiry. On PostgreSQL a flag
change and an applied revision send NOTIFY on the store's channel, and only
when they commit.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from failsoft.control.instances import InstanceRegistry
from failsoft.store import Store, StoreUnreachable
from failsoft.store.engine import deadline
from failsoft.store.notify import CHANNEL_SQL

from .conftest import Target, Wall


def beat(store: Store, instance_id: str, *, revision: int = 1, heartbeat_s: float = 2.0) -> None:
    store.beat_instance(
        instance_id,
        address=f"http://{instance_id}:8000",
        host=instance_id,
        pid=100,
        started_at=1_700_000_000.0,
        revision=revision,
        heartbeat_s=heartbeat_s,
        wakeups="poll",
    )


def test_a_beat_registers_then_refreshes_one_row(store: Store, wall: Wall) -> None:
    beat(store, "gw-a", revision=1)
    wall.advance(1.5)
    beat(store, "gw-a", revision=2)
    beat(store, "gw-b", revision=2)
    rows = store.instances()
    assert [(row.id, row.revision) for row in rows] == [("gw-a", 2), ("gw-b", 2)]
    assert rows[0].started_at == "2023-11-14T22:13:20.000000Z"
    assert rows[0].heartbeat_at == "2023-11-14T22:13:21.500000Z"
    assert rows[0].as_json(wall.now)["alive"] is True


def test_a_row_is_stale_after_three_missed_beats_and_expires_later(
    store: Store, wall: Wall
) -> None:
    beat(store, "gw-a")
    beat(store, "gw-b")
    wall.advance(6.0)  # three periods of 2 s: still alive
    beat(store, "gw-b")
    assert [row.alive(wall.now) for row in store.instances()] == [True, True]
    wall.advance(0.1)
    a, b = store.instances()
    assert (a.alive(wall.now), b.alive(wall.now)) == (False, True)
    assert a.as_json(wall.now)["age_s"] == pytest.approx(6.1)
    assert store.expire_instances(60.0) == []  # stale, not yet expired
    wall.advance(60.0)
    beat(store, "gw-b")
    assert store.expire_instances(60.0) == ["gw-a"]
    assert [row.id for row in store.instances()] == ["gw-b"]


def test_a_gateway_that_stops_removes_its_row(store: Store) -> None:
    beat(store, "gw-a")
    assert store.remove_instance("gw-a") is True
    assert store.remove_instance("gw-a") is False
    assert store.instances() == []


# -- NOTIFY ----------------------------------------------------------------------------


@pytest.fixture
def listening(store: Store, target: Target) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    if target.dialect != "postgresql":
        pytest.skip("NOTIFY is PostgreSQL's")
    with psycopg.connect(**store.engine.listen_params(), autocommit=True) as conn:
        row = conn.execute(f"SELECT {CHANNEL_SQL}").fetchone()
        assert row is not None
        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(str(row[0]))))
        yield conn


def heard(conn: psycopg.Connection[tuple[object, ...]], within_s: float = 2.0) -> list[str]:
    """The payloads that arrive within ``within_s`` (after the first, 0.2 s more at most)."""
    payloads: list[str] = []
    end = time.monotonic() + within_s
    while time.monotonic() < end:
        wait = 0.2 if payloads else end - time.monotonic()
        got = [note.payload for note in conn.notifies(timeout=max(wait, 0.01))]
        if not got and payloads:
            break
        payloads += got
    return payloads


@pytest.mark.parametrize("target", ["postgresql"], indirect=True)
def test_flags_revisions_and_rollouts_notify_at_commit(
    store: Store, listening: psycopg.Connection[tuple[object, ...]]
) -> None:
    store.set_flag("demo.enabled", {"kind": "boolean", "value": True}, actor="alice")
    assert heard(listening) == ["flags"]
    store.clear_flag("demo.enabled", actor="alice")
    assert heard(listening) == ["flags"]
    revision = store.add_revision({"models": {}}, actor="alice")
    store.mark_revision(revision.id, "applied", actor="alice")
    assert heard(listening) == ["revision"]
    store.add_rollout("r1", "iris", {"to": "v2"}, {"stage": 0}, actor="alice")
    assert heard(listening) == ["rollouts"]
    store.update_rollout("r1", status="paused", state={"stage": 0}, actor="alice", action="paused")
    assert heard(listening) == ["rollouts"]
    beat(store, "gw-a")  # heartbeats wake nobody
    assert heard(listening, within_s=0.3) == []


@pytest.mark.parametrize("target", ["postgresql"], indirect=True)
def test_a_change_rolled_back_notifies_nobody(
    store: Store, listening: psycopg.Connection[tuple[object, ...]]
) -> None:
    with deadline(time.monotonic() - 1), pytest.raises(StoreUnreachable):
        store.set_flag("demo.enabled", {"kind": "boolean", "value": True}, actor="alice")
    assert store.flags() == {}
    assert heard(listening, within_s=0.3) == []


@pytest.mark.parametrize("target", ["postgresql"], indirect=True)
def test_stores_in_two_schemas_have_two_channels(store: Store, target: Target) -> None:
    with psycopg.connect(**store.engine.listen_params(), autocommit=True) as conn:
        ours = conn.execute(f"SELECT {CHANNEL_SQL}").fetchone()
        conn.execute("SET search_path TO public")
        other = conn.execute(f"SELECT {CHANNEL_SQL}").fetchone()
    assert ours is not None
    assert other is not None
    assert ours[0] != other[0]
    assert len(str(ours[0])) <= 63


# -- the registry's first beat: start-up waits for it, boundedly -------------------------


def registry(store: Store) -> InstanceRegistry:
    return InstanceRegistry(
        store,
        address="http://127.0.0.1:8000",
        revision=lambda: 1,
        wakeups=lambda: "poll",
        heartbeat_s=30.0,
        expire_s=60.0,
    )


def test_a_gateway_is_listed_once_it_has_joined(store: Store) -> None:
    async def start() -> tuple[bool, list[str]]:
        joining = registry(store)
        beating = asyncio.ensure_future(joining.run())
        try:
            return await joining.joined(within_s=10.0), [row.id for row in store.instances()]
        finally:
            beating.cancel()

    joined, listed = asyncio.run(start())
    assert joined is True
    assert len(listed) == 1


def test_a_store_that_refuses_delays_joining_by_the_bound_only(tmp_path: Path) -> None:
    down = Store.open(tmp_path, "postgresql+psycopg://u@127.0.0.1:1/x", unreachable_ok=True)

    async def start() -> tuple[bool, float]:
        joining = registry(down)
        beating = asyncio.ensure_future(joining.run())
        began = time.monotonic()
        try:
            return await joining.joined(within_s=0.2), time.monotonic() - began
        finally:
            beating.cancel()

    try:
        joined, waited = asyncio.run(start())
    finally:
        down.close()
    assert joined is False
    assert waited < 5.0
