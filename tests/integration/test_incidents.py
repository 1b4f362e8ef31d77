"""Incidents and SLOs on a real gateway with a real store.

Every replica of iris v1 fails (an injected fault): the fallback answers
degraded, the version goes into panic, and an incident opens with cause
infra and a timeline from the first impacted request on. The gateway is then
restarted mid-incident: the incident, its timeline and the SLO budgets come
back from the store. The impact ends, the incident is mitigated, acknowledged
and resolved through the CLI, and the postmortem is written.
"""

from __future__ import annotations

import importlib.util
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml
from click.testing import CliRunner, Result

from failsoft.cli import main
from failsoft.demo import CONFIG_NAME
from failsoft.drills.server import ServerProcess
from tests.integration.conftest import ADMIN_TOKEN, REPO

pytestmark = pytest.mark.integration

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
BODY = {
    "inputs": [
        {"name": "features", "datatype": "FP32", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}
    ]
}
MAX_MTTD_S = 5.0
BENCH = REPO / "benchmarks" / "incident_mttd.py"


def config(demo_dir: Path) -> str:
    return f"""
models:
  iris:
    inputs:  [{{name: features, datatype: FP32, shape: [-1, 4]}}]
    outputs:
      - {{name: label, datatype: INT64, shape: [-1]}}
      - {{name: probabilities, datatype: FP32, shape: [-1, 3]}}
    versions:
      v1: {{backend: onnx, path: {demo_dir}/iris-v1.onnx, replicas: 2}}
      v2: {{backend: onnx, path: {demo_dir}/iris-v2.onnx}}
    default_version: v1
    fallback: [{{version: v2}}]
    slo: {{quality_pct: 99.0}}
chaos: {{enabled: true}}
incidents: {{evaluate_every_s: 0.25, persist_every_s: 0.25, quiet_s: 2}}
"""


class Gateway:
    """`failsoft serve` on a data directory that outlives one process."""

    def __init__(self, folder: Path, demo_dir: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "failsoft.yaml").write_text(config(demo_dir))
        self.server: ServerProcess | None = None

    def start(self) -> ServerProcess:
        env = {
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
            "FAILSOFT_ADMIN_TOKEN": ADMIN_TOKEN,
        }
        self.server = ServerProcess(
            self.folder / "failsoft.yaml", "--data-dir", str(self.folder / "data"), env=env
        ).start()
        return self.server

    def stop(self) -> None:
        if self.server is not None:
            assert self.server.stop() == 0
            self.server = None

    def get(self, path: str) -> Any:
        assert self.server is not None
        answer = httpx.get(f"{self.server.url}{path}", headers=AUTH, timeout=10)
        assert answer.status_code == 200, answer.text
        return answer.json()


class Load:
    """Requests at ~``rate``/s on a thread until stopped; counts what came back."""

    def __init__(self, url: str, rate: float = 40.0) -> None:
        self.url, self.gap = url, 1.0 / rate
        self.statuses: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=5) as http:
            while not self._stop.is_set():
                answer = http.post("/v2/models/iris/infer", json=BODY)
                key = f"{answer.status_code}:{answer.headers.get('failsoft-degraded')}"
                self.statuses[key] = self.statuses.get(key, 0) + 1
                self._stop.wait(self.gap)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def poll(check: Any, seconds: float, what: str) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"not within {seconds} s: {what}")


def cli(server: ServerProcess, *args: str) -> Result:
    result = CliRunner().invoke(
        main, [*args, "--url", server.url], env={"FAILSOFT_ADMIN_TOKEN": ADMIN_TOKEN}
    )
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    return result


@pytest.fixture
def gateway(tmp_path: Path, demo_dir: Path) -> Iterator[Gateway]:
    made = Gateway(tmp_path / "gw", demo_dir)
    yield made
    if made.server is not None:
        made.server.stop()


