"""An async job meets its model's feature constraints as a synchronous request does."""

from __future__ import annotations

import json
import os
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from failsoft.config import parse_config
from failsoft.jobs.queue import Job
from failsoft.jobs.runner import Failed, JobRunner, Succeeded
from failsoft.observe.events import EventBus
from failsoft.runtime import Runtime
from tests._runtime_models import STATE


@dataclass
class Gateway:
    runtime: Runtime
    revision: int = 0


def _model(policy: str) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": [-1, 2], "features": {"1": {"max": 10}}}
        ],
        "outputs": [
            {"name": "label", "datatype": "INT64", "shape": [-1]},
            {"name": "score", "datatype": "FP32", "shape": [-1]},
        ],
        "versions": {
            "v1": {
                "backend": "python",
                "function": "tests._runtime_models:healthy",
                "execution": "inline",
            }
        },
        "health_check": {"enabled": False},
        "fallback": [{"static": {"label": 9, "score": 0.5}}],
        "input_policy": policy,
    }


@pytest.fixture
async def gateway() -> AsyncIterator[Gateway]:
    STATE.reset()
    config = parse_config({"models": {"degrade": _model("degrade"), "reject": _model("reject")}})
    runtime = Runtime(config, EventBus(), rng=random.Random(0))
    await runtime.start()
    yield Gateway(runtime)
    await runtime.close()


def job(model: str, second: float) -> Job:
    body = json.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, second]}]}
    ).encode()
    return Job(os.urandom(16).hex(), "", None, model, None, body, None, "running", 1, 1.0)


async def test_a_violating_job_is_degraded_or_refused_and_never_reaches_the_version(
    gateway: Gateway,
) -> None:
    runner = JobRunner(gateway)  # type: ignore[arg-type]
    degraded = await runner.run(job("degrade", 50))
    assert isinstance(degraded, Succeeded)
    answer = json.loads(degraded.body)
    assert answer["outputs"][0]["data"] == [9]
    assert answer["parameters"]["failsoft_degraded"] is True
    assert "column '1': value 50 is above max 10" in answer["parameters"]["failsoft_data_warning"]
    refused = await runner.run(job("reject", 50))
    assert isinstance(refused, Failed)
    assert "value 50 is above max 10" in refused.reason
    assert STATE.calls["healthy"] == 0
    fine = await runner.run(job("degrade", 2))
    assert isinstance(fine, Succeeded)
    assert "failsoft_data_warning" not in json.loads(fine.body)["parameters"]
    assert STATE.calls["healthy"] == 1
