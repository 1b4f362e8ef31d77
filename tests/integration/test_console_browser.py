"""The web console in a real browser: Debian's Chromium driven by Playwright, against a real
gateway (two model versions, a drift profile, a control store) on an ephemeral port.

Signs in with a named token, loads every page and checks what it shows, pauses a rollout
with the page's button (checked through the admin API and the audit log, actor = the
token's name), sees the live refresh pick up a change made elsewhere, and saves
screenshots under the test's tmp dir (their paths are printed). Then a real incident:
every replica of iris v1 fails (an injected fault), an incident opens and a runbook waits
for approval; the console shows it with its timeline, the Acknowledge and Approve buttons
work (checked through the admin API and the audit log), and the overview's SLO budget
bars show the budget those failures spent.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from failsoft.drills.server import ServerProcess
from failsoft.server.ui.incident_view import duration, times
from failsoft.server.ui.sessions import COOKIE
from tests.integration.conftest import ADMIN_TOKEN, REPO

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
ROW = [5.1, 3.5, 1.4, 0.2]
DEADLINE_S = 30.0
RUNBOOK = "page-the-owner"
APPROVED_FLAG = "console.runbook.approved"


def _browser_or_fail() -> Any:
    """Playwright's sync API; without Chromium or Playwright: a failure on CI, else a skip."""
    missing = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing = "playwright is not installed (pip install 'failsoft[test]')"
    if missing is None and not CHROMIUM.exists():
        missing = f"{CHROMIUM} is missing (apt-get install -y chromium)"
    if missing is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(missing)
        pytest.skip(missing)
    return sync_playwright


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
      v2: {{backend: onnx, path: {demo_dir}/iris-v2.onnx, replicas: 2}}
    default_version: v1
    slo: {{quality_pct: 99.0}}
    health_check:
      inputs: {{features: [[5.1, 3.5, 1.4, 0.2]]}}
      expect: {{label: [0]}}
    drift:
      profile: {demo_dir}/iris-v1.profile.json
      evaluate_every_s: 0.5
      flush_every_s: 0.1
chaos: {{enabled: true}}
incidents: {{evaluate_every_s: 0.25, persist_every_s: 0.25}}
runbooks:
  runbooks:
    - name: {RUNBOOK}
      mode: act
      trigger: {{incident: opened, cause: [infra]}}
      steps:
        - {{action: kill_switch, key: {APPROVED_FLAG}, approve: true}}
