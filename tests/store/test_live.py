"""Flags and rollouts in the store: each change audited, one active rollout per model."""

from __future__ import annotations

import pytest

from failsoft.store import Store, StoreError


def actions(store: Store) -> list[str]:
    return [entry.action for entry in store.audit_entries()]


def test_a_flag_is_set_changed_and_cleared_with_an_entry_each(store: Store) -> None:
    store.set_flag("failsoft.halt.iris", {"kind": "boolean", "value": True}, actor="ops")
    store.set_flag("failsoft.halt.iris", {"kind": "boolean", "value": False}, actor="ops")

    assert store.flags() == {"failsoft.halt.iris": {"kind": "boolean", "value": False}}
    assert store.clear_flag("failsoft.halt.iris", actor="ops")
    assert not store.clear_flag("failsoft.halt.iris", actor="ops")
    assert store.flags() == {}
    assert actions(store) == ["flag.set", "flag.set", "flag.cleared"]
    assert store.verify().ok


def test_one_active_rollout_per_model(store: Store) -> None:
    spec = {"to": "v2", "strategy": "canary"}
    store.add_rollout("r1", "iris", spec, {"step": 0}, actor="ops")

    with pytest.raises(StoreError, match="already has rollout r1 in progress"):
        store.add_rollout("r2", "iris", spec, {"step": 0}, actor="ops")
    store.add_rollout("r3", "other", spec, {"step": 0}, actor="ops")

    done = store.update_rollout(
        "r1", status="promoted", state={"step": 3}, actor="failsoft", action="promoted"
    )
    assert done.status == "promoted"
    store.add_rollout("r2", "iris", spec, {"step": 0}, actor="ops")
    assert [row.id for row in store.rollouts(model="iris", active=True)] == ["r2"]
    assert store.rollout("r1") == done
    assert actions(store)[-2:] == ["rollout.promoted", "rollout.started"]


def test_an_unknown_rollout_is_a_clear_error(store: Store) -> None:
    with pytest.raises(StoreError, match="there is no rollout nope"):
        store.update_rollout("nope", status="paused", state={}, actor="ops", action="paused")
