"""ModelRuntime.serve: the fallback chain and the response cache, over real python backends.

The models live in tests/_runtime_models.py and run in-process. Retries are
off (each failing request calls the model once) and so are health probes;
time is a ManualClock, so cache lifetimes pass only when a test says so.
"""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from failsoft.call import Call
from failsoft.clock import ManualClock, SystemClock
from failsoft.config import parse_config
from failsoft.errors import BadRequest, ModelError, NotFound
from failsoft.observe.events import Event, EventBus
from failsoft.pipeline.fallback import FallbackTierFailed, FallbackUsed
from failsoft.protocol.types import InferRequest, Tensors
from failsoft.runtime import Runtime, Served
from tests._runtime_models import STATE, answer

MODELS = "tests._runtime_models"
X = np.array([[2.0, 1.0], [0.0, 3.0]], dtype=np.float32)
OTHER_X = np.array([[5.0, 5.0]], dtype=np.float32)
GOOD_STATIC = {"static": {"label": 1, "score": 0.5}}


def version(function: str) -> dict[str, Any]:
    return {"backend": "python", "function": f"{MODELS}:{function}"}


def model(
    function: str = "healthy",
    *,
    versions: dict[str, str] | None = None,
    fallback: list[dict[str, Any]] | None = None,
    score_range: bool = True,
    **settings: Any,
) -> dict[str, Any]:
    """A model config: one version running ``function``, or ``versions`` (v1 the default)."""
    score: dict[str, Any] = {"name": "score", "datatype": "FP32", "shape": [-1]}
    if score_range:
        score["range"] = [0.0, 1.0]
    named = versions or {"v1": function}
    config: dict[str, Any] = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
        "outputs": [
            {"name": "label", "datatype": "INT64", "shape": [-1], "labels": [0, 1]},
            score,
        ],
        "versions": {name: version(f) for name, f in named.items()},
        "retry": {"enabled": False},
        "health_check": {"enabled": False},
        "fallback": fallback or [],
    }
    if len(named) > 1:
        config["default_version"] = "v1"
    config.update(settings)
    return config


@dataclass
class Gateway:
    runtime: Runtime
    clock: ManualClock
    events: list[Event] = field(default_factory=list)

    async def serve(self, x: np.ndarray = X, name: str = "m", at: str | None = None) -> Served:
        served_model = self.runtime.model(name)
        version = at or served_model.config.default
        call = Call("req", name, version, time.monotonic() + 30.0, self.runtime.bus, SystemClock())
        return await served_model.serve(InferRequest({"x": x}), call, served_model.version(at))

    def of(self, kind: type[Event]) -> list[Any]:
        return [event for event in self.events if isinstance(event, kind)]


Start = Callable[..., Awaitable[Gateway]]


@pytest.fixture(autouse=True)
def _fresh_models() -> None:
    STATE.reset()


@pytest.fixture
async def gateway() -> AsyncIterator[Start]:
    """Build, start (and afterwards close) a runtime from model configs by name."""
    runtimes: list[Runtime] = []

    async def start(**models: dict[str, Any]) -> Gateway:
        bus = EventBus()
        # Call.deadline is in time.monotonic() seconds, which the in-process backend
        # reads while the pipeline reads the clock: starting there, both agree.
        clock = ManualClock(start=time.monotonic())
        runtime = Runtime(parse_config({"models": models}), bus, clock=clock, rng=random.Random(0))
        built = Gateway(runtime, clock)
        bus.subscribe(built.events.append)
        await runtime.start()
        runtimes.append(runtime)
        return built

    yield start
    for runtime in runtimes:
        await runtime.close()


def assert_tensors_equal(got: Tensors, expected: Tensors) -> None:
    assert list(got) == list(expected)
    for name, array in expected.items():
        assert got[name].dtype == array.dtype, name
        np.testing.assert_array_equal(got[name], array)


# --- the primary path -----------------------------------------------------------


async def test_a_healthy_model_answers_itself(gateway: Start) -> None:
    gw = await gateway(m=model("healthy"))

    served = await gw.serve()

    assert (served.served_by, served.degraded, served.version) == ("m/v1/r0", False, "v1")
    assert_tensors_equal(served.outputs, answer(X))
    assert gw.of(FallbackUsed) == []