"""


@pytest.fixture(scope="module")
def scorecards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real drill's scorecard and chart: replica-errors, short (a few seconds of load)."""
    out = tmp_path_factory.mktemp("scorecards")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    drill = [sys.executable, "-m", "failsoft", "drill", "run"]
    ran = subprocess.run(
        [*drill, str(REPO / "drills" / "replica-errors.yaml"), "--short", "3", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert (out / "replica-errors.json").exists(), ran.stdout + ran.stderr
    return out


@pytest.fixture
def gateway(demo_dir: Path, tmp_path: Path, scorecards: Path) -> Iterator[ServerProcess]:
    folder = tmp_path / "gw"
    folder.mkdir()
    path = folder / "failsoft.yaml"
    path.write_text(config(demo_dir))
    env = {
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "FAILSOFT_ADMIN_TOKEN": ADMIN_TOKEN,
        "FAILSOFT_UI_SCORECARDS": str(scorecards),
    }
    server = ServerProcess(path, "--data-dir", str(folder / "data"), env=env).start()
    yield server
    server.stop()


def _rollout(http: httpx.Client) -> dict[str, Any]:
    answer = http.get("/admin/rollouts/iris", headers=AUTH)
    assert answer.status_code == 200, answer.text
    data: dict[str, Any] = answer.json()
    return data


def test_the_console_in_a_real_browser(
    gateway: ServerProcess, tmp_path: Path, scorecards: Path
) -> None:
    sync_playwright = _browser_or_fail()
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with httpx.Client(base_url=gateway.url, timeout=10) as http:
        refused = http.post("/admin/tokens", json={"name": "x", "scopes": ["read"]})
        assert refused.status_code == 401
        made = http.post(
            "/admin/tokens", json={"name": "ops-console", "scopes": ["read", "write"]}, headers=AUTH
        )
        assert made.status_code == 201, made.text
        token = made.json()["token"]
        started = http.post(
            "/admin/rollouts",
            json={
                "model": "iris",
                "to": "v2",
                "steps": [10, 50, 100],
                "step_s": 600,
                "check_every_s": 0.5,
            },
            headers=AUTH,
        )
        assert started.status_code == 201, started.text
        rollout_id = started.json()["id"]
        body = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 4], "data": ROW}]}
        for _ in range(20):  # rows for the drift monitor and the rollout's analysis
            assert http.post("/v2/models/iris/infer", json=body).status_code == 200
        deadline = time.monotonic() + DEADLINE_S
        while (analysis := _rollout(http)["analysis"]) is None:
            assert time.monotonic() < deadline, "no analysis ran"
            time.sleep(0.1)

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"]
            )
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.set_default_timeout(DEADLINE_S * 1000)

                # Not signed in: every page sends you to the sign-in form.
                page.goto(f"{gateway.url}/ui/rollouts")
                assert page.url.endswith("/ui/login")
                page.fill("#token", "not-a-token")
                page.click("button[type=submit]")
                assert "That token is not accepted here." in page.inner_text("main")
                page.fill("#token", token)
                page.click("button[type=submit]")
                page.wait_for_url(f"{gateway.url}/ui")

                cookie = next(c for c in page.context.cookies() if c["name"] == "failsoft_session")
                assert cookie["httpOnly"] is True
                assert cookie["sameSite"] == "Strict"

                # Overview: the real models, versions and replicas, and who is signed in.
                overview = page.inner_text("main")
                assert "signed in as ops-console" in page.inner_text("header")
                assert "iris" in overview
                assert "v1" in overview
                assert "v2" in overview
                assert page.locator("tr.replica").count() == 3  # v1: 1 replica, v2: 2
                assert overview.count("healthy") == 3

                # The kill switch of v2, off then on again, through the admin API's flags.
                page.click("form[action='/ui/switches/iris/v2/off'] button")
                page.wait_for_url(f"{gateway.url}/ui")
                assert "iris/v2: switched off." in page.inner_text(".flash")
                assert "switched off" in page.locator("td.switch").nth(1).inner_text()
                flag = http.get("/admin/flags/failsoft.disable.iris.v2", headers=AUTH)
                assert flag.status_code == 200, flag.text
                assert flag.json()["spec"]["value"] is True
                _shot(page, shots / "overview.png")
                page.click("form[action='/ui/switches/iris/v2/on'] button")
                page.wait_for_url(f"{gateway.url}/ui")
                assert "iris/v2: switched on again." in page.inner_text(".flash")
                cleared = http.get("/admin/flags/failsoft.disable.iris.v2", headers=AUTH)
                assert cleared.status_code == 404

                # Map: models → versions → replicas → fallback, a switch made elsewhere shows live.
                page.click("nav >> text=Map")
                page.wait_for_url(f"{gateway.url}/ui/map")
                model = page.locator("li[data-kind='model'][data-name='iris']")
                assert model.get_attribute("data-state") == "operational"
                assert model.locator("li[data-kind='replica'][data-state='up']").count() == 3
                off = {"kind": "boolean", "value": True}
                key = "/admin/flags/failsoft.disable.iris.v2"
                assert http.put(key, json=off, headers=AUTH).status_code in (200, 201)
                page.locator("li[data-name='v2'][data-state='switched-off']").wait_for()
                assert "switched-off" in page.inner_text("main")
                _shot(page, shots / "map.png")
                assert http.delete(key, headers=AUTH).status_code == 200

                # Rollouts: the rollout with its decisions; pause it with the button.
                page.click("nav >> text=Rollouts")
                page.wait_for_url(f"{gateway.url}/ui/rollouts")
                card = page.locator(f"section[data-rollout='{rollout_id}']")
                assert "progressing" in card.inner_text()
                assert "iris: v1 → v2" in card.inner_text()
                assert card.locator("tr.decision").count() >= 1
                shown_analysis = card.locator("table.analysis").inner_text()
                for check in analysis["checks"]:
                    assert check["name"] in shown_analysis
                card.locator("button", has_text="Pause rollout").click()
                page.wait_for_url(f"{gateway.url}/ui/rollouts")
                assert f"Rollout {rollout_id}: pause done." in page.inner_text(".flash")
                assert _rollout(http)["status"] == "paused"
                assert "paused by an operator" in card.inner_text()
                _shot(page, shots / "rollouts-paused.png")

                # Live refresh: a resume made elsewhere shows without a reload.
                resumed = http.post(f"/admin/rollouts/{rollout_id}/resume", headers=AUTH)
                assert resumed.status_code == 200, resumed.text
                card.locator("button", has_text="Pause rollout").wait_for()
                assert "progressing" in card.inner_text()

                # Drift: the monitor of iris v1 with its reference profile and rows seen.
                page.click("nav >> text=Drift")
                page.wait_for_url(f"{gateway.url}/ui/drift")
                drift = page.locator("section[data-model='iris']")
                assert "v1:" in drift.inner_text()
                assert "rows seen" in drift.inner_text()
                _shot(page, shots / "drift.png")

                # Audit: the pause, by the token's name.
                page.click("nav >> text=Audit log")
                page.wait_for_url(f"{gateway.url}/ui/audit")
                rows = [row.inner_text() for row in page.locator("tr.entry").all()]
                paused = [r for r in rows if "rollout.paused" in r]
                assert paused, rows
                assert "ops-console" in paused[0]
                assert f"rollout:{rollout_id}" in paused[0]
                switched = [r for r in rows if "failsoft.disable.iris.v2" in r]
                assert any("flag.set" in r and "ops-console" in r for r in switched), rows
                assert any("flag.cleared" in r and "ops-console" in r for r in switched), rows
                _shot(page, shots / "audit.png")

                # Scorecards: the drill's verdict, its checks and its chart.
                page.click("nav >> text=Scorecards")
                page.wait_for_url(f"{gateway.url}/ui/scorecards")
                card_json = json.loads((scorecards / "replica-errors.json").read_text())
                shown = page.locator("section[data-scorecard='replica-errors']")
                verdict = "PASS" if card_json["passed"] else "FAIL"
                assert verdict in shown.locator("h2").inner_text()
                for check in card_json["checks"]:
                    assert check["name"] in shown.inner_text()
                chart = shown.locator("img.chart")
                chart.scroll_into_view_if_needed()
                assert chart.evaluate("img => img.complete && img.naturalWidth") > 100
                _shot(page, shots / "scorecards.png")

                # An action without the page's CSRF token changes nothing.
                forged = httpx.post(
                    f"{gateway.url}/ui/rollouts/{rollout_id}/pause",
                    data={"csrf": "forged"},
                    cookies={"failsoft_session": cookie["value"]},
                )
                assert forged.status_code == 403
                assert _rollout(http)["status"] == "progressing"

                _incident_in_the_console(page, http, gateway.url, cookie["value"], shots)

                # Sign out: the session is gone, its cookie opens nothing.
                page.click("header button:has-text('Sign out')")
                page.wait_for_url(f"{gateway.url}/ui/login")
                after = httpx.get(
                    f"{gateway.url}/ui", cookies={"failsoft_session": cookie["value"]}
                )
                assert after.status_code == 303
                assert after.headers["location"] == "/ui/login"
            finally:
                browser.close()


