"""Durable async jobs on real gateway processes.

The acceptance drill (short form: 1,000 jobs, two SIGKILLs, on SQLite and on Redis
Streams, every execution recorded in PostgreSQL) and the faults: a job whose model
is gone, a lease left by a dead worker, a duplicate key while the first request is
still arriving, a key reused with another body, another tenant's job.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from failsoft.control.tenants import key_digest
from failsoft.drills.jobs_drill import PG_URL, body, redis_server, run_drill
from failsoft.drills.server import ServerFailed, ServerProcess
from failsoft.jobs.queue import NewJob
from failsoft.jobs.sqlite_queue import SqliteQueue
from tests._raw_http import connect, read_response
from tests.integration.conftest import REPO
from tests.store.conftest import IN_CI

pytestmark = pytest.mark.integration

ACME_KEY = "fsk_" + "a" * 40
GLOBEX_KEY = "fsk_" + "g" * 40
ACME = {"Authorization": f"Bearer {ACME_KEY}"}
GLOBEX = {"Authorization": f"Bearer {GLOBEX_KEY}"}
ASYNC = {"Prefer": "respond-async", "Content-Type": "application/json"}


def acme(key: str) -> dict[str, str]:
    return {**ASYNC, **ACME, "Idempotency-Key": key}


def _require(ok: bool, reason: str) -> None:
    if not ok:
        if IN_CI:
            pytest.fail(f"{reason} (CI must run the durable jobs drill)")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def postgres() -> None:
    import psycopg

    try:
        psycopg.connect(PG_URL, connect_timeout=3).close()
    except psycopg.Error as error:
        _require(False, f"PostgreSQL is not reachable at {PG_URL}: {error}")


@pytest.mark.parametrize("queue", ["sqlite", "redis"])
def test_a_thousand_jobs_survive_two_sigkills(
    queue: str, tmp_path: Path, postgres: None, capsys: pytest.CaptureFixture[str]
) -> None:
    if queue == "redis":
        _require(shutil.which("redis-server") is not None, "redis-server is not installed")
    pythonpath = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    report = run_drill(queue, 1000, 2, tmp_path, pythonpath=pythonpath, finish_timeout_s=240)
    with capsys.disabled():
        print(f"\njobs drill ({queue}): {json.dumps(report.as_dict())}")
    assert report.accepted == 1000
    assert report.distinct_jobs == 1000  # a resubmission after a kill named the same job
    assert report.lost == 0
    assert report.succeeded == 1000
    assert report.duplicates_stored == 0
    assert report.unknown_executions == 0
    assert report.executions == 1000 + report.re_executions


def _config(tmp_path: Path, extra: str = "") -> str:
    return f"""
models:
  echo:
    inputs: [{{name: tag, datatype: BYTES, shape: [1]}}]
    outputs: [{{name: echo, datatype: BYTES, shape: [1]}}]
    versions:
      v1: {{backend: python, function: "failsoft.drills.jobs_model:echo", execution: inline}}
