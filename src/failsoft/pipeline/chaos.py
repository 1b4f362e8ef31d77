"""Chaos: the last stage before a replica, where active faults take effect.

When the configuration enables chaos, every replica is wrapped in a
``ChaosReplica``. On each call (requests and health probes alike, as a real
fault would hit both) it looks up the faults matching its model, version and
replica in the ``FaultRegistry`` and, with each fault's probability:

- ``latency``: waits latency_ms plus up to jitter_ms, then calls the replica;
  with ``concurrency`` at most that many calls wait at once, the others queue,
  so the replica's capacity really drops, as a saturated model's would;
- ``error``: fails as a replica answering HTTP ``status`` would (infra), or as
  a model raising an exception (logic);
- ``hang``: never answers; the call fails when its deadline passes;
- ``garbage``: calls the replica and corrupts its answer (NaN floats, one row
  too many), which the output contract must catch;
- ``drop``: the connection is reset before an answer arrives;
- ``kill``: the worker process gets a real SIGKILL just as a request (not
  a probe) reaches it, so that request meets the crash (once, or again every
  ``every_s``); the registry kills it anyway if no request came within 0.5 s.

With no fault active the wrapper costs one attribute read per call.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np

from failsoft.backends.base import Replica
from failsoft.call import Call
from failsoft.clock import Clock
from failsoft.control.faults import Fault, FaultRegistry, Killable, Target
from failsoft.errors import DeadlineExceeded, ModelError, UpstreamError
from failsoft.protocol.types import InferRequest, Tensors
from failsoft.routing.probes import PROBE_REQUEST_ID


class ChaosReplica:
    def __init__(
        self,
        inner: Replica,
        model: str,
        version: str,
        registry: FaultRegistry,
        clock: Clock,
        rng: random.Random,
    ) -> None:
        self.inner = inner
        self.name = inner.name
        self._model = model
        self._version = version
        self._registry = registry
        self._clock = clock
        self._rng = rng
        killable = inner if isinstance(inner, Killable) else None
        self._target = Target(model, version, inner.name, killable)

    def __getattr__(self, attribute: str) -> Any:
        # pid, restarts, base_url, hedgeable, kill...: whatever the wrapped replica has.
        return getattr(self.inner, attribute)

    @property
    def available(self) -> bool:
        return self.inner.available

    async def start(self) -> None:
        await self.inner.start()

    async def health(self) -> bool:
        return await self.inner.health()

    async def close(self) -> None:
        await self.inner.close()

    async def infer(self, request: InferRequest, call: Call) -> Tensors:
        if not self._registry.active:
            return await self.inner.infer(request, call)
        garbage = False
        for fault in self._registry.matching(self._model, self._version, self.name):
            spec = fault.spec
            if spec.kind == "kill":
                # A request, not a probe, must meet the crash: that is what a retry saves.
                if call.request_id != PROBE_REQUEST_ID and fault.kill_due(
                    self.name, self._clock.now()
                ):
                    self._registry.kill(fault, self._target)
                continue
            if self._rng.random() >= spec.probability:
                continue
            fault.injected += 1
            if spec.kind == "latency":
                delay = (spec.latency_ms + self._rng.uniform(0, spec.jitter_ms)) / 1000
                slots = fault.slots(self.name)
                if slots is None:
                    await self._wait(delay, call, fault)
                else:  # a saturated replica: calls queue for one of its few slots
                    async with slots:
                        await self._wait(delay, call, fault)
            elif spec.kind == "hang":
                await self._wait(float("inf"), call, fault)
            elif spec.kind == "error":
                if spec.error == "exception":
                    raise ModelError(f"replica {self.name}: chaos fault {fault.id} raised")
                raise UpstreamError(
                    f"replica {self.name} answered {spec.status}: chaos fault {fault.id}",
                    spec.status,
                )
            elif spec.kind == "drop":
                raise UpstreamError(
                    f"replica {self.name}: connection reset (chaos fault {fault.id})"
                )
            elif spec.kind == "garbage":
                garbage = True
        outputs = await self.inner.infer(request, call)
        return corrupt(outputs) if garbage else outputs

    async def _wait(self, seconds: float, call: Call, fault: Fault) -> None:
        remaining = call.deadline - self._clock.now()
        if seconds < remaining:
            await self._clock.sleep(seconds)
            return
        await self._clock.sleep(max(0.0, remaining))
        raise DeadlineExceeded(
            f"replica {self.name} did not answer within the deadline (chaos fault {fault.id})"
        )


def corrupt(outputs: Tensors) -> Tensors:
    """An answer a lying replica might send: NaN in floats, one row too many elsewhere."""
    broken: Tensors = {}
    for name, array in outputs.items():
        if array.dtype.kind == "f":
            broken[name] = np.full(array.shape, np.nan, dtype=array.dtype)
        elif array.ndim:
            broken[name] = np.concatenate([array, array[-1:]]) if len(array) else array
        else:
            broken[name] = array
    return broken
