"""Graceful shutdown: SIGTERM under load drops no accepted request and exits 0."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import yaml

from failsoft.drills.server import ServerProcess
from tests.integration.conftest import ADMIN_TOKEN

pytestmark = pytest.mark.integration

CONFIG = """
models:
  slow:
    inputs:  [{name: x, datatype: FP32, shape: [-1, 4]}]
    outputs: [{name: label, datatype: INT64, shape: [-1]}]
    versions:
      v1: {backend: python, function: "tests.integration._models:slow_rule", execution: thread,
           replicas: 8}
"""
ROW = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [6.7, 3.0, 5.2, 2.3]}]}
IN_FLIGHT = 8


def in_flight(server: ServerProcess) -> int:
    status = httpx.get(
        server.url + "/admin/status", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    ).json()
    count: int = status["models"]["slow"]["versions"]["v1"]["in_flight"]
    return count


def test_sigterm_finishes_accepted_requests_and_exits_zero(
    start_server: Callable[[str], ServerProcess],
) -> None:
    server = start_server(CONFIG)
    assert server.process is not None
    with ThreadPoolExecutor(IN_FLIGHT) as pool:
        calls = [
            pool.submit(httpx.post, server.url + "/v2/models/slow/infer", json=ROW, timeout=10)
            for _ in range(IN_FLIGHT)
        ]
        deadline = time.monotonic() + 10
        while in_flight(server) < IN_FLIGHT:  # every request accepted and at the model
            assert time.monotonic() < deadline, "requests never reached the model"
        server.process.send_signal(signal.SIGTERM)
        server.wait_for(lambda line: line.get("msg") == "draining", timeout=5)
        answers = [call.result() for call in calls]
    assert [a.status_code for a in answers] == [200] * IN_FLIGHT
    assert all(a.json()["outputs"][0]["data"] == [2] for a in answers)
    assert server.process.wait(timeout=15) == 0


async def test_a_draining_app_is_not_ready_and_refuses_new_work_with_503() -> None:
    from failsoft.config import parse_config
    from failsoft.server.serve import build_app

    app = build_app(parse_config(yaml.safe_load(CONFIG)))
    app.draining = True
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
        ready = await http.get("/v2/health/ready")
        assert ready.status_code == 503
        assert "shutting down" in ready.json()["error"]
        refused = await http.post("/v2/models/slow/infer", json=ROW)
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert "shutting down" in refused.json()["error"]
