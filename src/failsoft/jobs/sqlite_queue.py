"""The embedded job queue: one SQLite file in WAL mode, used from one thread.

``run_at`` is when a job may next be leased: for a queued job the end of its
back-off, for a running one the end of its lease. One index on (state, run_at)
then finds both new work and lapsed leases. Every change is one ``BEGIN
IMMEDIATE`` transaction, so several gateways on one host may share the file.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from failsoft.jobs.queue import (
    Job,
    KeyReused,
    Lease,
    NewJob,
    QueueError,
    QueueFull,
    Submitted,
)
from failsoft.waiting import wait_at_most

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    idempotency_key TEXT,
    fingerprint TEXT NOT NULL,
    model TEXT NOT NULL,
    version TEXT,
    body BLOB NOT NULL,
    header_length INTEGER,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    token INTEGER NOT NULL DEFAULT 0,
    run_at REAL,
    worker TEXT,
    result BLOB,
    result_header_length INTEGER,
    reason TEXT,
    stores INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS jobs_due ON jobs (state, run_at);
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS job_keys (
    tenant TEXT NOT NULL,
    key TEXT NOT NULL,
    job_id TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    PRIMARY KEY (tenant, key)
);
CREATE INDEX IF NOT EXISTS job_keys_job ON job_keys (job_id);
"""

_JOB_COLUMNS = (
    "id, tenant, idempotency_key, model, version, body, header_length, state, attempts, "
    "created_at, finished_at, result, result_header_length, reason, stores"
)
PURGE_BATCH = 1000


_Pending = tuple[
    Callable[[sqlite3.Connection], Any], "asyncio.Future[Any]", asyncio.AbstractEventLoop
]


def _queue_error(error: BaseException) -> BaseException:
    """What a caller sees of a failure: SQLite's own errors become QueueError."""
    if isinstance(error, sqlite3.Error):
        return QueueError(f"the job queue failed: {type(error).__name__}")
    return error


