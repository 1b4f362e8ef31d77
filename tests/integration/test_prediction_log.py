"""The prediction log on a real gateway: SIGTERM under load, trace of a fallback answer,
and feedback with a segment whose accuracy drops (the short form of benchmarks/feedback.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from failsoft.data.prediction_log import segment_files
from failsoft.drills.server import ServerProcess
from tests.integration.conftest import ADMIN_TOKEN, REPO

pytestmark = pytest.mark.integration

ROW = {
    "inputs": [
        {"name": "features", "datatype": "FP32", "shape": [1, 4], "data": [6.7, 3, 5.2, 2.3]}
    ]
}
X_ROW = {"inputs": [{**ROW["inputs"][0], "name": "x"}]}
LOAD_THREADS = 6


def logged(data_dir: Path) -> dict[str, dict[str, Any]]:
    found = {}
    for path in segment_files(data_dir / "predictions"):
        for line in path.read_bytes().splitlines():
            record = orjson.loads(line)  # a torn line would fail here: there must be none
            found[record["request_id"]] = record
    return found


def test_sigterm_under_load_leaves_every_accepted_prediction_in_the_log(
    start_server: Callable[[str], ServerProcess], tmp_path: Path
) -> None:
    # The writer makes records as they come but writes none before the shutdown (not due).
    server = start_server(
        """
predictions: {enabled: true, flush_interval_s: 60, batch_records: 65536}
models:
  rule:
    inputs:  [{name: x, datatype: FP32, shape: [-1, 4]}]
    outputs: [{name: label, datatype: INT64, shape: [-1]}]
    versions:
      v1: {backend: python, function: "tests.integration._models:heuristic", replicas: 2}
"""
    )
    assert server.process is not None
    answered: list[str] = []
    refused: list[int] = []
    stop = threading.Event()
    lock = threading.Lock()

    def load(worker: int) -> None:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            for number in range(1_000_000):
                if stop.is_set():
                    return
                request_id = f"w{worker}-{number}"
                try:
                    response = client.post(
                        "/v2/models/rule/infer", json=X_ROW, headers={"x-request-id": request_id}
                    )
                except httpx.TransportError:
                    return  # the gateway closed: nothing more is accepted
                with lock:
                    if response.status_code == 200:
                        answered.append(request_id)
                    else:
                        refused.append(response.status_code)

    threads = [threading.Thread(target=load, args=(n,)) for n in range(LOAD_THREADS)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 20
    while len(answered) < 300:  # under load
        assert time.monotonic() < deadline, "the load never got going"
        time.sleep(0.01)
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=30) == 0
    stop.set()
    for thread in threads:
        thread.join(10)
    assert set(refused) <= {503}  # draining refuses new work; nothing else fails
    records = logged(tmp_path / "failsoft-data")
    missing = [rid for rid in answered if rid not in records]
    assert not missing, f"{len(missing)} of {len(answered)} answered predictions not logged"
    assert all(records[rid]["status"] == 200 for rid in answered)
    state = json.loads(
        (tmp_path / "failsoft-data" / "predictions" / "predictions.state.json").read_text()
    )
    assert state["clean"] is True
    assert state["dropped"] == 0


def test_a_crash_loses_only_unwritten_records_and_the_next_start_counts_them(
    start_server: Callable[[str], ServerProcess], tmp_path: Path
) -> None:
    config = """
predictions: {enabled: true, flush_interval_s: 60, batch_records: 65536}
models:
  rule:
    inputs:  [{name: x, datatype: FP32, shape: [-1, 4]}]
    outputs: [{name: label, datatype: INT64, shape: [-1]}]
    versions:
      v1: {backend: python, function: "tests.integration._models:heuristic"}
