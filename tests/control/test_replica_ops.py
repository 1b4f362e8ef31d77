"""Operator ejection on a real runtime (python replicas): named, the worst, idempotent, capped."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from failsoft.control import replica_ops
from failsoft.errors import BadRequest, NotFound
from failsoft.observe.events import Event, EventBus
from failsoft.routing.ejection import ReplicaEjected
from failsoft.runtime import Runtime
from tests.test_reconcile import config, python


@pytest.fixture
async def runtime() -> AsyncIterator[Runtime]:
    started = Runtime(config({"v1": python("healthy", 3)}), EventBus())
    await started.start()
    yield started
    await started.close()


def ejections(runtime: Runtime) -> list[ReplicaEjected]:
    seen: list[ReplicaEjected] = []

    def keep(event: Event) -> None:
        if isinstance(event, ReplicaEjected):
            seen.append(event)

    runtime.bus.subscribe(keep, (ReplicaEjected,))
    return seen


async def test_a_named_replica_is_ejected_for_the_time_asked_once(runtime: Runtime) -> None:
    seen = ejections(runtime)
    done = replica_ops.eject(runtime, "m", "v1", "r1", 7.5, "runbook:ops")
    assert done == replica_ops.Done(True, "replica m/v1/r1 ejected for 7.5 s")
    pipeline = runtime.model("m").version("v1")
    assert pipeline.outliers.is_ejected(1)
    assert pipeline.outliers.snapshot(1)["ejected_for_s"] == pytest.approx(7.5, abs=0.5)
    assert [(e.replica, e.reason, e.seconds) for e in seen] == [("r1", "runbook:ops", 7.5)]
    again = replica_ops.eject(runtime, "m", "v1", "r1", 7.5, "runbook:ops")
    assert again.changed is False  # idempotent: already out, nothing emitted
    assert len(seen) == 1
    # Without a name: one is out already, which is what was asked.
    assert replica_ops.eject(runtime, "m", "v1", None, 5, "runbook:ops").changed is False


async def test_the_cap_keeps_the_others_in_service(runtime: Runtime) -> None:
    replica_ops.eject(runtime, "m", "v1", "r0", 5, "ops")
    with pytest.raises(BadRequest, match="ejection cap"):
        replica_ops.eject(runtime, "m", "v1", "r2", 5, "ops")


async def test_without_a_name_the_replica_failing_its_probes_goes(runtime: Runtime) -> None:
    pipeline = runtime.model("m").version("v1")
    pipeline.probe_healthy[2] = False  # what the prober sets after failed probes
    done = replica_ops.eject(runtime, "m", "v1", None, 3, "ops")
    assert done.text == "replica m/v1/r2 ejected for 3 s"


async def test_unknown_targets_and_non_process_restarts_are_refused(runtime: Runtime) -> None:
    with pytest.raises(NotFound, match="no replica 'r9'"):
        replica_ops.eject(runtime, "m", "v1", "r9", 3, "ops")
    with pytest.raises(NotFound):
        replica_ops.eject(runtime, "nope", "v1", None, 3, "ops")
    with pytest.raises(BadRequest, match="not a process backend"):
        await replica_ops.restart_workers(runtime, "m", "v1", "ops")
