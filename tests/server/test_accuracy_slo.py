"""The accuracy objective, fed by real feedback through the gateway (in-process, real
prediction log), on the SLOs' injected wall clock: counted when the labels arrive, judged
with the same budget and burn-rate rules (``min_events`` too), shown by /admin/slo,
/metrics and the Prometheus rules, and opening an incident (cause logic) on a page.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from failsoft.config import parse_config
from failsoft.control.burn import BurnAlert
from failsoft.observe.events import EventBus
from failsoft.observe.metrics import Metrics
from failsoft.runtime import Runtime
from failsoft.server.app import FailsoftApp
from tests.store.conftest import Wall

TOKEN = "accuracy-slo-admin-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
EPOCH = 1_800_000_000.0


def model(function: str, output: dict[str, Any], **slo: Any) -> dict[str, Any]:
    return {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [output],
        "versions": {
            "v1": {"backend": "python", "function": f"tests.integration._models:{function}"}
        },
        "slo": slo,
    }


class Gateway:
    def __init__(self, app: FailsoftApp, http: httpx.AsyncClient, wall: Wall) -> None:
        self.app, self.http, self.wall = app, http, wall
        self.alerts: list[BurnAlert] = []
        app.runtime.bus.subscribe(self.alerts.append, (BurnAlert,))  # type: ignore[arg-type]

    async def infer(self, name: str, request_id: str, petal: float) -> None:
        row = {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [5.0, 3.0, petal, 1.0]}
        answer = await self.http.post(
            f"/v2/models/{name}/infer", json={"inputs": [row]}, headers={"x-request-id": request_id}
        )
        assert answer.status_code == 200, answer.text

    async def feedback(self, name: str, items: list[dict[str, Any]]) -> dict[str, Any]:
        answer = await self.http.post(f"/v2/models/{name}/feedback", json={"feedback": items})
        assert answer.status_code == 200, answer.text
        found: dict[str, Any] = answer.json()
        return found

    async def slo(self, name: str) -> dict[str, Any]:
        answer = await self.http.get("/admin/slo", headers=ADMIN)
        assert answer.status_code == 200, answer.text
        rows = [
            r for r in answer.json()["slos"] if (r["model"], r["objective"]) == (name, "accuracy")
        ]
        assert len(rows) == 1, answer.json()
        return rows[0]

    def firing(self) -> set[tuple[str, str, str]]:
        on: set[tuple[str, str, str]] = set()
        for alert in self.alerts:
            key = (alert.objective, alert.severity, alert.rule)
            if alert.firing:
                on.add(key)
            else:
                on.discard(key)
        return on


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    label = {"name": "label", "datatype": "INT64", "shape": [-1]}
    value = {"name": "value", "datatype": "FP32", "shape": [-1]}
    config = parse_config(
        {
            "server": {"admin_token": TOKEN},
            "predictions": {"enabled": True, "directory": str(tmp_path), "flush_interval_s": 0.05},
            "models": {
                "iris": model("heuristic", label, accuracy_pct=99.0, min_events=20),
                "width": model("petal_width", value, accuracy_pct=90.0, accuracy_tolerance=0.1),
            },
        }
    )
    wall = Wall(EPOCH)
    app = FailsoftApp(Runtime(config, EventBus()), config.server, Metrics(), wall=wall)
    await app.runtime.start()
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
            yield Gateway(app, http, wall)
    finally:
        await app.runtime.close()
        assert app.predictions is not None
        app.predictions.close()


def labels(ids: range, wrong: set[int]) -> list[dict[str, Any]]:
    """Feedback for requests r<n>: the heuristic predicted 0; the ``wrong`` ones say 1."""
    return [{"request_id": f"r{n}", "label": 1 if n in wrong else 0} for n in ids]


async def test_labels_spend_the_accuracy_budget_when_they_arrive_and_page(
    gateway: Gateway,
) -> None:
    for n in range(60):
        await gateway.infer("iris", f"r{n}", petal=1.4)  # class 0
    assert (await gateway.slo("iris"))["events"] == 0  # answers, no labels yet

    gateway.wall.advance(7200)  # the labels come two hours later
    joined = await gateway.feedback("iris", labels(range(15), wrong={0, 1, 2}))
    assert joined["joined"] == 15
    gateway.app.operate.judge()
    row = await gateway.slo("iris")
    assert (row["events"], row["bad"], row["target_pct"]) == (15, 3, 99.0)
    assert row["burn"]["5m"] == pytest.approx(20.0)  # 20 % wrong against a 1 % budget
    assert gateway.firing() == set()  # fewer than min_events (20) labels

    await gateway.feedback("iris", labels(range(15, 50), wrong=set(range(15, 22))))
    await gateway.feedback("iris", labels(range(3), wrong=set()))  # duplicates: no change
    gateway.app.operate.judge()
    row = await gateway.slo("iris")
    assert (row["events"], row["bad"]) == (50, 10)
    # Counted by the time of the feedback: the windows of now, not of the predictions.
    assert row["burn"]["1h"] == pytest.approx(20.0)
    assert row["budget_left"] == pytest.approx(1 - 10 / 0.5)
    assert ("accuracy", "page", "1h/5m 14.4x") in gateway.firing()
    assert {a.objective for a in gateway.alerts} == {"accuracy"}  # availability is fine
    (incident,) = gateway.app.operate.incidents.incidents.values()
    assert (incident.model, incident.cause) == ("iris", "logic")

    metrics = (await gateway.http.get("/metrics")).text
    assert 'failsoft_slo_budget_left{model="iris",objective="accuracy",tenant=""}' in metrics
    assert 'failsoft_slo_events_total{model="iris",objective="accuracy",tenant=""} 50.0' in metrics
    assert 'failsoft_slo_bad_events_total{model="iris",objective="accuracy",tenant=""} 10.0' in (
        metrics
    )
    rules = (await gateway.http.get("/admin/slo/rules", headers=ADMIN)).text
    assert "FailsoftSLOBurnAccuracyPage1h" in rules
    assert 'objective="accuracy"' in rules

    # Good labels afterwards: the short windows clear the page.
    gateway.wall.advance(3600)
    await gateway.feedback("iris", labels(range(50, 60), wrong=set()))
    gateway.app.operate.judge()
    assert not any(severity == "page" for _, severity, _ in gateway.firing())


async def test_a_regression_is_right_within_its_tolerance(gateway: Gateway) -> None:
    for n in range(10):
        await gateway.infer("width", f"w{n}", petal=3.0)  # predicts 1.0
    truth = [1.05, 0.95, 1.0, 1.09, 0.92, 1.0, 1.0, 1.0, 1.3, 0.5]  # the last two are off
    items = [{"request_id": f"w{n}", "value": v} for n, v in enumerate(truth)]
    assert (await gateway.feedback("width", items))["joined"] == 10
    row = await gateway.slo("width")
    assert (row["events"], row["bad"], row["tolerance"]) == (10, 2, 0.1)
    assert row["budget_left"] == pytest.approx(1 - 2 / 1.0)  # 10 % allowed of 10: 1
