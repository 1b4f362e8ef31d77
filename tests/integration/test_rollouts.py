"""Rollouts on a real gateway: the `failsoft rollout` commands and the admin API; a sticky
split; a restart that resumes at the same step with the same users on each side; refusals
that change nothing; an abort that sends everything back at once; and a promotion that makes
the candidate the default version through a stored revision.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from click.testing import CliRunner, Result

from failsoft.cli import main
from failsoft.drills.server import ServerProcess
from tests.integration.conftest import ADMIN_TOKEN, REPO

pytestmark = pytest.mark.integration

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
ROWS = ([5.1, 3.5, 1.4, 0.2], [5.7, 2.8, 4.1, 1.3], [6.7, 3.0, 5.2, 2.3])
DEADLINE_S = 30.0


def config(demo_dir: Path) -> str:
    return f"""
models:
  iris:
    inputs:  [{{name: features, datatype: FP32, shape: [-1, 4]}}]
    outputs:
      - {{name: label, datatype: INT64, shape: [-1], labels: [0, 1, 2]}}
      - {{name: probabilities, datatype: FP32, shape: [-1, 3]}}
    versions:
      v1: {{backend: onnx, path: {demo_dir}/iris-v1.onnx}}
      v2: {{backend: onnx, path: {demo_dir}/iris-v2.onnx}}
    default_version: v1
    health_check:
      inputs: {{features: [[5.1, 3.5, 1.4, 0.2]]}}
      expect: {{label: [0]}}
