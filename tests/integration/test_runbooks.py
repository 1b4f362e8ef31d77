"""The bundled runbook on a real gateway: every replica of iris v1 fails.

An infra incident opens; the runbook all-replicas-out (runbooks/) notifies a
real local webhook receiver, waits for `failsoft incident approve 1`, switches
iris/v1 off through the flag service (the fallback answers; the switch
expires after a few seconds here), and verifies the incident is mitigated.
Every step is on the incident's timeline and in the audit log with the actor
runbook:all-replicas-out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from failsoft.drills.incidentstep import approver
from failsoft.drills.target import AdminClient
from tests.control.test_webhooks import Receiver
from tests.integration.conftest import ADMIN_TOKEN, REPO
from tests.integration.test_incidents import AUTH, Gateway, Load, cli, config, poll

pytestmark = pytest.mark.integration

RUNBOOK = "runbook:all-replicas-out"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver([500])
    yield made
    made.close()


@pytest.fixture
def gateway(tmp_path: Path, demo_dir: Path) -> Iterator[Gateway]:
    made = Gateway(tmp_path / "gw", demo_dir)
    yield made
    if made.server is not None:  # stopped, workers and all, whatever the test did
        made.server.stop()


def test_the_bundled_runbook_switches_the_version_off_after_approval_and_verifies(
    tmp_path: Path, demo_dir: Path, receiver: Receiver, gateway: Gateway
) -> None:
    books = tmp_path / "runbooks"
    books.mkdir()
    bundled = (REPO / "runbooks" / "all-replicas-out.yaml").read_text()
    assert "for_s: 60" in bundled
    (books / "all-replicas-out.yaml").write_text(bundled.replace("for_s: 60", "for_s: 3"))
    (gateway.folder / "failsoft.yaml").write_text(
        config(demo_dir)
        + f"runbooks: {{dir: {books}, webhooks: {{oncall: '{receiver.url}'}},"
        + " webhook: {backoff_s: 0.1}}\n"
    )
    server = gateway.start()
    load = Load(server.url)
    try:
        poll(lambda: sum(load.statuses.values()) > 20, 10, "good traffic first")
        fault = {"kind": "error", "status": 503, "model": "iris", "version": "v1", "duration_s": 4}
        added = httpx.post(f"{server.url}/admin/faults", json=fault, headers=AUTH, timeout=10)
        assert added.status_code == 201, added.text

        def texts() -> list[str]:
            found = gateway.get("/admin/incidents")["incidents"]
            if not found:
                return []
            timeline = gateway.get(f"/admin/incidents/{found[-1]['id']}")["timeline"]
            return [e["text"] for e in timeline if e["kind"] == "runbook"]

        poll(lambda: any(t.startswith("waiting for approval") for t in texts()), 15, "a gate")
        assert not any(t.startswith("done:") for t in texts())  # nothing done before approval
        cli(server, "incident", "approve", "1")
        poll(lambda: any(t.startswith("verified:") for t in texts()), 40, "verified mitigated")
    finally:
        load.stop()
    incident = gateway.get("/admin/incidents/1")
    said = [e for e in incident["timeline"] if e["kind"] == "runbook"]
    print("\n".join(f"{e['at']:.3f} {e['text']}" for e in said))
    print(f"MTTD {incident['mttd_s']} s, MTTM {incident['mttm_s']} s")
    wanted = [
        "runbook all-replicas-out started (act)",
        "webhook oncall queued",
        "webhook oncall delivered after 2 attempt(s) (HTTP 200)",
        "waiting for approval to switch iris/v1 off for 3 s (the fallback answers)"
        " (failsoft incident approve 1)",
        "done: switch iris/v1 off for 3 s (the fallback answers)",
        "runbook all-replicas-out finished",
    ]
    for text in wanted:
        assert text in [e["text"] for e in said], text
    assert all(e["detail"]["actor"] == RUNBOOK for e in said if "approved by" not in e["text"])
    assert incident["state"] == "mitigated"
    assert incident["cause"] == "infra"
    assert receiver.bodies[-1]["incident"]["id"] == 1
    assert receiver.bodies[-1]["text"] == "every replica of iris/v1 is out (incident 1)"
    assert load.statuses.get("200:None", 0) + load.statuses.get("200:true", 0) > 0
    assert not [key for key in load.statuses if not key.startswith("200")], load.statuses
    by_runbook = audited(server.url, RUNBOOK, {"runbook.disable_version"})
    assert any(a.startswith("flag") for a in by_runbook), by_runbook  # the flag service's own
    cli(server, "incident", "update", "1", "<b>fallback</b> answered; all good again")
    public = httpx.get(f"{server.url}/status", timeout=10)  # no token
    assert public.status_code == 200
    assert public.headers["content-type"].startswith("text/html")
    assert "&lt;b&gt;fallback&lt;/b&gt; answered; all good again" in public.text
    assert "Incident 1: iris" in public.text
    assert "every replica" not in public.text  # no internals
    again = httpx.post(f"{server.url}/admin/incidents/1/approve", headers=AUTH, timeout=10)
    assert again.status_code == 400
    assert again.json() == {"error": "no runbook step of incident 1 awaits approval"}


def test_a_pending_approval_survives_a_gateway_restart_and_acts_when_given(
    demo_dir: Path, gateway: Gateway
) -> None:
    (gateway.folder / "failsoft.yaml").write_text(
        config(demo_dir)
        + """runbooks:
  runbooks:
    - name: gated
      mode: act
      trigger: {incident: opened, cause: [infra]}
      steps:
        - {action: disable_version, model: "{model}", version: "{version}", for_s: 2,
           approve: true}
