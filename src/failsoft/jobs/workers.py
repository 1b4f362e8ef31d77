"""The gateway's job workers: lease jobs, keep the leases alive, run them, record outcomes.

Up to ``concurrency`` jobs run at once. A lease is renewed every third of its
length while the job waits for spare capacity or runs; a renewal refused means
another worker took the job over, and whatever this one finds will not be
stored (the queue checks the fencing token). When the queue cannot be reached,
the worker waits and tries again; the leases it holds lapse and the jobs come
back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass

from failsoft.jobs.options import JobsOptions
from failsoft.jobs.queue import JobQueue, Lease, QueueError
from failsoft.jobs.runner import Failed, JobRunner, Outcome, Succeeded, TryAgain

log = logging.getLogger("failsoft.jobs")

QUEUE_DOWN_BACKOFF_S = 1.0
PURGE_EVERY_S = 60.0
SHUTDOWN_GRACE_S = 5.0


@dataclass(slots=True)
class WorkerCounts:
    leased: int = 0
    stored: int = 0
    failed: int = 0
    retried: int = 0
    fenced: int = 0  # results refused because the lease had been taken over


class Workers:
    def __init__(self, queue: JobQueue, runner: JobRunner, options: JobsOptions) -> None:
        self._queue = queue
        self._runner = runner
        self._options = options
        self.name = f"{os.uname().nodename}-{os.getpid()}-{os.urandom(3).hex()}"
        self.counts = WorkerCounts()
        self._running: set[asyncio.Task[None]] = set()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def running(self) -> int:
        return len(self._running)

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._loop(), name="jobs-lease"),
            asyncio.create_task(self._purge(), name="jobs-purge"),
        ]

    async def close(self, grace_s: float = SHUTDOWN_GRACE_S) -> None:
        """Stop leasing, let running jobs finish for ``grace_s``, then abandon the rest:
        their leases lapse and another worker runs them again."""
        for task in self._tasks:
            task.cancel()
        if self._running:
            await asyncio.wait(set(self._running), timeout=grace_s)
        for task in [*self._tasks, *self._running]:
            task.cancel()
        for task in [*self._tasks, *self._running]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _loop(self) -> None:
        options = self._options
        while True:
            free = options.concurrency - len(self._running)
            if free <= 0:
                await asyncio.wait(self._running, return_when=asyncio.FIRST_COMPLETED)
                continue
            try:
                leases = await self._queue.lease(self.name, free, options.poll_s)
            except QueueError as error:
                log.warning("job queue unavailable", extra={"error": error.message})
                await asyncio.sleep(QUEUE_DOWN_BACKOFF_S)
                continue
            for lease in leases:
                self.counts.leased += 1
                task = asyncio.create_task(self._work(lease), name=f"job-{lease.job.id}")
                self._running.add(task)
                task.add_done_callback(self._running.discard)

    async def _work(self, lease: Lease) -> None:
        keeper = asyncio.create_task(self._keep(lease))
        outcome: Outcome
        try:
            outcome = await self._runner.run(lease.job)
        except Exception:  # a bug, not the model: try again later rather than lose the job
            log.exception("job runner failed", extra={"job": lease.job.id})
            outcome = TryAgain("internal error while running the job")
        finally:
            keeper.cancel()
        queue, job = self._queue, lease.job
        try:
            if isinstance(outcome, Succeeded):
                if await queue.complete(lease, outcome.body, outcome.header_length):
                    self.counts.stored += 1
                else:
                    self.counts.fenced += 1
                    log.info(
                        "job result not stored: its lease was taken over", extra={"job": job.id}
                    )
            elif isinstance(outcome, Failed):
                self.counts.failed += 1
                await queue.fail(lease, outcome.reason)
                log.info("job failed", extra={"job": job.id, "reason": outcome.reason})
            else:
                self.counts.retried += 1
                await queue.retry(lease, outcome.reason, self._options.backoff(job.attempts))
        except QueueError as error:  # the lease lapses and the job runs again
            log.warning("job outcome not recorded", extra={"job": job.id, "error": error.message})

    async def _keep(self, lease: Lease) -> None:
        every = self._options.lease_s / 3
        while True:
            await asyncio.sleep(every)
            try:
                if not await self._queue.renew(lease):
                    log.info("job lease taken over", extra={"job": lease.job.id})
                    return
            except QueueError as error:
                log.warning("job lease not renewed", extra={"error": error.message})

    async def _purge(self) -> None:
        every = min(PURGE_EVERY_S, self._options.keep_s)
        while True:
            await asyncio.sleep(every)
            try:
                while await self._queue.purge():
                    pass
            except QueueError as error:
                log.warning("finished jobs not purged", extra={"error": error.message})
