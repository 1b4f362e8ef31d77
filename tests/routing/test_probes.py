"""Active health probes, judging scripted replicas on a ManualClock.

Each replica answers what the test scripts (the right answer, a wrong one,
NaN, an error, nothing at all); the prober's verdicts land in a recording
target, or in a real VersionPipeline at the end of the file. Probe rounds
run when a test calls ``probe_all`` or advances the clock; randomness comes
from a seeded RNG.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from failsoft.call import Call
from failsoft.clock import ManualClock, settle
from failsoft.config import TensorSpec
from failsoft.data.contracts import ModelContract
from failsoft.errors import UpstreamError
from failsoft.observe.events import Event, EventBus
from failsoft.pipeline.breaker import BreakerOptions
from failsoft.pipeline.hedge import HedgeOptions
from failsoft.pipeline.retry import RetryOptions
from failsoft.pipeline.version import ResilienceOptions, VersionPipeline
from failsoft.protocol.types import InferRequest, Tensors
from failsoft.routing.balancer import BalancerOptions
from failsoft.routing.ejection import EjectionOptions
from failsoft.routing.probes import (
    FAST_INTERVAL_S,
    PROBE_REQUEST_ID,
    HealthChanged,
    HealthCheckOptions,
    Prober,
    answer_problem,
    golden_request,
)

INPUTS = [TensorSpec(name="x", datatype="FP32", shape=[-1, 2])]
OUTPUTS = [
    TensorSpec(name="label", datatype="INT64", shape=[-1]),
    TensorSpec(name="score", datatype="FP32", shape=[-1], range=(0.0, 1.0)),
]
CONTRACT = ModelContract(INPUTS, OUTPUTS)
GOLDEN_INPUT = {"x": [[2.0, 1.0]]}
EXPECT = {"label": [1], "score": [0.5]}


def right_answer() -> Tensors:
    return {"label": np.array([1], dtype=np.int64), "score": np.array([0.5], dtype=np.float32)}


# --- scripted replicas and target ------------------------------------------------


class ScriptedReplica:
    """Implements the Replica protocol: answers ``outputs``, or raises ``error``, or hangs."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.available = True
        self.ready = True  # what health() says
        self.outputs = right_answer()
        self.error: Exception | None = None
        self.hangs = False
        self.calls: list[tuple[InferRequest, Call]] = []
        self.health_checks = 0

    async def start(self) -> None:
        pass

    async def infer(self, request: InferRequest, call: Call) -> Tensors:
        self.calls.append((request, call))
        if self.hangs:
            await asyncio.Event().wait()
        if self.error is not None:
            raise self.error
        return dict(self.outputs)

    async def health(self) -> bool:
        self.health_checks += 1
        return self.ready

    async def close(self) -> None:
        pass


@dataclass
class Target:
    """A ProbeTarget that records the verdicts it is given."""

    replicas: list[ScriptedReplica]
    model: str = "m"
    version: str = "v1"
    all_out: bool = False
    verdicts: list[tuple[int, bool]] = field(default_factory=list)

    def set_probe_health(self, index: int, healthy: bool) -> None:
        self.verdicts.append((index, healthy))


@dataclass
class Probed:
    prober: Prober
    target: Target
    clock: ManualClock
    events: list[HealthChanged]

    @property
    def replica(self) -> ScriptedReplica:
        return self.target.replicas[0]


def probed(replicas: int = 1, golden: bool = True, **options: Any) -> Probed:
    """A prober over ``replicas`` scripted replicas; ``options`` are HealthCheckOptions."""
    if golden:
        options = {"inputs": GOLDEN_INPUT, "expect": EXPECT, **options}
    health = HealthCheckOptions(**options)
    target = Target([ScriptedReplica(f"r{i}") for i in range(replicas)])
    bus, clock = EventBus(), ManualClock()
    events: list[HealthChanged] = []

    def record(event: Event) -> None:
        assert isinstance(event, HealthChanged)
        events.append(event)

    bus.subscribe(record, [HealthChanged])
    prober = Prober(
        target,
        health,
        CONTRACT,
        golden_request(health, INPUTS),
        bus,
        clock,
        random.Random(7),
    )
    return Probed(prober, target, clock, events)


