"""The gateway's side of async jobs: accept (``Prefer: respond-async``), report, run.

    POST /v2/models/{m}[/versions/{v}]/infer   Prefer: respond-async
        → 202, Location: /v2/jobs/{id}, Preference-Applied: respond-async
    GET  /v2/jobs/{id}          status; the V2 response under "result" once succeeded
    GET  /v2/jobs/{id}/result   the response exactly as a synchronous call gives it

A submission is checked as a synchronous request is (tenant key, quotas, body
size, decoding, the input contract) before it is stored, so a job that is
accepted can run. Job ids and idempotency keys belong to the tenant that made
them: another tenant gets 404 for the id, and may reuse the key.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson

from failsoft.config import ServerConfig
from failsoft.control.tenants import Tenant
from failsoft.errors import MethodNotAllowed, NotFound, Overloaded
from failsoft.jobs import idempotency
from failsoft.jobs.metrics import JobsCollector
from failsoft.jobs.options import JobsOptions
from failsoft.jobs.queue import (
    FINISHED,
    Job,
    JobQueue,
    KeyReused,
    NewJob,
    QueueError,
    QueueFull,
    QueueRefused,
)
from failsoft.jobs.redis_queue import RedisQueue
from failsoft.jobs.runner import JobRunner
from failsoft.jobs.sqlite_queue import SqliteQueue
from failsoft.jobs.workers import Workers
from failsoft.observe.metrics import Metrics
from failsoft.protocol.types import InferRequest
from failsoft.runtime import Runtime
from failsoft.server.admission import Admission
from failsoft.server.decoding import Decoder, decode
from failsoft.server.http import Headers, Receive, json_body, read_body

log = logging.getLogger("failsoft.jobs")

PREFER = b"prefer"
IDEMPOTENCY_KEY = b"idempotency-key"


@dataclass(slots=True)
class Reply:
    status: int
    body: bytes
    headers: Headers = field(default_factory=list)
    content_type: bytes = b"application/json"


class Request(Protocol):
    """What the jobs routes read of an HTTP request (server.app.Incoming)."""

    @property
    def method(self) -> str: ...
    @property
    def authorization(self) -> str | None: ...
    @property
    def priority(self) -> str | None: ...
    @property
    def receive(self) -> Receive: ...
    @property
    def content_length(self) -> int | None: ...
    @property
    def header_length(self) -> int | None: ...
    @property
    def headers(self) -> list[tuple[bytes, bytes]] | None: ...


class Gateway(Protocol):
    runtime: Runtime
    revision: int
    admission: Admission
    decoder: Decoder
    server: ServerConfig
    metrics: Metrics


def wants_async(headers: Sequence[tuple[bytes, bytes]] | None) -> bool:
    """Whether a ``Prefer`` header (RFC 7240) asks for ``respond-async``."""
    for name, value in headers or ():
        if name == PREFER:
            for preference in value.split(b","):
                token = preference.split(b";", 1)[0].split(b"=", 1)[0].strip().lower()
                if token == b"respond-async":
                    return True
    return False


def _header(req: Request, name: bytes) -> bytes | None:
    for key, value in req.headers or ():
        if key == name:
            return value
    return None


def open_queue(options: JobsOptions, data_dir: Path | None) -> JobQueue | None:
    """The configured queue (not yet opened), or None when SQLite has no place to live."""
    common: dict[str, Any] = {
        "lease_s": options.lease_s,
        "max_attempts": options.max_attempts,
        "keep_s": options.keep_s,
        "max_pending": options.max_pending,
    }
    if options.queue == "redis":
        return RedisQueue(options.redis_url, options.redis_prefix, **common)
    path = options.path or (data_dir / "jobs.sqlite3" if data_dir is not None else None)
    if path is None:
        return None
    return SqliteQueue(path, fsync=options.fsync, **common)


class Jobs:
    def __init__(self, gateway: Gateway, options: JobsOptions, data_dir: Path | None) -> None:
        self._gateway = gateway
        self.options = options
        self.queue = open_queue(options, data_dir) if options.enabled else None
        if options.enabled and self.queue is None:
            log.warning(
                "async jobs are off: set jobs.path, or serve with a control store (data_dir)"
            )
        self.workers = (
            Workers(self.queue, JobRunner(gateway), options) if self.queue is not None else None
        )
        self._creating = idempotency.Creating()
        if self.workers is not None:
            gateway.metrics.registry.register(JobsCollector(self.workers))

    @property
    def enabled(self) -> bool:
        return self.queue is not None

    async def start(self) -> None:
        if self.queue is None or self.workers is None:
            return
        try:
            await self.queue.open()
        except QueueError as error:  # Redis may come later; the workers keep trying
            if self.options.queue == "sqlite" or isinstance(error, QueueRefused):
                raise
            log.warning("job queue unavailable at start", extra={"error": error.message})
        self.workers.start()
        log.info("job workers started", extra={"queue": self.options.queue})

    async def close(self) -> None:
        if self.workers is not None:
            await self.workers.close()
        if self.queue is not None:
            await self.queue.close()

    def wants(self, headers: Sequence[tuple[bytes, bytes]] | None) -> bool:
        """Run this request as a job? (A server may ignore a preference: with jobs off, it does.)"""
        return self.queue is not None and wants_async(headers)

    async def submit(self, req: Request, model_name: str, version_name: str | None) -> Reply:
        gateway, queue = self._gateway, self.queue
        assert queue is not None
        tenant, _ = gateway.admission.identify(req.authorization, req.priority)
        model = gateway.runtime.model(model_name)
        if version_name is not None:
            model.version(version_name)
        key = idempotency.parse_key(_header(req, IDEMPOTENCY_KEY))
        scope = _scope(tenant)
        with self._creating.hold(scope, key):
            gateway.admission.admit_request(tenant)
            body = await read_body(req.receive, gateway.server.max_body_bytes, req.content_length)
            request = await self._decode(body, req.header_length)
            version = model.version(version_name).version
            gateway.admission.admit_rows(tenant, model.contracts[version].check_request(request))
            model.checks[version].judge(request)  # under reject, refused now (422), not later
            job = NewJob(
                id=os.urandom(16).hex(),
                tenant=scope,
                idempotency_key=key,
                fingerprint=idempotency.fingerprint(
                    model_name, version_name, body, req.header_length
                ),
                model=model_name,
                version=version_name,
                body=body,
                header_length=req.header_length,
                created_at=time.time(),
            )
            try:
                submitted = await queue.submit(job)
            except KeyReused:
                raise idempotency.mismatch(key or "") from None
            except QueueFull as error:
                raise Overloaded(f"the job queue is full: {error.message}", 5.0) from None
            except QueueError as error:
                log.warning("job not accepted", extra={"error": error.message})
                raise Overloaded("the job queue is unavailable; try again shortly", 2.0) from None
        url = f"/v2/jobs/{submitted.job_id}"
        headers: Headers = [
            (b"location", url.encode()),
            (b"preference-applied", b"respond-async"),
        ]
        if not submitted.created:
            headers.append((b"idempotent-replayed", b"true"))
        answer = {"id": submitted.job_id, "url": url, "created": submitted.created}
        return Reply(202, json_body(answer), headers)

    async def _decode(self, body: bytes, header_length: int | None) -> InferRequest:
        decoder = self._gateway.decoder
        if decoder.inline(body, header_length):
            return decode(body, header_length, None)
        return await decoder.decode_elsewhere(body, header_length, None)

    async def route(self, req: Request, parts: list[str]) -> Reply:
        """GET /v2/jobs/{id} and /v2/jobs/{id}/result (``parts`` after ``jobs``)."""
        if self.queue is None:
            raise NotFound("async jobs are not enabled on this gateway")
        if len(parts) not in (1, 2) or (len(parts) == 2 and parts[1] != "result"):
            raise NotFound("no such route: use /v2/jobs/{id} or /v2/jobs/{id}/result")
        if req.method not in ("GET", "HEAD"):
            raise MethodNotAllowed(f"{req.method} is not allowed here; use GET", "GET")
        tenant = self._gateway.admission.tenants.authenticate(req.authorization)
        try:
            job = await self.queue.get(_scope(tenant), parts[0][:64])
        except QueueError as error:
            log.warning("job not read", extra={"error": error.message})
            raise Overloaded("the job queue is unavailable; try again shortly", 2.0) from None
        if job is None:
            raise NotFound(f"unknown job {parts[0][:64]!r}")
        if len(parts) == 2:
            return _result(job)
        headers: Headers = [] if job.state in FINISHED else [(b"retry-after", b"1")]
        return Reply(200, orjson.dumps(_status(job)), headers)


def _scope(tenant: Tenant | None) -> str:
    return tenant.name if tenant is not None else ""


def _status(job: Job) -> dict[str, object]:
    status: dict[str, object] = {
        "id": job.id,
        "model": job.model,
        "version": job.version,
        "status": job.state,
        "attempts": job.attempts,
        "created_at": job.created_at,
        "finished_at": job.finished_at,
    }
    if job.state in ("failed", "dead"):
        status["error"] = job.reason
    if job.state == "succeeded" and job.result is not None:
        if job.result_header_length is None:
            status["result"] = orjson.Fragment(job.result)
        else:  # binary tensor data: only the raw response carries it
            status["result_url"] = f"/v2/jobs/{job.id}/result"
    return status


def _result(job: Job) -> Reply:
    if job.state != "succeeded" or job.result is None:
        raise NotFound(f"job {job.id!r} has no result: it is {job.state}")
    if job.result_header_length is None:
        return Reply(200, job.result)
    headers: Headers = [
        (b"inference-header-content-length", str(job.result_header_length).encode())
    ]
    return Reply(200, job.result, headers, b"application/octet-stream")
