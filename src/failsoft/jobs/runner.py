"""Running one job: its request through the model's normal pipeline, at the lowest priority.

A job waits for a slot the limiter can spare at ``sheddable`` priority, so
synchronous requests keep theirs; then retries, hedges, breakers and fallbacks
apply as to any request. The outcome says what the queue should do: store the
result, give up (the request cannot succeed), or try again later.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Protocol

from failsoft.call import Call
from failsoft.control.flags import NO_SWITCHES, Context, Switches
from failsoft.errors import FailsoftError, NotFound
from failsoft.jobs.queue import Job
from failsoft.observe.logging import request_id_var
from failsoft.pipeline.version import VersionPipeline
from failsoft.priority import Priority
from failsoft.protocol import v2
from failsoft.protocol.types import InferResponse
from failsoft.runtime import Runtime
from failsoft.server.decoding import decode

SPARE_POLL_S = 0.005


@dataclass(frozen=True, slots=True)
class Succeeded:
    body: bytes
    header_length: int | None


@dataclass(frozen=True, slots=True)
class Failed:
    reason: str


@dataclass(frozen=True, slots=True)
class TryAgain:
    reason: str


Outcome = Succeeded | Failed | TryAgain


class Gateway(Protocol):
    """What the runner needs of the gateway (the ASGI app)."""

    runtime: Runtime
    revision: int


class JobRunner:
    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway

    async def run(self, job: Job) -> Outcome:
        token = request_id_var.set(job.id)  # logs, and models that run inline, see the job id
        try:
            return await self._run(job)
        finally:
            request_id_var.reset(token)

    async def _run(self, job: Job) -> Outcome:
        runtime = self._gateway.runtime
        try:
            model = runtime.model(job.model)
        except NotFound:
            return Failed(f"model {job.model!r} no longer exists")
        try:
            pipeline, switches = self._route(runtime, job)
        except NotFound:
            return Failed(f"model {job.model!r} no longer has version {job.version!r}")
        try:
            request = decode(job.body, job.header_length, None)
            model.contracts[pipeline.version].check_request(request)
            verdict = model.checks[pipeline.version].judge(request)
        except FailsoftError as error:  # the model's inputs changed since the job came
            return Failed(f"the request no longer fits the model: {error.message}")
        call = Call(
            job.id,
            model.name,
            pipeline.version,
            runtime.clock.now() + model.config.timeout_ms / 1000.0,
            runtime.bus,
            runtime.clock,
        )
        limiter = model.limiter
        tenant = job.tenant or None
        permit = limiter.try_acquire(Priority.SHEDDABLE, tenant)
        while permit is None:  # only capacity the limiter can spare; the lease is kept alive
            await asyncio.sleep(SPARE_POLL_S)
            permit = limiter.try_acquire(Priority.SHEDDABLE, tenant)
        admitted = runtime.clock.now()
        try:
            call.deadline = admitted + model.config.timeout_ms / 1000.0
            if verdict is not None and verdict.policy == "degrade":
                served = await model.degrade(
                    request, call, pipeline.version, verdict.violation, switches
                )
            else:
                served = await model.serve(request, call, pipeline, switches)
        except FailsoftError as error:
            if error.status < 500:
                return Failed(f"{error.status}: {error.message}")
            # A 5xx message may hold a model's exception text: it stays in the log.
            return TryAgain(f"{error.status}: the model failed ({error.failure_class.value})")
        finally:
            if call.sample is None:
                permit.cancel()
            else:
                permit.release(call.sample, runtime.clock.now() - admitted)
        predictions = getattr(self._gateway, "predictions", None)
        if predictions is not None:  # a job's answer is a prediction too (logged per run)
            predictions.served(
                call,
                tenant,
                served,
                self._gateway.revision,
                request,
                runtime.config,
                time.time(),
                verdict,
            )
        parameters: dict[str, object] = {
            "failsoft_served_by": served.served_by,
            "failsoft_degraded": served.degraded,
            "failsoft_job": job.id,
        }
        if verdict is not None:  # what the Failsoft-Data-Warning header says on a plain answer
            parameters["failsoft_data_warning"] = verdict.violation.header().decode()
        if self._gateway.revision:
            parameters["failsoft_revision"] = self._gateway.revision
        response = InferResponse(model.name, served.version, served.outputs, request.id, parameters)
        try:
            body, header_length = v2.encode_infer_response(response, request)
        except FailsoftError as error:
            return Failed(f"the answer cannot be encoded: {error.message}")
        return Succeeded(body, header_length)

    @staticmethod
    def _route(runtime: Runtime, job: Job) -> tuple[VersionPipeline, Switches]:
        model = runtime.model(job.model)
        split = runtime.splits.get(model.name) if job.version is None else None
        if split is not None:
            pipeline = model.version(split.choose(job.id, job.tenant or None))
        else:
            pipeline = model.version(job.version)
        switches = runtime.switches.get(model.name, NO_SWITCHES)
        if switches.targeted:
            switches = switches.for_request(
                Context(job.id, job.tenant or None, {}), time.time(), model.name
            )
        return pipeline, switches
