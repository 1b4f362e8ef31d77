"""Shadow traffic: a copy of a request sent to a candidate version, whose answer nobody sees.

The primary answer never waits for the shadow and never changes because of
it. Shadow calls are the first thing given up under pressure: at most
``max_in_flight`` run at once per model, and none starts while the model's
own limiter is full; a copy that cannot start is dropped and counted. The
candidate's answer is compared with the one the client got (``disagree``)
and reported as a ``ShadowCompared`` event, which the rollout analysis
counts; the candidate's own failures stay on the candidate's breakers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from failsoft.call import Call
from failsoft.clock import Clock
from failsoft.errors import FailsoftError
from failsoft.observe.events import Event, EventBus
from failsoft.pipeline.version import VersionPipeline
from failsoft.protocol.types import InferRequest, Tensors

log = logging.getLogger("failsoft.shadow")

MAX_IN_FLIGHT = 16
TOLERANCE = 1e-4


@dataclass(slots=True)
class ShadowCompared(Event):
    model: str
    stable: str
    candidate: str
    ok: bool  # the candidate answered
    agreed: bool  # and its answer matched the client's (within the tolerance)
    seconds: float


@dataclass(slots=True)
class ShadowDropped(Event):
    model: str
    candidate: str
    reason: str  # "busy" (too many shadows) or "pressure" (the model's limiter is full)


def disagree(a: Tensors, b: Tensors, tolerance: float = TOLERANCE) -> bool:
    """Do two answers differ: a label, or a float beyond ``tolerance``, or a shape."""
    for name, first in a.items():
        second = b.get(name)
        if second is None or first.shape != second.shape:
            return True
        if first.dtype.kind == "f" or second.dtype.kind == "f":
            if not np.allclose(first, second, rtol=tolerance, atol=tolerance, equal_nan=True):
                return True
        elif not np.array_equal(first, second):
            return True
    return False


class Mirror:
    """The shadow calls of one model."""

    def __init__(self, bus: EventBus, clock: Clock, max_in_flight: int = MAX_IN_FLIGHT) -> None:
        self._bus = bus
        self._clock = clock
        self._max = max_in_flight
        self._tasks: set[asyncio.Task[None]] = set()
        # How two answers are compared; a rollout sets its own (its outputs, its tolerance).
        self.compare: Callable[[Tensors, Tensors], bool] = disagree

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def send(
        self,
        request: InferRequest,
        answer: Tensors,
        stable: str,
        candidate: VersionPipeline,
        timeout_s: float,
        pressure: Callable[[], bool],
    ) -> None:
        """Start a shadow call unless the model is under pressure (then drop it)."""
        model = candidate.model
        if len(self._tasks) >= self._max or pressure():
            reason = "busy" if len(self._tasks) >= self._max else "pressure"
            self._bus.emit(ShadowDropped(model, candidate.version, reason))
            return
        task = asyncio.ensure_future(self._call(request, answer, stable, candidate, timeout_s))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _call(
        self,
        request: InferRequest,
        answer: Tensors,
        stable: str,
        candidate: VersionPipeline,
        timeout_s: float,
    ) -> None:
        clock = self._clock
        started = clock.now()
        call = Call(
            "shadow", candidate.model, candidate.version, started + timeout_s, self._bus, clock
        )
        try:
            outputs, _ = await candidate.infer(request, call)
        except FailsoftError:
            ok, agreed = False, False
        else:
            ok, agreed = True, not self.compare(answer, outputs)
        self._bus.emit(
            ShadowCompared(
                candidate.model, stable, candidate.version, ok, agreed, clock.now() - started
            )
        )

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