def _incident_opened(http: httpx.Client) -> dict[str, Any]:
    """Fail every replica of iris v1 under requests until an incident opens and its
    runbook waits for approval; the incident as the admin API shows it."""
    fault = {"kind": "error", "status": 503, "model": "iris", "version": "v1", "duration_s": 3}
    added = http.post("/admin/faults", json=fault, headers=AUTH)
    assert added.status_code == 201, added.text
    body = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 4], "data": ROW}]}
    deadline = time.monotonic() + DEADLINE_S
    while not (listed := http.get("/admin/incidents", headers=AUTH).json()["incidents"]):
        assert time.monotonic() < deadline, "no incident opened"
        for _ in range(5):
            http.post("/v2/models/iris/infer", json=body)
    number = listed[0]["id"]
    while True:
        incident: dict[str, Any] = http.get(f"/admin/incidents/{number}", headers=AUTH).json()
        if any(e["text"].startswith("waiting for approval") for e in incident["timeline"]):
            return incident
        assert time.monotonic() < deadline, "the runbook did not wait for approval"
        time.sleep(0.1)


def _incident_in_the_console(
    page: Any, http: httpx.Client, url: str, session_cookie: str, shots: Path
) -> None:
    incident = _incident_opened(http)
    number = incident["id"]
    assert (incident["model"], incident["cause"], incident["state"]) == ("iris", "infra", "open")

    # The list: the incident with its state, cause and time to detect.
    page.click("nav >> text=Incidents")
    page.wait_for_url(f"{url}/ui/incidents")
    row = page.locator(f"tr.incident[data-incident='{number}']")
    shown = row.inner_text()
    for text in ("open", "iris", "infra", duration(incident["mttd_s"])):
        assert text in shown, (text, shown)
    _shot(page, shots / "incidents.png")

    # The incident: its timeline, the runbook waiting for approval.
    row.locator("a").first.click()
    page.wait_for_url(f"{url}/ui/incidents/{number}")
    assert page.inner_text("#incident-state") == "open"
    kinds = {e.get_attribute("data-kind") for e in page.locator("tr.entry").all()}
    assert {e["kind"] for e in incident["timeline"]} <= kinds, kinds
    timeline = page.locator("table.timeline").inner_text()
    for entry in incident["timeline"]:
        assert entry["text"] in timeline, entry
    assert RUNBOOK in page.locator("section.approvals").inner_text()
    _shot(page, shots / "incident-open.png")

    # Actions without the page's CSRF token change nothing.
    for form in ({"csrf": "forged"}, {}):
        forged = httpx.post(
            f"{url}/ui/incidents/{number}/ack", data=form, cookies={COOKIE: session_cookie}
        )
        assert forged.status_code == 403
    assert http.get(f"/admin/incidents/{number}", headers=AUTH).json()["state"] == "open"

    # A status update posted elsewhere shows live, as text (it comes from people).
    said = "<b>v1</b> is failing; <script>alert(1)</script> looking"
    posted = http.post(f"/admin/incidents/{number}/update", json={"text": said}, headers=AUTH)
    assert posted.status_code == 200, posted.text
    page.locator("div.update", has_text="is failing").wait_for()
    assert said in page.locator("div.update").first.inner_text()
    assert page.locator("div.update b, div.update script").count() == 0

    # Acknowledge and Approve with the page's buttons: the admin API's own routes.
    page.click(f"form[action='/ui/incidents/{number}/ack'] button")
    page.wait_for_url(f"{url}/ui/incidents/{number}")
    assert f"Incident {number}: acknowledged." in page.inner_text(".flash")
    assert page.inner_text("#incident-state") == "acknowledged"
    acked = http.get(f"/admin/incidents/{number}", headers=AUTH).json()
    assert acked["state"] == "acknowledged"
    assert "acknowledged by ops-console" in page.locator("table.timeline").inner_text()
    page.click(f"form[action='/ui/incidents/{number}/approve'] button")
    page.wait_for_url(f"{url}/ui/incidents/{number}")
    assert f"Incident {number}: approved." in page.inner_text(".flash")
    assert page.locator("section.approvals").count() == 0
    approved = f"runbook {RUNBOOK} step 1 approved by ops-console"
    assert approved in page.locator("table.timeline").inner_text()
    deadline = time.monotonic() + DEADLINE_S
    while http.get(f"/admin/flags/{APPROVED_FLAG}", headers=AUTH).status_code != 200:
        assert time.monotonic() < deadline, "the approved runbook step did not run"
        time.sleep(0.1)
    _shot(page, shots / "incident.png")
    audit = http.get("/admin/audit", params={"limit": 1000}, headers=AUTH).json()["entries"]
    by = {(e["action"], e["actor"]) for e in audit if e["target"] == f"incident:{number}"}
    assert ("incident.acknowledged", "ops-console") in by, by
    approvals = [e for e in audit if e["action"] == "runbook.approved"]
    assert [e["detail"]["by"] for e in approvals] == ["ops-console"], approvals

    # The overview's budget bars: the book's numbers, the failures spent some budget.
    page.click("nav >> text=Overview")
    page.wait_for_url(f"{url}/ui")
    slos = http.get("/admin/slo", headers=AUTH).json()["slos"]
    rows = [r for r in slos if r["model"] == "iris" and not r["tenant"]]
    assert {r["objective"] for r in rows} == {"availability", "quality"}
    for r in rows:
        objective = f"div.budget[data-objective='{r['objective']}']"
        bar = page.locator(f"section[data-model='iris'] {objective}")
        left = r["budget_left"]
        assert f"{100 * max(0.0, left):.1f}% left" in bar.inner_text()
        if left < 0:
            assert f"overspent: {times(1 - left)} the budget" in bar.inner_text()
        assert f"{r['events']} requests, {r['bad']} bad" in bar.inner_text()
        meter = bar.locator("meter").evaluate("m => m.value")
        assert meter == pytest.approx(min(1.0, max(0.0, left)))
    availability = next(r for r in rows if r["objective"] == "availability")
    assert availability["bad"] > 0
    assert availability["budget_left"] < 1.0
    _shot(page, shots / "overview-slo.png")