async def rounds(probes: Probed, count: int) -> None:
    for _ in range(count):
        await probes.prober.probe_all()


# --- golden_request and answer_problem ---------------------------------------------


def test_golden_request_uses_the_declared_dtypes() -> None:
    request = golden_request(HealthCheckOptions(inputs=GOLDEN_INPUT), INPUTS)
    assert request is not None
    assert request.inputs["x"].dtype == np.float32
    np.testing.assert_array_equal(request.inputs["x"], [[2.0, 1.0]])


def test_golden_request_is_none_without_a_golden_input() -> None:
    assert golden_request(HealthCheckOptions(), INPUTS) is None


def test_golden_request_refuses_an_unknown_input() -> None:
    with pytest.raises(ValueError, match="unknown input 'y'"):
        golden_request(HealthCheckOptions(inputs={"y": [1.0]}), INPUTS)


def test_answer_problem_accepts_the_expected_answer_and_floats_within_tolerance() -> None:
    close = {"label": np.array([1]), "score": np.array([0.50005], dtype=np.float32)}
    assert answer_problem(close, EXPECT, 1e-4) is None
    assert answer_problem(close, None, 1e-4) is None


def test_answer_problem_compares_strings_with_bytes_outputs() -> None:
    outputs = {"kind": np.array([b"cat", b"dog"], dtype=object)}
    assert answer_problem(outputs, {"kind": ["cat", "dog"]}, 0.0) is None
    assert answer_problem(outputs, {"kind": ["cat", "cow"]}, 0.0) is not None


@pytest.mark.parametrize(
    ("outputs", "problem"),
    [
        ({"score": np.array([0.5])}, "output 'label' missing"),
        (
            {"label": np.array([1, 1]), "score": np.array([0.5])},
            "output 'label' has shape [2], expected [1]",
        ),
        ({"label": np.array([0]), "score": np.array([0.5])}, "output 'label' is [0], expected [1]"),
        ({"label": np.array([1]), "score": np.array([0.6])}, "output 'score' is [0.6]"),
    ],
    ids=["missing", "shape", "wrong-label", "float-off"],
)
def test_answer_problem_names_what_differs(outputs: Tensors, problem: str) -> None:
    found = answer_problem(outputs, EXPECT, 1e-4)
    assert found is not None
    assert found.startswith(problem)


# --- one probe ----------------------------------------------------------------------


async def test_the_probe_sends_the_golden_input_with_the_probe_timeout() -> None:
    probes = probed(timeout_ms=250)
    await probes.prober.probe_all()
    [(request, call)] = probes.replica.calls
    np.testing.assert_array_equal(request.inputs["x"], [[2.0, 1.0]])
    assert (call.request_id, call.model, call.version) == (PROBE_REQUEST_ID, "m", "v1")
    assert call.deadline == probes.clock.now() + 0.25


async def test_a_right_answer_passes_the_probe() -> None:
    probes = probed(fall=1)
    await rounds(probes, 3)
    assert probes.target.verdicts == []
    assert probes.events == []


Breakage = Callable[[ScriptedReplica], None]


def wrong_label(replica: ScriptedReplica) -> None:
    replica.outputs["label"] = np.array([0], dtype=np.int64)


def nan_score(replica: ScriptedReplica) -> None:
    replica.outputs["score"] = np.array([np.nan], dtype=np.float32)


def upstream_error(replica: ScriptedReplica) -> None:
    replica.error = UpstreamError("connection refused")


@pytest.mark.parametrize(
    ("breakage", "reason"),
    [
        (wrong_label, "output 'label' is [0], expected [1]"),
        (nan_score, "output 'score': contains NaN or infinity"),  # the output contract
        (upstream_error, "connection refused"),
    ],
    ids=["wrong-label", "nan-through-contract", "failsoft-error"],
)
async def test_a_broken_answer_fails_the_probe(breakage: Breakage, reason: str) -> None:
    probes = probed(fall=1)
    breakage(probes.replica)
    await probes.prober.probe_all()
    assert probes.target.verdicts == [(0, False)]
    assert [event.reason for event in probes.events] == [reason]


