"""Async job throughput (jobs/s) against synchronous infer on the same model and gateway.

One `failsoft serve` runs the echo model (`failsoft.drills.jobs_model:echo`,
in-process, sub-millisecond) with the SQLite queue (fsync on every commit, the
default) or the Redis Streams queue (a redis-server with an append-only file
that this benchmark starts). The same client threads then

1. synchronous: send N inference requests, each waiting for its answer
   (keep-alive connections): requests/s;
2. async: submit N jobs (`Prefer: respond-async`, an Idempotency-Key each;
   the gateway's workers run them meanwhile), then read every job's result
   (polling a job that is not done yet every 50 ms): jobs/s from the first
   submission to the last result read, and the submission rate alone.

The figure is async jobs/s as a ratio of synchronous requests/s: what
durability (a queue write per job, a result write, a lease) costs per request
when the model itself is nearly free. A heavier model makes the ratio tend to 1.

    python benchmarks/async_jobs.py                      # 3,000 each, both queues
    python benchmarks/async_jobs.py --jobs 500 --queue sqlite --json
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _load import REPO, src_env

if str(REPO / "src") not in sys.path:
    sys.path.insert(1, str(REPO / "src"))
from failsoft.drills.jobs_drill import body, redis_server
from failsoft.drills.server import ServerProcess

POLL_S = 0.05
INFER = "/v2/models/echo/infer"


def config(folder: Path, queue: str, redis_url: str) -> str:
    jobs = (
        f"  queue: redis\n  redis_url: {redis_url}\n"
        if queue == "redis"
        else f"  queue: sqlite\n  path: {folder / 'jobs.sqlite3'}\n"
    )
    return f"""\
store:
  data_dir: {folder / "store"}
models:
  echo:
    inputs: [{{name: tag, datatype: BYTES, shape: [1]}}]
    outputs: [{{name: echo, datatype: BYTES, shape: [1]}}]
    versions:
      v1: {{backend: python, function: "failsoft.drills.jobs_model:echo", execution: inline}}
jobs:
{jobs}  concurrency: 32
"""


def _connection(url: str) -> http.client.HTTPConnection:
    host, port = url.removeprefix("http://").split(":")
    return http.client.HTTPConnection(host, int(port), timeout=30)


Work = Callable[[http.client.HTTPConnection, int], None]


def _in_threads(count: int, clients: int, work: Work, url: str) -> None:
    lock = threading.Lock()
    indices = iter(range(count))
    errors: list[BaseException] = []

    def client() -> None:
        connection = _connection(url)
        try:
            while True:
                with lock:
                    index = next(indices, None)
                if index is None:
                    return
                work(connection, index)
        except BaseException as error:
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def synchronous(url: str, count: int, clients: int) -> float:
    def infer(connection: http.client.HTTPConnection, index: int) -> None:
        connection.request("POST", INFER, body(f"s{index}"), {"content-type": "application/json"})
        response = connection.getresponse()
        answer = response.read()
        ok = response.status == 200 and json.loads(answer)["outputs"][0]["data"] == [
            f"done:s{index}"
        ]
        if not ok:
            raise RuntimeError(f"request {index}: HTTP {response.status} {answer[:200]!r}")

    started = time.perf_counter()
    _in_threads(count, clients, infer, url)
    return count / (time.perf_counter() - started)


def asynchronous(url: str, count: int, clients: int) -> tuple[float, float]:
    """Jobs/s from first submission to last result read, and submissions/s."""
    ids: list[str | None] = [None] * count
    run = f"{time.time_ns():x}"

    def submit(connection: http.client.HTTPConnection, index: int) -> None:
        headers = {
            "content-type": "application/json",
            "prefer": "respond-async",
            "idempotency-key": f"{run}-{index}",
        }
        connection.request("POST", INFER, body(f"a{index}"), headers)
        response = connection.getresponse()
        answer = response.read()
        if response.status != 202:
            raise RuntimeError(f"job {index}: HTTP {response.status} {answer[:200]!r}")
        ids[index] = json.loads(answer)["id"]

    def fetch(connection: http.client.HTTPConnection, index: int) -> None:
        deadline = time.monotonic() + 600
        while True:
            connection.request("GET", f"/v2/jobs/{ids[index]}")
            response = connection.getresponse()
            status = json.loads(response.read())
            if status["status"] == "succeeded":
                if status["result"]["outputs"][0]["data"] != [f"done:a{index}"]:
                    raise RuntimeError(f"job {index}: wrong result")
                return
            if status["status"] in ("failed", "dead"):
                raise RuntimeError(f"job {index}: {status['status']} {status.get('error')}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {index} did not finish in time")
            time.sleep(POLL_S)

    started = time.perf_counter()
    _in_threads(count, clients, submit, url)
    submit_s = time.perf_counter() - started
    _in_threads(count, clients, fetch, url)
    return count / (time.perf_counter() - started), count / submit_s


def measure(queue: str, count: int, clients: int) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fs-async-jobs-")))
        redis_url = ""
        if queue == "redis":
            redis_url = stack.enter_context(redis_server(folder / "redis"))
        path = folder / "failsoft.yaml"
        path.write_text(config(folder, queue, redis_url))
        server = ServerProcess(path, env=src_env()).start(timeout=120)
        stack.callback(server.stop)
        synchronous(server.url, min(200, count), clients)  # warm-up
        sync_rate = synchronous(server.url, count, clients)
        jobs_rate, submit_rate = asynchronous(server.url, count, clients)
    return {
        "queue": queue,
        "requests": count,
        "clients": clients,
        "sync_per_s": round(sync_rate, 1),
        "async_jobs_per_s": round(jobs_rate, 1),
        "async_submissions_per_s": round(submit_rate, 1),
        "ratio_async_to_sync": round(jobs_rate / sync_rate, 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=3000, help="requests and jobs per run")
    parser.add_argument("--clients", type=int, default=8, help="client threads (connections)")
    parser.add_argument("--queue", choices=["sqlite", "redis", "both"], default="both")
    parser.add_argument("--json", action="store_true", help="one JSON object per queue")
    args = parser.parse_args()
    queues = ["sqlite", "redis"] if args.queue == "both" else [args.queue]
    for queue in queues:
        figures = measure(queue, args.jobs, args.clients)
        if args.json:
            print(json.dumps(figures))
            continue
        print(
            f"{queue:>6}: synchronous {figures['sync_per_s']:>8.1f} req/s | async "
            f"{figures['async_jobs_per_s']:>8.1f} jobs/s (submissions "
            f"{figures['async_submissions_per_s']:.1f}/s) | ratio async/sync "
            f"{figures['ratio_async_to_sync']:.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