def test_all_replicas_down_opens_an_incident_that_survives_a_restart(
    gateway: Gateway, tmp_path: Path
) -> None:
    server = gateway.start()
    load = Load(server.url)
    try:
        time.sleep(1.0)  # good traffic first
        fault = {"kind": "error", "status": 503, "model": "iris", "version": "v1", "duration_s": 4}
        added = httpx.post(f"{server.url}/admin/faults", json=fault, headers=AUTH, timeout=10)
        assert added.status_code == 201, added.text
        listed = poll(lambda: gateway.get("/admin/incidents")["incidents"], 10, "an incident opens")
        assert len(listed) == 1
        opened = listed[0]
        assert (opened["model"], opened["cause"], opened["state"]) == ("iris", "infra", "open")
        assert opened["mttd_s"] is not None
        assert opened["mttd_s"] <= MAX_MTTD_S
        cli(server, "incident", "ack", "1")
        cli(server, "incident", "update", "1", "v1 replicas failing; v2 answers meanwhile")
        change = yaml.safe_load((gateway.folder / "failsoft.yaml").read_text())
        change["models"]["iris"]["slo"]["quality_pct"] = 98.5
        applied = httpx.post(
            f"{server.url}/admin/config", json={"config": change}, headers=AUTH, timeout=60
        )
        assert applied.status_code == 200, applied.text
        time.sleep(1.0)  # more of the incident on the timeline
    finally:
        load.stop()
    before = gateway.get("/admin/incidents/1")
    slo_before = gateway.get("/admin/slo")["slos"]
    kinds = {entry["kind"] for entry in before["timeline"]}
    assert {"impact", "fault", "signal", "state", "fallback", "update", "config"} <= kinds, kinds
    assert kinds & {"breaker", "ejection"}, kinds
    first = next(e for e in before["timeline"] if e["kind"] == "impact")
    assert first["text"].startswith("first ")  # the first impacted request, measured
    assert first["at"] == before["first_impact_at"]
    print("\n".join(f"{e['at']:.3f} {e['kind']:10} {e['text']}" for e in before["timeline"]))
    assert before["degraded"] > 0
    assert before["state"] == "acknowledged"

    gateway.stop()  # mid-incident
    server = gateway.start()
    after = gateway.get("/admin/incidents/1")
    for key in ("id", "model", "cause", "state", "opened_at", "first_impact_at", "degraded"):
        assert after[key] == before[key], key
    assert after["timeline"][: len(before["timeline"])] == before["timeline"]
    assert after["timeline"][-1]["text"] == "gateway restarted; the incident carries on"
    slo_after = gateway.get("/admin/slo")["slos"]
    assert [(r["objective"], r["events"], r["bad"]) for r in slo_after] == [
        (r["objective"], r["events"], r["bad"]) for r in slo_before
    ]
    quality = next(r for r in slo_after if r["objective"] == "quality")
    assert quality["bad"] > 0  # degraded answers spent the quality budget

    # The fault is gone with the old process: good answers for quiet_s end the impact.
    load = Load(server.url)
    try:
        mitigated = poll(
            lambda: (i := gateway.get("/admin/incidents/1"))["state"] == "mitigated" and i,
            15,
            "the incident is mitigated",
        )
    finally:
        load.stop()
    assert mitigated["mttm_s"] is not None
    cli(server, "incident", "remediate", "1", "alert on v1 error rate before the fallback hides it")
    cli(server, "incident", "resolve", "1", "fault removed")
    listed_text = cli(server, "incident", "list").output
    assert "resolved" in listed_text
    assert "means: MTTD" in listed_text
    out = tmp_path / "incident-1.md"
    cli(server, "incident", "postmortem", "1", "-o", str(out))
    report = out.read_text()
    for heading in ("# Incident 1", "## Summary", "## Impact", "## Timeline", "## Actions taken"):
        assert heading in report
    assert "time to detect" in report
    assert "fault removed" in report
    assert "- [ ] 1. alert on v1 error rate" in report
    audit = httpx.get(f"{server.url}/admin/audit?limit=1000", headers=AUTH, timeout=10).json()
    actions = [e["action"] for e in audit["entries"] if e["target"] == "incident:1"]
    for action in (
        "incident.opened",
        "incident.acknowledged",
        "incident.updated",
        "incident.mitigated",
        "incident.remediation_added",
        "incident.resolved",
    ):
        assert action in actions, actions
    status = cli(server, "slo", "status").output
    assert "quality" in status
    assert "failsoft_slo_budget_left" in httpx.get(f"{server.url}/metrics", timeout=10).text


def test_the_all_replicas_down_drill_opens_an_incident_within_5_s(demo_dir: Path) -> None:
    """The short form of benchmarks/incident_mttd.py: the bundled drill at half length."""
    spec = importlib.util.spec_from_file_location("incident_mttd", BENCH)
    assert spec is not None
    assert spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    saved = os.environ.get("FAILSOFT_ADMIN_TOKEN")
    try:
        result = bench.one_round(demo_dir / CONFIG_NAME, scale=0.5)
    finally:
        os.environ["FAILSOFT_ADMIN_TOKEN"] = saved or ""
    assert result["incidents"] == 1, result
    assert result["cause"] == "infra"
    assert result["timeline_complete"], result["missing"]
    assert result["mttd_s"] is not None
    assert result["mttd_s"] <= MAX_MTTD_S


def test_the_admin_api_and_commands_refuse_clearly(gateway: Gateway) -> None:
    server = gateway.start()
    url = server.url
    assert httpx.get(f"{url}/admin/incidents", timeout=10).status_code == 401
    assert httpx.get(f"{url}/admin/slo", timeout=10).status_code == 401
    bad = httpx.get(f"{url}/admin/incidents?state=burning", headers=AUTH, timeout=10)
    assert bad.status_code == 400
    assert bad.json()["error"].startswith("state: 'burning' is not one of")
    missing = httpx.get(f"{url}/admin/incidents/99", headers=AUTH, timeout=10)
    assert missing.status_code == 404
    assert missing.json() == {"error": "there is no incident 99"}
    posted = httpx.post(f"{url}/admin/incidents/99/update", content=b"{", headers=AUTH, timeout=10)
    assert posted.status_code == 400
    assert "Traceback" not in posted.text
    httpx.post(f"{url}/v2/models/iris/infer", json=BODY, timeout=10).raise_for_status()
    rules = httpx.get(f"{url}/admin/slo/rules", headers=AUTH, timeout=10)
    parsed = yaml.safe_load(rules.text)
    names = [rule.get("alert") for group in parsed["groups"] for rule in group["rules"]]
    assert "FailsoftSLOBurnQualityPage1h" in names
    assert cli(server, "slo", "rules").output == rules.text
    offline = cli(server, "slo", "rules", "--config", str(gateway.folder / "failsoft.yaml"))
    assert offline.output == rules.text
    status = orjson.loads(cli(server, "slo", "status", "--json").output)
    assert {row["objective"] for row in status["slos"]} == {"availability", "quality"}
    assert "no incidents" in cli(server, "incident", "list").output
    shown = CliRunner().invoke(
        main, ["incident", "show", "99", "--url", url], env={"FAILSOFT_ADMIN_TOKEN": ADMIN_TOKEN}
    )
    assert shown.exit_code == 1
    assert "there is no incident 99" in shown.output
    wrong = CliRunner().invoke(
        main,
        ["incident", "remediate", "1", "--url", url],
        env={"FAILSOFT_ADMIN_TOKEN": ADMIN_TOKEN},
    )
    assert wrong.exit_code == 2
    assert "give TEXT to add an item, or --close ITEM" in wrong.output
