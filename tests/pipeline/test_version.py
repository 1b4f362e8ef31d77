"""The version pipeline, driven by scripted replicas on a ManualClock.

Nothing here sleeps for real: time moves only when a test advances the
clock, randomness comes from a seeded RNG, and each replica does exactly
what the test scripts (answer, fail, answer garbage, take a while, hang).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

import numpy as np
import pytest

from failsoft.backends.base import Replica
from failsoft.call import Call
from failsoft.clock import ManualClock, settle
from failsoft.config import TensorSpec
from failsoft.data.contracts import ModelContract
from failsoft.errors import (
    BadRequest,
    ContractViolation,
    DeadlineExceeded,
    FailsoftError,
    FailureClass,
    ModelError,
    NotReady,
    PoisonRequest,
    UpstreamError,
)
from failsoft.observe.events import Event, EventBus
from failsoft.pipeline.attribution import AttributionOptions
from failsoft.pipeline.breaker import BreakerOptions, BreakerState, BreakerTransition
from failsoft.pipeline.hedge import HedgeOptions
from failsoft.pipeline.retry import RetryOptions
from failsoft.pipeline.version import (
    AttemptFailed,
    AttemptStarted,
    PanicChanged,
    PoisonDetected,
    ResilienceOptions,
    RetryDenied,
    VersionPipeline,
)
from failsoft.protocol.types import InferRequest, Tensors
from failsoft.routing.balancer import BalancerOptions
from failsoft.routing.ejection import EjectionOptions, ReplicaEjected, ReplicaReturned

CONTRACT = ModelContract(
    [TensorSpec(name="x", datatype="FP32", shape=[-1, 2])],
    [
        TensorSpec(name="label", datatype="INT64", shape=[-1]),
        TensorSpec(name="score", datatype="FP32", shape=[-1], range=(0.0, 1.0)),
    ],
)
REQUEST = InferRequest({"x": np.zeros((2, 2), dtype=np.float32)})

# Retries after at most 10 ms; hedges (where a test does not set them) only
# after 50 ms, so they never mix into a test about something else.
RETRY = RetryOptions(backoff_base_ms=10.0, backoff_max_ms=10.0)
NO_BACKOFF = RetryOptions(backoff_base_ms=0.0, backoff_max_ms=0.0)
HEDGE = HedgeOptions(min_delay_ms=50.0, max_delay_ms=50.0)
FAST_HEDGE = HedgeOptions(min_delay_ms=10.0, max_delay_ms=100.0)

Result = tuple[Tensors, Replica]
Action = Callable[["ScriptedReplica"], Awaitable[Tensors]]

both_paths = pytest.mark.parametrize("hedgeable", [True, False], ids=["hedged", "sequential"])


# --- scripted replicas ------------------------------------------------------------


def answer() -> Action:
    """Answer at once: label = the replica's number, extra outputs the contract drops."""

    async def act(replica: ScriptedReplica) -> Tensors:
        return replica.good_outputs()

    return act


def fail(error: FailsoftError) -> Action:
    async def act(replica: ScriptedReplica) -> Tensors:
        raise error

    return act


def wrong_dtype() -> Action:
    async def act(replica: ScriptedReplica) -> Tensors:
        outputs = replica.good_outputs()
        outputs["label"] = outputs["label"].astype(np.float64)
        return outputs

    return act


def nan_score() -> Action:
    async def act(replica: ScriptedReplica) -> Tensors:
        outputs = replica.good_outputs()
        outputs["score"] = np.array([np.nan, 0.5], dtype=np.float32)
        return outputs

    return act


def missing_output() -> Action:
    async def act(replica: ScriptedReplica) -> Tensors:
        outputs = replica.good_outputs()
        del outputs["score"]
        return outputs

    return act


def slow(seconds: float) -> Action:
    """Answer after ``seconds`` of the fleet's ManualClock."""

    async def act(replica: ScriptedReplica) -> Tensors:
        await replica.fleet.clock.sleep(seconds)
        return replica.good_outputs()

    return act


def hang() -> Action:
    """Wait until the test sets ``fleet.release`` (usually never), then answer."""

    async def act(replica: ScriptedReplica) -> Tensors:
        await replica.fleet.release.wait()
        return replica.good_outputs()

    return act


def stall() -> Action:
    """No answer until the call's deadline, then a timeout, as a real backend gives."""

    async def act(replica: ScriptedReplica) -> Tensors:
        clock = replica.fleet.clock
        await clock.sleep(replica.deadlines[-1] - clock.now())
        raise DeadlineExceeded(f"replica {replica.name} did not answer within the deadline")

    return act


class ScriptedReplica:
    """Implements the Replica protocol; does what ``behaviour`` or the fleet's plan says."""

    def __init__(self, fleet: Fleet, number: int, hedgeable: bool) -> None:
        self.fleet = fleet
        self.number = number
        self.name = f"r{number}"
        self.hedgeable = hedgeable
        self.available = True
        self.behaviour: Action | None = None  # when set, every call to this replica does it
        self.deadlines: list[float] = []

    def good_outputs(self) -> Tensors:
        return {
            "extra": np.array([7, 7], dtype=np.int64),
            "score": np.array([0.25, 0.75], dtype=np.float32),
            "label": np.array([self.number, self.number], dtype=np.int64),
        }

    async def start(self) -> None:
        pass

    async def infer(self, request: InferRequest, call: Call) -> Tensors:
        fleet = self.fleet
        fleet.calls.append(self.name)
        self.deadlines.append(call.deadline)
        if self.behaviour is not None:
            action = self.behaviour
        elif fleet.plan:
            action = fleet.plan.pop(0)
        else:
            action = answer()
        try:
            return await action(self)
        except asyncio.CancelledError:
            fleet.cancelled.append(self.name)
            raise

    async def health(self) -> bool:
        return self.available

    async def close(self) -> None:
        pass