jobs:
  path: {tmp_path / "jobs.sqlite3"}
  lease_s: 0.5
{extra}"""


def _wait_finished(
    client: httpx.Client, url: str, *, reconnecting: bool = False, **kwargs: Any
) -> dict[str, Any]:
    """The job once finished; ``reconnecting``: 503s while the queue comes back are fine."""
    deadline = time.monotonic() + 30
    while True:
        found = client.get(url, **kwargs)
        if reconnecting and found.status_code == 503:
            assert time.monotonic() < deadline, "the queue did not come back"
            time.sleep(0.05)
            continue
        assert found.status_code == 200, found.text
        status: dict[str, Any] = found.json()
        if status["status"] in ("succeeded", "failed", "dead"):
            return status
        assert "retry-after" in found.headers
        assert time.monotonic() < deadline, f"job still {status['status']}"
        time.sleep(0.05)


def test_a_job_for_a_removed_model_fails_and_a_dead_workers_lease_is_reclaimed(
    tmp_path: Path, start_server: Callable[[str], ServerProcess]
) -> None:
    async def seed() -> tuple[str, str]:
        queue = SqliteQueue(
            tmp_path / "jobs.sqlite3", lease_s=0.5, max_attempts=5, keep_s=600, max_pending=100
        )
        await queue.open()
        made = []
        for model in ("gone", "echo"):  # queued under an earlier configuration
            job = NewJob(os.urandom(16).hex(), "", None, "f", model, None, body("x"), None, 1.0)
            await queue.submit(job)
            made.append(job.id)
        leases = await queue.lease("a-worker-that-dies", 2, 0)
        assert len(leases) == 2  # and it never finishes them
        await queue.close()
        return made[0], made[1]

    gone, orphan = asyncio.run(seed())
    server = start_server(_config(tmp_path))
    with httpx.Client(base_url=server.url, timeout=10) as client:
        failed = _wait_finished(client, f"/v2/jobs/{gone}")
        assert failed["status"] == "failed"
        assert failed["error"] == "model 'gone' no longer exists"
        assert "result" not in failed
        reclaimed = _wait_finished(client, f"/v2/jobs/{orphan}")
        assert reclaimed["status"] == "succeeded"
        assert reclaimed["attempts"] == 2
        assert reclaimed["result"]["outputs"][0]["data"] == ["done:x"]
        raw = client.get(f"/v2/jobs/{orphan}/result")
        assert raw.status_code == 200
        assert raw.json() == reclaimed["result"]
        missing = client.get(f"/v2/jobs/{gone}/result")
        assert missing.status_code == 404
        assert missing.json() == {"error": f"job '{gone}' has no result: it is failed"}
        metrics = client.get("/metrics").text
        assert 'failsoft_jobs_total{outcome="failed"} 1.0' in metrics
        assert 'failsoft_jobs_total{outcome="stored"} 1.0' in metrics


def test_idempotency_keys_over_http(
    tmp_path: Path, start_server: Callable[[str], ServerProcess]
) -> None:
    tenants = f"""tenants:
  acme: {{key_sha256: {key_digest(ACME_KEY)}}}
  globex: {{key_sha256: {key_digest(GLOBEX_KEY)}}}
server:
  require_keys: true