"""
    )
    server = gateway.start()
    load = Load(server.url)
    try:
        poll(lambda: sum(load.statuses.values()) > 20, 10, "good traffic first")
        fault = {"kind": "error", "status": 503, "model": "iris", "version": "v1", "duration_s": 3}
        added = httpx.post(f"{server.url}/admin/faults", json=fault, headers=AUTH, timeout=10)
        assert added.status_code == 201, added.text
        poll(lambda: gateway.get("/admin/incidents")["incidents"], 10, "an incident")
        poll(lambda: gateway.get("/admin/incidents/1")["pending_approvals"], 10, "a gate")
    finally:
        load.stop()
    before = gateway.get("/admin/incidents/1")
    [pending] = before["pending_approvals"]
    assert (pending["runbook"], pending["step"]) == ("gated", 0)

    gateway.stop()  # mid-incident, the gate still closed
    server = gateway.start()
    after = gateway.get("/admin/incidents/1")
    assert after["pending_approvals"] == before["pending_approvals"]
    assert after["timeline"][: len(before["timeline"])] == before["timeline"]
    texts = [e["text"] for e in after["timeline"] if e["kind"] == "runbook"]
    assert texts[-1].startswith("still waiting for approval to switch iris/v1 off for 2 s")
    assert texts.count("runbook gated started (act)") == 1

    # Approved as a drill's on-call does (drills/incidentstep.py: approve as it waits).
    approvals = asyncio.run(approve_as_a_drill(server.url, gateway))
    assert len(approvals) == 1, approvals

    def said() -> list[str]:
        timeline = gateway.get("/admin/incidents/1")["timeline"]
        return [e["text"] for e in timeline if e["kind"] == "runbook"]

    poll(lambda: "runbook gated finished" in said(), 20, "the approved step ran")
    assert "done: switch iris/v1 off for 2 s (the fallback answers)" in said()
    assert gateway.get("/admin/incidents/1")["pending_approvals"] == []
    audited(server.url, "runbook:gated", {"runbook.disable_version"})


async def approve_as_a_drill(url: str, gateway: Gateway) -> list[float]:
    admin = AdminClient(url, ADMIN_TOKEN)
    stop = asyncio.Event()
    task = asyncio.create_task(approver(admin, "iris", 0.0, stop))
    try:
        for _ in range(100):  # 10 s at most
            await asyncio.sleep(0.1)
            if not await asyncio.to_thread(
                lambda: gateway.get("/admin/incidents/1")["pending_approvals"]
            ):
                break
    finally:
        stop.set()
        approvals = await task
        await admin.close()
    return approvals


OPS = "runbook:replica-ops"


def test_eject_and_restart_workers_act_on_the_process_version_once(
    demo_dir: Path, gateway: Gateway
) -> None:
    text = config(demo_dir).replace(
        f"v1: {{backend: onnx, path: {demo_dir}/iris-v1.onnx, replicas: 2}}",
        f"v1: {{backend: process, replicas: 2, worker: {{backend: onnx, path: "
        f"{demo_dir}/iris-v1.onnx}}}}",
    )
    assert "backend: process" in text
    # Passive ejection off: the runbook's ejection is the only one (the breakers still
    # open, so the version still goes into panic and the incident opens).
    text = text.replace(
        "    default_version: v1\n", "    default_version: v1\n    ejection: {enabled: false}\n"
    )
    assert "ejection: {enabled: false}" in text
    (gateway.folder / "failsoft.yaml").write_text(
        text
        + """runbooks:
  runbooks:
    - name: replica-ops
      mode: act
      trigger: {incident: opened, cause: [infra]}
      steps:
        - {action: eject, for_s: 2}
        - {action: restart_workers}
        - {action: restart_workers}