class Fleet:
    """A VersionPipeline over scripted replicas, a ManualClock and a recording bus.

    ``plan`` scripts calls by their order, whichever replica takes them: the
    first call does ``plan[0]`` and so on; once it is empty, replicas answer.
    A replica's ``behaviour``, when set, overrides the plan for that replica.
    """

    def __init__(
        self,
        size: int = 2,
        *,
        hedgeable: bool = True,
        seed: int = 0,
        retry: RetryOptions = RETRY,
        hedge: HedgeOptions = HEDGE,
        breaker: BreakerOptions | None = None,
        ejection: EjectionOptions | None = None,
        balancer: BalancerOptions | None = None,
        per_try_timeout_s: float | None = None,
        attribution: AttributionOptions | None = None,
    ) -> None:
        self.clock = ManualClock()
        self.bus = EventBus()
        self.events: list[Event] = []
        self.bus.subscribe(self.events.append)
        self.calls: list[str] = []
        self.cancelled: list[str] = []
        self.plan: list[Action] = []
        self.release = asyncio.Event()
        self.replicas = [ScriptedReplica(self, i, hedgeable) for i in range(size)]
        options = ResilienceOptions(
            retry=retry,
            hedge=hedge,
            breaker=breaker or BreakerOptions(),
            ejection=ejection or EjectionOptions(),
            balancer=balancer or BalancerOptions(),
            per_try_timeout_s=per_try_timeout_s,
            attribution=attribution or AttributionOptions(),
        )
        self.pipeline = VersionPipeline(
            "m",
            "v1",
            self.replicas,
            options,
            CONTRACT,
            self.bus,
            self.clock,
            random.Random(seed),
        )

    def call(self, seconds: float = 10.0, *, client_limited: bool = False) -> Call:
        return Call(
            "req", "m", "v1", self.clock.now() + seconds, self.bus, self.clock, client_limited
        )

    async def start(self, seconds: float = 10.0) -> asyncio.Task[Result]:
        """Begin a request and let it run until it waits on the clock or a replica."""
        task = asyncio.ensure_future(self.pipeline.infer(REQUEST, self.call(seconds)))
        # A test that stops early (an xfail) must not leave an error nobody retrieved.
        task.add_done_callback(_retrieve)
        await settle()
        return task

    async def infer(self, seconds: float = 10.0) -> Result:
        """A request that needs no clock movement to finish."""
        task = await self.start(seconds)
        return finished(task)

    async def advance_to_next_wakeup(self) -> None:
        wakeup = self.clock.next_wakeup()
        assert wakeup is not None, "nothing is waiting on the clock"
        await self.clock.advance(wakeup - self.clock.now())

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events if isinstance(e, AttemptStarted)]

    def started_on(self) -> list[str]:
        return [e.replica for e in self.events if isinstance(e, AttemptStarted)]

    def denials(self) -> list[str]:
        return [e.reason for e in self.events if isinstance(e, RetryDenied)]

    def index(self, name: str) -> int:
        return next(r.number for r in self.replicas if r.name == name)


def _retrieve(task: asyncio.Task[Result]) -> None:
    if not task.cancelled():
        task.exception()


def finished(task: asyncio.Task[Result]) -> Result:
    assert task.done(), "the request should have finished by now"
    return task.result()


def failed_with(task: asyncio.Task[Result]) -> BaseException:
    assert task.done(), "the request should have finished by now"
    error = task.exception()
    assert error is not None, "the request should have failed"
    return error


# --- success -------------------------------------------------------------------


@both_paths
async def test_first_try_answer_goes_through_the_output_contract(hedgeable: bool) -> None:
    fleet = Fleet(hedgeable=hedgeable)

    outputs, replica = await fleet.infer()

    assert list(outputs) == ["label", "score"]  # declared order, undeclared "extra" dropped
    assert outputs["label"].tolist() == [fleet.index(replica.name)] * 2
    assert fleet.calls == [replica.name]
    assert fleet.kinds() == ["first"]
    assert not any(isinstance(e, AttemptFailed) for e in fleet.events)


async def test_success_updates_the_replica_balancer_and_breaker() -> None:
    fleet = Fleet()
    fleet.plan = [slow(0.02)]

    task = await fleet.start()
    await fleet.clock.advance(0.02)
    _, replica = finished(task)

    index = fleet.index(replica.name)
    snapshot = fleet.pipeline.snapshot()[index]
    assert snapshot["balancer"] == {
        "ewma_ms": pytest.approx(20.0),
        "outstanding": 0.0,
        "weight": 1.0,
    }
    assert snapshot["breaker"]["calls"] == 1  # type: ignore[index]
    assert len(fleet.pipeline.latency) == 1


# --- retries --------------------------------------------------------------------


@both_paths
async def test_infra_failure_is_retried_on_another_replica_after_the_backoff(
    hedgeable: bool,
) -> None:
    # No failure penalty, and r1 has been slow: the balancer alone would pick r0
    # again, so only the pipeline's "another replica" rule sends the retry to r1.
    fleet = Fleet(hedgeable=hedgeable, balancer=BalancerOptions(failure_penalty_ms=0.0))
    fleet.pipeline.balancer.started(1)
    fleet.pipeline.balancer.finished(1, 0.5, True)
    fleet.plan = [fail(UpstreamError("connection reset"))]

    task = await fleet.start()

    assert fleet.calls == ["r0"]  # the retry waits for the backoff on the clock
    assert not task.done()
    [failure] = [e for e in fleet.events if isinstance(e, AttemptFailed)]
    assert (failure.replica, failure.failure_class) == ("r0", FailureClass.REPLICA)

    await fleet.clock.advance(0.010)  # the longest possible first backoff

    outputs, replica = finished(task)
    assert replica.name == "r1"
    assert fleet.calls == ["r0", "r1"]
    assert fleet.kinds() == ["first", "retry"]
    assert outputs["label"].tolist() == [1, 1]


