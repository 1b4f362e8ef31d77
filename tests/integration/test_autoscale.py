"""Autoscaled process workers: real worker processes, a real gateway, real load.

In process: a worker the autoscaler adds takes traffic only once its golden
probe passed, and one it removes stops. Against a served gateway: the CI
short form of benchmarks/autoscale.py (a 3x step on a model that waits on
I/O; a CPU-bound model that must not outnumber the cores).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from benchmarks.autoscale import run_step

from failsoft.backends.autoscale import Autoscaler, WorkersScaled
from failsoft.backends.process import WorkerReplica
from failsoft.call import Call
from failsoft.clock import SystemClock
from failsoft.config import ConfigError, parse_config
from failsoft.observe.events import Event, EventBus
from failsoft.protocol.types import InferRequest
from failsoft.runtime import Runtime

pytestmark = pytest.mark.integration

ROW = [6.0, 2.7, 5.1, 1.6]


def model(function: str, standby: int) -> dict[str, Any]:
    return {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]}],
        "health_check": {"interval_ms": 200, "inputs": {"x": [ROW]}, "expect": {"label": [1]}},
        "balancer": {"slow_start_ms": 0},
        "versions": {
            "v1": {
                "backend": "process",
                "startup_timeout_s": 30,
                "worker": {"backend": "python", "function": function},
                # No automatic decision in these tests: the cool-downs outlast them.
                "autoscale": {
                    "min_replicas": 1,
                    "max_replicas": 3,
                    "standby": standby,
                    "window_s": 3600,
                    "down_cooldown_s": 3600,
                },
            }
        },
    }


class Gateway:
    def __init__(self, runtime: Runtime, events: list[Event]) -> None:
        self.runtime = runtime
        self.events = events

    @property
    def scaler(self) -> Autoscaler:
        found = self.runtime.models["m"].units["v1"].autoscaler
        assert found is not None
        return found

    @property
    def workers(self) -> list[WorkerReplica]:
        replicas = self.runtime.models["m"].units["v1"].built.replicas
        assert all(isinstance(r, WorkerReplica) for r in replicas)
        return replicas  # type: ignore[return-value]

    async def serve(self) -> str:
        clock = SystemClock()
        model = self.runtime.models["m"]
        call = Call("t", "m", None, clock.now() + 5.0, self.runtime.bus, clock)
        request = InferRequest({"x": np.asarray([ROW], dtype=np.float32)})
        served = await model.serve(request, call, model.default)
        assert served.outputs["label"].tolist() == [1]
        return served.served_by


async def start(function: str, standby: int) -> Gateway:
    events: list[Event] = []
    bus = EventBus()
    bus.subscribe(events.append)
    config = parse_config({"models": {"m": model(function, standby)}})
    runtime = Runtime(config, bus, clock=SystemClock(), rng=random.Random(0))
    await runtime.start()
    return Gateway(runtime, events)


@pytest.fixture
async def gateways() -> AsyncIterator[list[Gateway]]:
    started: list[Gateway] = []
    yield started
    for gateway in started:
        await gateway.runtime.close()


async def until(condition: Any, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_a_worker_failing_its_golden_probe_never_takes_traffic(
    gateways: list[Gateway],
) -> None:
    gateway = await start("tests.integration._autoscale_models:wrong_on_w1", standby=0)
    gateways.append(gateway)

    assert not await gateway.scaler.scale_to(2, "test")

    assert gateway.scaler.running == 1
    assert gateway.workers[1].parked
    assert gateway.workers[1].pid is None  # stopped again
    failed = [e for e in gateway.events if isinstance(e, WorkersScaled)]
    assert [(e.old, e.new, e.ok) for e in failed] == [(1, 1, False)]
    assert "failed its probe" in failed[0].reason
    served_by = {await gateway.serve() for _ in range(30)}
    assert served_by == {"m/v1/w0"}


async def test_a_standby_joins_rotation_at_once_and_a_removed_worker_stops(
    gateways: list[Gateway],
) -> None:
    gateway = await start("tests.integration._autoscale_models:wrong_on_w1", standby=1)
    gateways.append(gateway)
    # w1 starts as the standby but fails its probe: it must never serve.
    await until(lambda: gateway.scaler.standby == 1)
    assert not await gateway.scaler.scale_to(2, "test")
    assert {await gateway.serve() for _ in range(30)} == {"m/v1/w0"}
    # The next standby (w2) answers right: admitted at once, without a process start.
    await until(lambda: gateway.scaler.standby == 1)
    began = time.monotonic()
    assert await gateway.scaler.scale_to(2, "test")
    admitted_s = time.monotonic() - began
    assert admitted_s < 1.0, admitted_s
    assert gateway.scaler.running == 2
    served_by = {await gateway.serve() for _ in range(60)}
    assert served_by == {"m/v1/w0", "m/v1/w2"}

    pid = gateway.workers[2].pid
    assert pid is not None
    assert await gateway.scaler.scale_to(1, "test")
    assert gateway.scaler.running == 1
    assert {await gateway.serve() for _ in range(30)} == {"m/v1/w0"}


def test_a_3x_step_on_an_io_bound_model_scales_up_before_any_shed_and_down_after(
    tmp_path: Path,
) -> None:
    found = run_step(
        tmp_path, model="io", rate=20, baseline_s=6, step_s=16, drop_s=14, down_cooldown_s=5
    )
    print(found)
    assert found.scale_up_s is not None, found
    assert found.sheds_before_scale_up == 0, found
    assert found.failed == 0, found
    # p99 back under max(2x, +20 ms) of the baseline p99 within the step (< 30 s).
    assert found.p99_recovery_s is not None, found
    assert found.p99_recovery_s < 16, found
    # Back at the baseline rate: a worker leaves once the cool-down passed, not below 1.
    assert found.scale_down_s is not None, found
    assert 1 <= found.end_workers < found.step_end_workers, found


def test_a_cpu_bound_model_never_runs_more_workers_than_cores(tmp_path: Path) -> None:
    found = run_step(tmp_path, model="cpu", rate=15, baseline_s=4, step_s=10, cpu_bound=True)
    print(found)
    assert 1 <= found.max_workers <= found.cores, found


def test_bad_autoscale_settings_are_refused_naming_the_field() -> None:
    data = model("tests.integration._autoscale_models:wrong_on_w1", standby=0)
    data["versions"]["v1"]["autoscale"] = {"min_replicas": 3, "max_replicas": 2}
    with pytest.raises(ConfigError) as refused:
        parse_config({"models": {"m": data}})
    assert "autoscale" in str(refused.value.problems)
    assert "max_replicas" in str(refused.value.problems)
    data["versions"]["v1"]["autoscale"] = {"standby": -1}
    with pytest.raises(ConfigError, match="standby"):
        parse_config({"models": {"m": data}})


async def test_an_apply_with_new_autoscale_settings_brings_up_only_the_running_workers(
    gateways: list[Gateway],
) -> None:
    gateway = await start("tests.integration._autoscale_models:wrong_on_w1", standby=0)
    gateways.append(gateway)
    data = model("tests.integration._autoscale_models:wrong_on_w1", standby=0)
    data["versions"]["v1"]["autoscale"]["max_replicas"] = 5

    # Parked slots have no process to probe: the apply must not fail on them.
    await gateway.runtime.apply(parse_config({"models": {"m": data}}), drain_s=1.0)

    assert len(gateway.workers) == 5
    assert [w.parked for w in gateway.workers] == [False, True, True, True, True]
    assert {await gateway.serve() for _ in range(10)} == {"m/v1/w0"}
