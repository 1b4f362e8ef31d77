"""The process backend: real worker processes, killed for real, replaced for real."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from failsoft.drills.server import ServerProcess
from tests.integration.conftest import ADMIN_TOKEN

pytestmark = pytest.mark.integration

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
ROW = {
    "inputs": [
        {"name": "features", "datatype": "FP32", "shape": [1, 4], "data": [6.7, 3.0, 5.2, 2.3]}
    ]
}


def process_config(demo_dir: Path, replicas: int = 2) -> str:
    return f"""
models:
  iris:
    inputs:  [{{name: features, datatype: FP32, shape: [-1, 4]}}]
    outputs: [{{name: label, datatype: INT64, shape: [-1]}}]
    versions:
      v1:
        backend: process
        replicas: {replicas}
        restart_backoff_s: 0.05
        worker: {{backend: onnx, path: {demo_dir}/iris-v1.onnx}}
"""


def workers(http: httpx.Client) -> list[dict[str, object]]:
    status = http.get("/admin/status", headers=AUTH).json()
    replicas: list[dict[str, object]] = status["models"]["iris"]["versions"]["v1"]["replicas"]
    return replicas


def test_a_killed_worker_is_replaced(
    start_server: Callable[[str], ServerProcess], demo_dir: Path
) -> None:
    server = start_server(process_config(demo_dir))
    with httpx.Client(base_url=server.url, timeout=10) as http:
        before = workers(http)
        assert [w["available"] for w in before] == [True, True]
        victim = before[0]
        assert isinstance(victim["pid"], int)
        served = {
            http.post("/v2/models/iris/infer", json=ROW).headers["failsoft-served-by"]
            for _ in range(4)
        }
        assert served <= {"iris/v1/w0", "iris/v1/w1"}

        os.kill(victim["pid"], signal.SIGKILL)
        restarted = server.wait_for(lambda line: line.get("msg") == "worker restarted", timeout=20)
        assert restarted["replica"] == "w0"
        assert restarted["old_pid"] == victim["pid"]
        assert restarted["exit_code"] == -signal.SIGKILL

        after = workers(http)
        assert after[0]["pid"] == restarted["pid"] != victim["pid"]
        assert after[0]["restarts"] == 1
        assert after[1]["pid"] == before[1]["pid"]
        assert all(w["available"] for w in after)
        for _ in range(4):
            answer = http.post("/v2/models/iris/infer", json=ROW)
            assert answer.status_code == 200
            assert answer.json()["outputs"][0]["data"] == [2]
        metrics = http.get("/metrics").text
        restarts = 'failsoft_worker_restarts_total{model="iris",reason="exited",replica="w0"'
        assert restarts + ',version="v1"} 1.0' in metrics


def test_a_hung_worker_is_killed_and_replaced(
    start_server: Callable[[str], ServerProcess], demo_dir: Path
) -> None:
    config = process_config(demo_dir, replicas=1).replace(
        "restart_backoff_s: 0.05",
        "restart_backoff_s: 0.05\n        probe_interval_s: 0.2\n"
        "        probe_timeout_s: 0.2\n        probe_failures: 2",
    )
    server = start_server(config)
    with httpx.Client(base_url=server.url, timeout=10) as http:
        (worker,) = workers(http)
        os.kill(worker["pid"], signal.SIGSTOP)  # alive, but answers nothing: a hang
        killed = server.wait_for(
            lambda line: line.get("msg") == "worker not answering, killing it", timeout=20
        )
        assert killed["pid"] == worker["pid"]
        server.wait_for(lambda line: line.get("msg") == "worker restarted", timeout=20)
        assert http.post("/v2/models/iris/infer", json=ROW).status_code == 200


def test_sigterm_stops_workers(
    start_server: Callable[[str], ServerProcess], demo_dir: Path
) -> None:
    server = start_server(process_config(demo_dir))
    with httpx.Client(base_url=server.url, timeout=10) as http:
        pids = [w["pid"] for w in workers(http)]
    assert server.stop() == 0
    for pid in pids:
        assert isinstance(pid, int)
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
