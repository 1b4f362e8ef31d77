"""Revisions.follow: a gateway serves the revision another gateway applied to the shared store,
and never goes back to an older one while it applies a change of its own.

Two ``Revisions`` on one SQLite store stand for two gateways; their ``apply``
records what it was given (the runtime's part is tested in test_reconcile).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from failsoft.config import Config, parse_config
from failsoft.control.registry import ArtifactLocations
from failsoft.control.revisions import Revisions, config_json
from failsoft.store import Store


def config(default: str) -> Config:
    version = {"backend": "python", "function": "tests._runtime_models:healthy"}
    model: dict[str, Any] = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
        "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]}],
        "versions": {"v1": version, "v2": version},
        "default_version": default,
    }
    return parse_config({"models": {"m": model}})


class Gateway:
    def __init__(self, store: Store, folder: Path) -> None:
        self.applied: list[int] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.entered = asyncio.Event()
        folder.mkdir(parents=True)
        registry = ArtifactLocations([str(folder / "artifacts")])
        self.revisions = Revisions(store, registry, folder, self.apply)

    async def apply(self, new: Config, revision: int) -> None:
        self.entered.set()
        await self.gate.wait()
        self.applied.append(revision)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store.open(tmp_path / "store")
    yield opened
    opened.close()


async def two_gateways(store: Store, tmp_path: Path) -> tuple[Gateway, Gateway]:
    a, b = Gateway(store, tmp_path / "a"), Gateway(store, tmp_path / "b")
    first = config("v1")
    report = a.revisions.boot(first, apply_file=False, actor="test")
    await a.revisions.started(report, first, actor="test")
    again = b.revisions.boot(first, apply_file=False, actor="test")
    await b.revisions.started(again, again.config, actor="test")
    assert (a.revisions.revision, b.revisions.revision) == (1, 1)
    return a, b


async def test_a_gateway_follows_the_revision_another_applied(store: Store, tmp_path: Path) -> None:
    a, b = await two_gateways(store, tmp_path)
    outcome = await a.revisions.propose(config_json(config("v2")), actor="alice")
    assert (outcome.status, outcome.revision) == ("applied", 2)
    assert await b.revisions.follow() is True
    assert (b.revisions.revision, b.applied) == (2, [2])
    assert b.revisions.config is not None
    assert b.revisions.config.models["m"].default_version == "v2"
    assert await b.revisions.follow() is False  # nothing new


async def test_following_during_an_own_change_never_goes_back(store: Store, tmp_path: Path) -> None:
    a, _ = await two_gateways(store, tmp_path)
    a.gate.clear()  # A's change stays in its apply (stored as pending, not yet applied)
    change = asyncio.ensure_future(a.revisions.propose(config_json(config("v2")), actor="x"))
    await asyncio.wait_for(a.entered.wait(), 10)
    assert [revision.id for revision in store.revisions(status="pending")] == [2]
    follow = asyncio.ensure_future(a.revisions.follow())
    for _ in range(20):  # let it run up to the lock
        await asyncio.sleep(0)
    assert not follow.done()
    a.gate.set()
    outcome = await change
    assert await follow is False
    assert outcome.revision == 2
    assert (a.revisions.revision, a.applied) == (2, [2])  # revision 1 never came back