@both_paths
@pytest.mark.parametrize(
    ("garbage", "problem"),
    [
        (wrong_dtype(), "datatype FP64 does not match"),
        (nan_score(), "NaN"),
        (missing_output(), "did not return output 'score'"),
        (fail(ModelError("model raised ValueError: boom")), "boom"),
    ],
    ids=["wrong-dtype", "nan", "missing-output", "model-error"],
)
async def test_garbage_answer_is_retried_and_never_returned(
    hedgeable: bool, garbage: Action, problem: str
) -> None:
    fleet = Fleet(hedgeable=hedgeable)
    fleet.plan = [garbage]

    task = await fleet.start()
    await fleet.clock.advance(0.010)

    outputs, replica = finished(task)
    assert len(fleet.calls) == 2
    assert replica.name == fleet.calls[1] != fleet.calls[0]
    assert outputs["label"].dtype == np.int64
    assert np.isfinite(outputs["score"]).all()
    [failure] = [e for e in fleet.events if isinstance(e, AttemptFailed)]
    assert failure.failure_class is FailureClass.REPLICA
    assert problem in failure.message


@both_paths
async def test_bad_request_from_a_replica_is_raised_without_retry(hedgeable: bool) -> None:
    fleet = Fleet(hedgeable=hedgeable)
    fleet.plan = [fail(BadRequest("input 'x': contains NaN or infinity"))]

    with pytest.raises(BadRequest, match="contains NaN"):
        await fleet.infer()

    assert len(fleet.calls) == 1
    assert fleet.kinds() == ["first"]
    assert fleet.denials() == []
    # The client's fault: the replica is not blamed.
    assert not any(isinstance(e, AttemptFailed) for e in fleet.events)
    index = fleet.index(fleet.calls[0])
    assert fleet.pipeline.outliers.snapshot(index)["consecutive_failures"] == 0


@both_paths
async def test_max_attempts_is_respected_and_the_last_error_is_raised(hedgeable: bool) -> None:
    fleet = Fleet(4, hedgeable=hedgeable, retry=RetryOptions(max_attempts=3))
    fleet.plan = [
        fail(UpstreamError("first failure")),
        fail(UpstreamError("second failure")),
        fail(ModelError("third failure")),
        answer(),  # a fourth attempt would succeed: there must not be one
    ]

    task = await fleet.start()
    await fleet.clock.advance(1.0)

    error = failed_with(task)
    assert isinstance(error, ModelError)
    assert error.message == "third failure"
    assert len(fleet.calls) == 3
    assert len(set(fleet.calls)) == 3  # each retry went to a replica not yet tried
    assert fleet.kinds() == ["first", "retry", "retry"]


async def test_a_single_replica_is_retried_when_there_is_no_other() -> None:
    fleet = Fleet(1, hedgeable=False)
    fleet.plan = [fail(UpstreamError("reset"))]

    task = await fleet.start()
    await fleet.clock.advance(0.010)

    _, replica = finished(task)
    assert fleet.calls == ["r0", "r0"]
    assert replica.name == "r0"


@both_paths
async def test_no_retry_when_the_retry_budget_is_empty(hedgeable: bool) -> None:
    fleet = Fleet(
        hedgeable=hedgeable,
        retry=RetryOptions(budget_ratio=0.0, budget_min_per_s=0.0),
    )
    fleet.plan = [fail(UpstreamError("connection refused"))]

    with pytest.raises(UpstreamError, match="connection refused"):
        await fleet.infer()

    assert len(fleet.calls) == 1
    assert fleet.denials() == ["budget"]
    denied = next(e for e in fleet.events if isinstance(e, RetryDenied))
    assert (denied.model, denied.version) == ("m", "v1")


@both_paths
async def test_no_retry_when_the_backoff_would_pass_the_deadline(hedgeable: bool) -> None:
    # Backoff is drawn from [0, 1 s]; the deadline is a microsecond away.
    fleet = Fleet(
        hedgeable=hedgeable, retry=RetryOptions(backoff_base_ms=1000.0, backoff_max_ms=1000.0)
    )
    fleet.plan = [fail(UpstreamError("connection refused"))]

    with pytest.raises(UpstreamError, match="connection refused"):
        await fleet.infer(seconds=1e-6)

    assert len(fleet.calls) == 1
    assert fleet.denials() == ["deadline"]


async def test_a_retry_refused_for_the_deadline_does_not_spend_the_budget() -> None:
    # The budget allows exactly one retry per 10 s window.
    fleet = Fleet(
        hedgeable=False,
        retry=RetryOptions(
            backoff_base_ms=1000.0,
            backoff_max_ms=1000.0,
            budget_ratio=0.0,
            budget_min_per_s=0.1,
            budget_window_s=10.0,
        ),
    )
    fleet.plan = [fail(UpstreamError("one")), fail(UpstreamError("two"))]
    with pytest.raises(UpstreamError):
        await fleet.infer(seconds=1e-6)  # no time for a retry: none happens
    assert fleet.denials() == ["deadline"]

    task = await fleet.start(seconds=10.0)  # time enough: the one allowed retry
    await fleet.clock.advance(1.0)

    assert fleet.denials() == ["deadline"]  # not "budget": no retry has happened yet
    assert len(fleet.calls) == 3
    finished(task)


