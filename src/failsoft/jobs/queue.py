"""What every job queue offers, and the records it keeps.

A job's life: ``queued`` → ``running`` (leased by a worker, with a fencing
token) → ``succeeded`` | ``failed`` (the request cannot succeed: its model is
gone, its input is bad) | ``dead`` (dead-lettered after ``max_attempts``). A
lease that lapses puts the job back in play; each lease bumps the token, so a
worker whose lease was taken over can no longer store a result or move the job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

State = Literal["queued", "running", "succeeded", "failed", "dead"]
FINISHED: frozenset[str] = frozenset({"succeeded", "failed", "dead"})


class QueueError(Exception):
    """The queue cannot be reached or refused the operation; ``message`` is safe to show."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class QueueFull(QueueError):
    pass


class QueueRefused(QueueError):
    """The queue is reachable but unfit to hold jobs (a Redis without an append-only file)."""


class KeyReused(Exception):
    """An idempotency key already names a job made from another request (422)."""


@dataclass(frozen=True, slots=True)
class NewJob:
    id: str
    tenant: str  # "" for anonymous callers
    idempotency_key: str | None
    fingerprint: str  # sha256 of what the request asks: model, version, body
    model: str
    version: str | None
    body: bytes
    header_length: int | None
    created_at: float


@dataclass(frozen=True, slots=True)
class Job:
    id: str
    tenant: str
    idempotency_key: str | None
    model: str
    version: str | None
    body: bytes
    header_length: int | None
    state: State
    attempts: int
    created_at: float
    finished_at: float | None = None
    result: bytes | None = None
    result_header_length: int | None = None
    reason: str | None = None
    stores: int = 0  # how many times a result was stored: 1 for every succeeded job


@dataclass(frozen=True, slots=True)
class Submitted:
    job_id: str
    created: bool  # False: the idempotency key named this job already


@dataclass(frozen=True, slots=True)
class Lease:
    job: Job
    token: int  # the fencing token: only its holder may finish or move the job
    handle: str = ""  # the queue's own reference (a stream entry id)


class JobQueue(Protocol):
    async def open(self) -> None: ...

    async def submit(self, job: NewJob) -> Submitted:
        """Store the job and its idempotency record in one transaction.

        Raises KeyReused when the key names a job made from another request,
        QueueFull when ``max_pending`` jobs wait, QueueError when unreachable.
        """
        ...

    async def get(self, tenant: str, job_id: str) -> Job | None:
        """The job, only when it belongs to ``tenant``."""
        ...

    async def lease(self, worker: str, count: int, wait_s: float) -> list[Lease]:
        """Up to ``count`` jobs to run (waiting at most ``wait_s`` for one); dead-letters
        jobs whose lapsed lease was their last attempt."""
        ...

    async def renew(self, lease: Lease) -> bool:
        """Extend the lease; False when it was lost to another worker."""
        ...

    async def complete(self, lease: Lease, result: bytes, header_length: int | None) -> bool:
        """Store the result once; False (nothing stored) when the lease was lost."""
        ...

    async def retry(self, lease: Lease, reason: str, delay_s: float) -> bool:
        """Run again after ``delay_s``, or dead-letter the job after its last attempt."""
        ...

    async def fail(self, lease: Lease, reason: str) -> bool:
        """Finish the job as failed: running it again cannot help."""
        ...

    async def purge(self) -> int:
        """Forget finished jobs older than ``keep_s``; how many went."""
        ...

    async def counts(self) -> dict[str, int]: ...

    async def close(self) -> None: ...
