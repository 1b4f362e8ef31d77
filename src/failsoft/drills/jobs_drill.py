"""The durable-jobs drill: many async jobs, the gateway SIGKILLed mid-run, nothing lost.

A real gateway (``failsoft serve``) runs the recorder model
(``failsoft.drills.jobs_model:record``), which writes every execution into a
PostgreSQL schema of the drill's own. Client threads submit ``jobs`` requests
with ``Prefer: respond-async`` and an ``Idempotency-Key`` each, retrying a
request (same key, same body) until it is accepted; meanwhile the gateway is
SIGKILLed ``kills`` times and started again on the same queue. Then every job
is read back and checked:

- lost: accepted jobs without a correct result (target 0);
- duplicates stored: results stored more than once for one job (target 0),
  read from the queue itself;
- re-executions: executions beyond one per job, from PostgreSQL (allowed:
  delivery is at-least-once; reported);
- unknown executions: executions of no accepted job (target 0).

The Redis queue runs on a ``redis-server --appendonly yes`` the drill starts on
a Unix socket in its own folder (the machine's Redis keeps nothing on disk).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from failsoft.drills.server import ServerProcess
from failsoft.jobs.queue import Job
from failsoft.jobs.redis_queue import RedisQueue
from failsoft.jobs.sqlite_queue import SqliteQueue

PG_URL = os.environ.get("FAILSOFT_JOBS_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
CLIENTS = 8
LEASE_S = 2.0
PREFIX = "failsoft-jobs-drill"


def config_text(queue: str, folder: Path, redis_url: str, function: str = "record") -> str:
    jobs = (
        f"  queue: redis\n  redis_url: {redis_url}\n  redis_prefix: {PREFIX}\n"
        if queue == "redis"
        else f"  queue: sqlite\n  path: {folder / 'jobs.sqlite3'}\n"
    )
    return f"""\
server:
  max_connections: 256
store:
  data_dir: {folder / "store"}
models:
  recorder:
    inputs: [{{name: tag, datatype: BYTES, shape: [1]}}]
    outputs: [{{name: echo, datatype: BYTES, shape: [1]}}]
    versions:
      v1: {{backend: python, function: "failsoft.drills.jobs_model:{function}", execution: inline}}
jobs:
{jobs}  lease_s: {LEASE_S}
  concurrency: 16
  backoff_s: 0.1
  backoff_max_s: 1.0
"""


def body(tag: str) -> bytes:
    return json.dumps(
        {"inputs": [{"name": "tag", "datatype": "BYTES", "shape": [1], "data": [tag]}]}
    ).encode()


# -- the parts the drill starts ---------------------------------------------------------


@contextlib.contextmanager
def redis_server(folder: Path, timeout_s: float = 10.0, *, aof: bool = True) -> Iterator[str]:
    """A redis-server with an append-only file (unless not ``aof``), on a Unix socket; its URL."""
    folder.mkdir(parents=True, exist_ok=True)
    sock = folder / "redis.sock"
    process = subprocess.Popen(
        [
            "redis-server", "--port", "0", "--unixsocket", str(sock),
            "--appendonly", "yes" if aof else "no", "--appendfsync", "everysec",
            "--dir", str(folder), "--save", "",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + timeout_s
        while not sock.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.02)
        yield f"unix://{sock}"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Recorder:
    """The drill's PostgreSQL schema: one row per model execution."""

    def __init__(self, url: str = PG_URL) -> None:
        import psycopg

        self.schema = f"failsoft_jobs_{secrets.token_hex(4)}"
        self._db = psycopg.connect(url, autocommit=True, connect_timeout=3)
        self._db.execute(f'CREATE SCHEMA "{self.schema}"')
        self._db.execute(
            f'CREATE TABLE "{self.schema}".executions '
            "(job_id text NOT NULL, tag text NOT NULL, pid int NOT NULL, "
            "at timestamptz NOT NULL DEFAULT now())"
        )

    def executions(self) -> dict[str, int]:
        rows = self._db.execute(
            f'SELECT job_id, count(*) FROM "{self.schema}".executions GROUP BY job_id'
        ).fetchall()
        return {job_id: int(n) for job_id, n in rows}

    def close(self) -> None:
        self._db.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
        self._db.close()


