"""The version pipeline: how one request reaches a healthy replica of a version.

    deadline → poison memory → retry (budget) → hedge → pick replica
             → replica breaker → backend call → output contract → attribution

Every attempt's outcome is attributed before any state machine sees it
(``errors.FailureClass``): only a replica's own failures move its balancer
penalty, circuit breaker and outlier ejection. A deadline the client cut
short, an upstream 4xx and a shed call charge nobody; a model error on a
healthy replica is a suspect until the request is over (``attribution``):
confirmed on a second replica it is a poison request (422, remembered), and
answered well anywhere it was the replica's fault after all.

Retries go to another replica where there is one, after a jittered backoff,
and only while the retry budget allows, so a sick fleet is never hammered.
When the replicas can run calls concurrently (remote or worker replicas), a
request that has not answered by the replica set's recent p95 gets one
hedged attempt on another replica; the first good answer wins and the others
are cancelled.

When no replica is eligible at all (every one ejected, open or failing its
probes) every request would fail, so the pipeline tries them anyway, the
most recently successful first (Envoy's panic routing): the first answer
after an outage readmits that replica to its breaker and ejection at once.

Time comes from the injected clock and randomness from the injected RNG,
so all of this is tested without sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import random
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from failsoft.backends.base import Replica
from failsoft.call import Call
from failsoft.clock import Clock
from failsoft.data.contracts import ModelContract
from failsoft.errors import (
    ContractViolation,
    DeadlineExceeded,
    FailsoftError,
    FailureClass,
    ModelError,
    NotReady,
    Overloaded,
    PoisonRequest,
    UpstreamError,
)
from failsoft.observe import tracing
from failsoft.observe.events import Event, EventBus
from failsoft.pipeline.attribution import AttributionOptions, PoisonMemory, RecentOutcomes
from failsoft.pipeline.breaker import BreakerOptions, BreakerState, CircuitBreaker
from failsoft.pipeline.bulkhead import BulkheadOptions
from failsoft.pipeline.cache import request_digest
from failsoft.pipeline.hedge import HedgeOptions, LatencyTracker, hedge_delay
from failsoft.pipeline.retry import RetryBudget, RetryOptions, backoff_delay
from failsoft.pipeline.throttle import AdaptiveThrottle, ThrottledLocally, ThrottleOptions
from failsoft.protocol.types import InferRequest, Tensors
from failsoft.routing.balancer import BalancerOptions, PeakEwmaBalancer
from failsoft.routing.ejection import EjectionOptions, OutlierDetector

_REPLICA = FailureClass.REPLICA


@dataclass(slots=True)
class AttemptStarted(Event):
    model: str
    version: str
    replica: str
    kind: str  # "first", "retry", "hedge" or "panic"


@dataclass(slots=True)
class AttemptFailed(Event):
    """A failed attempt charged to its replica (failure_class ``replica``)."""

    model: str
    version: str
    replica: str
    failure_class: FailureClass
    message: str
    seconds: float


@dataclass(slots=True)
class ContractBroken(Event):
    """An answer that broke the output contract (counted by a rollout's analysis)."""

    model: str
    version: str
    replica: str


@dataclass(slots=True)
class RetryDenied(Event):
    model: str
    version: str
    reason: str  # "budget" or "deadline"


@dataclass(slots=True)
class PoisonDetected(Event):
    """A request judged poison: answered by the fallback chain or a 422, nobody charged."""

    model: str
    version: str
    replicas: str  # the replicas it failed on, "" when answered from memory
    reason: str


@dataclass(slots=True)
class PanicChanged(Event):
    """No replica of the version is eligible (active) / one is again (not active)."""

    model: str
    version: str
    active: bool


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
    attribution: AttributionOptions = field(default_factory=AttributionOptions)


class _Tally:
    """One request's attempts: where it went, and the model errors awaiting a verdict."""

    __slots__ = ("suspect_error", "suspected", "suspects", "tried")

    def __init__(self) -> None:
        self.tried: set[int] = set()
        self.suspects: list[tuple[int, float]] = []  # (replica, seconds) of each suspect
        self.suspect_error: ModelError | None = None
        self.suspected: bytes | None = None  # the input's digest, once it is a suspect


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
        attribution = options.attribution
        self._attribution = attribution
        self._attributing = attribution.enabled
        self._recent = [RecentOutcomes() for _ in range(size)]
        self.poison = PoisonMemory(
            attribution.poison_ttl_s, attribution.poison_max_entries, attribution.min_calls, clock
        )
        self._answered = 0  # good answers from any replica: what confirms a poison verdict
        # Inputs that are a suspect in a request in flight -> how many such requests.
        self._suspected: dict[bytes, int] = {}
        self._last_success = [-math.inf] * size
        self._was_available = [True] * size
        self._panic = False
        # Set by the runtime while an operator has this version halted or switched off:
        # calls already under way get no retry or hedge on it (new ones never reach it).
        self.switched_off = False
        # Remote and worker replicas can be hedged and throttled; in-process ones cannot.
        self._remote = all(getattr(replica, "hedgeable", True) for replica in self.replicas)
        self._hedging = hedge.enabled and hedge.max_hedges > 0 and self._remote
        self._max_attempts = retry.max_attempts if retry.enabled else 1

    # -- replica state -----------------------------------------------------

    def usable(self, index: int) -> bool:
        """Could this replica take a call now? Its breaker has the last word, in _choose."""
        return (
            self.replicas[index].available
            and self.probe_healthy[index]
            and not self.outliers.is_ejected(index)
        )

    @property
    def ready(self) -> bool:
        """Some replica is up and passes its probes: what no client request can change."""
        return any(
            replica.available and self.probe_healthy[i] for i, replica in enumerate(self.replicas)
        )

    @property
    def all_out(self) -> bool:
        """No replica is in rotation: probes should look again soon."""
        return not any(self.usable(i) for i in range(len(self.replicas)))

    def set_probe_health(self, index: int, healthy: bool) -> None:
        """The prober's verdict; a replica passing again is reinstated and ramped in."""
        if self.probe_healthy[index] == healthy:
            return
        self.probe_healthy[index] = healthy
        if healthy:
            self.outliers.reinstate(index)
            self.balancer.begin_slow_start(index)

    def _in_rotation(self) -> list[int]:
        """The usable replicas; a replica whose worker came back is reinstated and ramped in."""
        usable = []
        was_available = self._was_available
        for index, replica in enumerate(self.replicas):
            available = replica.available
            if available != was_available[index]:
                was_available[index] = available
                if available:  # a restarted worker is back: in rotation, ramped in, not flooded
                    self.outliers.reinstate(index)
                    self.balancer.begin_slow_start(index)
            if available and self.probe_healthy[index] and not self.outliers.is_ejected(index):
                usable.append(index)
        return usable

    # -- choosing a replica ------------------------------------------------

    def _choose(self, tally: _Tally, call: Call, kind: str) -> tuple[int, bool] | None:
        """A replica index, and whether it was chosen in panic mode; None when none can go."""
        if self.switched_off and kind != "first":
            return None
        if not self.outliers.quiet:
            for index in self.outliers.returned():
                self.balancer.begin_slow_start(index)
        usable = self._in_rotation()
        tried = tally.tried
        candidates = [i for i in usable if i not in tried] if tried else usable
        if not candidates and kind != "hedge":  # all usable ones were tried: a second go
            candidates = usable
        trial_ok = not call.client_limited
        while candidates:
            index = self.balancer.pick(candidates)
            if self.breakers[index].allow(trial_ok):
                if self._panic:
                    self._set_panic(False)
                return index, False
            candidates = [i for i in candidates if i != index]
        if kind == "hedge" or (usable and not self._none_eligible(usable)):
            return None
        return self._panic_choice(tally)

    def _none_eligible(self, usable: list[int]) -> bool:
        return all(self.breakers[i].state is BreakerState.OPEN for i in usable)

    def _panic_choice(self, tally: _Tally) -> tuple[int, bool] | None:
        up = [
            i
            for i, replica in enumerate(self.replicas)
            if replica.available and i not in tally.tried
        ]
        if not up:
            return None
        if not self._panic:
            self._set_panic(True)
        return max(up, key=self._last_success.__getitem__), True

    def _set_panic(self, active: bool) -> None:
        self._panic = active
        self._bus.emit(PanicChanged(self.model, self.version, active))

    # -- one attempt -------------------------------------------------------

    def _spawn(
        self, index: int, panic: bool, request: InferRequest, call: Call, tally: _Tally, kind: str
    ) -> asyncio.Task[Tensors]:
        """Run an attempt as a task; a task cancelled before it ran gives back its slot."""
        began = False

        async def attempt() -> Tensors:
            nonlocal began
            began = True
            return await self._traced(index, request, call, tally, panic, kind)

        def never_began(_: asyncio.Task[Tensors]) -> None:
            if not began and not panic:
                self.breakers[index].release()

        task = asyncio.ensure_future(attempt())
        task.add_done_callback(never_began)
        return task

    def _traced(
        self, index: int, request: InferRequest, call: Call, tally: _Tally, panic: bool, kind: str
    ) -> Coroutine[Any, Any, Tensors]:
        """The attempt, in its own span when tracing is on."""
        work = self._attempt(index, request, call, tally, panic)
        if not tracing.enabled():
            return work
        name = self.replicas[index].name
        return tracing.attempt(work, self.model, self.version, name, "panic" if panic else kind)

    async def _attempt(
        self, index: int, request: InferRequest, call: Call, tally: _Tally, panic: bool
    ) -> Tensors:
        replica = self.replicas[index]
        remote = self._remote
        # In panic mode the throttle remembers only the outage: let the call through.
        if remote and not panic and not self.throttle.allow():
            self.breakers[index].release()
            self._bus.emit(
                ThrottledLocally(self.model, self.version, self.throttle.rejection_probability())
            )
            raise Overloaded(
                f"{self.model}/{self.version}: replicas are refusing calls; throttled locally"
            )
        attempt_call = call
        per_try = self.options.per_try_timeout_s
        if per_try is not None and self._clock.now() + per_try < call.deadline:
            attempt_call = dataclasses.replace(call, deadline=self._clock.now() + per_try)
        self.balancer.started(index)
        started = self._clock.now()
        try:
            outputs = self._contract.check_outputs(
                await replica.infer(request, attempt_call), self._contract.batch_rows(request)
            )
        except FailsoftError as error:
            if isinstance(error, ContractViolation):
                self._bus.emit(ContractBroken(self.model, self.version, replica.name))
            cut_by_client = attempt_call is call and call.client_limited
            self._judge_failure(
                index, error, self._clock.now() - started, request, tally, panic, cut_by_client
            )
            raise
        except asyncio.CancelledError:
            # A cancelled hedge loser: what it took so far is a lower bound on its
            # latency, which keeps a hung replica from looking idle and attractive.
            self.balancer.cancelled(index, self._clock.now() - started)
            if not panic:
                self.breakers[index].release()
            raise
        except Exception as error:  # a backend breaking the Replica protocol: its fault
            self._recent[index].add(False)
            self._charge(index, self._clock.now() - started, str(error), panic)
            raise
        seconds = self._clock.now() - started
        if remote:
            self.throttle.accepted()
        self.balancer.finished(index, seconds, True)
        if panic:
            self.breakers[index].readmit("answered a call in panic mode")
            self.outliers.reinstate(index)
        else:
            self.breakers[index].record(True, seconds)
        self.outliers.record(index, True)
        self._recent[index].add(True)
        self._last_success[index] = started
        self._answered += 1
        if self._hedging:  # the tracker only feeds the hedge delay
            self.latency.observe(seconds)
        return outputs

    def _judge_failure(
        self,
        index: int,
        error: FailsoftError,
        seconds: float,
        request: InferRequest,
        tally: _Tally,
        panic: bool,
        cut_by_client: bool,
    ) -> None:
        if isinstance(error, DeadlineExceeded) and cut_by_client:
            error.failure_class = FailureClass.CLIENT
        remote = self._remote
        if error.failure_class is not _REPLICA:  # the client's doing: the replica did its job
            if remote:
                self.throttle.accepted()
            self.balancer.cancelled(index, seconds)
            if not panic:
                self.breakers[index].release()
            return
        if remote and not _refused(error):
            self.throttle.accepted()
        recent = self._recent[index]
        if (
            isinstance(error, ModelError)
            and self._attributing
            and not panic
            and recent.healthy(self._attribution, self._recent)
        ):
            # One raw failure per input in flight: a confirming replica's failure, or
            # another copy of the input failing meanwhile, would let one poison input
            # count many times against the replicas' healthy rate (a burst of copies,
            # as a stalled gateway takes a client's queued requests, drove healthy
            # replicas under it, and their failures were then charged).
            if not tally.suspects:
                self._suspect(request, tally, recent)
            tally.suspects.append((index, seconds))
            if tally.suspect_error is None:
                tally.suspect_error = error
            self.balancer.finished(index, seconds, True)  # it answered; the charge awaits a verdict
            return
        recent.add(False)
        if isinstance(error, ModelError) and self.poison.entries:
            # The version fails broadly: the poison verdicts in memory may have
            # been the first failures of a bad deploy, not bad inputs.
            self.poison.clear()
        self._charge(index, seconds, error.message, panic)

    def _suspect(self, request: InferRequest, tally: _Tally, recent: RecentOutcomes) -> None:
        digest = request_digest(request)
        copies = self._suspected.get(digest, 0)
        if not copies:
            recent.add(False)
        self._suspected[digest] = copies + 1
        tally.suspected = digest

    def _unsuspect(self, tally: _Tally) -> None:
        digest = tally.suspected
        if digest is None:
            return
        copies = self._suspected.pop(digest, 1) - 1
        if copies:
            self._suspected[digest] = copies

    def _charge(self, index: int, seconds: float, message: str, panic: bool) -> None:
        self.balancer.finished(index, seconds, False)
        self._charge_state(index, seconds, message, panic)

    def _charge_state(self, index: int, seconds: float, message: str, panic: bool) -> None:
        if not panic:
            self.breakers[index].record(False, seconds)
        self.outliers.record(index, False)
        self._bus.emit(
            AttemptFailed(
                self.model, self.version, self.replicas[index].name, _REPLICA, message, seconds
            )
        )

    def _settle(self, tally: _Tally, request: InferRequest, answered: bool) -> PoisonRequest | None:
        """The verdict on this request's suspects: charged, or a poison request."""
        error = tally.suspect_error
        if error is None:
            return None
        if answered:  # the input was fine somewhere: the suspects lied
            for index, seconds in tally.suspects:
                self._charge_state(index, seconds, error.message, False)
            return None
        for index, _ in tally.suspects:
            self.breakers[index].release()
        verdict = self._poison_message(error)
        self.poison.add(request_digest(request), self._answered, verdict)
        names = ",".join(sorted({self.replicas[i].name for i, _ in tally.suspects}))
        self._bus.emit(PoisonDetected(self.model, self.version, names, error.message))
        return PoisonRequest(verdict)

    def _poison_message(self, cause: ModelError) -> str:
        where = f"{self.model}/{self.version}"
        if isinstance(cause, ContractViolation):  # its message names the check, nothing internal
            return (
                f"this input makes {where} break its output contract ({cause.message}), "
                "while it answers other inputs well"
            )
        return f"{where} fails on this input, while it answers other inputs well"

    def _verdict_reached(self, tally: _Tally) -> bool:
        """No point in another attempt: the suspects confirmed each other, or none can."""
        if not tally.suspects:
            return False
        if len({index for index, _ in tally.suspects}) >= 2:
            return True
        return not any(self.usable(i) for i in range(len(self.replicas)) if i not in tally.tried)

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

    async def infer(
        self, request: InferRequest, call: Call, without: frozenset[str] = frozenset()
    ) -> tuple[Tensors, Replica]:
        """The answer and the replica that gave it. ``without``: features an operator
        switched off for this model ("hedging", "retries")."""
        call.sample = None
        if call.remaining() <= 0:  # spent waiting, or cut by the client: not worth a call
            spent = DeadlineExceeded(f"{self.model}/{self.version}: the deadline was spent")
            spent.failure_class = FailureClass.CLIENT
            raise spent
        if self.poison.entries:
            verdict = self.poison.refused(request_digest(request), self._answered)
            if verdict is not None:
                self._bus.emit(PoisonDetected(self.model, self.version, "", "remembered"))
                raise PoisonRequest(verdict)
        if self.in_flight >= self.options.bulkhead.max_in_flight:
            raise Overloaded(
                f"{self.model}/{self.version} has {self.in_flight} calls in flight (its bulkhead)",
                retry_after_s=1.0,
            )
        self.in_flight += 1
        tally = _Tally()
        try:
            self.retry_budget.deposit()
            attempts = 1 if "retries" in without else self._max_attempts
            if self._hedging and "hedging" not in without:
                self.hedge_budget.deposit()
                result = await self._infer_hedged(request, call, tally, attempts)
            else:
                result = await self._infer_sequential(request, call, tally, attempts)
        except FailsoftError as error:
            poison = self._settle(tally, request, answered=False)
            if poison is not None:
                raise poison from None
            call.sample = False if error.failure_class is _REPLICA else None
            raise
        except BaseException:  # cancelled: no verdict on anyone
            for index, _ in tally.suspects:
                self.breakers[index].release()
            raise
        finally:
            self.in_flight -= 1
            self._unsuspect(tally)
        self._settle(tally, request, answered=True)
        if self.poison.entries:  # answered well: whatever memory says about it is wrong
            self.poison.discard(request_digest(request))
        call.sample = True
        return result

    async def _infer_sequential(
        self, request: InferRequest, call: Call, tally: _Tally, attempts: int
    ) -> tuple[Tensors, Replica]:
        error: FailsoftError | None = None
        for attempt in range(attempts):
            if error is not None:
                if self._verdict_reached(tally):
                    raise error
                delay = self._retry_delay(attempt, call)
                if delay is None:
                    raise error
                await self._clock.sleep(delay)
            choice = self._choose(tally, call, "retry" if attempt else "first")
            if choice is None:
                raise error or self._no_replica()
            index, panic = choice
            tally.tried.add(index)
            kind = "retry" if attempt else "first"
            self._started(index, "panic" if panic else kind)
            try:
                answer = await self._traced(index, request, call, tally, panic, kind)
                return answer, self.replicas[index]
            except FailsoftError as failure:
                if not self._retryable(failure):
                    raise
                error = failure
        assert error is not None
        raise error

    async def _infer_hedged(
        self, request: InferRequest, call: Call, tally: _Tally, attempts: int
    ) -> tuple[Tensors, Replica]:
        clock = self._clock
        in_flight: dict[asyncio.Task[Tensors], int] = {}
        error: FailsoftError | None = None
        retries = hedges = 0
        max_hedges = self.options.hedge.max_hedges
        retry_at: float | None = None

        def launch(kind: str) -> bool:
            choice = self._choose(tally, call, kind)
            if choice is None:
                return False
            index, panic = choice
            if kind == "hedge" and not self.hedge_budget.try_withdraw():
                self.breakers[index].release()  # allow() reserved a probe slot
                return False
            tally.tried.add(index)
            self._started(index, "panic" if panic else kind)
            in_flight[self._spawn(index, panic, request, call, tally, kind)] = index
            return True

        if not launch("first"):
            raise self._no_replica()
        hedge_at = clock.now() + hedge_delay(self.latency, self.options.hedge)
        try:
            while True:
                now = clock.now()
                if now >= call.deadline:
                    raise _deadline_error(
                        call, f"{self.model}/{self.version}: no answer within the deadline"
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
                    if (
                        retry_at is None
                        and retries + 1 < attempts
                        and not self._verdict_reached(tally)
                    ):
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
                "success_rate": self._recent[i].success_rate,
                "breaker": self.breakers[i].snapshot(),
                "ejection": self.outliers.snapshot(i),
                "balancer": self.balancer.snapshot(i),
            }
            for i, replica in enumerate(self.replicas)
        ]


def _refused(error: FailsoftError) -> bool:
    """The replica said no to the work (overloaded, or too slow): what throttling counts."""
    if isinstance(error, UpstreamError):
        return error.refused
    return isinstance(error, DeadlineExceeded)


def _deadline_error(call: Call, message: str) -> DeadlineExceeded:
    error = DeadlineExceeded(message)
    if call.client_limited:
        error.failure_class = FailureClass.CLIENT
    return error


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