# --- hedging ----------------------------------------------------------------------


async def test_a_slow_first_attempt_is_hedged_on_another_replica_and_the_hedge_wins() -> None:
    fleet = Fleet(hedge=FAST_HEDGE)
    fleet.plan = [hang(), answer()]
    began = fleet.clock.now()

    task = await fleet.start()
    first = fleet.calls[0]
    await fleet.clock.advance(0.005)
    assert fleet.calls == [first]  # not before the hedge delay (min_delay_ms: no data yet)

    await fleet.advance_to_next_wakeup()

    outstanding_s = fleet.clock.now() - began
    assert outstanding_s == pytest.approx(0.010)
    _, replica = finished(task)
    assert replica.name != first
    assert fleet.calls == [first, replica.name]
    assert fleet.kinds() == ["first", "hedge"]
    assert fleet.started_on() == [first, replica.name]
    assert fleet.cancelled == [first]
    # The hung replica's estimate is at least how long it kept the call.
    hung = fleet.pipeline.balancer.snapshot(fleet.index(first))
    assert hung["outstanding"] == 0.0
    assert hung["ewma_ms"] >= outstanding_s * 1000.0 - 1e-9
    assert hung["ewma_ms"] > fleet.pipeline.balancer.snapshot(fleet.index(replica.name))["ewma_ms"]


async def test_the_first_attempt_wins_when_it_answers_before_the_hedge() -> None:
    fleet = Fleet(hedge=FAST_HEDGE)
    fleet.plan = [slow(0.015), slow(1.0)]

    task = await fleet.start()
    await fleet.clock.advance(0.015)

    _, replica = finished(task)
    assert fleet.kinds() == ["first", "hedge"]
    assert replica.name == fleet.calls[0]
    assert fleet.cancelled == [fleet.calls[1]]  # the hedge lost and was cancelled


@pytest.mark.parametrize(
    ("hedge", "hedgeable"),
    [(FAST_HEDGE.model_copy(update={"enabled": False}), True), (FAST_HEDGE, False)],
    ids=["hedging-disabled", "replicas-not-hedgeable"],
)
async def test_no_hedge_on_the_sequential_path(hedge: HedgeOptions, hedgeable: bool) -> None:
    fleet = Fleet(hedgeable=hedgeable, hedge=hedge)
    fleet.plan = [slow(0.1)]

    task = await fleet.start()
    await fleet.clock.advance(0.05)
    assert len(fleet.calls) == 1
    assert not task.done()

    await fleet.clock.advance(0.06)

    _, replica = finished(task)
    assert fleet.calls == [replica.name]
    assert fleet.kinds() == ["first"]


async def test_no_hedge_once_the_hedge_budget_is_spent() -> None:
    # One hedge per 10 s window, and no share of the requests on top.
    budget = {"budget_ratio": 0.0, "budget_min_per_s": 0.1, "budget_window_s": 10.0}
    fleet = Fleet(hedge=FAST_HEDGE.model_copy(update=budget))

    fleet.plan = [hang(), answer()]
    first = await fleet.start()
    await fleet.clock.advance(0.010)
    finished(first)
    assert fleet.kinds() == ["first", "hedge"]

    fleet.plan = [slow(0.1)]
    second = await fleet.start()
    await fleet.clock.advance(0.1)

    finished(second)
    assert fleet.kinds() == ["first", "hedge", "first"]
    assert len(fleet.calls) == 3


async def test_a_hedge_that_cannot_be_sent_does_not_spend_the_budget() -> None:
    budget = {"budget_ratio": 0.0, "budget_min_per_s": 0.1, "budget_window_s": 10.0}
    fleet = Fleet(
        hedge=FAST_HEDGE.model_copy(update=budget),
        ejection=EjectionOptions(base_ejection_ms=1000.0, max_ejection_ms=1000.0),
    )
    assert fleet.pipeline.outliers.eject(1, "test")  # nowhere to hedge to

    fleet.plan = [slow(0.02)]
    first = await fleet.start()
    await fleet.clock.advance(0.02)
    finished(first)
    assert fleet.calls == ["r0"]

    await fleet.clock.advance(1.0)  # r1's ejection ends
    fleet.plan = [hang(), answer()]
    second = await fleet.start()
    try:
        await fleet.clock.advance(0.010)
        assert fleet.kinds() == ["first", "first", "hedge"]
        finished(second)
    finally:
        second.cancel()  # without the hedge it would hang for ever


async def test_a_retry_is_not_hedged_the_moment_it_starts() -> None:
    fleet = Fleet(
        3,
        hedge=HedgeOptions(min_delay_ms=10.0, max_delay_ms=10.0),
        retry=RetryOptions(backoff_base_ms=1000.0, backoff_max_ms=1000.0),
    )
    fleet.plan = [fail(UpstreamError("reset")), hang(), answer()]
    began = fleet.clock.now()

    task = await fleet.start()
    try:
        await fleet.advance_to_next_wakeup()  # the retry's backoff is over
        assert fleet.clock.now() - began > 0.010  # longer than the hedge delay (seeded draw)
        assert fleet.kinds() == ["first", "retry"]
    finally:
        task.cancel()


@both_paths
async def test_a_replica_sees_the_per_try_timeout_as_its_deadline(hedgeable: bool) -> None:
    fleet = Fleet(hedgeable=hedgeable, per_try_timeout_s=0.25)

    _, replica = await fleet.infer(seconds=10.0)

    [deadline] = fleet.replicas[fleet.index(replica.name)].deadlines
    assert deadline == pytest.approx(fleet.clock.now() + 0.25)


