"""The version pipeline: how one request reaches a healthy replica of a version.

    deadline → retry (budget) → hedge → pick replica (P2C on peak EWMA)
             → replica breaker → backend call → output contract

Every attempt's outcome feeds the balancer, the replica's circuit breaker
and the outlier detector; a 200 that breaks the output contract is a
failure like any other. Retries go to another replica where there is one,
after a jittered backoff, and only while the retry budget allows, so a
sick fleet is never hammered. When the replicas can run calls concurrently
(remote or worker replicas), a request that has not answered by the
replica set's recent p95 gets one hedged attempt on another replica; the
first good answer wins and the others are cancelled.

Time comes from the injected clock and randomness from the injected RNG,
so all of this is tested without sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from failsoft.backends.base import Replica
from failsoft.call import Call
from failsoft.clock import Clock
from failsoft.data.contracts import ModelContract
from failsoft.errors import DeadlineExceeded, FailsoftError, FailureClass, NotReady, Overloaded
from failsoft.observe.events import Event, EventBus
from failsoft.pipeline.breaker import BreakerOptions, BreakerState, CircuitBreaker
from failsoft.pipeline.bulkhead import BulkheadOptions
from failsoft.pipeline.hedge import HedgeOptions, LatencyTracker, hedge_delay
from failsoft.pipeline.retry import RetryBudget, RetryOptions, backoff_delay
from failsoft.pipeline.throttle import AdaptiveThrottle, ThrottledLocally, ThrottleOptions
from failsoft.protocol.types import InferRequest, Tensors
from failsoft.routing.balancer import BalancerOptions, PeakEwmaBalancer
from failsoft.routing.ejection import EjectionOptions, OutlierDetector


@dataclass(slots=True)
class AttemptStarted(Event):
    model: str
    version: str
    replica: str
    kind: str  # "first", "retry" or "hedge"


@dataclass(slots=True)
class AttemptFailed(Event):
    model: str
    version: str
    replica: str
    failure_class: FailureClass
    message: str
    seconds: float


@dataclass(slots=True)
class RetryDenied(Event):
    model: str
    version: str
    reason: str  # "budget" or "deadline"


@dataclass(frozen=True)
class ResilienceOptions:
    retry: RetryOptions
    hedge: HedgeOptions
    breaker: BreakerOptions
    ejection: EjectionOptions
    balancer: BalancerOptions
    per_try_timeout_s: float | None = None
    bulkhead: BulkheadOptions = field(default_factory=BulkheadOptions)
    throttle: ThrottleOptions = field(default_factory=ThrottleOptions)


class VersionPipeline:
    def __init__(
        self,
        model: str,
        version: str,
        replicas: Sequence[Replica],
        options: ResilienceOptions,
        contract: ModelContract,
        bus: EventBus,
        clock: Clock,
        rng: random.Random,
    ) -> None:
        self.model = model
        self.version = version
        self.replicas = list(replicas)
        self.options = options
        self._contract = contract
        self._bus = bus
        self._clock = clock
        self._rng = rng
        size = len(self.replicas)
        self.balancer = PeakEwmaBalancer(size, options.balancer, clock, rng)
        self.breakers = [
            CircuitBreaker(options.breaker, clock, bus.emit, model, version, replica.name)
            for replica in self.replicas
        ]
        self.outliers = OutlierDetector(
            [r.name for r in self.replicas], options.ejection, clock, bus.emit, model, version
        )
        retry, hedge = options.retry, options.hedge
        self.retry_budget = RetryBudget(
            retry.budget_ratio, retry.budget_min_per_s, retry.budget_window_s, clock
        )
        self.hedge_budget = RetryBudget(
            hedge.budget_ratio, hedge.budget_min_per_s, hedge.budget_window_s, clock
        )
        self.latency = LatencyTracker()
        self.throttle = AdaptiveThrottle(options.throttle, clock, rng)
        self.in_flight = 0
        self.probe_healthy = [True] * size
        self._was_available = [True] * size
        # Remote and worker replicas can be hedged and throttled; in-process ones cannot.
        self._remote = all(getattr(replica, "hedgeable", True) for replica in self.replicas)
        self._hedging = hedge.enabled and hedge.max_hedges > 0 and self._remote
        self._max_attempts = retry.max_attempts if retry.enabled else 1

    # -- choosing a replica ------------------------------------------------

    def usable(self, index: int) -> bool:
        """Could this replica take a call now? Its breaker has the last word, in _choose."""
        replica = self.replicas[index]
        available = replica.available
        if available != self._was_available[index]:
            self._was_available[index] = available
            if available:  # a restarted worker is back: in rotation, ramped in, not flooded
                self.outliers.reinstate(index)
                self.balancer.begin_slow_start(index)
        return available and self.probe_healthy[index] and not self.outliers.is_ejected(index)

    @property
    def ready(self) -> bool:
        return any(
            self.usable(i) and self.breakers[i].state is not BreakerState.OPEN
            for i in range(len(self.replicas))
        )

    def _choose(self, tried: set[int], *, repeat: bool = True) -> int | None:
        if not self.outliers.quiet:
            for index in self.outliers.returned():
                self.balancer.begin_slow_start(index)
        size = len(self.replicas)
        candidates = [i for i in range(size) if i not in tried and self.usable(i)]
        if not candidates and tried and repeat:  # all usable ones were tried: a second go
            candidates = [i for i in range(size) if self.usable(i)]
        while candidates:
            index = self.balancer.pick(candidates)
            if self.breakers[index].allow():
                return index
            candidates.remove(index)
        return None

    # -- one attempt -------------------------------------------------------

    async def _attempt(self, index: int, request: InferRequest, call: Call) -> Tensors:
        replica = self.replicas[index]
        remote = self._remote
        if remote and not self.throttle.allow():
            self.breakers[index].release()
            self._bus.emit(
                ThrottledLocally(self.model, self.version, self.throttle.rejection_probability())
            )
            raise Overloaded(
                f"{self.model}/{self.version}: replicas are refusing calls; throttled locally"
            )
        per_try = self.options.per_try_timeout_s
        if per_try is not None:
            call = dataclasses.replace(
                call, deadline=min(call.deadline, self._clock.now() + per_try)
            )
        self.balancer.started(index)
        started = self._clock.now()
        try:
            outputs = self._contract.check_outputs(
                await replica.infer(request, call), self._contract.batch_rows(request)
            )
        except FailsoftError as error:
            seconds = self._clock.now() - started
            if remote and error.failure_class is not FailureClass.INFRA:
                self.throttle.accepted()
            if error.failure_class is FailureClass.DATA:  # the client's fault, not the replica's
                self._record(index, True, seconds)
            else:
                self._record(index, False, seconds)
                self._bus.emit(
                    AttemptFailed(
                        self.model,
                        self.version,
                        replica.name,
                        error.failure_class,
                        error.message,
                        seconds,
                    )
                )
            raise
        except Exception:  # a backend breaking the Replica protocol: still release its slot
            self._record(index, False, self._clock.now() - started)
            raise
        except asyncio.CancelledError:
            # A cancelled hedge loser: what it took so far is a lower bound on its
            # latency, which keeps a hung replica from looking idle and attractive.
            self.balancer.cancelled(index, self._clock.now() - started)
            self.breakers[index].release()
            raise
        seconds = self._clock.now() - started
        if remote:
            self.throttle.accepted()
        self._record(index, True, seconds)
        if self._hedging:  # the tracker only feeds the hedge delay
            self.latency.observe(seconds)
        return outputs

    def _record(self, index: int, ok: bool, seconds: float) -> None:
        self.balancer.finished(index, seconds, ok)
        self.breakers[index].record(ok, seconds)
        self.outliers.record(index, ok)

    def _retryable(self, error: FailsoftError) -> bool:
        return error.failure_class in self.options.retry.retry_on

    def _retry_delay(self, retry: int, call: Call) -> float | None:
        """Backoff before retry number ``retry``, or None when no retry may happen."""
        retry_options = self.options.retry
        delay = backoff_delay(
            retry,
            retry_options.backoff_base_ms / 1000,
            retry_options.backoff_max_ms / 1000,
            self._rng,
        )
        if self._clock.now() + delay >= call.deadline:
            self._bus.emit(RetryDenied(self.model, self.version, "deadline"))
            return None
        if not self.retry_budget.try_withdraw():  # last: a refused retry spends nothing
            self._bus.emit(RetryDenied(self.model, self.version, "budget"))
            return None
        return delay

    def _started(self, index: int, kind: str) -> None:
        self._bus.emit(AttemptStarted(self.model, self.version, self.replicas[index].name, kind))

    # -- the request -------------------------------------------------------

    async def infer(self, request: InferRequest, call: Call) -> tuple[Tensors, Replica]:
        if self.in_flight >= self.options.bulkhead.max_in_flight:
            raise Overloaded(
                f"{self.model}/{self.version} has {self.in_flight} calls in flight (its bulkhead)",
                retry_after_s=1.0,
            )
        self.in_flight += 1
        try:
            self.retry_budget.deposit()
            if self._hedging:
                self.hedge_budget.deposit()
                return await self._infer_hedged(request, call)
            return await self._infer_sequential(request, call)
        finally:
            self.in_flight -= 1

    async def _infer_sequential(self, request: InferRequest, call: Call) -> tuple[Tensors, Replica]:
        tried: set[int] = set()
        error: FailsoftError | None = None
        for attempt in range(self._max_attempts):
            if error is not None:
                delay = self._retry_delay(attempt, call)
                if delay is None:
                    raise error
                await self._clock.sleep(delay)
            index = self._choose(tried)
            if index is None:
                raise error or self._no_replica()
            tried.add(index)
            self._started(index, "retry" if attempt else "first")
            try:
                return await self._attempt(index, request, call), self.replicas[index]
            except FailsoftError as failure:
                if not self._retryable(failure):
                    raise
                error = failure
        assert error is not None
        raise error

    async def _infer_hedged(self, request: InferRequest, call: Call) -> tuple[Tensors, Replica]:
        clock = self._clock
        tried: set[int] = set()
        in_flight: dict[asyncio.Task[Tensors], int] = {}
        error: FailsoftError | None = None
        retries = hedges = 0
        max_hedges = self.options.hedge.max_hedges
        retry_at: float | None = None

        def launch(kind: str) -> bool:
            index = self._choose(tried, repeat=kind != "hedge")
            if index is None:
                return False
            if kind == "hedge" and not self.hedge_budget.try_withdraw():
                self.breakers[index].release()  # allow() reserved a probe slot
                return False
            tried.add(index)
            self._started(index, kind)
            in_flight[asyncio.ensure_future(self._attempt(index, request, call))] = index
            return True

        if not launch("first"):
            raise self._no_replica()
        hedge_at = clock.now() + hedge_delay(self.latency, self.options.hedge)
        try:
            while True:
                now = clock.now()
                if now >= call.deadline:
                    raise DeadlineExceeded(
                        f"{self.model}/{self.version}: no answer within the deadline"
                    )
                wake = call.deadline
                if hedges < max_hedges and in_flight:
                    wake = min(wake, hedge_at)
                if retry_at is not None:
                    wake = min(wake, retry_at)
                done = await _first_done(in_flight, clock, wake - now)
                for task in done:
                    index = in_flight.pop(task)
                    failure = task.exception()
                    if failure is None:
                        return task.result(), self.replicas[index]
                    if not isinstance(failure, FailsoftError) or not self._retryable(failure):
                        raise failure
                    error = failure
                    if retry_at is None and retries + 1 < self._max_attempts:
                        delay = self._retry_delay(retries + 1, call)
                        if delay is not None:
                            retries += 1
                            retry_at = clock.now() + delay
                now = clock.now()
                if retry_at is not None and now >= retry_at:
                    retry_at = None
                    if launch("retry"):  # the hedge delay counts from the newest attempt
                        hedge_at = now + hedge_delay(self.latency, self.options.hedge)
                if hedges < max_hedges and in_flight and now >= hedge_at:
                    hedges += 1
                    launch("hedge")
                    hedge_at = now + hedge_delay(self.latency, self.options.hedge)
                if not in_flight and retry_at is None:
                    raise error or self._no_replica()
        finally:
            for task in in_flight:
                task.cancel()
            for task in in_flight:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    def _no_replica(self) -> NotReady:
        reasons = ", ".join(
            f"{r.name}: {self._why_unusable(i)}" for i, r in enumerate(self.replicas)
        )
        return NotReady(f"no replica of {self.model}/{self.version} is available ({reasons})")

    def _why_unusable(self, index: int) -> str:
        if not self.replicas[index].available:
            return "restarting"
        if not self.probe_healthy[index]:
            return "failing health probes"
        if self.outliers.is_ejected(index):
            return "ejected"
        if self.breakers[index].state is not BreakerState.CLOSED:
            return f"circuit {self.breakers[index].state.value}"
        return "busy"

    async def start(self) -> None:
        await asyncio.gather(*(replica.start() for replica in self.replicas))

    async def close(self) -> None:
        await asyncio.gather(*(r.close() for r in self.replicas), return_exceptions=True)

    def snapshot(self) -> list[dict[str, object]]:
        return [
            {
                "name": replica.name,
                "available": replica.available,
                "healthy": self.probe_healthy[i],
                "breaker": self.breakers[i].snapshot(),
                "ejection": self.outliers.snapshot(i),
                "balancer": self.balancer.snapshot(i),
            }
            for i, replica in enumerate(self.replicas)
        ]


async def _first_done(
    tasks: dict[asyncio.Task[Tensors], int], clock: Clock, seconds: float
) -> list[asyncio.Task[Tensors]]:
    """The attempts that finished within ``seconds`` (of the injected clock).

    One future woken by whichever comes first, a finished attempt or the
    clock's timer: cheaper than asyncio.wait plus a timer task, and this runs
    for every request to remote replicas.
    """
    done = [task for task in tasks if task.done()]
    if done:
        return done
    wake: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def wakeup(_: object = None) -> None:
        if not wake.done():
            wake.set_result(None)

    for task in tasks:
        task.add_done_callback(wakeup)
    cancel_timer = clock.call_later(max(seconds, 0.0), wakeup)
    try:
        await wake
    finally:
        cancel_timer()
        for task in tasks:
            task.remove_done_callback(wakeup)
    return [task for task in tasks if task.done()]