# --- fallback tiers ---------------------------------------------------------------


async def test_fallback_to_another_version_when_the_default_raises(gateway: Start) -> None:
    gw = await gateway(
        m=model(versions={"v1": "broken", "v2": "healthy"}, fallback=[{"version": "v2"}])
    )

    served = await gw.serve()

    assert served.served_by == "m/v1/fallback:version:v2"
    assert served.degraded
    assert served.version == "v2"  # model_version names the version that answered
    assert_tensors_equal(served.outputs, answer(X))
    assert STATE.calls == {"broken": 1, "healthy": 1}
    [used] = gw.of(FallbackUsed)
    assert (used.model, used.version, used.tier) == ("m", "v1", "version:v2")
    assert "model is down" in used.reason


async def test_a_version_tier_naming_the_failed_version_is_skipped(gateway: Start) -> None:
    gw = await gateway(
        m=model(
            versions={"v1": "healthy", "v2": "broken"},
            fallback=[{"version": "v2"}, GOOD_STATIC],
        )
    )

    served = await gw.serve(at="v2")

    assert served.served_by == "m/v2/fallback:static"
    assert STATE.calls == {"broken": 1}  # v2 was not asked a second time as its own fallback


async def test_fallback_to_another_model(gateway: Start) -> None:
    gw = await gateway(
        m=model("broken", fallback=[{"model": "spare"}]),
        spare=model("backup"),
    )

    served = await gw.serve()

    assert (served.served_by, served.degraded) == ("m/v1/fallback:model:spare", True)
    assert_tensors_equal(served.outputs, answer(X))
    assert STATE.calls == {"broken": 1, "backup": 1}


async def test_fallback_to_a_python_heuristic(gateway: Start) -> None:
    gw = await gateway(m=model("broken", fallback=[{"python": f"{MODELS}:heuristic"}]))

    served = await gw.serve()

    assert (served.served_by, served.degraded) == ("m/v1/fallback:heuristic", True)
    assert_tensors_equal(
        served.outputs,
        {"label": np.array([1, 1]), "score": np.array([0.5, 0.5], dtype=np.float32)},
    )


async def test_static_fallback_repeats_its_row_per_input_row(gateway: Start) -> None:
    gw = await gateway(m=model("broken", fallback=[{"static": {"label": 0, "score": 0.25}}]))
    three_rows = np.ones((3, 2), dtype=np.float32)

    served = await gw.serve(three_rows)

    assert (served.served_by, served.degraded) == ("m/v1/fallback:static", True)
    assert_tensors_equal(
        served.outputs,
        {"label": np.zeros(3, dtype=np.int64), "score": np.full(3, 0.25, dtype=np.float32)},
    )


async def test_stale_cache_answers_with_the_last_good_answer_for_the_same_input(
    gateway: Start,
) -> None:
    gw = await gateway(m=model("flaky", fallback=[{"stale_cache": True}]))
    fresh = await gw.serve(X)
    assert fresh.served_by == "m/v1/r0"
    again = await gw.serve(X)
    assert again.served_by == "m/v1/r0"  # stored for stale-if-error, never served fresh
    assert STATE.calls["flaky"] == 2

    STATE.failing = True
    stale = await gw.serve(X)

    assert (stale.served_by, stale.degraded) == ("m/v1/fallback:stale_cache", True)
    assert_tensors_equal(stale.outputs, answer(X))
    with pytest.raises(ModelError, match="flaky is failing now"):
        await gw.serve(OTHER_X)  # never answered: there is nothing stale to give
    assert [used.tier for used in gw.of(FallbackUsed)] == ["stale_cache"]


