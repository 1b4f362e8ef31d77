"""A Ray Serve replica actor killed under load: what a client sees through failsoft, and without.

Starts a real local Ray (``num_cpus=2``, every address on 127.0.0.1, usage
stats off) with Serve's HTTP proxy on an ephemeral port, and deploys the
demo's iris model (``iris-v1.onnx``, failsoft.backends.ray_app) as two Serve
applications, ``iris-a`` and ``iris-b``. Two runs, each an open-loop load of
RATE V2 infer requests/s for SECONDS, one iris row each, with the replica
actor of ``iris-a`` killed (``ray.kill``) after KILL_AT_S; Serve then starts
a new one:

- ``failsoft``: through a real failsoft gateway whose version ``v1`` is
  ``backend: ray`` with both applications as its two replicas;
- ``direct`` (the baseline): the same load, same HTTP client, straight to
  ``iris-a`` through the Serve proxy, the application whose replica dies:
  what a client without failsoft sees.

An answer is correct when its status is 200 and its label is what
onnxruntime gives for that row with the same model file. Each run prints
answers, correct %, failed (by status), and p50/p99 latency (from the
scheduled send, so a stall shows) before the kill, during (from the kill to
when ``iris-a`` answers again on a new replica) and after. Exit 0 when the
failsoft run answered 100% correctly, 1 otherwise.

    PYTHONPATH=src:. python3 benchmarks/ray_failover.py              # 30 s at 20/s, ~3 min
    PYTHONPATH=src:. python3 benchmarks/ray_failover.py --seconds 10 --rate 100
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script

from failsoft.drills.load import send_on_schedule
from failsoft.drills.server import ServerFailed, ServerProcess

HOST = "127.0.0.1"
APPS = ("iris-a", "iris-b")
MODEL = "iris"
RATE = 20.0  # a third of what Ray's one proxy takes on 2 shared cores (see README)
SECONDS = 30.0
KILL_AT_S = 10.0
WARMUP_S = 2.0
CLIENT_TIMEOUT_S = 30.0  # the baseline's stall shows as latency, not as a client timeout
INPUTS = "[{name: features, datatype: FP32, shape: [-1, 4]}]"
OUTPUTS = (
    "[{name: label, datatype: INT64, shape: [-1], labels: [0, 1, 2]}, "
    "{name: probabilities, datatype: FP32, shape: [-1, 3], range: [0, 1]}]"
)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


class RayServe:
    """A local Ray with Serve's HTTP proxy on 127.0.0.1, serving one model as several apps."""

    def __init__(self, model_file: Path, apps: Sequence[str] = APPS, num_cpus: int = 2) -> None:
        os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # no reports leave the machine
        # Ray runs its workers at nice 15; on 2 shared cores the gateway and the
        # load generator would starve the proxy and the replicas. Same priority.
        os.environ["RAY_worker_niceness"] = "0"  # noqa: SIM112 (Ray reads this spelling)
        import ray
        from ray import serve
        from ray.serve import RunTarget

        from failsoft.backends.ray_app import application
        from failsoft.config import ModelConfig

        self.port = _free_port()
        ray.init(
            address="local",
            num_cpus=num_cpus,
            include_dashboard=False,
            log_to_driver=False,
            _node_ip_address=HOST,
        )
        try:
            serve.start(http_options={"host": HOST, "port": self.port})
            config = ModelConfig.model_validate(
                {
                    "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}],
                    "outputs": [
                        {"name": "label", "datatype": "INT64", "shape": [-1]},
                        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]},
                    ],
                    "versions": {"v1": {"backend": "onnx", "path": str(model_file)}},
                }
            )
            cpus = num_cpus / (len(apps) + 1)  # room for a replacement while the old one dies
            serve.run_many(
                [
                    RunTarget(
                        application(MODEL, "v1", config, cpus), name=app, route_prefix=f"/{app}"
                    )
                    for app in apps
                ]
            )
        except BaseException:
            ray.shutdown()
            raise
        self.address = f"http://{HOST}:{self.port}"

    def infer_url(self, app: str) -> str:
        return f"{self.address}/{app}/v2/models/{MODEL}/infer"

    def replica_actor(self, app: str) -> str | None:
        """The name of ``app``'s (one) live replica actor, if any."""
        import ray

        for actor in ray.util.list_named_actors(all_namespaces=True):
            if actor["name"].startswith(f"SERVE_REPLICA::{app}#"):
                return str(actor["name"])
        return None

    def killer(self, app: str) -> tuple[str, Callable[[], None]]:
        """``app``'s replica actor's name, and what kills it (Serve will start another).

        The actor is looked up now, so the kill itself is one quick call.
        """
        import ray

        name = self.replica_actor(app)
        if name is None:
            raise RuntimeError(f"application {app} has no replica actor to kill")
        actor = ray.get_actor(name, namespace="serve")
        return name, lambda: ray.kill(actor, no_restart=True)

    def shutdown(self) -> None:
        import ray
        from ray import serve

        try:
            serve.shutdown()
        finally:
            ray.shutdown()