"""
    server = start_server(config)
    assert server.process is not None
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for _ in range(40):  # accepted, never written: the writer sleeps for a minute
            assert client.post("/v2/models/rule/infer", json=X_ROW).status_code == 200
        pending = client.get("/metrics").text
    assert "failsoft_prediction_log_pending 40.0" in pending
    server.process.send_signal(signal.SIGKILL)
    server.process.wait(timeout=10)
    assert logged(tmp_path / "failsoft-data") == {}  # lost, as promised: nothing written

    again = start_server(config)
    warnings = [line for line in again.logs if "did not stop cleanly" in str(line.get("msg"))]
    assert [line["lost"] for line in warnings] == [40]  # logged before it was ready
    metrics = httpx.get(again.url + "/metrics", timeout=10).text
    assert "failsoft_prediction_log_lost_at_crash 40.0" in metrics


def test_trace_of_a_fallback_answer_shows_attempts_tier_revision_and_artifact(
    start_server: Callable[[str], ServerProcess], demo_dir: Path, tmp_path: Path
) -> None:
    first = {
        "predictions": {"enabled": True, "flush_interval_s": 0.2},
        "models": {
            "iris": {
                "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}],
                "outputs": [
                    {"name": "label", "datatype": "INT64", "shape": [-1]},
                    {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]},
                ],
                "versions": {
                    "v1": {
                        "backend": "python",
                        "function": "tests.integration._models:broken",
                        "replicas": 2,
                    }
                },
            }
        },
    }
    server = start_server(json.dumps(first))
    admin = httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=60
    )
    data = (demo_dir / "iris-v2.onnx").read_bytes()
    pushed = admin.post(
        "/admin/artifacts", params={"name": "iris", "version": "2", "kind": "onnx"}, content=data
    )
    assert pushed.status_code == 201, pushed.text
    digest = pushed.json()["sha256"]
    second = json.loads(json.dumps(first))
    iris = second["models"]["iris"]
    iris["versions"]["v2"] = {"backend": "onnx", "artifact": "iris@2"}
    iris["default_version"] = "v1"
    iris["fallback"] = [{"version": "v2"}]
    applied = admin.post("/admin/config", json={"config": second})
    assert applied.status_code == 200, applied.text
    revision = applied.json()["revision"]

    answer = httpx.post(
        server.url + "/v2/models/iris/infer", json=ROW, headers={"x-request-id": "trace-me-1"}
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["failsoft-degraded"] == "true"
    assert answer.headers["failsoft-served-by"] == "iris/v1/fallback:version:v2"

    env = {**os.environ, "FAILSOFT_ADMIN_TOKEN": ADMIN_TOKEN}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO), env.get("PYTHONPATH", "")])
    command = [sys.executable, "-m", "failsoft", "trace", "trace-me-1", "--url", server.url]
    as_json = subprocess.run([*command, "--json"], env=env, capture_output=True, timeout=60)
    assert as_json.returncode == 0, as_json.stderr.decode()
    traced = json.loads(as_json.stdout)
    record = traced["prediction"]
    failed = [step for step in record["attempts"] if step["outcome"] == "failed"]
    assert {step["replica"] for step in failed} == {"r0", "r1"}
    assert all(step["version"] == "v1" and step["failure_class"] == "replica" for step in failed)
    assert record["fallback_tier"] == "version:v2"
    assert record["version"] == "v2"
    assert record["degraded"] is True
    assert record["revision"] == revision
    assert record["artifact_sha256"] == digest
    actions = {(entry["action"], entry["target"]) for entry in traced["audit"]}
    assert ("artifact.registered", "artifact:iris@2") in actions
    assert ("revision.applied", f"revision:{revision}") in actions

    table = subprocess.run(command, env=env, capture_output=True, timeout=60, text=True)
    assert table.returncode == 0, table.stderr
    for shown in ("version:v2", digest, "artifact.registered", f"revision:{revision}", "failed"):
        assert shown in table.stdout

    not_json = httpx.post(server.url + "/v2/models/iris/feedback", content=b"label=1")
    assert not_json.status_code == 400
    assert "feedback body is not JSON" in not_json.json()["error"]
    no_model = httpx.post(server.url + "/v2/models/nope/feedback", json={"request_id": "x"})
    assert no_model.status_code == 404
    judged = httpx.post(
        server.url + "/v2/models/iris/feedback",
        json={"feedback": [{"request_id": "trace-me-1", "label": 2}, {"request_id": "zz"}]},
    ).json()
    assert (judged["joined"], judged["invalid"]) == (1, 1)

    unknown = subprocess.run(
        [sys.executable, "-m", "failsoft", "trace", "no-such-id", "--url", server.url],
        env=env,
        capture_output=True,
        timeout=60,
        text=True,
    )
    assert unknown.returncode == 1
    assert "no prediction with request id 'no-such-id'" in unknown.stderr
    assert "Traceback" not in unknown.stderr


def test_feedback_shows_a_segment_whose_accuracy_drops() -> None:
    """The short form of benchmarks/feedback.py (10,000 there; 600 here)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    run = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "feedback.py"),
            "--predictions",
            "600",
            "--json",
        ],
        env=env,
        capture_output=True,
        timeout=240,
        text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    figures = json.loads(run.stdout)
    assert figures["predictions"] == 600
    measured, true = figures["gateway_accuracy"], figures["true_accuracy"]
    assert abs(measured["all"] - true["all"]) <= 0.005
    assert measured["tenant:bad"] <= 0.6 < 0.9 <= measured["tenant:good"]
    assert figures["labelled_rows"]["all"] == 600
    assert figures["feedback"]["good"]["unknown"] == 25
    assert figures["feedback"]["good"]["duplicate"] == 25