async def test_no_answer_within_the_timeout_fails_the_probe() -> None:
    probes = probed(fall=1, timeout_ms=1)
    probes.replica.hangs = True
    round_ = asyncio.ensure_future(probes.prober.probe_all())
    await settle()
    assert not round_.done()  # the timeout runs on the injected clock
    await probes.clock.advance(0.001)
    await round_
    assert probes.target.verdicts == [(0, False)]
    assert probes.events[0].reason == "no answer within 1 ms"


# --- fall and rise ------------------------------------------------------------------


async def test_fall_failures_in_a_row_take_the_replica_out_once() -> None:
    probes = probed(fall=3)
    wrong_label(probes.replica)
    await rounds(probes, 2)
    assert probes.target.verdicts == []
    await rounds(probes, 3)
    assert probes.target.verdicts == [(0, False)]
    assert probes.events == [HealthChanged("m", "v1", "r0", False, probes.events[0].reason)]


async def test_a_pass_between_failures_starts_the_count_again() -> None:
    probes = probed(fall=2)
    wrong_label(probes.replica)
    await rounds(probes, 1)
    probes.replica.outputs = right_answer()
    await rounds(probes, 1)
    wrong_label(probes.replica)
    await rounds(probes, 1)
    assert probes.target.verdicts == []


async def test_rise_passes_in_a_row_bring_the_replica_back() -> None:
    probes = probed(fall=1, rise=2)
    wrong_label(probes.replica)
    await rounds(probes, 1)
    probes.replica.outputs = right_answer()
    await rounds(probes, 1)
    assert probes.target.verdicts == [(0, False)]
    await rounds(probes, 1)
    assert probes.target.verdicts == [(0, False), (0, True)]
    assert probes.events[-1] == HealthChanged("m", "v1", "r0", True, "2 probes passed")


async def test_only_the_failing_replica_is_reported() -> None:
    probes = probed(replicas=2, fall=1)
    upstream_error(probes.target.replicas[1])
    await probes.prober.probe_all()
    assert probes.target.verdicts == [(1, False)]
    assert [event.replica for event in probes.events] == ["r1"]


async def test_a_restarting_replica_is_not_probed_nor_judged_failing() -> None:
    probes = probed(fall=1)
    probes.replica.available = False
    upstream_error(probes.replica)
    await rounds(probes, 3)
    assert probes.replica.calls == []
    assert probes.target.verdicts == []


async def test_a_restart_is_no_passed_probe_either() -> None:
    probes = probed(fall=1, rise=2)
    upstream_error(probes.replica)
    await rounds(probes, 1)
    assert probes.target.verdicts == [(0, False)]
    probes.replica.available = False  # restarting for longer than `rise` rounds
    await rounds(probes, 3)
    assert probes.target.verdicts == [(0, False)]  # still out: nobody looked at it


async def test_a_replica_raising_anything_fails_its_probe_and_probing_goes_on() -> None:
    probes = probed(fall=1, rise=1)
    probes.replica.error = ConnectionResetError("reset by peer at /secret/path")
    await rounds(probes, 1)
    assert probes.target.verdicts == [(0, False)]
    assert probes.events[0].reason == "the probe raised ConnectionResetError"
    probes.replica.error = None
    await rounds(probes, 1)
    assert probes.target.verdicts == [(0, False), (0, True)]


# --- readiness-only probes ----------------------------------------------------------


async def test_without_a_golden_input_the_probe_asks_the_replicas_readiness() -> None:
    probes = probed(golden=False, fall=1)
    await probes.prober.probe_all()
    assert probes.target.verdicts == []
    probes.replica.ready = False
    await probes.prober.probe_all()
    assert probes.target.verdicts == [(0, False)]
    assert probes.events[0].reason == "not ready"
    assert (probes.replica.health_checks, probes.replica.calls) == (2, [])


# --- when to probe ------------------------------------------------------------------


def test_the_interval_is_interval_ms_while_a_replica_is_in_rotation() -> None:
    probes = probed(interval_ms=2500)
    assert probes.prober.interval_s() == 2.5