@dataclass(frozen=True)
class Load:
    """Open-loop load: ``rate``/s for ``seconds`` over ``rows``, the kill at ``kill_at``."""

    rows: np.ndarray
    labels: np.ndarray  # the model's own label for each row: the correct answer
    rate: float
    seconds: float
    kill_at: float


def iris_rows(model_file: Path) -> tuple[np.ndarray, np.ndarray]:
    """The iris data set's rows and the model's own labels for them (onnxruntime)."""
    import onnxruntime as ort
    from sklearn.datasets import load_iris

    rows = load_iris().data.astype(np.float32)
    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    labels = session.run(["label"], {"features": rows})[0]
    return rows, np.asarray(labels, dtype=np.int64)


def gateway_yaml(address: str, apps: Sequence[str] = APPS, per_try_timeout_ms: int = 1000) -> str:
    applications = ", ".join(apps)
    return f"""
models:
  {MODEL}:
    inputs: {INPUTS}
    outputs: {OUTPUTS}
    timeout_ms: 5000
    # Serve holds requests for an app whose replica died until a new one is up:
    # an attempt stuck there is cut short and retried on the other app.
    per_try_timeout_ms: {per_try_timeout_ms}
    # Ray Serve queues and refuses (503) by itself. On two shared cores its latency
    # is noisy enough that the adaptive limiter's min-RTT probes (the limit down
    # to min_limit) shed requests here that have nothing to do with the kill.
    limiter: {{enabled: false}}
    versions:
      v1: {{backend: ray, address: "{address}", applications: [{applications}]}}
"""


@contextmanager
def gateway(address: str, folder: Path) -> Iterator[ServerProcess]:
    path = folder / "failsoft.yaml"
    path.write_text(gateway_yaml(address))
    repo = Path(__file__).resolve().parents[1]
    env = {"PYTHONPATH": os.pathsep.join([str(repo / "src"), os.environ.get("PYTHONPATH", "")])}
    server = ServerProcess(path, "--data-dir", str(folder / "data"), env=env).start()
    try:
        yield server
    finally:
        server.stop()


def warnings_of(server: ServerProcess) -> Counter[str]:
    """How often the gateway logged each warning (its last MAX_KEPT_LINES lines)."""
    with contextlib.suppress(ServerFailed):  # reads what is queued, until 0.2 s of quiet
        server.wait_for(lambda line: False, timeout=0.2)
    return Counter(str(line.get("msg")) for line in server.logs if line.get("level") == "warning")


@dataclass
class Record:
    sent: float  # scheduled send, seconds since the start of the run
    latency: float
    status: int  # 0: no HTTP answer (connection error or client timeout)
    correct: bool


def _body(row: np.ndarray) -> bytes:
    tensor = {"name": "features", "datatype": "FP32", "shape": [1, 4], "data": row.tolist()}
    return orjson.dumps({"inputs": [tensor]})