@pytest.mark.parametrize(
    ("bad_tier", "problem"),
    [
        ({"python": f"{MODELS}:nan_heuristic"}, "contains NaN"),
        ({"static": {"label": 1, "score": 3.0}}, "outside the declared range"),
        ({"static": {"label": 5, "score": 0.5}}, "not one of the declared labels"),
        ({"model": "spare"}, "outside the declared range"),
    ],
    ids=["nan-heuristic", "static-out-of-range", "static-unknown-label", "other-model"],
)
async def test_a_fallback_answer_breaking_the_output_contract_is_skipped(
    gateway: Start, bad_tier: dict[str, Any], problem: str
) -> None:
    gw = await gateway(
        m=model("broken", fallback=[bad_tier, GOOD_STATIC]),
        # Its own contract has no range on score, so its 7.0 passes there but not in m's.
        spare=model("overconfident", score_range=False),
    )

    served = await gw.serve()

    assert served.served_by == "m/v1/fallback:static"
    assert_tensors_equal(
        served.outputs,
        {"label": np.ones(2, dtype=np.int64), "score": np.full(2, 0.5, dtype=np.float32)},
    )
    [skipped] = gw.of(FallbackTierFailed)
    assert problem in skipped.message


async def test_the_original_error_is_raised_when_every_tier_fails(gateway: Start) -> None:
    gw = await gateway(
        m=model(
            versions={"v1": "broken", "v2": "broken"},
            fallback=[
                {"version": "v2"},
                {"python": f"{MODELS}:raising_heuristic"},
                {"static": {"label": 1, "score": -1.0}},
                {"stale_cache": True},
            ],
        )
    )

    with pytest.raises(ModelError) as raised:
        await gw.serve()

    assert raised.value.message == "model raised RuntimeError: model is down"
    assert [failed.tier for failed in gw.of(FallbackTierFailed)] == [
        "version:v2",
        "heuristic",
        "static",
    ]
    assert gw.of(FallbackUsed) == []
    assert STATE.calls == {"broken": 2, "raising_heuristic": 1}


async def test_without_a_fallback_chain_the_error_is_raised(gateway: Start) -> None:
    gw = await gateway(m=model("broken"))

    with pytest.raises(ModelError, match="model is down"):
        await gw.serve()


async def test_a_data_error_is_not_fallen_back(gateway: Start) -> None:
    gw = await gateway(m=model("picky", fallback=[GOOD_STATIC, {"stale_cache": True}]))
    assert (await gw.serve(np.ones((1, 2), dtype=np.float32))).served_by == "m/v1/r0"

    with pytest.raises(BadRequest, match="outside the declared range"):
        await gw.serve(np.array([[-1.0, 1.0]], dtype=np.float32))

    assert gw.of(FallbackUsed) == []
    assert gw.of(FallbackTierFailed) == []
    with pytest.raises(NotFound, match="no version 'v9'"):
        await gw.serve(at="v9")


# --- the fresh cache ---------------------------------------------------------------


async def test_the_fresh_cache_answers_repeats_until_its_ttl_passes(gateway: Start) -> None:
    gw = await gateway(m=model("healthy", cache={"enabled": True, "ttl_ms": 1000.0}))

    first = await gw.serve(X)
    second = await gw.serve(X)

    assert first.served_by == "m/v1/r0"
    assert (second.served_by, second.degraded) == ("m/v1/cache", False)
    assert_tensors_equal(second.outputs, first.outputs)
    assert STATE.calls["healthy"] == 1

    assert (await gw.serve(OTHER_X)).served_by == "m/v1/r0"  # another input: a miss
    assert STATE.calls["healthy"] == 2

    await gw.clock.advance(0.9)
    assert (await gw.serve(X)).served_by == "m/v1/cache"
    await gw.clock.advance(0.2)
    assert (await gw.serve(X)).served_by == "m/v1/r0"  # expired: the model answers again
    assert STATE.calls["healthy"] == 3


async def test_fallback_answers_are_not_cached(gateway: Start) -> None:
    gw = await gateway(
        m=model(
            "flaky",
            cache={"enabled": True},
            fallback=[{"python": f"{MODELS}:heuristic"}],
        )
    )
    STATE.failing = True
    assert (await gw.serve(X)).served_by == "m/v1/fallback:heuristic"

    STATE.failing = False
    served = await gw.serve(X)

    assert served.served_by == "m/v1/r0"
    assert_tensors_equal(served.outputs, answer(X))
