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


async def test_a_jobs_answer_is_in_the_prediction_log(gateway: Gateway, tmp_path: Any) -> None:
    from failsoft.data.prediction_log import PredictionLog, segment_files
    from failsoft.server.predictions import PredictionService

    options = parse_config(
        {"predictions": {"enabled": True}, "models": {"m": _model("x:y")}}
    ).predictions
    service = PredictionService(PredictionLog(options, tmp_path), None)

    @dataclass
    class Logging:
        runtime: Runtime
        revision: int = 4
        predictions: PredictionService = service

    done = job()
    assert isinstance(await JobRunner(Logging(gateway.runtime)).run(done), Succeeded)
    service.close()
    [path] = segment_files(tmp_path)
    [record] = [json.loads(line) for line in path.read_bytes().splitlines()]
    assert record["request_id"] == done.id
    assert (record["model"], record["status"], record["revision"]) == ("echo", 200, 4)
    assert len(record["input_digest"]) == 32
