"""The driver that scales a process backend's workers (policy in ``pipeline.autoscale``).

A version with ``autoscale`` is built with ``max_replicas`` worker slots, of
which ``min_replicas`` run and the rest are *parked* (no process, never
available, so balancing, breakers and probes pass them by). Every
``interval_ms`` the driver samples the model's limiter and asks the policy.

Adding a worker goes the way ``Runtime.apply`` brings up a new version: the
worker loads, then must pass one probe (the golden input when one is
configured) before it takes traffic. The prober holds the slot out of rotation
first, so the pipeline does not route to the worker the moment its process
answers health checks (nor when its periodic probes pass); it enters rotation
through slow start. Removing a worker takes it out of rotation, then stops it
with SIGTERM so the calls it holds finish (``drain_timeout_s``), and parks the
slot again.

A worker process takes a second or more to start (Python, the model), and
a step in load fills the limiter's queue in about that time. So ``standby``
workers (1 by default) are kept started but held out of rotation: a scale-up
admits one after a fresh probe, at once, and a new standby starts in the
background. A worker scaled in becomes the standby when one is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

from failsoft.backends.base import Replica
from failsoft.backends.process import WorkerReplica
from failsoft.clock import Clock
from failsoft.errors import FailsoftError
from failsoft.observe.events import Event, EventBus
from failsoft.pipeline.autoscale import AutoscaleOptions, AutoscalePolicy, Decision, Sample
from failsoft.pipeline.limiter import AdaptiveLimiter
from failsoft.routing.probes import Prober

__all__ = ["Autoscaler", "WorkersScaled", "limiter_sample"]

log = logging.getLogger("failsoft.backends.autoscale")


@dataclass(slots=True)
class WorkersScaled(Event):
    """A version's running workers changed from ``old`` to ``new`` (or failed to: ok False)."""

    model: str
    version: str
    old: int
    new: int
    reason: str
    ok: bool


