"""Runtime.apply: a running gateway moves to a new configuration without a restart.

Real python-backend models (tests/_runtime_models.py) on the system clock;
the tests only change configurations and send requests.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest

from failsoft.call import Call
from failsoft.clock import ManualClock
from failsoft.config import Config, parse_config
from failsoft.control.plan import plan
from failsoft.observe.events import EventBus
from failsoft.protocol.types import InferRequest
from failsoft.runtime import ApplyFailed, Runtime, Served

MODELS = "tests._runtime_models"
X = np.array([[2.0, 1.0]], dtype=np.float32)
GOLDEN = {"inputs": {"x": [[2.0, 1.0]]}, "expect": {"label": [1]}}


def config(versions: dict[str, Any], default: str = "v1", **settings: Any) -> Config:
    model: dict[str, Any] = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
        "outputs": [
            {"name": "label", "datatype": "INT64", "shape": [-1], "labels": [0, 1]},
            {"name": "score", "datatype": "FP32", "shape": [-1], "range": [0.0, 1.0]},
        ],
        "versions": versions,
        "default_version": default,
        "health_check": {**GOLDEN, "interval_ms": 60_000},
        **settings,
    }
    return parse_config({"models": {"m": model}})


def python(function: str, replicas: int = 1) -> dict[str, Any]:
    return {"backend": "python", "function": f"{MODELS}:{function}", "replicas": replicas}


@pytest.fixture
async def runtime() -> AsyncIterator[Runtime]:
    started = Runtime(config({"v1": python("healthy")}), EventBus())
    await started.start()
    yield started
    await started.close()


async def serve(runtime: Runtime, version: str | None = None) -> Served:
    model = runtime.model("m")
    clock = runtime.clock
    call = Call("req", "m", version or "v1", clock.now() + 5.0, runtime.bus, clock)
    return await model.serve(InferRequest({"x": X}), call, model.version(version))


async def test_a_new_default_version_serves_from_the_next_request(runtime: Runtime) -> None:
    kept = runtime.model("m").units["v1"]
    new = config({"v1": python("healthy"), "v2": python("backup")}, default="v2")

    await runtime.apply(new)

    assert (await serve(runtime)).served_by == "m/v2/r0"
    assert runtime.model("m").units["v1"] is kept  # untouched: replicas, breakers and all


async def test_a_setting_outside_the_pipeline_keeps_every_replica_and_its_state(
    runtime: Runtime,
) -> None:
    before = runtime.model("m")
    unit, limiter = before.units["v1"], before.limiter

    await runtime.apply(config({"v1": python("healthy")}, timeout_ms=800))

    after = runtime.model("m")
    assert after is not before
    assert after.config.timeout_ms == 800
    assert after.units["v1"] is unit
    assert after.limiter is limiter


async def test_a_resilience_setting_rebuilds_the_pipeline_over_the_same_replicas(
    runtime: Runtime,
) -> None:
    before = runtime.model("m").units["v1"]

    await runtime.apply(config({"v1": python("healthy")}, breaker={"open_ms": 9000}))

    after = runtime.model("m").units["v1"]
    assert after.pipeline is not before.pipeline
    assert after.built is before.built  # no replica reloaded
    assert after.pipeline.options.breaker.open_ms == 9000
    assert (await serve(runtime)).served_by == "m/v1/r0"


async def test_a_version_that_cannot_load_is_refused_and_the_old_one_keeps_serving(
    runtime: Runtime,
) -> None:
    before = runtime.models
    bad = config({"v1": python("healthy"), "v2": python("no_such_function")}, default="v2")

    with pytest.raises(ApplyFailed, match="no_such_function"):
        await runtime.apply(bad)

    assert runtime.models is before
    assert runtime.config.models["m"].default == "v1"
    assert (await serve(runtime)).served_by == "m/v1/r0"


async def test_a_version_failing_its_golden_probe_is_refused(runtime: Runtime) -> None:
    bad = config({"v1": python("healthy"), "v2": python("overconfident")}, default="v2")

    with pytest.raises(ApplyFailed, match=r"m/v2 failed its probe \(r0: output 'score'"):
        await runtime.apply(bad)

    assert (await serve(runtime)).served_by == "m/v1/r0"


async def test_a_removed_version_finishes_its_calls_in_flight(runtime: Runtime) -> None:
    await runtime.apply(config({"v1": python("healthy"), "v2": python("slow")}, default="v1"))
    in_flight = asyncio.ensure_future(serve(runtime, "v2"))
    await asyncio.sleep(0.01)  # the call is now in v2's replica (it takes 0.2 s)

    await runtime.apply(config({"v1": python("healthy")}))

    served = await in_flight
    assert served.served_by == "m/v2/r0"
    assert "v2" not in runtime.model("m").units


def test_the_plan_says_what_changes() -> None:
    old = config({"v1": python("healthy")})
    new = config({"v1": python("healthy"), "v3": python("backup", 2)}, default="v3", timeout_ms=800)

    shown = plan(old, new).render().splitlines()

    assert "~ models.m.default_version: v1 -> v3" in shown
    assert "+ models.m.versions.v3: python, 2 replicas" in shown
    assert "~ models.m.timeout_ms: 5000 -> 800" in shown
    assert shown[-1] == "1 to add, 2 to change, 0 to remove"
    assert plan(old, old).render() == "no changes"
    # The incident tracker and the runbooks take their settings at once: a change to them
    # alone is a change to apply, not "no changes".
    quiet = old.model_copy(update={"incidents": old.incidents.model_copy(update={"quiet_s": 2.0})})
    assert plan(old, quiet).render().splitlines()[0] == "~ incidents: incidents settings"
    hooks = old.runbooks.model_copy(update={"webhooks": {"oncall": "http://127.0.0.1:9/h"}})
    assert not plan(old, old.model_copy(update={"runbooks": hooks})).empty


async def test_a_rollback_finds_the_versions_it_left_warm(runtime: Runtime) -> None:
    first = runtime.model("m").units["v1"]
    await runtime.apply(config({"v2": python("backup")}, default="v2"), keep_warm_s=60.0)
    assert (await serve(runtime)).served_by == "m/v2/r0"

    await runtime.apply(config({"v1": python("healthy")}), keep_warm_s=60.0)

    assert runtime.model("m").units["v1"] is first  # not loaded again: state and all
    assert (await serve(runtime)).served_by == "m/v1/r0"


async def test_warm_versions_are_closed_when_their_time_is_up() -> None:
    clock = ManualClock()
    runtime = Runtime(config({"v1": python("healthy")}), EventBus(), clock)
    await runtime.start()
    try:
        first = runtime.model("m").units["v1"]
        await runtime.apply(config({"v2": python("backup")}, default="v2"), keep_warm_s=60.0)
        assert first.pipeline.replicas[0].available  # warm

        await clock.advance(60.0)

        assert not first.pipeline.replicas[0].available  # closed
        await runtime.apply(config({"v1": python("healthy")}), keep_warm_s=60.0)
        assert runtime.model("m").units["v1"] is not first
    finally:
        await runtime.close()