# --- the deadline ----------------------------------------------------------------


async def test_deadline_exceeded_when_every_replica_hangs() -> None:
    fleet = Fleet(hedge=FAST_HEDGE)
    for replica in fleet.replicas:
        replica.behaviour = hang()

    task = await fleet.start(seconds=0.5)
    await fleet.clock.advance(0.25)
    assert not task.done()
    assert fleet.kinds() == ["first", "hedge"]

    await fleet.clock.advance(0.3)

    error = failed_with(task)
    assert isinstance(error, DeadlineExceeded)
    assert "m/v1" in error.message
    assert sorted(fleet.cancelled) == ["r0", "r1"]
    assert all(s["balancer"]["outstanding"] == 0.0 for s in fleet.pipeline.snapshot())  # type: ignore[index]


# --- breakers, ejection, availability ------------------------------------------


@both_paths
async def test_an_open_breaker_takes_its_replica_out_of_rotation(hedgeable: bool) -> None:
    fleet = Fleet(
        hedgeable=hedgeable,
        retry=NO_BACKOFF,
        breaker=BreakerOptions(window_size=2, minimum_calls=2, open_ms=60_000.0),
        ejection=EjectionOptions(enabled=False),
        # No failure penalty: r0 keeps being drawn until its breaker opens.
        balancer=BalancerOptions(failure_penalty_ms=0.0),
    )
    fleet.replicas[0].behaviour = fail(UpstreamError("503 from r0"))

    for _ in range(50):
        _, replica = await fleet.infer()  # a failure on r0 is retried on r1
        assert replica.name == "r1"
        if fleet.pipeline.breakers[0].state is BreakerState.OPEN:
            break
    assert fleet.pipeline.breakers[0].state is BreakerState.OPEN
    opened = [e for e in fleet.events if isinstance(e, BreakerTransition)]
    assert [(e.replica, e.new) for e in opened] == [("r0", BreakerState.OPEN)]

    fleet.calls.clear()
    for _ in range(20):
        await fleet.infer()
    assert fleet.calls == ["r1"] * 20
    assert fleet.pipeline.snapshot()[0]["breaker"]["state"] == "open"  # type: ignore[index]


@both_paths
async def test_consecutive_failures_eject_a_replica_until_its_time_is_up(hedgeable: bool) -> None:
    fleet = Fleet(
        hedgeable=hedgeable,
        retry=NO_BACKOFF,
        breaker=BreakerOptions(enabled=False),
        ejection=EjectionOptions(
            consecutive_failures=2, base_ejection_ms=30_000.0, max_ejection_ms=60_000.0
        ),
        balancer=BalancerOptions(failure_penalty_ms=0.0),
    )
    fleet.replicas[0].behaviour = fail(UpstreamError("reset by r0"))

    for _ in range(50):
        await fleet.infer()
        if any(isinstance(e, ReplicaEjected) for e in fleet.events):
            break
    [ejected] = [e for e in fleet.events if isinstance(e, ReplicaEjected)]
    assert (ejected.replica, ejected.reason, ejected.seconds) == (
        "r0",
        "consecutive_failures",
        30.0,
    )

    fleet.calls.clear()
    for _ in range(20):
        await fleet.infer()
    assert fleet.calls == ["r1"] * 20  # skipped while ejected

    fleet.replicas[0].behaviour = None
    await fleet.clock.advance(30.0)
    await fleet.infer()  # the next pick notices the return and starts the ramp

    assert any(isinstance(e, ReplicaReturned) and e.replica == "r0" for e in fleet.events)
    assert not fleet.pipeline.outliers.is_ejected(0)
    assert fleet.pipeline.balancer.weight(0) == pytest.approx(0.1)  # slow start


async def test_a_replica_back_from_a_restart_is_reinstated_and_slow_started() -> None:
    fleet = Fleet(balancer=BalancerOptions(slow_start_ms=10_000.0, slow_start_min_weight=0.1))
    pipeline = fleet.pipeline
    assert pipeline.outliers.eject(0, "test")  # ejected for the next 30 s

    fleet.replicas[0].available = False  # its worker crashed and is restarting
    _, replica = await fleet.infer()
    assert replica.name == "r1"
    assert not pipeline.usable(0)

    fleet.replicas[0].available = True  # restarted: fresh evidence it is well
    await fleet.infer()  # the next choice of a replica notices

    assert pipeline.usable(0)
    assert not pipeline.outliers.is_ejected(0)  # reinstated before its ejection time was up
    assert any(isinstance(e, ReplicaReturned) and e.replica == "r0" for e in fleet.events)
    assert pipeline.balancer.weight(0) == pytest.approx(0.1)
    await fleet.clock.advance(5.0)
    assert pipeline.balancer.weight(0) == pytest.approx(0.55)


@both_paths
async def test_a_replica_failing_health_probes_is_not_picked(hedgeable: bool) -> None:
    fleet = Fleet(hedgeable=hedgeable)
    fleet.pipeline.probe_healthy[0] = False

    for _ in range(20):
        await fleet.infer()

    assert fleet.calls == ["r1"] * 20
    assert fleet.pipeline.ready
    fleet.pipeline.probe_healthy[1] = False
    assert not fleet.pipeline.ready


@both_paths
async def test_not_ready_when_every_replica_is_restarting(hedgeable: bool) -> None:
    fleet = Fleet(3, hedgeable=hedgeable)
    for replica in fleet.replicas:
        replica.available = False

    with pytest.raises(NotReady) as raised:
        await fleet.infer()

    message = raised.value.message
    assert "no replica of m/v1 is available" in message
    for name in ("r0", "r1", "r2"):
        assert f"{name}: restarting" in message
    assert fleet.calls == []
    assert not fleet.pipeline.ready