"""


class Gateway:
    def __init__(self, folder: Path, text: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / "failsoft.yaml"
        self.path.write_text(text)
        self.data = folder / "data"
        self.server: ServerProcess | None = None
        self.client: httpx.Client | None = None  # kept alive while set

    def start(self) -> Gateway:
        env = {
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
            "FAILSOFT_ADMIN_TOKEN": ADMIN_TOKEN,
        }
        self.server = ServerProcess(self.path, "--data-dir", str(self.data), env=env).start()
        return self

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.server is not None:
            self.server.stop()
            self.server = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    def cli(self, *args: str) -> Result:
        return CliRunner().invoke(
            main, [*args, "--url", self.url], env={"FAILSOFT_ADMIN_TOKEN": ADMIN_TOKEN}
        )

    def served_by(self, key: str, row: list[float] = ROWS[0]) -> str:
        body = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 4], "data": row}]}
        headers = {"Failsoft-Key": key}
        path = "/v2/models/iris/infer"
        if self.client is not None:
            answer = self.client.post(path, json=body, headers=headers)
        else:
            answer = httpx.post(self.url + path, json=body, headers=headers)
        assert answer.status_code == 200, answer.text
        return answer.headers["failsoft-served-by"].split("/")[1]

    def rollout(self, key: str) -> dict[str, Any]:
        answer = httpx.get(f"{self.url}/admin/rollouts/{key}", headers=AUTH)
        assert answer.status_code == 200, answer.text
        data: dict[str, Any] = answer.json()
        return data


@pytest.fixture
def gateway(demo_dir: Path, tmp_path: Path) -> Iterator[Gateway]:
    made = Gateway(tmp_path / "gw", config(demo_dir)).start()
    yield made
    made.stop()


def test_a_rollout_is_sticky_survives_a_restart_and_aborts_at_once(gateway: Gateway) -> None:
    started = gateway.cli(
        "rollout", "start", "iris", "--to", "v2", "--steps", "10,50,100", "--step-s", "600"
    )
    assert started.exit_code == 0, started.output
    assert "iris v1 -> v2 (canary) PROGRESSING" in started.output
    assert "stages   [10%] -> 50% -> 100%" in started.output
    rollout_id = gateway.rollout("iris")["id"]
    keys = [f"user-{n}" for n in range(200)]
    sides = {key: gateway.served_by(key) for key in keys}
    assert {key: gateway.served_by(key) for key in keys[:50]} == {k: sides[k] for k in keys[:50]}
    on_candidate = sum(side == "v2" for side in sides.values())
    assert 5 <= on_candidate <= 40, on_candidate  # 10% of 200, sticky by Failsoft-Key

    # Bad input: the field is named, nothing changes.
    refused = [
        (("--to", "v9"), "to: version 'v9' of 'iris' is not loaded"),
        (("--to", "v2"), f"model: 'iris' already has rollout {rollout_id} in progress"),
        (("--to", "v2", "--steps", "10,60"), "steps: the last step is 60"),
        (("--to", "v2", "--strategy", "ab", "--weights", "v1=60,v2=50"), "= 110, they must add"),
    ]
    for args, message in refused:
        result = gateway.cli("rollout", "start", "iris", *args)
        assert result.exit_code == 1, result.output
        assert message in result.output, result.output
    bad_steps = gateway.cli("rollout", "start", "iris", "--to", "v2", "--steps", "ten")
    assert bad_steps.exit_code == 2
    assert "--steps: 'ten' is not a list of percents" in bad_steps.output
    listed = httpx.get(f"{gateway.url}/admin/rollouts", headers=AUTH).json()["rollouts"]
    assert [item["id"] for item in listed] == [rollout_id]
    no_token = httpx.post(f"{gateway.url}/admin/rollouts/iris/abort")
    assert no_token.status_code == 401

    # A restart resumes at the same step: the same users on the same side.
    gateway.stop()
    gateway.start()
    shown = gateway.rollout("iris")
    assert (shown["id"], shown["status"], shown["stage"]) == (rollout_id, "progressing", 0)
    assert {key: gateway.served_by(key) for key in keys} == sides
    status = gateway.cli("rollout", "status", "iris")
    assert status.exit_code == 0, status.output
    assert "history:" in status.output
    assert "stepped     10%" in status.output

    aborted = gateway.cli("rollout", "abort", "iris")
    assert aborted.exit_code == 0, aborted.output
    assert "ABORTED" in aborted.output
    assert {gateway.served_by(key) for key in keys} == {"v1"}  # from the very next request
    deadline = time.monotonic() + DEADLINE_S
    while gateway.rollout(rollout_id)["verified"] is None:
        assert time.monotonic() < deadline, "the rollback was never verified"
        time.sleep(0.1)
    verified = gateway.rollout(rollout_id)["verified"]
    assert verified["ok"] is True
    assert verified["probes_failed"] == 0
    audit = gateway.cli("audit", "log", "--json")
    assert audit.exit_code == 0, audit.output
    for action in ("rollout.started", "rollout.stepped", "rollout.aborted", "rollout.verified"):
        assert action in audit.output, action


def test_a_good_candidate_is_promoted_and_becomes_the_default_version(gateway: Gateway) -> None:
    spec = {
        "model": "iris",
        "to": "v2",
        "steps": [50, 100],
        "step_s": 3,
        "check_every_s": 0.5,
        "max_extensions": 5,
        "analysis": {
            "min_requests": 40,
            "error_rate_max_increase": 0.1,
            "contract_violation_max_rate": 0.1,
            "min_latency_samples": 40,
            "latency_max_factor": 3,
            "latency_slack_ms": 50,
            "min_output_samples": 40,
        },
    }
    declared = gateway.path.parent / "rollout.yaml"  # declared in YAML
    declared.write_text("- not a mapping\n")
    wrong = gateway.cli("rollout", "start", "--file", str(declared))
    assert wrong.exit_code == 2
    assert "must hold a mapping" in wrong.output
    declared.write_text(yaml.safe_dump(spec))
    started = gateway.cli("rollout", "start", "--file", str(declared))
    assert started.exit_code == 0, started.output
    deadline = time.monotonic() + DEADLINE_S
    sent = 0
    gateway.client = httpx.Client(base_url=gateway.url)
    while gateway.rollout("iris")["status"] != "promoted":
        assert time.monotonic() < deadline, gateway.rollout("iris")
        for row in ROWS:
            gateway.served_by(f"k{sent}", row)
            sent += 1
    while True:  # the revision that makes v2 the default is applied after the promotion
        served = httpx.get(f"{gateway.url}/admin/config", headers=AUTH).json()
        if served["config"]["models"]["iris"].get("default_version") == "v2":
            break
        assert time.monotonic() < deadline, served
        time.sleep(0.1)
    assert {gateway.served_by(f"new-{n}") for n in range(20)} == {"v2"}
    shown = gateway.rollout("iris")
    passed = shown["history"][-1]["checks"]
    assert {check["verdict"] for check in passed} == {"pass"}
    assert all(check["samples"] >= 1 for check in passed)


def metric(gateway: Gateway, name: str, **labels: str) -> float:
    """The sum of a counter's samples whose labels include ``labels``."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{gateway.url}/metrics").text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def test_a_shadow_never_changes_the_answer_and_its_failures_charge_nobody_primary(
    demo_dir: Path, tmp_path: Path
) -> None:
    broken = '      v3: {backend: python, function: "tests._runtime_models:broken"}\n'
    text = config(demo_dir).replace(
        "    default_version: v1\n", broken + "    default_version: v1\n"
    )
    gateway = Gateway(tmp_path / "gw", text).start()
    try:
        spec = {"model": "iris", "to": "v3", "strategy": "shadow", "step_s": 600}
        answer = httpx.post(f"{gateway.url}/admin/rollouts", json=spec, headers=AUTH)
        assert answer.status_code == 201, answer.text
        assert answer.json()["stages"][0] == "shadow 100%"
        gateway.client = httpx.Client(base_url=gateway.url)
        sides = {gateway.served_by(f"k{n}", ROWS[n % 3]) for n in range(150)}
        assert sides == {"v1"}  # every answer the stable's, none degraded (served_by checks 200)
        assert metric(gateway, "failsoft_attempt_failures_total", version="v1") == 0
        assert metric(gateway, "failsoft_attempt_failures_total", version="v3") > 0
        deadline = time.monotonic() + DEADLINE_S
        while gateway.rollout("iris")["status"] != "rolled-back":  # the next check sees it
            assert time.monotonic() < deadline, gateway.rollout("iris")
            time.sleep(0.1)
        checks = gateway.rollout("iris")["analysis"]["checks"]
        failed = {c["name"] for c in checks if c["verdict"] == "fail"}
        assert {"replica error rate", "golden probes"} & failed, checks
    finally:
        gateway.stop()