def test_the_interval_is_a_jittered_100_ms_while_the_whole_version_is_out() -> None:
    probes = probed(interval_ms=2500)
    probes.target.all_out = True
    intervals = [probes.prober.interval_s() for _ in range(200)]
    assert all(0.5 * FAST_INTERVAL_S <= s <= 1.5 * FAST_INTERVAL_S for s in intervals)
    assert len(set(intervals)) > 100  # jittered, so probers do not probe in lockstep


def test_the_fast_interval_never_exceeds_interval_ms() -> None:
    probes = probed(interval_ms=20)
    probes.target.all_out = True
    assert probes.prober.interval_s() == 0.02


async def test_started_probes_run_every_interval_until_closed() -> None:
    probes = probed(interval_ms=1000)
    probes.prober.start()
    await settle()
    await probes.clock.advance(0.999)
    assert len(probes.replica.calls) == 0
    await probes.clock.advance(0.001)
    assert len(probes.replica.calls) == 1
    await probes.clock.advance(2.0)
    assert len(probes.replica.calls) == 3

    await probes.prober.close()
    await probes.clock.advance(10.0)
    assert len(probes.replica.calls) == 3
    assert probes.clock.sleeping == 0


async def test_started_probes_take_a_replica_out_and_back_on_the_clock() -> None:
    probes = probed(interval_ms=1000, fall=2, rise=1)
    probes.prober.start()
    await settle()
    wrong_label(probes.replica)
    await probes.clock.advance(2.0)
    assert probes.target.verdicts == [(0, False)]
    probes.replica.outputs = right_answer()
    await probes.clock.advance(1.0)
    assert probes.target.verdicts == [(0, False), (0, True)]
    await probes.prober.close()


async def test_a_disabled_health_check_never_probes() -> None:
    probes = probed(enabled=False)
    probes.prober.start()
    await probes.clock.advance(60.0)
    assert probes.replica.calls == []
    assert probes.clock.sleeping == 0
    await probes.prober.close()


# --- against the real VersionPipeline -------------------------------------------------


@dataclass
class Pipelined:
    pipeline: VersionPipeline
    prober: Prober
    replica: ScriptedReplica


def pipelined(**options: Any) -> Pipelined:
    """A one-replica VersionPipeline and a prober reporting to it."""
    health = HealthCheckOptions(inputs=GOLDEN_INPUT, expect=EXPECT, **options)
    replica = ScriptedReplica("r0")
    bus, clock, rng = EventBus(), ManualClock(), random.Random(3)
    resilience = ResilienceOptions(
        retry=RetryOptions(),
        hedge=HedgeOptions(),
        breaker=BreakerOptions(),
        ejection=EjectionOptions(),
        balancer=BalancerOptions(),
    )
    pipeline = VersionPipeline("m", "v1", [replica], resilience, CONTRACT, bus, clock, rng)
    golden = golden_request(health, INPUTS)
    prober = Prober(pipeline, health, CONTRACT, golden, bus, clock, rng)
    return Pipelined(pipeline, prober, replica)


async def test_probe_verdicts_decide_the_pipelines_readiness() -> None:
    fleet = pipelined(fall=1, rise=1)
    assert fleet.pipeline.ready
    wrong_label(fleet.replica)
    await fleet.prober.probe_all()
    assert not fleet.pipeline.ready
    assert fleet.pipeline.all_out
    assert fleet.prober.interval_s() <= 1.5 * FAST_INTERVAL_S  # look again soon
    fleet.replica.outputs = right_answer()
    await fleet.prober.probe_all()
    assert fleet.pipeline.ready
    assert fleet.prober.interval_s() == 1.0


async def test_passing_probes_reinstate_an_ejected_replica() -> None:
    fleet = pipelined(fall=1, rise=1)
    for _ in range(EjectionOptions().consecutive_failures):
        fleet.pipeline.outliers.record(0, False)
    assert fleet.pipeline.outliers.is_ejected(0)
    wrong_label(fleet.replica)
    await fleet.prober.probe_all()
    fleet.replica.outputs = right_answer()
    await fleet.prober.probe_all()
    assert not fleet.pipeline.outliers.is_ejected(0)
    assert fleet.pipeline.usable(0)