# -- the run ----------------------------------------------------------------------------


@dataclass
class DrillReport:
    queue: str
    jobs: int
    kills: int
    accepted: int = 0
    distinct_jobs: int = 0
    succeeded: int = 0
    lost: int = 0
    wrong_results: int = 0
    duplicates_stored: int = 0
    executions: int = 0
    re_executions: int = 0
    unknown_executions: int = 0
    replayed_submissions: int = 0
    wall_s: float = 0.0
    states: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Gateway:
    """The gateway under test, restarted after each kill on the same folder and queue."""

    def __init__(self, config: Path, env: dict[str, str]) -> None:
        self._config = config
        self._env = env
        self.lock = threading.Lock()
        self.server = ServerProcess(config, env=env).start(timeout=120)
        self.url = self.server.url

    def kill_and_restart(self) -> None:
        with self.lock:
            old = self.server
            assert old.process is not None
            os.killpg(old.process.pid, signal.SIGKILL)
            old.process.wait()
            self.url = ""
        server = ServerProcess(self._config, env=self._env).start(timeout=120)
        with self.lock:
            self.server, self.url = server, server.url

    def stop(self) -> None:
        self.server.stop()


def _request(
    url: str, method: str, path: str, payload: bytes | None, headers: dict[str, str]
) -> tuple[int, bytes, dict[str, str]]:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
    try:
        connection.request(method, path, payload, headers)
        response = connection.getresponse()
        return response.status, response.read(), dict(response.getheaders())
    finally:
        connection.close()