# --- attribution: whose fault is a failure ------------------------------------------


async def warm_up(fleet: Fleet, calls: int = 12) -> None:
    """Good calls on every replica, so each has a record of answering well."""
    for replica in fleet.replicas:
        replica.behaviour = answer()
    for _ in range(calls * len(fleet.replicas)):
        await fleet.infer()
    for replica in fleet.replicas:
        replica.behaviour = None
    fleet.calls.clear()
    fleet.events.clear()


def charged(fleet: Fleet) -> list[str]:
    return [e.replica for e in fleet.events if isinstance(e, AttemptFailed)]


def window_failures(fleet: Fleet, index: int) -> float:
    return fleet.pipeline.breakers[index].snapshot()["failure_rate"]  # type: ignore[return-value]


@both_paths
async def test_an_input_that_breaks_healthy_replicas_is_poison_and_charges_nobody(
    hedgeable: bool,
) -> None:
    fleet = Fleet(hedgeable=hedgeable, retry=NO_BACKOFF)
    await warm_up(fleet)
    fleet.plan = [nan_score(), nan_score()]

    task = await fleet.start()
    await fleet.clock.advance(0.0)
    error = failed_with(task)

    assert isinstance(error, PoisonRequest)
    assert error.status == 422
    assert error.failure_class is FailureClass.REQUEST
    assert "break its output contract" in error.message
    assert "NaN" in error.message
    assert sorted(fleet.calls) == ["r0", "r1"]  # confirmed on a second replica
    assert charged(fleet) == []
    assert window_failures(fleet, 0) == window_failures(fleet, 1) == 0.0
    [poison] = [e for e in fleet.events if isinstance(e, PoisonDetected)]
    assert poison.replicas == "r0,r1"


OTHER = InferRequest({"x": np.ones((2, 2), dtype=np.float32)})


async def judged_poison(fleet: Fleet) -> None:
    fleet.plan = [nan_score(), nan_score()]
    task = await fleet.start()
    await fleet.clock.advance(0.0)
    assert isinstance(failed_with(task), PoisonRequest)
    fleet.calls.clear()


@both_paths
async def test_a_poison_input_is_refused_from_memory_once_others_are_answered(
    hedgeable: bool,
) -> None:
    fleet = Fleet(hedgeable=hedgeable, retry=NO_BACKOFF)
    await warm_up(fleet)
    await judged_poison(fleet)
    for _ in range(AttributionOptions().min_calls):  # the replicas answer other inputs well
        await fleet.pipeline.infer(OTHER, fleet.call())
    fleet.calls.clear()

    with pytest.raises(PoisonRequest):
        await fleet.infer()
    assert fleet.calls == []
    assert [e.replicas for e in fleet.events if isinstance(e, PoisonDetected)][-1] == ""

    await fleet.clock.advance(AttributionOptions().poison_ttl_s)  # forgotten after its TTL
    outputs, _ = await fleet.infer()
    assert outputs["label"].shape == (2,)


@both_paths
async def test_an_input_judged_poison_as_an_outage_began_is_answered_after_it(
    hedgeable: bool,
) -> None:
    # The first failures of an outage look like poison. Nothing else is answered
    # since, so memory does not refuse the input: it is tried, and answered once healed.
    fleet = Fleet(hedgeable=hedgeable, retry=NO_BACKOFF)
    await warm_up(fleet)
    await judged_poison(fleet)

    outputs, _ = await fleet.infer()

    assert fleet.calls != []
    assert outputs["label"].shape == (2,)
    assert len(fleet.pipeline.poison) == 0  # answered well: forgotten


@both_paths
async def test_a_replica_that_lies_where_another_answers_is_charged(hedgeable: bool) -> None:
    fleet = Fleet(hedgeable=hedgeable, retry=NO_BACKOFF)
    await warm_up(fleet)
    fleet.replicas[0].behaviour = nan_score()

    for _ in range(4):
        task = await fleet.start()
        await fleet.clock.advance(0.0)
        _, replica = finished(task)
        assert replica.name == "r1"

    assert set(charged(fleet)) == {"r0"}
    assert window_failures(fleet, 0) > 0
    assert not any(isinstance(e, PoisonDetected) for e in fleet.events)


async def test_on_a_single_healthy_replica_a_model_error_is_poison_at_once() -> None:
    fleet = Fleet(1, hedgeable=False)
    await warm_up(fleet)
    fleet.plan = [fail(ModelError("model raised ValueError: /secret/path"))]

    with pytest.raises(PoisonRequest) as raised:
        await fleet.infer()

    assert fleet.calls == ["r0"]  # no second opinion to ask for
    assert "/secret/path" not in raised.value.message
    assert charged(fleet) == []


@both_paths
async def test_a_model_that_fails_for_most_inputs_is_at_fault_not_its_clients(
    hedgeable: bool,
) -> None:
    fleet = Fleet(hedgeable=hedgeable, retry=NO_BACKOFF)
    await warm_up(fleet)
    for replica in fleet.replicas:
        replica.behaviour = nan_score()  # a bad deploy: every input breaks it

    verdicts = []
    for number in range(8):
        request = InferRequest({"x": np.full((2, 2), number, dtype=np.float32)})
        task = asyncio.ensure_future(fleet.pipeline.infer(request, fleet.call()))
        await fleet.clock.advance(0.0)
        verdicts.append(type(failed_with(task)).__name__)

    # The first failures look like poison; once the replicas fail most calls they are charged.
    assert verdicts[0] == "PoisonRequest"
    assert verdicts[-1] == "ContractViolation"
    assert {"r0", "r1"} <= set(charged(fleet))
    assert len(fleet.pipeline.poison) == 0  # the early verdicts are withdrawn