def _shot(page: Any, path: Path) -> None:
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")


def test_pages_without_a_session_redirect_and_never_show_internals(
    gateway: ServerProcess,
) -> None:
    deadline = time.monotonic() + DEADLINE_S
    with httpx.Client(base_url=gateway.url, timeout=10) as http:
        for path in ("/ui", "/ui/incidents", "/ui/incidents/1", "/ui/rollouts", "/ui/audit"):
            answer = http.get(path)
            assert answer.status_code == 303, path
            assert answer.headers["location"] == "/ui/login"
            assert answer.headers["x-frame-options"] == "DENY"
        refused = http.post("/ui/rollouts/iris/pause", data={"csrf": "x"})
        assert refused.status_code == 401
        assert "Your session ended." in refused.text
        login = http.post("/ui/login", data={"token": "<script>alert(1)</script>"})
        assert login.status_code == 401
        assert "<script>alert" not in login.text

        # A read-only token signs in and reads, but its actions are refused by the scope check.
        made = http.post("/admin/tokens", json={"name": "viewer", "scopes": ["read"]}, headers=AUTH)
        assert made.status_code == 201, made.text
        started = http.post(
            "/admin/rollouts", json={"model": "iris", "to": "v2", "step_s": 600}, headers=AUTH
        )
        assert started.status_code == 201, started.text
        signed_in = http.post("/ui/login", data={"token": made.json()["token"]})
        assert signed_in.status_code == 303
        page = http.get("/ui/rollouts")
        found = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert found is not None, page.text
        acted = http.post("/ui/rollouts/iris/pause", data={"csrf": found.group(1)})
        assert acted.status_code == 303
        shown = http.get("/ui/rollouts").text
        assert "pause refused — Your token lacks the scope" in shown
        assert http.get("/admin/rollouts/iris", headers=AUTH).json()["status"] == "progressing"
        acked = http.post("/ui/incidents/1/ack", data={"csrf": found.group(1)})
        assert acked.status_code == 303
        assert (
            "Incident 1: ack refused — Your token lacks the scope"
            in http.get(acked.headers["location"]).text
        )
        assert time.monotonic() < deadline


def test_a_missing_chromium_fails_on_ci_and_skips_elsewhere(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(sys.modules[__name__], "CHROMIUM", tmp_path / "no-chromium")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="no-chromium is missing"):
        _browser_or_fail()
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception, match="no-chromium is missing"):
        _browser_or_fail()
