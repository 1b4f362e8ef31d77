"""The process backend: real worker processes, killed for real, replaced for real."""

from __future__ import annotations

import os
import signal
import socket
import stat
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import orjson
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


def socket_path(worker: dict[str, object]) -> Path:
    url = worker["base_url"]
    assert isinstance(url, str)
    assert url.startswith("unix:/")
    return Path(url.removeprefix("unix:"))


def listeners_held(pid: int) -> set[str]:
    """Every listening socket among a process's descriptors: a unix path, or tcp:<inode>."""
    held = {
        os.readlink(f"/proc/{pid}/fd/{fd}").removeprefix("socket:[").removesuffix("]")
        for fd in os.listdir(f"/proc/{pid}/fd")
    }
    listening: set[str] = set()
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()  # Num RefCount Protocol Flags Type St Inode [Path]
        if int(fields[3], 16) & 0x10000 and fields[6] in held:  # __SO_ACCEPTCON: listening
            listening.add(fields[7] if len(fields) > 7 else f"unix:{fields[6]}")
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()  # sl local rem st ... inode at index 9
            if fields[3] == "0A" and fields[9] in held:  # TCP_LISTEN
                listening.add(f"tcp:{fields[9]}")
    return listening


def wait_until_dead(pid: int, timeout: float = 10.0) -> None:
    """Until the process is reaped (its supervisor waits for it).

    A zombie is not enough: the state in /proc/<pid>/stat is the main thread's,
    which can be a zombie while other threads still exit with the descriptors open.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists():
            return
        time.sleep(0.01)


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
        assert isinstance(worker["pid"], int)
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
        directories = [socket_path(w).parent for w in workers(http)]
    assert server.stop() == 0
    assert not any(directory.exists() for directory in directories)
    for pid in pids:
        assert isinstance(pid, int)
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_request_within_the_gateways_body_limit_reaches_the_worker(
    start_server: Callable[[str], ServerProcess], demo_dir: Path
) -> None:
    config = "server: {max_body_bytes: 16777216}\n" + process_config(demo_dir, replicas=1)
    config = config.replace(
        "versions:", "max_batch_size: 1000000\n    timeout_ms: 30000\n    versions:"
    )
    rows = 10 * 1024 * 1024 // 16  # 10 MiB of FP32 rows, over a worker's default 8 MiB
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "features",
                    "datatype": "FP32",
                    "shape": [rows, 4],
                    "parameters": {"binary_data_size": rows * 16},
                }
            ],
            "outputs": [{"name": "label", "parameters": {"binary_data": True}}],
        }
    )
    data = np.tile(np.array([6.7, 3.0, 5.2, 2.3], dtype=np.float32), (rows, 1)).tobytes()
    server = start_server(config)
    with httpx.Client(base_url=server.url, timeout=60) as http:
        answer = http.post(
            "/v2/models/iris/infer",
            content=header + data,
            headers={"Inference-Header-Content-Length": str(len(header))},
        )
        assert answer.status_code == 200, answer.text[:300]
        length = int(answer.headers["inference-header-content-length"])
        labels = np.frombuffer(answer.content[length:], dtype=np.int64)
        assert len(labels) == rows
        assert (labels == 2).all()
        assert all(w["restarts"] == 0 and w["available"] for w in workers(http))


def test_workers_listen_privately_and_get_no_secrets(
    start_server: Callable[[str], ServerProcess], demo_dir: Path
) -> None:
    server = start_server(process_config(demo_dir))
    with httpx.Client(base_url=server.url, timeout=10) as http:
        both = workers(http)
    paths = [socket_path(w) for w in both]
    assert paths[0].parent != paths[1].parent
    for worker, path in zip(both, paths, strict=True):
        assert isinstance(worker["pid"], int)
        assert stat.S_ISSOCK(path.stat().st_mode)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        # Spawned together, yet neither inherited the other's listener (nor the gateway's).
        assert listeners_held(worker["pid"]) == {str(path)}
        environ = Path(f"/proc/{worker['pid']}/environ").read_bytes().split(b"\0")
        names = {entry.partition(b"=")[0] for entry in environ}
        assert b"FAILSOFT_ADMIN_TOKEN" not in names
        assert {b"PATH", b"PYTHONPATH", b"FAILSOFT_REPLICA"} <= names
    gateway = server.process
    assert gateway is not None
    gateway_env = Path(f"/proc/{gateway.pid}/environ").read_bytes()
    assert b"FAILSOFT_ADMIN_TOKEN=" in gateway_env  # so the worker's lack of it is a choice


def test_a_killed_workers_address_refuses_at_once(
    start_server: Callable[[str], ServerProcess], demo_dir: Path
) -> None:
    server = start_server(process_config(demo_dir))
    with httpx.Client(base_url=server.url, timeout=10) as http:
        victim, sibling = workers(http)
        assert isinstance(victim["pid"], int)
        os.kill(victim["pid"], signal.SIGKILL)
        wait_until_dead(victim["pid"])
        started = time.monotonic()
        with socket.socket(socket.AF_UNIX) as probe:
            probe.settimeout(5)
            with pytest.raises((ConnectionRefusedError, FileNotFoundError)):
                probe.connect(str(socket_path(victim)))
        assert time.monotonic() - started < 1.0
        assert workers(http)[1]["pid"] == sibling["pid"]
        assert http.post("/v2/models/iris/infer", json=ROW).status_code == 200