"""
    )
    server = gateway.start()
    load = Load(server.url)
    try:
        poll(lambda: sum(load.statuses.values()) > 20, 10, "good traffic first")
        pids = {r["name"]: r for r in replicas(gateway)}
        fault = {"kind": "error", "status": 503, "model": "iris", "version": "v1", "duration_s": 3}
        added = httpx.post(f"{server.url}/admin/faults", json=fault, headers=AUTH, timeout=10)
        assert added.status_code == 201, added.text

        def said() -> list[dict[str, Any]]:
            found = gateway.get("/admin/incidents")["incidents"]
            if not found:
                return []
            return gateway.get(f"/admin/incidents/{found[-1]['id']}")["timeline"]

        poll(lambda: any("replica-ops finished" in e["text"] for e in said()), 150, "the run")
    finally:
        load.stop()
    timeline = said()
    print("\n".join(f"{e['at']:.3f} {e['kind']:8} {e['text']}" for e in timeline))
    ours = [e for e in timeline if e["kind"] == "runbook"]
    done = [e for e in ours if e["text"].startswith("done:")]
    assert [e["detail"]["action"] for e in done] == ["eject", "restart_workers"]
    assert done[0]["text"] == "done: eject the replica faring worst of iris/v1 for 2 s"
    assert done[0]["detail"]["result"].endswith("ejected for 2 s")
    assert done[1]["detail"]["result"] == "restarted w0, w1 of iris/v1, one at a time"
    # The same restart again at once: refused by the action cooldown, nothing restarted.
    assert any(
        e["detail"]["action"] == "skipped" and "in its cooldown" in e["text"] for e in ours
    ), ours
    ejected = [e for e in timeline if e["kind"] == "ejection" and "ejected" in e["text"]]
    assert len(ejected) == 1, ejected
    assert ejected[0]["text"].endswith(f"ejected for 2 s ({OPS})"), ejected
    restarts = [e["text"] for e in timeline if e["kind"] == "restart"]
    assert len(restarts) == 2, restarts
    assert all(f"restarted: {OPS}" in line for line in restarts)
    now = {r["name"]: r for r in replicas(gateway)}
    assert all(now[name]["pid"] != pids[name]["pid"] for name in pids), (pids, now)
    assert all(now[name]["available"] for name in now)
    # Every request was answered: v2 while v1 failed or restarted, v1 again after.
    assert not [key for key in load.statuses if not key.startswith("200")], load.statuses
    audited(server.url, OPS, {"runbook.eject", "runbook.restart_workers", "runbook.skipped"})


def audited(url: str, actor: str, expected: set[str]) -> set[str]:
    """``actor``'s audited actions once they include ``expected``: timeline entries are
    audited at the incident book's next checkpoint, a moment after they show."""
    actions: set[str] = set()

    def complete() -> bool:
        audit = httpx.get(f"{url}/admin/audit?limit=1000", headers=AUTH, timeout=10).json()
        actions.update(e["action"] for e in audit["entries"] if e["actor"] == actor)
        return expected <= actions

    poll(complete, 10, f"{sorted(expected)} audited")
    return actions


def replicas(gateway: Gateway) -> list[dict[str, Any]]:
    status = gateway.get("/admin/status")
    return list(status["models"]["iris"]["versions"]["v1"]["replicas"])