async def _post(
    session: aiohttp.ClientSession, url: str, body: bytes, label: int
) -> tuple[int, bool]:
    try:
        async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
            payload = await r.read()
            if r.status != 200:
                return r.status, False
    except (TimeoutError, aiohttp.ClientError):
        return 0, False
    try:
        outputs = {o["name"]: o["data"] for o in orjson.loads(payload)["outputs"]}
        return 200, outputs["label"] == [label]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return 200, False


async def drive(url: str, load: Load, kill: Callable[[], Any]) -> tuple[list[Record], float]:
    """``load`` sent to ``url``; ``kill()`` runs (in a thread) at ``load.kill_at``.

    Returns the records, in send order, and when the kill returned (seconds since the start).
    """
    rows, labels = load.rows, load.labels
    count = int(load.rate * load.seconds)
    offsets = [i / load.rate for i in range(count)]
    records: list[Record | None] = [None] * count
    lags = np.zeros(count)
    clock = time.perf_counter
    timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_S)
    connector = aiohttp.TCPConnector(limit=512)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        start = clock() + 0.05

        async def one(index: int, origin: float) -> None:
            row = index % len(rows)
            status, correct = await _post(session, url, _body(rows[row]), int(labels[row]))
            records[index] = Record(origin - start, clock() - origin, status, correct)

        async def killer() -> float:
            await asyncio.sleep(max(0.0, start + load.kill_at - clock()))
            await asyncio.to_thread(kill)
            return clock() - start

        kill_task = asyncio.create_task(killer())
        await send_on_schedule(offsets, start, clock, lags, one, CLIENT_TIMEOUT_S + 5)
        killed_at = await kill_task
    done = [r for r in records if r is not None]
    return done, killed_at