"""
    server = start_server(_config(tmp_path, tenants))
    infer = "/v2/models/echo/infer"
    with httpx.Client(base_url=server.url, timeout=10) as client:
        first = client.post(infer, content=body("a"), headers=acme("k"))
        assert first.status_code == 202, first.text
        assert first.headers["preference-applied"] == "respond-async"
        location = first.headers["location"]
        assert location == f"/v2/jobs/{first.json()['id']}"

        again = client.post(infer, content=body("a"), headers=acme("k"))
        assert again.status_code == 202
        assert again.headers["location"] == location
        assert again.headers["idempotent-replayed"] == "true"

        other = client.post(infer, content=body("b"), headers=acme("k"))
        assert other.status_code == 422
        assert "Idempotency-Key" in other.json()["error"]

        theirs = client.post(
            infer, content=body("a"), headers={**ASYNC, **GLOBEX, "Idempotency-Key": "k"}
        )
        assert theirs.status_code == 202  # the same key, another tenant: another job
        assert theirs.headers["location"] != location
        assert client.get(location, headers=GLOBEX).status_code == 404
        assert client.get(location).status_code == 401
        done = _wait_finished(client, location, headers=ACME)
        assert done["result"]["outputs"][0]["data"] == ["done:a"]

        bad = client.post(infer, content=body("a"), headers=acme(""))
        assert bad.status_code == 400
        assert "Idempotency-Key" in bad.json()["error"]
        sync = client.post(infer, content=body("s"), headers=ACME)
        assert sync.status_code == 200  # no Prefer: an ordinary synchronous answer
        assert sync.json()["outputs"][0]["data"] == ["done:s"]

    # A duplicate while the first request with the key is still arriving: 409.
    host, port = server.url.removeprefix("http://").split(":")
    payload = body("slow")
    head = (
        f"POST {infer} HTTP/1.1\r\nhost: t\r\nprefer: respond-async\r\n"
        f"authorization: Bearer {ACME_KEY}\r\nidempotency-key: slow\r\n"
        f"content-type: application/json\r\ncontent-length: {len(payload)}\r\n\r\n"
    ).encode()
    slow = connect((host, int(port)))
    slow.sendall(head + payload[:10])  # the rest of the body has not come yet
    with httpx.Client(base_url=server.url, timeout=10) as client:
        deadline = time.monotonic() + 10
        while True:  # until the gateway has begun accepting the slow request
            clash = client.post(infer, content=payload, headers=acme("slow"))
            if clash.status_code == 409:
                break
            assert clash.status_code != 202, "the duplicate was accepted before the first"
            assert time.monotonic() < deadline
        assert "still being accepted" in clash.json()["error"]
    slow.sendall(payload[10:])
    status, headers, _ = read_response(slow)
    slow.close()
    assert status == 202
    with httpx.Client(base_url=server.url, timeout=10) as client:
        after = client.post(infer, content=payload, headers=acme("slow"))
        assert after.status_code == 202
        assert after.headers["location"] == headers["location"]


def test_redis_stopped_and_started_again(
    tmp_path: Path, start_server: Callable[[str], ServerProcess]
) -> None:
    _require(shutil.which("redis-server") is not None, "redis-server is not installed")
    folder = tmp_path / "redis"
    infer = "/v2/models/echo/infer"
    with redis_server(folder) as url:
        config = _config(tmp_path).replace(
            f"  path: {tmp_path / 'jobs.sqlite3'}\n", f"  queue: redis\n  redis_url: {url}\n"
        )
        server = start_server(config)
        client = httpx.Client(base_url=server.url, timeout=10)
        before = client.post(infer, content=body("before"), headers=ASYNC)
        assert before.status_code == 202
        assert _wait_finished(client, before.headers["location"])["status"] == "succeeded"
    # Redis is down: a job cannot be accepted durably, so it is not accepted at all.
    down = client.post(infer, content=body("down"), headers=ASYNC)
    assert down.status_code == 503
    assert down.headers["retry-after"] == "2"
    assert down.json() == {"error": "the job queue is unavailable; try again shortly"}
    assert client.get(before.headers["location"]).status_code == 503
    assert client.post(infer, content=body("sync"), headers={}).status_code == 200
    with redis_server(folder):  # the same append-only file: what was accepted is still there
        kept = _wait_finished(client, before.headers["location"], reconnecting=True)
        assert kept["result"]["outputs"][0]["data"] == ["done:before"]
        after = client.post(infer, content=body("after"), headers=ASYNC)
        assert after.status_code == 202
        done = _wait_finished(client, after.headers["location"])
        assert done["result"]["outputs"][0]["data"] == ["done:after"]
    client.close()


def test_another_gateway_takes_over_the_jobs_of_a_killed_one(tmp_path: Path) -> None:
    _require(shutil.which("redis-server") is not None, "redis-server is not installed")
    env = {"PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    with redis_server(tmp_path / "redis") as url:
        gateways = []
        for name in ("a", "b"):
            folder = tmp_path / name
            folder.mkdir()
            config = _config(folder).replace(
                f"  path: {folder / 'jobs.sqlite3'}\n", f"  queue: redis\n  redis_url: {url}\n"
            )
            config = config.replace(
                'jobs_model:echo", execution: inline', 'jobs_model:slow_echo", execution: thread'
            )
            (folder / "failsoft.yaml").write_text(config)
            gateways.append(ServerProcess(folder / "failsoft.yaml", env=env).start(timeout=120))
        doomed, survivor = gateways
        try:
            with httpx.Client(base_url=doomed.url, timeout=10) as client:
                locations = []
                for index in range(24):
                    sent = client.post(
                        "/v2/models/echo/infer", content=body(f"t{index}"), headers=ASYNC
                    )
                    assert sent.status_code == 202
                    locations.append(sent.headers["location"])
                deadline = time.monotonic() + 30
                while "failsoft_jobs_running 0.0" in client.get("/metrics").text:
                    assert time.monotonic() < deadline, "the gateway never ran a job"
                    time.sleep(0.02)
            assert doomed.process is not None
            os.killpg(doomed.process.pid, signal.SIGKILL)  # mid-job
            doomed.process.wait()
            with httpx.Client(base_url=survivor.url, timeout=10) as client:
                finished = [_wait_finished(client, location) for location in locations]
        finally:
            for gateway in gateways:
                gateway.stop()
    assert [job["status"] for job in finished] == ["succeeded"] * 24
    assert [job["result"]["outputs"][0]["data"] for job in finished] == [
        [f"done:t{index}"] for index in range(24)
    ]
    assert any(job["attempts"] >= 2 for job in finished)  # taken over from the dead one


def test_a_redis_without_an_append_only_file_is_refused_at_start(tmp_path: Path) -> None:
    _require(shutil.which("redis-server") is not None, "redis-server is not installed")
    env = {"PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    with redis_server(tmp_path / "redis", aof=False) as url:
        config = _config(tmp_path).replace(
            f"  path: {tmp_path / 'jobs.sqlite3'}\n", f"  queue: redis\n  redis_url: {url}\n"
        )
        (tmp_path / "failsoft.yaml").write_text(config)
        server = ServerProcess(tmp_path / "failsoft.yaml", env=env)
        with pytest.raises(ServerFailed) as failed:
            server.start(timeout=60)
        server.stop()
    assert "appendonly off" in str(failed.value)