async def test_attribution_off_charges_every_model_error() -> None:
    fleet = Fleet(
        retry=RetryOptions(max_attempts=2, backoff_base_ms=0.0, backoff_max_ms=0.0),
        attribution=AttributionOptions(enabled=False),
    )
    await warm_up(fleet)
    fleet.plan = [nan_score(), nan_score()]

    task = await fleet.start()
    await fleet.clock.advance(0.0)

    assert isinstance(failed_with(task), ContractViolation)
    assert sorted(charged(fleet)) == ["r0", "r1"]


@both_paths
async def test_a_deadline_the_client_cut_short_charges_no_replica(hedgeable: bool) -> None:
    fleet = Fleet(hedgeable=hedgeable, hedge=HedgeOptions(enabled=False))
    fleet.plan = [stall()]
    call = fleet.call(0.005, client_limited=True)

    task = asyncio.ensure_future(fleet.pipeline.infer(REQUEST, call))
    await settle()
    await fleet.clock.advance(0.005)
    await settle()

    error = failed_with(task)
    assert isinstance(error, DeadlineExceeded)
    assert error.failure_class is FailureClass.CLIENT
    assert charged(fleet) == []
    assert fleet.pipeline.breakers[0].snapshot()["calls"] == 0
    assert call.sample is None  # nothing for the limiter either


async def test_a_deadline_the_model_set_is_the_replicas_fault() -> None:
    fleet = Fleet(hedgeable=False)
    fleet.plan = [stall()]
    call = fleet.call(0.005)

    task = asyncio.ensure_future(fleet.pipeline.infer(REQUEST, call))
    await settle()
    await fleet.clock.advance(0.005)
    await settle()

    error = failed_with(task)
    assert isinstance(error, DeadlineExceeded)
    assert error.failure_class is FailureClass.REPLICA
    assert charged(fleet) == fleet.calls[:1]
    assert call.sample is False


@both_paths
async def test_a_request_whose_deadline_is_spent_is_not_attempted(hedgeable: bool) -> None:
    fleet = Fleet(hedgeable=hedgeable)

    with pytest.raises(DeadlineExceeded) as raised:
        await fleet.pipeline.infer(REQUEST, fleet.call(0.0))

    assert raised.value.failure_class is FailureClass.CLIENT
    assert fleet.calls == []


@both_paths
async def test_half_open_trials_are_not_spent_on_a_client_limited_request(
    hedgeable: bool,
) -> None:
    fleet = Fleet(
        1,
        hedgeable=hedgeable,
        breaker=BreakerOptions(window_size=1, minimum_calls=1, open_ms=1000.0),
    )
    breaker = fleet.pipeline.breakers[0]
    breaker.record(False, 0.0)
    await fleet.clock.advance(1.0)
    assert breaker.state is BreakerState.HALF_OPEN

    with pytest.raises(NotReady):
        await fleet.pipeline.infer(REQUEST, fleet.call(0.5, client_limited=True))
    assert fleet.calls == []

    await fleet.infer()  # a normal deadline may take the trial
    assert fleet.calls == ["r0"]


async def test_a_hedge_cancelled_before_it_ran_gives_back_its_half_open_slot() -> None:
    fleet = Fleet(
        hedge=HedgeOptions(min_delay_ms=50.0, max_delay_ms=50.0),
        breaker=BreakerOptions(window_size=1, minimum_calls=1, open_ms=1000.0),
    )
    fleet.replicas[0].behaviour = hang()
    breaker = fleet.pipeline.breakers[1]
    breaker.record(False, 0.0)
    await fleet.clock.advance(1.0)
    assert breaker.state is BreakerState.HALF_OPEN
    fleet.pipeline.breakers[0].record(True, 0.0)
    fleet.pipeline.balancer.started(1)  # r1 looks busy, so r0 takes the first attempt

    # The hedge is due exactly at the deadline: launched, then cancelled before it ran.
    task = asyncio.ensure_future(fleet.pipeline.infer(REQUEST, fleet.call(0.050)))
    await settle()
    await fleet.clock.advance(0.050)
    await settle()

    assert isinstance(failed_with(task), DeadlineExceeded)
    assert fleet.calls == ["r0"]
    assert breaker.snapshot()["probes"] == 0  # the slot was given back


# --- panic routing and readiness ---------------------------------------------------


@both_paths
async def test_with_no_replica_eligible_the_most_recently_successful_is_tried(
    hedgeable: bool,
) -> None:
    fleet = Fleet(
        3,
        hedgeable=hedgeable,
        breaker=BreakerOptions(window_size=1, minimum_calls=1, open_ms=60_000.0),
        ejection=EjectionOptions(max_ejection_percent=100.0),
    )
    fleet.replicas[2].behaviour = answer()
    await fleet.infer()
    await fleet.infer()
    await fleet.clock.advance(1.0)
    _, latest = await fleet.infer()
    fleet.replicas[2].behaviour = None
    pipeline = fleet.pipeline
    for index in range(3):  # every replica out: open, open, and ejected
        pipeline.breakers[index].record(False, 0.0)
    assert pipeline.outliers.eject(fleet.index(latest.name), "test")
    fleet.calls.clear()

    _, replica = await fleet.infer()

    assert replica.name == latest.name
    assert fleet.kinds()[-1] == "panic"
    index = fleet.index(replica.name)
    assert pipeline.breakers[index].state is BreakerState.CLOSED  # readmitted by the answer
    assert not pipeline.outliers.is_ejected(index)
    assert [e.active for e in fleet.events if isinstance(e, PanicChanged)] == [True]

    await fleet.infer()  # an eligible replica again: panic is over
    assert [e.active for e in fleet.events if isinstance(e, PanicChanged)] == [True, False]


