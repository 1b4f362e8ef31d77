"""JobRunner on a real in-process runtime: spare capacity only, clear outcomes."""

from __future__ import annotations

import asyncio
import json
import os
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from failsoft.config import parse_config
from failsoft.drills.jobs_drill import body
from failsoft.jobs.queue import Job
from failsoft.jobs.runner import Failed, JobRunner, Succeeded, TryAgain
from failsoft.observe.events import EventBus
from failsoft.priority import Priority
from failsoft.runtime import Runtime


@dataclass
class Gateway:
    runtime: Runtime
    revision: int = 0


def _model(function: str) -> dict[str, Any]:
    return {
        "inputs": [{"name": "tag", "datatype": "BYTES", "shape": [1]}],
        "outputs": [{"name": "echo", "datatype": "BYTES", "shape": [1]}],
        "versions": {"v1": {"backend": "python", "function": function, "execution": "inline"}},
        "retry": {"enabled": False},
        "health_check": {"enabled": False},
        "limiter": {"initial_limit": 4, "min_limit": 4},
    }


@pytest.fixture
async def gateway() -> AsyncIterator[Gateway]:
    config = parse_config(
        {
            "models": {
                "echo": _model("failsoft.drills.jobs_model:echo"),
                "broken": _model("tests.integration._models:broken"),
            }
        }
    )
    runtime = Runtime(config, EventBus(), rng=random.Random(0))
    await runtime.start()
    yield Gateway(runtime)
    await runtime.close()


def job(model: str = "echo", version: str | None = None, tag: str = "x") -> Job:
    return Job(os.urandom(16).hex(), "", None, model, version, body(tag), None, "running", 1, 1.0)


async def test_a_job_uses_only_capacity_the_limiter_can_spare(gateway: Gateway) -> None:
    limiter = gateway.runtime.model("echo").limiter
    held = [limiter.try_acquire(Priority.DEFAULT) for _ in range(2)]  # synchronous calls
    assert all(permit is not None for permit in held)
    running = asyncio.create_task(JobRunner(gateway).run(job()))
    with pytest.raises(TimeoutError):  # half the limit is taken: nothing spare for a job
        await asyncio.wait_for(asyncio.shield(running), 0.2)
    synchronous = limiter.try_acquire(Priority.DEFAULT)
    assert synchronous is not None  # while the job waits, a synchronous call still gets in
    for permit in [*held, synchronous]:
        assert permit is not None
        permit.cancel()
    outcome = await asyncio.wait_for(running, 10)
    assert isinstance(outcome, Succeeded)
    answer = json.loads(outcome.body)
    assert answer["outputs"][0]["data"] == ["done:x"]
    assert answer["parameters"]["failsoft_degraded"] is False
    assert limiter.in_flight == 0


async def test_a_job_whose_model_or_version_is_gone_fails_clearly(gateway: Gateway) -> None:
    runner = JobRunner(gateway)
    assert await runner.run(job("gone")) == Failed("model 'gone' no longer exists")
    assert await runner.run(job("echo", "v9")) == Failed("model 'echo' no longer has version 'v9'")


async def test_a_model_failure_is_tried_again_without_its_message(gateway: Gateway) -> None:
    outcome = await JobRunner(gateway).run(job("broken"))
    assert isinstance(outcome, TryAgain)
    assert outcome.reason.startswith("500: the model failed")
    assert "always fails" not in outcome.reason  # the model's own text stays in the log
