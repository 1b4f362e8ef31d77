"""Drift on a real gateway: /admin/drift, the metrics, `failsoft drift status` and
`failsoft model push --profile`, fed by real inference requests."""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from failsoft.demo import _load
from failsoft.drills.server import ServerProcess
from tests.integration.conftest import ADMIN_TOKEN
from tests.integration.test_cli_control import as_json, cli, ok

pytestmark = pytest.mark.integration

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
ROWS, _ = _load("iris")


def config(demo_dir: Path) -> str:
    return f"""
models:
  iris:
    inputs:  [{{name: features, datatype: FP32, shape: [-1, 4]}}]
    outputs:
      - {{name: label, datatype: INT64, shape: [-1]}}
      - {{name: probabilities, datatype: FP32, shape: [-1, 3]}}
    versions:
      v1: {{backend: onnx, path: {demo_dir}/iris-v1.onnx}}
    drift:
      profile: {demo_dir}/iris-v1.profile.json
      evaluate_every_s: 0.5
      flush_every_s: 0.1
"""


def send(http: httpx.Client, rows: np.ndarray) -> None:
    body = {
        "inputs": [
            {
                "name": "features",
                "datatype": "FP32",
                "shape": list(rows.shape),
                "data": rows.reshape(-1).tolist(),
            }
        ]
    }
    answer = http.post("/v2/models/iris/infer", json=body)
    assert answer.status_code == 200, answer.text


def wait_for(http: httpx.Client, check: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        state: dict[str, Any] = http.get("/admin/drift/iris", headers=AUTH).json()
        if check(state):
            return state
        assert time.monotonic() < deadline, state
        time.sleep(0.1)


def test_a_shifted_feature_is_seen_named_and_shown(
    start_server: Callable[[str], ServerProcess], demo_dir: Path, tmp_path: Path
) -> None:
    server = start_server(config(demo_dir))
    rng = np.random.default_rng(0)
    with httpx.Client(base_url=server.url, timeout=10) as http:
        assert http.get("/admin/drift").status_code == 401
        clean = ROWS[rng.integers(0, len(ROWS), 1500)]
        for chunk in np.array_split(clean, 3):
            send(http, chunk)
        state = wait_for(http, lambda s: s["models"]["iris"]["versions"]["v1"]["rows"] >= 1500)
        v1 = state["models"]["iris"]["versions"]["v1"]
        assert v1["drifting"] is False
        shifted = ROWS[rng.integers(0, len(ROWS), 9000)].copy()  # 6 of every 7 rows
        shifted[:, 2] += ROWS[:, 2].std()
        for chunk in np.array_split(shifted, 6):
            send(http, chunk)
        state = wait_for(http, lambda s: s["models"]["iris"]["versions"]["v1"]["drifting"])
        window = state["models"]["iris"]["versions"]["v1"]["windows"][0]
        assert window["window"] == "30s"
        assert window["features"][0]["name"] == "features[2]"
        assert window["features"][0]["status"] == "alert"
        events = http.get("/admin/events", headers=AUTH).json()["events"]
        detected = [e for e in events if e["type"] == "DriftDetected"]
        assert detected[0]["worst"] == "features[2]"
        assert "features[2]" in detected[0]["features"]
        metrics = http.get("/metrics").text
        assert 'failsoft_drift_drifting{model="iris",version="v1",window="30s"} 1.0' in metrics
        assert 'failsoft_drift_feature_status{feature="features[2]"' in metrics
        assert "failsoft_drift_sketched_total" in metrics

    table = ok(server, "drift", "status", "iris").stdout
    assert "iris/v1: DRIFTING" in table
    assert "window 30s: DRIFTING" in table
    line = next(row for row in table.splitlines() if "features[2]" in row)
    assert line.split()[-1] == "ALERT"
    as_data = as_json(server, "drift", "status", "iris")
    assert as_data["versions"]["v1"]["drifting"] is True
    png = tmp_path / "drift.png"
    drawn = ok(server, "drift", "status", "iris", "--window", "30s", "--png", str(png))
    assert f"chart: {png}" in drawn.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    unknown = cli(server, "drift", "status", "nosuch")
    assert unknown.exit_code == 1
    assert "no drift monitor for model 'nosuch'" in unknown.output


def test_model_push_attaches_a_profile_and_refuses_one_of_other_bytes(
    start_server: Callable[[str], ServerProcess], demo_dir: Path, tmp_path: Path
) -> None:
    server = start_server(config(demo_dir))
    model = tmp_path / "iris-v1.onnx"
    shutil.copyfile(demo_dir / "iris-v1.onnx", model)
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    pushed = as_json(
        server,
        "model",
        "push",
        "iris",
        "v7",
        str(model),
        "--profile",
        str(demo_dir / "iris-v1.profile.json"),
    )
    assert pushed["sha256"] == digest
    listed = as_json(server, "model", "list")["artifacts"]
    kinds = {(a["name"], a["version"]): a["kind"] for a in listed}
    assert kinds == {("iris", "v7"): "onnx", ("iris", "v7.profile"): "profile"}
    profile = next(a for a in listed if a["kind"] == "profile")
    assert profile["sha256"] == pushed["profile_sha256"]
    # A version served from the artifact is watched against the profile pushed beside it.
    by_name = tmp_path / "v7.yaml"
    by_name.write_text(
        config(demo_dir)
        .replace(
            f"v1: {{backend: onnx, path: {demo_dir}/iris-v1.onnx}}",
            f"v1: {{backend: onnx, path: {demo_dir}/iris-v1.onnx}}\n"
            "      v7: {backend: onnx, artifact: iris@v7}\n"
            "    default_version: v1",
        )
        .replace(  # v1's profile only: v7 has none but the one pushed beside it
            f"profile: {demo_dir}/iris-v1.profile.json",
            f"profiles: {{v1: {demo_dir}/iris-v1.profile.json}}",
        )
    )
    assert "applied: revision 2" in ok(server, "apply", str(by_name), "--yes").stdout
    with httpx.Client(base_url=server.url, timeout=10) as http:
        state = http.get("/admin/drift/iris", headers=AUTH).json()
    v7 = state["models"]["iris"]["versions"]["v7"]
    assert v7["profile"]["sha256"] == pushed["profile_sha256"]

    other = tmp_path / "iris-v2.onnx"
    shutil.copyfile(demo_dir / "iris-v2.onnx", other)
    refused = cli(
        server,
        "model",
        "push",
        "iris",
        "v8",
        str(other),
        "--profile",
        str(demo_dir / "iris-v1.profile.json"),
    )
    assert refused.exit_code == 2
    assert "was built from a model file with sha256" in refused.output
    assert ("iris", "v8") not in {
        (a["name"], a["version"]) for a in as_json(server, "model", "list")["artifacts"]
    }
    not_a_profile = tmp_path / "junk.json"
    not_a_profile.write_bytes(orjson.dumps({"hello": 1}))
    junk = cli(server, "model", "push", "iris", "v9", str(model), "--profile", str(not_a_profile))
    assert junk.exit_code == 2
    assert "not a failsoft profile" in junk.output