@both_paths
async def test_readiness_follows_probes_not_breakers_or_ejections(hedgeable: bool) -> None:
    fleet = Fleet(
        hedgeable=hedgeable,
        breaker=BreakerOptions(window_size=1, minimum_calls=1),
        ejection=EjectionOptions(max_ejection_percent=100.0),
    )
    pipeline = fleet.pipeline
    pipeline.breakers[0].record(False, 0.0)
    pipeline.breakers[1].record(False, 0.0)
    pipeline.outliers.eject(0, "client traffic")
    assert pipeline.ready

    pipeline.set_probe_health(0, False)
    pipeline.set_probe_health(1, False)
    assert not pipeline.ready
    pipeline.set_probe_health(1, True)
    assert pipeline.ready


@both_paths
async def test_a_poison_input_repeated_before_it_is_confirmed_still_gets_confirmed(
    hedgeable: bool,
) -> None:
    fleet = Fleet(hedgeable=hedgeable, retry=NO_BACKOFF)
    await warm_up(fleet)
    for _ in range(3):  # repeats, each between a few good answers
        await judged_poison(fleet)
        for _ in range(4):
            await fleet.pipeline.infer(OTHER, fleet.call())
    fleet.calls.clear()

    with pytest.raises(PoisonRequest):
        await fleet.infer()
    assert fleet.calls == []  # 12 good answers since the first verdict: refused from memory


@both_paths
async def test_a_version_switched_off_mid_call_gets_no_retry(hedgeable: bool) -> None:
    fleet = Fleet(hedgeable=hedgeable)
    fleet.plan = [fail(UpstreamError("connection reset"))]

    task = await fleet.start()
    fleet.pipeline.switched_off = True  # an operator halts the version while r0 fails
    await fleet.clock.advance(0.010)

    assert isinstance(failed_with(task), UpstreamError)  # the fallback chain takes it from here
    assert fleet.kinds() == ["first"]


async def test_a_version_switched_off_mid_call_gets_no_hedge() -> None:
    fleet = Fleet(hedgeable=True)
    fleet.plan = [slow(1.0)]

    task = await fleet.start()
    fleet.pipeline.switched_off = True
    await fleet.clock.advance(0.6)

    assert fleet.kinds() == ["first"]
    await fleet.clock.advance(0.5)
    assert finished(task)[1].name == fleet.calls[0]  # the call under way still answers


def late_nan(seconds: float) -> Action:
    """A NaN score after ``seconds`` of the fleet's ManualClock: poison, answered slowly."""

    async def act(replica: ScriptedReplica) -> Tensors:
        await replica.fleet.clock.sleep(seconds)
        return await nan_score()(replica)

    return act


@both_paths
async def test_a_burst_of_one_poison_input_in_flight_at_once_charges_nobody(
    hedgeable: bool,
) -> None:
    # A stalled gateway takes a hostile client's queued requests in one go: one poison
    # input, many times over, on the replicas at once before any verdict is in. Each
    # failure says nothing new about the replicas once another copy of the input is a
    # suspect; counting each pushed healthy replicas under the healthy rate, after
    # which their failures were charged and one was ejected (seen in the hostile-client
    # drill on a starved machine: five charged in a second).
    fleet = Fleet(hedgeable=hedgeable, retry=NO_BACKOFF)
    await warm_up(fleet)
    fleet.plan = [late_nan(0.01) for _ in range(32)]

    tasks = [await fleet.start() for _ in range(8)]
    for _ in range(4):
        await fleet.clock.advance(0.01)

    assert all(isinstance(failed_with(task), PoisonRequest) for task in tasks)
    assert charged(fleet) == []
    assert window_failures(fleet, 0) == window_failures(fleet, 1) == 0.0
    assert all(fleet.pipeline._recent[i].healthy(AttributionOptions()) for i in (0, 1))


@both_paths
async def test_a_replica_the_balancer_seldom_picked_is_judged_by_its_version(
    hedgeable: bool,
) -> None:
    # On a starved machine the balancer sent one of two workers nothing for seconds:
    # with too few calls of its own it was judged unhealthy, so a poison input's first
    # failure on it was charged at once, and a hostile client had it ejected.
    fleet = Fleet(hedgeable=hedgeable, retry=NO_BACKOFF)
    fleet.replicas[0].available = False
    for _ in range(2 * AttributionOptions().min_calls):  # only r1 answers, well
        await fleet.infer()
    fleet.replicas[0].available = True
    fleet.calls.clear()
    fleet.plan = [nan_score(), nan_score()]

    task = await fleet.start()
    await fleet.clock.advance(0.0)

    assert isinstance(failed_with(task), PoisonRequest)
    assert sorted(fleet.calls) == ["r0", "r1"]
    assert charged(fleet) == []


async def test_a_fresh_version_whose_replicas_fail_is_charged_at_once() -> None:
    # No replica has a record yet, nor the version: its first model errors are the
    # replicas' (a bad deploy shows from its first calls), not a poison input's.
    fleet = Fleet(retry=NO_BACKOFF)
    fleet.plan = [nan_score() for _ in range(RETRY.max_attempts)]

    task = await fleet.start()
    await fleet.clock.advance(0.0)

    assert isinstance(failed_with(task), ContractViolation)
    assert set(charged(fleet)) == {"r0", "r1"}
