"""Operator actions on a version's replicas: eject one for a while, restart the workers.

``eject`` takes a replica out of rotation through the version's outlier
detector (the same ejection passive detection and failed probes use: its
cap holds, so the last replicas are never all taken out; the replica comes
back by itself when the time is up, with a slow start). Without a name it
picks the replica faring worst: failing probes, then a breaker not closed,
then the lowest recent success rate; when one is ejected already (passive
detection, failed probes) there is nothing to do.

``restart_workers`` replaces the workers of a ``process`` version one at a
time through their supervisor: a worker leaves the rotation, its calls in
flight drain, a new process starts at once, and the next one is restarted
only once it answers its health check again (bounded by the worker's start
timeout), so the version never loses more than one worker to it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from failsoft.backends.process import WorkerReplica
from failsoft.errors import BadRequest, NotFound
from failsoft.pipeline.version import VersionPipeline
from failsoft.runtime import Runtime

__all__ = ["Done", "eject", "restart_workers"]

POLL_S = 0.05


@dataclass(frozen=True)
class Done:
    changed: bool  # False: nothing to do (already so)
    text: str


def _pipeline(runtime: Runtime, model: str, version: str) -> VersionPipeline:
    found = runtime.model(model)  # NotFound for an unknown model
    return found.version(version or None)


def eject(
    runtime: Runtime, model: str, version: str, replica: str | None, seconds: float, reason: str
) -> Done:
    pipeline = _pipeline(runtime, model, version)
    names = [r.name for r in pipeline.replicas]
    where = f"{pipeline.model}/{pipeline.version}"
    if replica:
        if replica not in names:
            raise NotFound(f"{where} has no replica {replica!r} (replicas: {', '.join(names)})")
        index = names.index(replica)
    else:
        out = [i for i in range(len(names)) if pipeline.outliers.is_ejected(i)]
        if out:  # the one faring worst is out already (passive detection, probes)
            return Done(False, f"replica {where}/{names[out[0]]} is already ejected")
        index = _worst(pipeline)
    name = names[index]
    if pipeline.outliers.is_ejected(index):
        return Done(False, f"replica {where}/{name} is already ejected")
    if not pipeline.outliers.eject(index, reason, seconds):
        raise BadRequest(
            f"replica {where}/{name} not ejected: the ejection cap keeps the others in service"
        )
    return Done(True, f"replica {where}/{name} ejected for {seconds:g} s")


def _worst(pipeline: VersionPipeline) -> int:
    rows = pipeline.snapshot()

    def badness(index: int) -> tuple[bool, bool, float]:
        row = rows[index]
        breaker = row["breaker"]
        state = breaker.get("state") if isinstance(breaker, dict) else None
        rate = row["success_rate"]
        return (
            not row["healthy"],
            state not in (None, "closed"),
            -(float(rate) if isinstance(rate, int | float) else 1.0),
        )

    return max(range(len(rows)), key=badness)


async def _back(worker: WorkerReplica) -> bool:
    """Wait (bounded) until the restarted worker answers again."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + worker.startup_bound_s
    while loop.time() < deadline:
        if worker.available:
            return True
        await asyncio.sleep(POLL_S)
    return worker.available


async def restart_workers(runtime: Runtime, model: str, version: str, reason: str) -> Done:
    pipeline = _pipeline(runtime, model, version)
    where = f"{pipeline.model}/{pipeline.version}"
    unit = runtime.model(model).units[pipeline.version]
    workers = [r for r in unit.built.replicas if isinstance(r, WorkerReplica) and not r.parked]
    if not workers:
        raise BadRequest(f"{where} has no worker processes to restart (not a process backend)")
    if any(worker.restarting for worker in workers):
        return Done(False, f"the workers of {where} are being restarted already")
    restarted = []
    for worker in workers:
        if not await worker.restart(reason):
            continue
        restarted.append(worker.name)
        if not await _back(worker):
            return Done(
                True,
                f"restarted {', '.join(restarted)} of {where}; {worker.name} is not back "
                "in time, the others were left alone",
            )
    return Done(True, f"restarted {', '.join(restarted) or 'no worker'} of {where}, one at a time")
