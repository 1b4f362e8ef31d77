"""Faults through the real admin API and the `failsoft fault` command, on a real gateway."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from failsoft.drills.server import ServerProcess
from tests.integration.conftest import ADMIN_TOKEN
from tests.integration.test_process_backend import ROW, process_config, workers

pytestmark = pytest.mark.integration

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def chaos_config(demo_dir: Path, enabled: bool = True) -> str:
    return process_config(demo_dir) + f"chaos: {{enabled: {str(enabled).lower()}}}\n"


def fault_cli(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "failsoft", "fault", *args, "--url", server.url],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "FAILSOFT_ADMIN_TOKEN": ADMIN_TOKEN},
        check=False,
    )


def test_faults_need_the_admin_token_and_enabled_chaos(
    start_server: Callable[[str], ServerProcess], demo_dir: Path
) -> None:
    server = start_server(chaos_config(demo_dir, enabled=False))
    spec = {"kind": "error", "model": "iris", "duration_s": 5}
    with httpx.Client(base_url=server.url, timeout=10) as http:
        assert http.post("/admin/faults", json=spec).status_code == 401
        refused = http.post("/admin/faults", json=spec, headers=AUTH)
        assert refused.status_code == 409
        assert "chaos is disabled" in refused.json()["error"]
        listed = http.get("/admin/faults", headers=AUTH).json()
        assert listed == {"enabled": False, "faults": []}


def test_an_error_fault_is_injected_listed_and_cleared(
    start_server: Callable[[str], ServerProcess], demo_dir: Path
) -> None:
    server = start_server(chaos_config(demo_dir))
    with httpx.Client(base_url=server.url, timeout=10) as http:
        bad = http.post(
            "/admin/faults",
            json={"kind": "error", "model": "iris", "duration_s": 9999},
            headers=AUTH,
        )
        assert bad.status_code == 400
        assert "over the cap of 300 s" in bad.json()["error"]
        added = fault_cli(server, "add", "error", "iris", "--status", "503", "--for", "60")
        assert added.returncode == 0, added.stderr
        assert "fault f1 added: error on iris" in added.stdout
        # Every v1 worker fails and the model has no fallback: the injected 503 shows.
        answer = http.post("/v2/models/iris/infer", json=ROW)
        assert answer.status_code == 502
        # The client learns what failed and the request id; the detail stays in the log.
        request_id = answer.headers["x-request-id"]
        assert answer.json()["error"] == (
            f"a replica failed on this request (request id {request_id})"
        )
        listed = fault_cli(server, "list")
        assert "f1" in listed.stdout
        assert "injected=" in listed.stdout
        assert fault_cli(server, "clear").returncode == 0
        assert http.get("/admin/faults", headers=AUTH).json()["faults"] == []
        assert http.post("/v2/models/iris/infer", json=ROW).status_code == 200
        events = http.get("/admin/events", headers=AUTH).json()["events"]
        assert [e["type"] for e in events if e["type"].startswith("Fault")] == [
            "FaultAdded",
            "FaultEnded",
        ]
    logged = server.wait_for(lambda line: line.get("msg") == "FaultAdded", timeout=5)
    assert logged["kind"] == "error"
    assert logged["level"] == "warning"


def test_a_kill_fault_sigkills_the_worker_for_real(
    start_server: Callable[[str], ServerProcess], demo_dir: Path
) -> None:
    server = start_server(chaos_config(demo_dir))
    with httpx.Client(base_url=server.url, timeout=10) as http:
        victim = workers(http)[0]
        added = http.post(
            "/admin/faults",
            json={"kind": "kill", "model": "iris", "replica": "w0", "duration_s": 30},
            headers=AUTH,
        )
        assert added.status_code == 201, added.text
        # The first request sent to w0 meets the crash and is retried on w1; none
        # reaches w0 again before its replacement is up.
        for _ in range(40):
            answer = http.post("/v2/models/iris/infer", json=ROW)
            assert answer.status_code == 200
            assert answer.json()["outputs"][0]["data"] == [2]
        killed = server.wait_for(lambda line: line.get("msg") == "worker restarted", timeout=20)
        assert killed["old_pid"] == victim["pid"]
        assert killed["exit_code"] == -9
        refused = http.post(
            "/admin/faults",
            json={"kind": "kill", "model": "iris", "version": "nope", "duration_s": 5},
            headers=AUTH,
        )
        assert refused.status_code == 400
        assert "no replica matches model 'iris', version 'nope'" in refused.json()["error"]
