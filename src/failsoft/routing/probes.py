"""Active health probes: a real inference with a golden input, not only a ping.

Each replica of a version is probed every ``interval_ms``. With a golden
input configured, the probe runs a real inference and compares the answer
with the expected outputs (exact for integers and strings, within
``tolerance`` for floats), so a replica that answers 200 with garbage fails
its probe. Without one, the probe asks the replica's own readiness. After
``fall`` failures in a row the replica leaves rotation (and readiness);
after ``rise`` successes in a row it comes back, ramped in by slow start.
Readiness comes from these verdicts only: client requests cannot poison a
golden input. While a whole version is out, probes run every 100 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Protocol

import numpy as np
from pydantic import Field

from failsoft._options import StrictModel
from failsoft.call import Call
from failsoft.clock import Clock, within
from failsoft.data.contracts import ModelContract
from failsoft.errors import FailsoftError
from failsoft.observe.events import Event, EventBus
from failsoft.protocol.datatypes import DATATYPE_TO_DTYPE
from failsoft.protocol.types import InferRequest, Tensors

if TYPE_CHECKING:
    from failsoft.backends.base import Replica
    from failsoft.protocol.spec import TensorSpec

log = logging.getLogger("failsoft.probes")
PROBE_REQUEST_ID = "health-probe"
FAST_INTERVAL_S = 0.1  # between probes while a whole version is out of rotation


class _NoVerdict:
    """A probe of a restarting replica: neither a pass nor a failure."""


_RESTARTING = _NoVerdict()


class HealthCheckOptions(StrictModel):
    enabled: bool = True
    interval_ms: Annotated[float, Field(gt=0, le=3_600_000)] = 1000.0
    timeout_ms: Annotated[float, Field(gt=0, le=600_000)] = 500.0
    fall: Annotated[int, Field(ge=1, le=100)] = 3
    rise: Annotated[int, Field(ge=1, le=100)] = 2
    inputs: dict[str, Any] | None = Field(
        default=None, description="golden input: tensor name -> data (nested lists)"
    )
    expect: dict[str, Any] | None = Field(
        default=None, description="expected outputs for the golden input: name -> data"
    )
    tolerance: Annotated[float, Field(ge=0)] = 1e-4


@dataclass(slots=True)
class HealthChanged(Event):
    model: str
    version: str
    replica: str
    healthy: bool
    reason: str


def golden_request(options: HealthCheckOptions, specs: list[TensorSpec]) -> InferRequest | None:
    """The golden input as a request, or None when none is configured."""
    if options.inputs is None:
        return None
    by_name = {spec.name: spec for spec in specs}
    tensors: Tensors = {}
    for name, data in options.inputs.items():
        spec = by_name.get(name)
        if spec is None:
            raise ValueError(f"health_check.inputs names unknown input {name!r}")
        tensors[name] = np.asarray(data, dtype=DATATYPE_TO_DTYPE[spec.datatype])
    return InferRequest(tensors)


def answer_problem(outputs: Tensors, expect: dict[str, Any] | None, tolerance: float) -> str | None:
    """What differs between an answer and the expected one, or None."""
    for name, expected in (expect or {}).items():
        got = outputs.get(name)
        if got is None:
            return f"output {name!r} missing"
        want = np.asarray(expected)
        if got.shape != want.shape:
            return f"output {name!r} has shape {list(got.shape)}, expected {list(want.shape)}"
        if got.dtype.kind == "f":
            same = bool(np.allclose(got, want, rtol=tolerance, atol=tolerance))
        else:
            same = got.ravel().tolist() == [_plain(v) for v in want.ravel().tolist()]
        if not same:
            shown, wanted = got.ravel()[:4].tolist(), want.ravel()[:4].tolist()
            return f"output {name!r} is {shown}, expected {wanted}"
    return None


def _plain(value: Any) -> Any:
    return value.encode() if isinstance(value, str) else value


class ProbeTarget(Protocol):
    """What a prober needs from the version it probes (``VersionPipeline``)."""

    model: str
    version: str

    @property
    def replicas(self) -> Sequence[Replica]: ...

    @property
    def all_out(self) -> bool: ...

    def set_probe_health(self, index: int, healthy: bool) -> None: ...


class Prober:
    """Probes the replicas of one version and reports each verdict to it.

    While no replica of the version is in rotation, probes run every
    ``FAST_INTERVAL_S`` (jittered) instead of ``interval_ms``: every request
    fails or falls back until one is, so a healed replica should be found in
    a fraction of a second.
    """

    def __init__(
        self,
        target: ProbeTarget,
        options: HealthCheckOptions,
        contract: ModelContract,
        golden: InferRequest | None,
        bus: EventBus,
        clock: Clock,
        rng: random.Random,
    ) -> None:
        self._target = target
        self._options = options
        self._contract = contract
        self._golden = golden
        self._bus = bus
        self._clock = clock
        self._rng = rng
        size = len(target.replicas)
        self._healthy = [True] * size
        self._failures = [0] * size
        self._successes = [0] * size
        self._held: set[int] = set()  # out of rotation until ``admit``, whatever probes say
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._options.enabled and self._task is None:
            self._task = asyncio.ensure_future(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def interval_s(self) -> float:
        """Seconds until the next round of probes."""
        normal = self._options.interval_ms / 1000
        if not self._target.all_out:
            return normal
        return min(normal, FAST_INTERVAL_S * self._rng.uniform(0.5, 1.5))

    async def _run(self) -> None:
        while True:
            await self._clock.sleep(self.interval_s())
            await self.probe_all()

    async def probe_now(self) -> dict[str, str | None]:
        """One probe of every replica, judged on its own: replica name -> problem (None: ok).

        What a new version must pass before it takes traffic; it moves no counter.
        """
        # A parked worker slot (an autoscaler's spare) has nothing to probe yet.
        replicas = [r for r in self._target.replicas if not getattr(r, "parked", False)]
        results = await asyncio.gather(*(self._probe(r) for r in replicas))
        return {
            replica.name: "not available" if isinstance(problem, _NoVerdict) else problem
            for replica, problem in zip(replicas, results, strict=True)
        }

    def hold(self, index: int) -> None:
        """Keep a replica out of rotation until ``admit`` (a worker being added)."""
        self._failures[index] = self._successes[index] = 0
        self._held.add(index)
        self._healthy[index] = False
        self._target.set_probe_health(index, False)

    async def admit(self, index: int) -> str | None:
        """Probe one held replica once: in rotation if it passed, else what is wrong."""
        problem = await self._probe(self._target.replicas[index])
        if isinstance(problem, _NoVerdict):
            return "not available"
        if problem is None:
            self._held.discard(index)
            if not self._healthy[index]:
                self._report(index, True, "passed its probe")
        return problem

    async def probe_all(self) -> None:
        replicas = self._target.replicas
        results = await asyncio.gather(*(self._probe(r) for r in replicas))
        for index, problem in enumerate(results):
            if not isinstance(problem, _NoVerdict):
                self._judge(index, problem)

    async def _probe(self, replica: Replica) -> str | _NoVerdict | None:
        """What is wrong with the replica (None: nothing); _RESTARTING to skip its verdict."""
        if not replica.available:
            return _RESTARTING  # the supervisor owns that state, not the probe
        timeout = self._options.timeout_ms / 1000
        try:
            if self._golden is None:
                ok = await within(self._clock, timeout, replica.health())
                return None if ok else "not ready"
            call = Call(
                PROBE_REQUEST_ID,
                self._target.model,
                self._target.version,
                self._clock.now() + timeout,
                self._bus,
                self._clock,
            )
            outputs = await within(self._clock, timeout, replica.infer(self._golden, call))
            self._contract.check_outputs(outputs, self._contract.batch_rows(self._golden))
            return answer_problem(outputs, self._options.expect, self._options.tolerance)
        except TimeoutError:
            return f"no answer within {self._options.timeout_ms:g} ms"
        except FailsoftError as error:
            return error.message
        except Exception as error:  # a replica breaking its protocol fails its probe, no more
            return f"the probe raised {type(error).__name__}"

    def _judge(self, index: int, problem: str | None) -> None:
        if index in self._held:
            return
        healthy = self._healthy[index]
        if problem is None:
            self._failures[index] = 0
            self._successes[index] += 1
            if not healthy and self._successes[index] >= self._options.rise:
                self._report(index, True, f"{self._options.rise} probes passed")
            return
        self._successes[index] = 0
        self._failures[index] += 1
        if healthy and self._failures[index] >= self._options.fall:
            self._report(index, False, problem)

    def _report(self, index: int, healthy: bool, reason: str) -> None:
        self._healthy[index] = healthy
        target = self._target
        replica = target.replicas[index].name
        target.set_probe_health(index, healthy)
        log.warning(
            "replica health changed",
            extra={
                "model": target.model,
                "version": target.version,
                "replica": replica,
                "healthy": healthy,
                "reason": reason,
            },
        )
        self._bus.emit(HealthChanged(target.model, target.version, replica, healthy, reason))