def _settle(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


def _job(row: tuple[Any, ...]) -> Job:
    return Job(*row)


class SqliteQueue:
    def __init__(
        self,
        path: Path,
        *,
        lease_s: float,
        max_attempts: int,
        keep_s: float,
        max_pending: int,
        fsync: bool = True,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self._lease_s = lease_s
        self._max_attempts = max_attempts
        self._keep_s = keep_s
        self._max_pending = max_pending
        self._fsync = fsync
        self._wall = wall
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jobs-sqlite")
        self._lock = threading.Lock()
        self._pending: list[_Pending] = []
        self._flushing = False
        self._db: sqlite3.Connection | None = None
        self._wake = asyncio.Event()  # a job was queued here: idle workers look at once

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in the next transaction; concurrent calls share one (one fsync)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._lock:
            self._pending.append((fn, future, loop))
            start = not self._flushing
            self._flushing = True
        if start:
            try:
                self._thread.submit(self._flush)
            except RuntimeError:  # shut down
                raise QueueError("the job queue is closed") from None
        return await future

    def _flush(self) -> None:
        """On the queue's thread: run what is pending, a batch per transaction, until none is.

        Each call runs under a savepoint, so one that raises (a reused key) undoes
        only its own writes; a failed commit fails the whole batch.
        """
        while True:
            with self._lock:
                batch, self._pending = self._pending, []
                if not batch:
                    self._flushing = False
                    return
            db = self._db
            outcomes: list[tuple[Any, BaseException | None]] = []
            try:
                if db is None:
                    raise QueueError("the job queue is closed")
                db.execute("BEGIN IMMEDIATE")
                for fn, _, _ in batch:
                    db.execute("SAVEPOINT call")
                    try:
                        outcomes.append((fn(db), None))
                    except Exception as raised:
                        db.execute("ROLLBACK TO call")
                        outcomes.append((None, _queue_error(raised)))
                    db.execute("RELEASE call")
                db.execute("COMMIT")
            except (sqlite3.Error, QueueError) as failed:
                if db is not None and db.in_transaction:
                    db.rollback()
                outcomes = [(None, _queue_error(failed))] * len(batch)
            for (_, future, loop), (value, problem) in zip(batch, outcomes, strict=True):
                loop.call_soon_threadsafe(_settle, future, value, problem)

    async def open(self) -> None:
        def connect() -> sqlite3.Connection:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=10.0
            )
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={'FULL' if self._fsync else 'NORMAL'}")
            db.executescript(SCHEMA)
            return db

        try:
            self._db = await asyncio.get_running_loop().run_in_executor(self._thread, connect)
        except (sqlite3.Error, OSError) as error:
            raise QueueError(f"cannot open the job queue at {self.path}: {error}") from error

    async def close(self) -> None:
        self._thread.shutdown(wait=True)  # what was pending has run
        db, self._db = self._db, None
        if db is not None:
            db.close()

    async def submit(self, job: NewJob) -> Submitted:
        def write(db: sqlite3.Connection) -> Submitted:
            if job.idempotency_key is not None:
                found = db.execute(
                    "SELECT job_id, fingerprint FROM job_keys WHERE tenant = ? AND key = ?",
                    (job.tenant, job.idempotency_key),
                ).fetchone()
                if found is not None:
                    if found[1] != job.fingerprint:
                        raise KeyReused(job.idempotency_key)
                    return Submitted(found[0], created=False)
            (pending,) = db.execute(
                "SELECT count(*) FROM jobs WHERE state IN ('queued', 'running')"
            ).fetchone()
            if pending >= self._max_pending:
                raise QueueFull(f"{pending} jobs are waiting; try again later")
            db.execute(
                "INSERT INTO jobs (id, tenant, idempotency_key, fingerprint, model, version,"
                " body, header_length, state, run_at, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?)",
                (
                    job.id,
                    job.tenant,
                    job.idempotency_key,
                    job.fingerprint,
                    job.model,
                    job.version,
                    job.body,
                    job.header_length,
                    job.created_at,
                    job.created_at,
                ),
            )
            if job.idempotency_key is not None:
                db.execute(
                    "INSERT INTO job_keys (tenant, key, job_id, fingerprint) VALUES (?, ?, ?, ?)",
                    (job.tenant, job.idempotency_key, job.id, job.fingerprint),
                )
            return Submitted(job.id, created=True)

        submitted = await self._run(write)
        if submitted.created:
            self._wake.set()
        return submitted

    async def get(self, tenant: str, job_id: str) -> Job | None:
        def read(db: sqlite3.Connection) -> Job | None:
            row = db.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ? AND tenant = ?", (job_id, tenant)
            ).fetchone()
            return None if row is None else _job(row)

        return await self._run(read)

    async def lease(self, worker: str, count: int, wait_s: float) -> list[Lease]:
        self._wake.clear()  # before looking: a job queued after the look wakes the wait
        leases = await self._run(lambda db: self._lease(db, worker, count))
        if leases or wait_s <= 0:
            return leases
        try:
            await wait_at_most(self._wake.wait(), wait_s)
        except TimeoutError:
            return []
        return await self._run(lambda db: self._lease(db, worker, count))

    def _lease(self, db: sqlite3.Connection, worker: str, count: int) -> list[Lease]:
        now = self._wall()
        due = db.execute(
            "SELECT id, attempts, state FROM jobs WHERE state IN ('queued', 'running')"
            " AND run_at <= ? ORDER BY run_at LIMIT ?",
            (now, count * 2),
        ).fetchall()
        taken: list[str] = []
        for job_id, attempts, state in due:
            if attempts >= self._max_attempts:  # its last lease lapsed: dead-letter it
                db.execute(
                    "UPDATE jobs SET state = 'dead', run_at = NULL, worker = NULL,"
                    " finished_at = ?, reason = ? WHERE id = ?",
                    (now, _gave_up(attempts, state), job_id),
                )
                continue
            if len(taken) < count:
                db.execute(
                    "UPDATE jobs SET state = 'running', attempts = attempts + 1,"
                    " token = token + 1, run_at = ?, worker = ? WHERE id = ?",
                    (now + self._lease_s, worker, job_id),
                )
                taken.append(job_id)
        rows = [
            db.execute(f"SELECT {_JOB_COLUMNS}, token FROM jobs WHERE id = ?", (job_id,)).fetchone()
            for job_id in taken
        ]
        return [Lease(_job(row[:-1]), row[-1]) for row in rows]

    async def renew(self, lease: Lease) -> bool:
        def extend(db: sqlite3.Connection) -> bool:
            cursor = db.execute(
                "UPDATE jobs SET run_at = ? WHERE id = ? AND token = ? AND state = 'running'",
                (self._wall() + self._lease_s, lease.job.id, lease.token),
            )
            return cursor.rowcount == 1

        return await self._run(extend)

    async def complete(self, lease: Lease, result: bytes, header_length: int | None) -> bool:
        def store(db: sqlite3.Connection) -> bool:
            # The fence: only the current lease's holder moves the job out of running.
            cursor = db.execute(
                "UPDATE jobs SET state = 'succeeded', result = ?, result_header_length = ?,"
                " stores = stores + 1, finished_at = ?, run_at = NULL, worker = NULL,"
                " reason = NULL WHERE id = ? AND token = ? AND state = 'running'",
                (result, header_length, self._wall(), lease.job.id, lease.token),
            )
            return cursor.rowcount == 1

        return await self._run(store)

    async def retry(self, lease: Lease, reason: str, delay_s: float) -> bool:
        def again(db: sqlite3.Connection) -> bool:
            now = self._wall()
            if lease.job.attempts >= self._max_attempts:
                cursor = db.execute(
                    "UPDATE jobs SET state = 'dead', reason = ?, finished_at = ?, run_at = NULL,"
                    " worker = NULL WHERE id = ? AND token = ? AND state = 'running'",
                    (
                        f"gave up after {lease.job.attempts} attempts; last: {reason}",
                        now,
                        lease.job.id,
                        lease.token,
                    ),
                )
            else:
                cursor = db.execute(
                    "UPDATE jobs SET state = 'queued', reason = ?, run_at = ?, worker = NULL"
                    " WHERE id = ? AND token = ? AND state = 'running'",
                    (reason, now + delay_s, lease.job.id, lease.token),
                )
            return cursor.rowcount == 1

        return await self._run(again)

    async def fail(self, lease: Lease, reason: str) -> bool:
        def finish(db: sqlite3.Connection) -> bool:
            cursor = db.execute(
                "UPDATE jobs SET state = 'failed', reason = ?, finished_at = ?, run_at = NULL,"
                " worker = NULL WHERE id = ? AND token = ? AND state = 'running'",
                (reason, self._wall(), lease.job.id, lease.token),
            )
            return cursor.rowcount == 1

        return await self._run(finish)

    async def purge(self) -> int:
        def forget(db: sqlite3.Connection) -> int:
            cutoff = self._wall() - self._keep_s
            old = [
                row[0]
                for row in db.execute(
                    "SELECT id FROM jobs WHERE finished_at IS NOT NULL AND finished_at < ? LIMIT ?",
                    (cutoff, PURGE_BATCH),
                )
            ]
            for job_id in old:
                db.execute("DELETE FROM job_keys WHERE job_id = ?", (job_id,))
                db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
            return len(old)

        return await self._run(forget)

    async def counts(self) -> dict[str, int]:
        def count(db: sqlite3.Connection) -> dict[str, int]:
            rows = db.execute("SELECT state, count(*) FROM jobs GROUP BY state").fetchall()
            return {state: n for state, n in rows}

        return await self._run(count)


def _gave_up(attempts: int, state: str) -> str:
    how = "its worker stopped answering" if state == "running" else "it kept failing"
    return f"gave up after {attempts} attempts ({how})"
