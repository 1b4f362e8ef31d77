"""The dependency map on a real gateway: two iris versions as process workers, v2 falling back
to v1 then a static answer. A worker SIGKILLed for real shows in the map, then its replacement;
`failsoft map` prints the tree."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from failsoft.drills.server import ServerProcess
from tests.integration.conftest import ADMIN_TOKEN

pytestmark = pytest.mark.integration

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
DEADLINE_S = 30.0


def two_versions(demo_dir: Path) -> str:
    worker = f"{{backend: onnx, path: {demo_dir}/iris-v1.onnx}}"
    return f"""
models:
  iris:
    inputs:  [{{name: features, datatype: FP32, shape: [-1, 4]}}]
    outputs: [{{name: label, datatype: INT64, shape: [-1]}}]
    default_version: v2
    fallback:
      - version: v1
      - static: {{label: [0]}}
    versions:
      v1: {{backend: process, replicas: 2, restart_backoff_s: 0.05, worker: {worker}}}
      v2: {{backend: process, replicas: 1, restart_backoff_s: 1.0, worker: {worker}}}
"""


def node(tree: dict[str, Any], *path: str) -> dict[str, Any]:
    for name in path:
        tree = next(child for child in tree["children"] if child["name"] == name)
    return tree


def iris(http: httpx.Client) -> dict[str, Any]:
    answer = http.get("/admin/map", headers=AUTH)
    assert answer.status_code == 200, answer.text
    (model,) = answer.json()["models"]
    assert model["name"] == "iris"
    return model


def test_a_killed_worker_shows_in_the_map_until_it_is_replaced(
    start_server: Callable[[str], ServerProcess], demo_dir: Path
) -> None:
    server = start_server(two_versions(demo_dir))
    with httpx.Client(base_url=server.url, timeout=10) as http:
        assert http.get("/admin/map").status_code == 401
        before = iris(http)
        assert before["state"] == "operational"
        assert [(v["name"], v["state"]) for v in before["children"][:2]] == [
            ("v1", "operational"),
            ("v2", "operational"),
        ]
        assert [t["name"] for t in node(before, "fallback")["children"]] == ["version:v1", "static"]
        worker = node(before, "v2")["children"][0]
        assert worker["state"] == "up"
        pid = int(worker["detail"].removeprefix("worker pid "))
        assert "unix:" not in orjson.dumps(before).decode()  # no socket path leaves the gateway

        os.kill(pid, signal.SIGKILL)
        seen: list[tuple[str, str, str]] = []
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            now = iris(http)
            replaced = node(now, "v2")["children"][0]
            seen.append((now["state"], node(now, "v2")["state"], replaced["state"]))
            if replaced["state"] == "up" and replaced["detail"].endswith(", 1 restart"):
                break
            time.sleep(0.05)
        else:
            pytest.fail(f"the map never showed the replacement worker: {seen[-3:]}")
        assert f"worker pid {pid}," not in replaced["detail"]
        assert now["state"] == "operational"
        # While it was down (if a poll caught it), the map said so at every level.
        for model_state, version_state, replica_state in seen[:-1]:
            if replica_state == "restarting":
                assert (model_state, version_state) == ("degraded", "down")


def test_failsoft_map_prints_the_tree_without_colour_into_a_pipe(
    start_server: Callable[[str], ServerProcess], demo_dir: Path
) -> None:
    server = start_server(two_versions(demo_dir))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "failsoft", "map", "--url", server.url, *args],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "FAILSOFT_ADMIN_TOKEN": ADMIN_TOKEN},
            check=False,
        )

    shown = run()
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0] == "iris  [operational]  (default v2)"
    assert lines[1] == "├─ version v1  [operational]  (process, 2/2 replicas up)"
    assert lines[2].startswith("│  ├─ replica w0  [up]  (worker pid ")
    assert lines[-3:] == [
        "└─ fallback  [operational]",
        "   ├─ version:v1  [operational]",
        "   └─ static  [operational]  (local)",
    ]
    assert "\x1b[" not in shown.stdout
    as_json = run("--json")
    assert as_json.returncode == 0, as_json.stderr
    assert orjson.loads(as_json.stdout)["models"][0]["state"] == "operational"
    assert "Example:" in run("--help").stdout
