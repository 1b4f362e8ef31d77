"""Chaos faults over real in-process python replicas, on a ManualClock with a seeded RNG."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest

from failsoft.call import Call
from failsoft.clock import ManualClock
from failsoft.clock import settle as settle_loop
from failsoft.config import parse_config
from failsoft.control.faults import (
    ChaosDisabled,
    FaultAdded,
    FaultEnded,
    FaultNotFound,
    FaultRegistry,
)
from failsoft.errors import BadRequest, DeadlineExceeded, FailsoftError, ModelError
from failsoft.observe.events import Event, EventBus
from failsoft.pipeline.chaos import ChaosReplica, corrupt
from failsoft.pipeline.version import AttemptFailed
from failsoft.protocol.types import InferRequest
from failsoft.runtime import Runtime, Served
from tests._runtime_models import STATE, answer

X = np.array([[2.0, 1.0], [0.0, 3.0]], dtype=np.float32)


def config(*, enabled: bool = True, replicas: int = 2, **model: Any) -> dict[str, Any]:
    return {
        "chaos": {"enabled": enabled, "max_duration_s": 60},
        "models": {
            "m": {
                "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
                "outputs": [
                    {"name": "label", "datatype": "INT64", "shape": [-1], "labels": [0, 1]},
                    {"name": "score", "datatype": "FP32", "shape": [-1], "range": [0, 1]},
                ],
                "versions": {
                    "v1": {
                        "backend": "python",
                        "function": "tests._runtime_models:healthy",
                        "replicas": replicas,
                        "execution": "inline",
                    }
                },
                "retry": {"enabled": False},
                "health_check": {"enabled": False},
                **model,
            }
        },
    }


class Gateway:
    def __init__(self, runtime: Runtime, clock: ManualClock, events: list[Event]) -> None:
        self.runtime = runtime
        self.clock = clock
        self.events = events

    @property
    def faults(self) -> FaultRegistry:
        return self.runtime.faults

    async def serve(self, timeout_s: float = 30.0) -> asyncio.Task[Served]:
        """Start a request and let it run until it waits (for the clock) or ends."""
        call = Call("req", "m", "v1", self.clock.now() + timeout_s, self.runtime.bus, self.clock)
        model = self.runtime.model("m")
        task = asyncio.ensure_future(model.serve(InferRequest({"x": X}), call, model.default))
        await yield_to(task)
        return task

    def of(self, kind: type[Event]) -> list[Any]:
        return [event for event in self.events if isinstance(event, kind)]


@pytest.fixture(autouse=True)
def _fresh_models() -> None:
    STATE.reset()


@pytest.fixture
async def gateway(request: pytest.FixtureRequest) -> AsyncIterator[Gateway]:
    settings = getattr(request, "param", {})
    bus = EventBus()
    events: list[Event] = []
    bus.subscribe(events.append)
    clock = ManualClock(start=time.monotonic())
    runtime = Runtime(parse_config(config(**settings)), bus, clock=clock, rng=random.Random(7))
    await runtime.start()
    yield Gateway(runtime, clock, events)
    await runtime.close()


async def yield_to(task: asyncio.Task[Served]) -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def settle(task: asyncio.Task[Served]) -> Served:
    await yield_to(task)
    return task.result()


async def test_without_faults_replicas_are_wrapped_but_answer_as_before(gateway: Gateway) -> None:
    replicas = gateway.runtime.model("m").versions["v1"].replicas
    assert all(isinstance(replica, ChaosReplica) for replica in replicas)
    served = await settle(await gateway.serve())
    np.testing.assert_array_equal(served.outputs["label"], answer(X)["label"])


@pytest.mark.parametrize("gateway", [{"enabled": False}], indirect=True)
async def test_faults_are_refused_unless_chaos_is_enabled(gateway: Gateway) -> None:
    replicas = gateway.runtime.model("m").versions["v1"].replicas
    assert not any(isinstance(replica, ChaosReplica) for replica in replicas)
    with pytest.raises(ChaosDisabled, match=r"chaos.*enabled: true"):
        gateway.faults.add({"kind": "error", "model": "m", "duration_s": 5})


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ({"kind": "error", "model": "m", "duration_s": 61}, "over the cap of 60 s"),
        ({"kind": "error", "model": "m"}, "duration_s: Field required"),
        ({"kind": "melt", "model": "m", "duration_s": 1}, "kind: Input should be"),
        ({"kind": "error", "model": "nope", "duration_s": 1}, "no replica matches model 'nope'"),
        ({"kind": "error", "model": "m", "replica": "r9", "duration_s": 1}, "replica 'r9'"),
        ({"kind": "latency", "model": "m", "duration_s": 1}, "needs latency_ms"),
        ({"kind": "kill", "model": "m", "duration_s": 1}, "process replicas only"),
        ({"kind": "error", "model": "m", "duration_s": 1, "every_s": 1}, "kill faults only"),
        ({"kind": "error", "model": "m", "duration_s": 1, "color": 1}, "color: unknown key"),
    ],
)
async def test_bad_faults_are_refused_with_the_reason(
    gateway: Gateway, spec: dict[str, Any], problem: str
) -> None:
    with pytest.raises(BadRequest, match=problem):
        gateway.faults.add(spec)
    assert gateway.faults.snapshot() == []


async def test_an_error_fault_on_one_replica_fails_only_its_calls(gateway: Gateway) -> None:
    fault = gateway.faults.add({"kind": "error", "model": "m", "replica": "r0", "duration_s": 10})
    outcomes = []
    for _ in range(20):
        task = await gateway.serve()
        outcomes.append(task.exception() is None)
    failed = gateway.of(AttemptFailed)
    assert failed
    assert {event.replica for event in failed} == {"r0"}
    assert all("answered 500: chaos fault f1" in event.message for event in failed)
    assert fault.injected == len(failed) == outcomes.count(False)
    assert outcomes.count(True) > 0  # r1 kept answering


async def test_an_exception_fault_is_a_model_error(gateway: Gateway) -> None:
    gateway.faults.add({"kind": "error", "error": "exception", "model": "m", "duration_s": 10})
    task = await gateway.serve()
    assert isinstance(task.exception(), ModelError)


async def test_latency_delays_the_answer_by_the_injected_time(gateway: Gateway) -> None:
    gateway.faults.add({"kind": "latency", "model": "m", "latency_ms": 200, "duration_s": 10})
    task = await gateway.serve()
    await gateway.clock.advance(0.19)
    assert not task.done()
    await gateway.clock.advance(0.02)
    served = await settle(task)
    np.testing.assert_array_equal(served.outputs["label"], answer(X)["label"])


async def test_latency_past_the_deadline_fails_at_the_deadline(gateway: Gateway) -> None:
    gateway.faults.add({"kind": "latency", "model": "m", "latency_ms": 5000, "duration_s": 10})
    task = await gateway.serve(timeout_s=1.0)
    await gateway.clock.advance(1.0)
    assert isinstance(task.exception(), DeadlineExceeded)


async def test_a_hang_never_answers_and_fails_at_the_deadline(gateway: Gateway) -> None:
    gateway.faults.add({"kind": "hang", "model": "m", "duration_s": 60})
    task = await gateway.serve(timeout_s=2.0)
    await gateway.clock.advance(1.9)
    assert not task.done()
    await gateway.clock.advance(0.2)
    error = task.exception()
    assert isinstance(error, DeadlineExceeded)
    assert "chaos fault f1" in error.message


async def test_garbage_is_caught_by_the_output_contract(gateway: Gateway) -> None:
    gateway.faults.add({"kind": "garbage", "model": "m", "duration_s": 10})
    task = await gateway.serve()
    error = task.exception()
    assert isinstance(error, ModelError)
    assert "NaN" in error.message or "rows" in error.message


async def test_a_dropped_connection_is_an_infra_failure(gateway: Gateway) -> None:
    gateway.faults.add({"kind": "drop", "model": "m", "duration_s": 10})
    task = await gateway.serve()
    error = task.exception()
    assert isinstance(error, FailsoftError)
    assert "connection reset" in error.message
    assert error.status == 502


async def test_a_fault_expires_by_itself_and_says_so(gateway: Gateway) -> None:
    gateway.faults.add({"kind": "error", "model": "m", "duration_s": 5})
    assert [f["id"] for f in gateway.faults.snapshot()] == ["f1"]
    assert gateway.of(FaultAdded)[0].duration_s == 5
    await settle_loop()  # the expiry timer starts waiting
    await gateway.clock.advance(5.0)
    assert gateway.faults.snapshot() == []
    assert [(e.id, e.reason) for e in gateway.of(FaultEnded)] == [("f1", "expired")]
    served = await settle(await gateway.serve())
    assert not served.degraded


async def test_faults_are_cleared_one_by_one_or_all_at_once(gateway: Gateway) -> None:
    for kind in ("error", "drop", "garbage"):
        gateway.faults.add({"kind": kind, "model": "m", "duration_s": 30})
    assert gateway.faults.clear("f2") == 1
    assert [f["id"] for f in gateway.faults.snapshot()] == ["f1", "f3"]
    with pytest.raises(FaultNotFound, match="no active fault 'f2'"):
        gateway.faults.clear("f2")
    assert gateway.faults.clear() == 2
    assert not gateway.faults.active
    assert [e.reason for e in gateway.of(FaultEnded)] == ["cleared"] * 3
    await gateway.clock.advance(60)  # the expiry timers were cancelled with the faults
    assert len(gateway.of(FaultEnded)) == 3


@pytest.mark.parametrize(
    "gateway", [{"breaker": {"enabled": False}, "ejection": {"enabled": False}}], indirect=True
)
async def test_probability_injects_into_that_share_of_calls(gateway: Gateway) -> None:
    # Breaker and ejection off: every request reaches a replica and meets the draw.
    fault = gateway.faults.add(
        {"kind": "error", "model": "m", "probability": 0.25, "duration_s": 30}
    )
    results = []
    for _ in range(400):
        task = await gateway.serve()
        results.append(task.exception() is None)
    assert 60 <= fault.injected <= 140
    assert results.count(False) == fault.injected


def test_corrupt_breaks_floats_with_nan_and_labels_with_an_extra_row() -> None:
    broken = corrupt(answer(X))
    assert np.isnan(broken["score"]).all()
    assert broken["score"].shape == (2,)
    assert broken["label"].shape == (3,)


@pytest.mark.parametrize("gateway", [{"replicas": 1}], indirect=True)
async def test_latency_with_concurrency_queues_calls_like_a_saturated_replica(
    gateway: Gateway,
) -> None:
    gateway.faults.add(
        {
            "kind": "latency",
            "model": "m",
            "replica": "r0",
            "latency_ms": 100,
            "concurrency": 1,
            "duration_s": 10,
        }
    )
    tasks = [await gateway.serve() for _ in range(3)]
    done_after = []
    for _ in range(3):
        await gateway.clock.advance(0.1)
        await yield_to(tasks[0])
        done_after.append(sum(task.done() for task in tasks))
    assert done_after == [1, 2, 3]  # one slot: one answer per 100 ms