def _submit_all(gateway: Gateway, tags: list[str], deadline: float) -> tuple[dict[str, str], int]:
    """Every tag accepted as a job (key = tag): tag → job id, and how many were replays."""
    accepted: dict[str, str] = {}
    replayed = 0
    lock = threading.Lock()
    indices = iter(range(len(tags)))
    errors: list[str] = []

    def client() -> None:
        nonlocal replayed
        while True:
            with lock:
                index = next(indices, None)
            if index is None:
                return
            tag = tags[index]
            headers = {
                "Prefer": "respond-async",
                "Idempotency-Key": tag,
                "Content-Type": "application/json",
            }
            while True:
                if time.monotonic() > deadline:
                    errors.append(f"{tag}: not accepted before the deadline")
                    return
                with gateway.lock:
                    url = gateway.url
                if not url:
                    time.sleep(0.05)
                    continue
                try:
                    status, answer, _ = _request(
                        url, "POST", "/v2/models/recorder/infer", body(tag), headers
                    )
                except (OSError, http.client.HTTPException):
                    time.sleep(0.05)  # the gateway is down: the same request again
                    continue
                if status == 202:
                    found = json.loads(answer)
                    with lock:
                        accepted[tag] = found["id"]
                        replayed += 0 if found["created"] else 1
                    break
                if status in (409, 429, 503):
                    time.sleep(0.05)
                    continue
                errors.append(f"{tag}: HTTP {status} {answer[:200]!r}")
                return

    threads = [threading.Thread(target=client, daemon=True) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(f"{len(errors)} submissions failed, e.g. {errors[:3]}")
    return accepted, replayed


def _statuses(url: str, job_ids: list[str]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
    try:
        for job_id in job_ids:
            connection.request("GET", f"/v2/jobs/{job_id}")
            response = connection.getresponse()
            payload = response.read()
            if response.status == 200:
                found[job_id] = json.loads(payload)
    finally:
        connection.close()
    return found


def _stored(queue: str, folder: Path, redis_url: str, job_ids: list[str]) -> dict[str, Job]:
    """The jobs as the queue itself holds them (for the stored-result counts)."""

    async def read() -> dict[str, Job]:
        options: dict[str, Any] = {
            "lease_s": LEASE_S,
            "max_attempts": 5,
            "keep_s": 3600.0,
            "max_pending": 1,
        }
        store: SqliteQueue | RedisQueue
        if queue == "redis":
            store = RedisQueue(redis_url, PREFIX, **options)
        else:
            store = SqliteQueue(folder / "jobs.sqlite3", **options)
            await store.open()
        try:
            jobs = {}
            for job_id in job_ids:
                job = await store.get("", job_id)
                if job is not None:
                    jobs[job_id] = job
            return jobs
        finally:
            await store.close()

    return asyncio.run(read())


def run_drill(
    queue: str,
    jobs: int,
    kills: int,
    folder: Path,
    *,
    pythonpath: str = "",
    finish_timeout_s: float = 300.0,
) -> DrillReport:
    report = DrillReport(queue, jobs, kills)
    recorder = Recorder()
    try:
        with contextlib.ExitStack() as stack:
            redis_url = ""
            if queue == "redis":
                redis_url = stack.enter_context(redis_server(folder / "redis"))
            config = folder / "failsoft.yaml"
            config.write_text(config_text(queue, folder, redis_url))
            env = {
                "FAILSOFT_JOBS_PG_URL": PG_URL,
                "FAILSOFT_JOBS_PG_SCHEMA": recorder.schema,
                "PYTHONPATH": pythonpath or os.environ.get("PYTHONPATH", ""),
            }
            started = time.monotonic()
            gateway = Gateway(config, env)
            stack.callback(gateway.stop)
            _run(gateway, report, jobs, kills, queue, folder, redis_url, recorder, finish_timeout_s)
            report.wall_s = round(time.monotonic() - started, 2)
    finally:
        recorder.close()
    return report


def _run(
    gateway: Gateway,
    report: DrillReport,
    jobs: int,
    kills: int,
    queue: str,
    folder: Path,
    redis_url: str,
    recorder: Recorder,
    finish_timeout_s: float,
) -> None:
    tags = [f"job-{index:06d}-{secrets.token_hex(3)}" for index in range(jobs)]
    deadline = time.monotonic() + finish_timeout_s
    outcome: dict[str, Any] = {}

    def submit() -> None:
        try:
            outcome["accepted"], outcome["replayed"] = _submit_all(gateway, tags, deadline)
        except Exception as error:
            outcome["error"] = error

    submitter = threading.Thread(target=submit, daemon=True)
    submitter.start()
    # The kills land while jobs are being accepted and run: at even fractions of the run,
    # measured by the executions PostgreSQL has seen.
    for kill in range(1, kills + 1):
        target = jobs * kill // (kills + 1)
        while sum(recorder.executions().values()) < target and submitter.is_alive():
            if time.monotonic() > deadline:
                raise RuntimeError("the drill ran out of time before a kill")
            time.sleep(0.05)
        gateway.kill_and_restart()
    submitter.join(max(0.0, deadline - time.monotonic()))
    if "error" in outcome:
        raise outcome["error"]
    accepted: dict[str, str] = outcome["accepted"]
    report.accepted = len(accepted)
    report.replayed_submissions = outcome["replayed"]
    job_ids = sorted(set(accepted.values()))
    report.distinct_jobs = len(job_ids)
    statuses: dict[str, dict[str, Any]] = {}
    waiting = list(job_ids)
    while waiting and time.monotonic() < deadline:
        statuses.update(_statuses(gateway.url, waiting))
        waiting = [
            job_id
            for job_id in job_ids
            if statuses.get(job_id, {}).get("status") not in ("succeeded", "failed", "dead")
        ]
        if waiting:
            time.sleep(0.2)
    tag_of = {job_id: tag for tag, job_id in accepted.items()}
    for job_id in job_ids:
        state = statuses.get(job_id, {}).get("status", "missing")
        report.states[state] = report.states.get(state, 0) + 1
        if state != "succeeded":
            report.lost += 1
            continue
        data = statuses[job_id]["result"]["outputs"][0]["data"]
        if data != [f"done:{tag_of[job_id]}"]:
            report.wrong_results += 1
            report.lost += 1
            continue
        report.succeeded += 1
    stored = _stored(queue, folder, redis_url, job_ids)
    report.duplicates_stored = sum(max(0, job.stores - 1) for job in stored.values())
    executions = recorder.executions()
    report.executions = sum(executions.values())
    known = set(job_ids)
    report.unknown_executions = sum(n for job_id, n in executions.items() if job_id not in known)
    report.re_executions = sum(n - 1 for job_id, n in executions.items() if job_id in known)