def wait_for_new_replica(serve: RayServe, app: str, victim: str, stop: threading.Event) -> bool:
    """True once ``app`` answers a request on a replica other than ``victim``; False on ``stop``."""
    import urllib.request

    body = _body(np.array([5.1, 3.5, 1.4, 0.2], dtype=np.float32))
    while not stop.is_set():
        name = serve.replica_actor(app)
        if name is not None and name != victim:
            request = urllib.request.Request(
                serve.infer_url(app), body, {"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(request, timeout=1.0) as answer:
                    if answer.status == 200:
                        return True
            except OSError:
                pass
        stop.wait(0.05)
    return False


@dataclass
class Phase:
    name: str
    answers: int
    correct: int
    failed: dict[int, int]
    p50_ms: float
    p99_ms: float

    def line(self) -> str:
        share = 100.0 * self.correct / self.answers if self.answers else float("nan")
        failed = sum(self.failed.values())
        kinds = ", ".join(
            f"{status or 'no answer'}: {n}" for status, n in sorted(self.failed.items())
        )
        return (
            f"  {self.name:<7} {self.answers:6d} answers  {share:7.3f}% correct  "
            f"{failed:5d} failed{f' ({kinds})' if kinds else ''}  "
            f"p50 {self.p50_ms:8.1f} ms  p99 {self.p99_ms:8.1f} ms"
        )


def phase(name: str, records: Sequence[Record]) -> Phase:
    failed: dict[int, int] = {}
    for record in records:
        if not record.correct:
            failed[record.status] = failed.get(record.status, 0) + 1
    latencies = np.array([r.latency for r in records]) * 1000 if records else np.zeros(1)
    return Phase(
        name,
        len(records),
        sum(r.correct for r in records),
        failed,
        float(np.percentile(latencies, 50)),
        float(np.percentile(latencies, 99)),
    )


def phases(records: Sequence[Record], killed_at: float, recovered_at: float) -> list[Phase]:
    return [
        phase("all", records),
        phase("before", [r for r in records if r.sent < killed_at]),
        phase("during", [r for r in records if killed_at <= r.sent < recovered_at]),
        phase("after", [r for r in records if r.sent >= recovered_at]),
    ]


@dataclass
class Measured:
    records: list[Record]
    victim: str  # the replica actor killed
    killed_at: float  # seconds since the start of the load
    back_at: float  # when iris-a answered again on a new replica (inf: not by the end)

    def phases(self) -> list[Phase]:
        return phases(self.records, self.killed_at, self.back_at)


def measure(serve: RayServe, url: str, load: Load, wait_for_recovery_s: float = 0.0) -> Measured:
    """``load`` at ``url``, iris-a's replica killed at ``load.kill_at``, after a warm-up.

    Waits up to ``wait_for_recovery_s`` after the load for iris-a to answer again.
    """
    # Unmeasured: connections opened, the gateway's balancer has learnt the latency.
    asyncio.run(drive(url, replace(load, seconds=WARMUP_S, kill_at=0.0), lambda: None))
    victim, kill = serve.killer(APPS[0])
    back: list[float] = []
    stop = threading.Event()

    def watch(killed: float) -> None:  # off the load's loop: it polls Ray and the proxy
        if wait_for_new_replica(serve, APPS[0], victim, stop):
            back.append(time.perf_counter() - killed)

    watchers: list[threading.Thread] = []

    def kill_and_watch() -> None:
        kill()
        watchers.append(threading.Thread(target=watch, args=(time.perf_counter(),), daemon=True))
        watchers[0].start()

    try:
        records, killed_at = asyncio.run(drive(url, load, kill_and_watch))
        deadline = time.monotonic() + wait_for_recovery_s
        while not back and watchers[0].is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:  # never left polling a Ray that is shut down next
        stop.set()
        for watcher in watchers:
            watcher.join(timeout=5.0)
    return Measured(records, victim, killed_at, killed_at + (back[0] if back else float("inf")))


def report(title: str, measured: Measured) -> list[Phase]:
    print(title)
    print(
        f"  killed {measured.victim} at {measured.killed_at:.2f} s; "
        f"iris-a answered again at {measured.back_at:.2f} s"
    )
    shown = measured.phases()
    for line in shown:
        print(line.line())
    return shown


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=RATE, help="requests/s (default 20)")
    parser.add_argument("--seconds", type=float, default=SECONDS, help="per run (default 30)")
    parser.add_argument("--kill-at", type=float, default=KILL_AT_S, help="seconds (default 10)")
    args = parser.parse_args(argv)

    from failsoft.demo import prepare_demo

    with tempfile.TemporaryDirectory(prefix="failsoft-ray-") as folder:
        work = Path(folder)
        prepare_demo(work / "demo", progress=lambda message: None)
        model_file = work / "demo" / "iris-v1.onnx"
        rows, labels = iris_rows(model_file)
        started = time.perf_counter()
        serve = RayServe(model_file)
        print(f"Ray and Serve up with {', '.join(APPS)} in {time.perf_counter() - started:.1f} s")
        results: dict[str, list[Phase]] = {}
        try:
            load = Load(rows, labels, args.rate, args.seconds, args.kill_at)
            with gateway(serve.address, work) as server:
                url = f"{server.url}/v2/models/{MODEL}/infer"
                measured = measure(serve, url, load, 90.0)
                warnings = warnings_of(server)
            shown = f"{args.rate:g}/s for {args.seconds:g} s, kill at {args.kill_at:g} s"
            results["failsoft"] = report(f"failsoft ({shown}):", measured)
            print(f"  the gateway's warnings: {dict(warnings.most_common(8))}")
            measured = measure(serve, serve.infer_url(APPS[0]), load, 90.0)
            results["direct"] = report("direct to iris-a, no failsoft (the baseline):", measured)
        finally:
            serve.shutdown()
    total = results["failsoft"][0]
    ok = total.answers > 0 and total.correct == total.answers
    print(f"failsoft: {'PASS' if ok else 'FAIL'} (target: 100% correct answers)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