def usable_cores() -> int:
    """The cores this process may run on (its affinity, which a container may narrow)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def limiter_sample(limiter: AdaptiveLimiter) -> Sample:
    short, least = limiter.rtts
    return Sample(
        limiter.in_flight,
        limiter.waiting,
        limiter.limit,
        limiter.shed_total,
        limiter.completed,
        short / least if short and least else 1.0,
        limiter.probing,
    )


class Autoscaler:
    """Runs ``AutoscalePolicy`` for one version's worker slots."""

    def __init__(
        self,
        model: str,
        version: str,
        workers: Sequence[Replica],
        prober: Prober,
        options: AutoscaleOptions,
        sample: Callable[[], Sample | None],
        bus: EventBus,
        clock: Clock,
        cores: int | None = None,
    ) -> None:
        self.model = model
        self.version = version
        self._workers = [w for w in workers if isinstance(w, WorkerReplica)]
        if len(self._workers) != len(workers):
            raise TypeError("autoscale needs worker replicas")
        self._prober = prober
        self._sample = sample
        self._bus = bus
        self._clock = clock
        self.policy = AutoscalePolicy(options, cores or usable_cores(), clock.now())
        self._task: asyncio.Task[None] | None = None
        self._standby: set[int] = set()  # started, held out of rotation
        self._launching: dict[int, asyncio.Task[None]] = {}  # standbys being started
        self._rejected: Counter[int] = Counter()  # failed probes per slot: tried last
        self.policy.replicas = max(self.running, options.min_replicas)  # slots kept by an apply

    @property
    def running(self) -> int:
        """Workers in rotation (standbys are started but not in rotation)."""
        return sum(
            not worker.parked and i not in self._standby and i not in self._launching
            for i, worker in enumerate(self._workers)
        )

    @property
    def standby(self) -> int:
        return len(self._standby)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    async def close(self) -> None:
        tasks = [t for t in (self._task, *self._launching.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, FailsoftError):
                await task
        self._task = None
        self._launching.clear()

    async def _run(self) -> None:
        interval = self.policy.options.interval_ms / 1000
        while True:
            self._refill()
            await self._clock.sleep(interval)
            await self.step()

    async def step(self) -> Decision | None:
        """One sample, and the change it calls for carried out; the decision, if any."""
        sample = self._sample()
        if sample is None:
            return None
        decision = self.policy.observe(self._clock.now(), sample)
        if decision is not None:
            await self._carry_out(decision)
        return decision

    async def scale_to(self, replicas: int, reason: str) -> bool:
        """Move to ``replicas`` workers in rotation now (an operator's or a test's word),
        within ``min_replicas`` and ``max_replicas``; False when it could not."""
        options = self.policy.options
        wanted = min(max(replicas, options.min_replicas), options.max_replicas)
        if self.policy.busy:
            return False
        self.policy.busy = True
        if wanted >= self.running:
            return await self._carry_out(Decision("up", wanted, reason))
        return await self._carry_out(Decision("down", wanted, reason))

    async def _carry_out(self, decision: Decision) -> bool:
        old = self.running
        try:
            while self.running < decision.replicas:
                await self._add()
            while self.running > decision.replicas:
                await self._remove()
        except FailsoftError as error:
            self.policy.failed(self._clock.now(), self.running)
            self._report(old, decision, f"{decision.reason}; failed: {error.message}", ok=False)
            return False
        self.policy.done(self._clock.now(), self.running)
        self._report(old, decision, decision.reason, ok=True)
        return True

    async def _add(self) -> None:
        if not self._standby and self._launching:  # a standby is on its way: the quickest
            index, task = next(iter(self._launching.items()))
            with contextlib.suppress(FailsoftError):
                await asyncio.shield(task)
            self._launched(index, task)
        if self._standby:
            index = min(self._standby)
            self._standby.discard(index)
        else:
            index = self._free_slots()[0]
            self._prober.hold(index)  # no traffic until the probe below passes
            await self._workers[index].launch()
        problem = await self._prober.admit(index)  # a fresh probe, even for a standby
        if problem is not None:
            self._rejected[index] += 1
            await self._workers[index].park()
            raise _NotAdmitted(f"worker {self._workers[index].name} failed its probe: {problem}")

    async def _remove(self) -> None:
        index = max(
            i
            for i, w in enumerate(self._workers)
            if not w.parked and i not in self._standby and i not in self._launching
        )
        self._prober.hold(index)
        if len(self._standby) + len(self._launching) < self.policy.options.standby:
            self._standby.add(index)  # kept started, out of rotation: the next scale-up
            return
        await self._workers[index].park()

    def _refill(self) -> None:
        """Start standbys in the background until there are ``standby`` of them."""
        wanted = min(self.policy.options.standby, self.policy.cap - self.policy.replicas)
        while len(self._standby) + len(self._launching) < wanted:
            free = self._free_slots()
            if not free:
                return
            index = free[0]
            self._prober.hold(index)
            task = asyncio.ensure_future(self._workers[index].launch())
            self._launching[index] = task
            task.add_done_callback(partial(self._launched, index))

    def _free_slots(self) -> list[int]:
        """Parked slots, those whose worker failed its probe least often first."""
        free = [i for i, w in enumerate(self._workers) if w.parked and i not in self._launching]
        return sorted(free, key=lambda i: (self._rejected[i], i))

    def _launched(self, index: int, task: asyncio.Task[None]) -> None:
        if self._launching.pop(index, None) is None:  # already seen to
            return
        if task.cancelled():
            return
        error = task.exception()
        if error is None:
            self._standby.add(index)
        else:
            log.error(
                "standby worker did not start",
                extra={"model": self.model, "version": self.version, "error": str(error)},
            )

    def _report(self, old: int, decision: Decision, reason: str, *, ok: bool) -> None:
        new = self.running
        self._bus.emit(WorkersScaled(self.model, self.version, old, new, reason, ok))
        level = logging.INFO if ok else logging.ERROR
        log.log(
            level,
            "workers scaled" if ok else "scaling failed",
            extra={
                "model": self.model,
                "version": self.version,
                "old": old,
                "new": new,
                "reason": reason,
            },
        )

    def snapshot(self) -> dict[str, object]:
        policy = self.policy
        return {
            "running": self.running,
            "standby": self.standby,
            "target": policy.replicas,
            "cap": policy.cap,
        }


class _NotAdmitted(FailsoftError):
    status = 503
