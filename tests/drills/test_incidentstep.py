"""A drill's incident expectations: scored from the incident the gateway gives and the outcomes."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from failsoft.drills.experiment import ExperimentError, load_experiment
from failsoft.drills.incidentstep import (
    IncidentExpect,
    Receiver,
    incident_checks,
    score_incident,
)
from failsoft.drills.load import Outcomes

STARTED = 1_000.0
ACTOR = "runbook:all-replicas-out"


def outcomes(impact_from: int | None) -> Outcomes:
    """10 requests a second for 10 s, answered well except from ``impact_from`` on (degraded)."""
    offsets = np.arange(100) / 10.0
    made = Outcomes.empty(offsets, ["default"] * 100, STARTED)
    made.status[:] = 200
    made.correct[:] = True
    if impact_from is not None:
        made.degraded[impact_from:] = True
    return made


def row(at_s: float, kind: str, text: str, **detail: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"at": STARTED + at_s, "kind": kind, "text": text}
    if detail:
        entry["detail"] = detail
    return entry


def incident(opened_s: float, *, mitigated: bool = True) -> dict[str, Any]:
    timeline = [
        row(3.0, "impact", "first degraded request (served by a fallback)"),
        row(3.05, "breaker", "breaker of v1/w0 closed -> open (5 failures)"),
        row(opened_s, "signal", "every replica of iris/v1 is out"),
        row(opened_s, "state", "incident 1 opened (panic, cause infra)"),
        row(opened_s, "runbook", "runbook all-replicas-out started (act)", actor=ACTOR,
            action="started"),
        row(opened_s, "runbook", "webhook oncall queued", actor=ACTOR, action="webhook"),
        row(opened_s + 0.2, "runbook", "webhook oncall delivered after 1 attempt(s) (HTTP 200)",
            actor=ACTOR, action="webhook", attempts=1, delivered=True),
    ]  # fmt: skip
    if mitigated:
        timeline.append(row(9.0, "state", "incident 1 mitigated by failsoft"))
    return {
        "id": 1,
        "model": "iris",
        "cause": "infra",
        "state": "mitigated" if mitigated else "open",
        "opened_at": STARTED + opened_s,
        "mttd_s": opened_s - 3.0,
        "mttm_s": None,
        "timeline": timeline,
    }


EXPECT = IncidentExpect(cause="infra", runbook="all-replicas-out", acted=["webhook"], max_mttd_s=5)


def verdicts(checks: list[tuple[str, str, str, bool]]) -> dict[str, bool]:
    return {name: ok for name, _, _, ok in checks}


def test_an_incident_opened_in_time_with_its_runbook_and_timeline_passes() -> None:
    score = score_incident(EXPECT, incident(3.5), outcomes(30), [], {"oncall": 1})
    assert (score.id, score.cause, score.state) == (1, "infra", "mitigated")
    assert score.first_impact_s == 3.0  # the first degraded request's send time
    assert score.mttd_s == 0.5
    assert score.acted == ["webhook"]
    assert score.missing == []
    assert [r["action"] for r in score.runbook] == ["started", "webhook", "webhook"]
    assert all(verdicts(incident_checks(EXPECT, score)).values())


def test_impact_before_the_fault_is_noise_not_the_incidents_start() -> None:
    noisy = outcomes(30)
    noisy.degraded[5] = True  # sent at 0.5 s, a timeout's fallback long before the fault
    noisy.latency_s[:] = 0.01
    score = score_incident(EXPECT, incident(3.5), noisy, [], {}, since_s=2.95)
    assert score.first_impact_s == 3.0
    assert score_incident(EXPECT, incident(3.5), noisy, [], {}).first_impact_s == 0.5


def test_a_late_incident_fails_the_mttd_check_and_names_what_is_missing() -> None:
    late = incident(9.5, mitigated=False)
    late["timeline"] = [r for r in late["timeline"] if r["kind"] != "breaker"]
    score = score_incident(EXPECT, late, outcomes(30), [], {})
    assert score.mttd_s == 6.5
    assert score.missing == ["breaker|ejection|probe|replica", "mitigated"]
    checks = verdicts(incident_checks(EXPECT, score))
    assert checks["incident MTTD"] is False
    assert checks["incident timeline complete"] is False
    assert checks["incident opened"] is True


def test_a_webhook_only_queued_is_not_an_action_done_and_another_runbook_does_not_count() -> None:
    queued = incident(3.5)
    queued["timeline"] = [r for r in queued["timeline"] if "delivered" not in r["text"]]
    score = score_incident(EXPECT, queued, outcomes(30), [], {})
    assert score.acted == []
    assert verdicts(incident_checks(EXPECT, score))["runbook all-replicas-out acted"] is False
    other = IncidentExpect(runbook="another", acted=[])
    score = score_incident(other, incident(3.5), outcomes(30), [], {})
    assert score.runbook == []
    assert score.missing == ["runbook"]


def test_no_incident_fails_every_incident_check() -> None:
    score = score_incident(EXPECT, None, outcomes(30), [], {})
    checks = verdicts(incident_checks(EXPECT, score))
    assert not any(checks.values()), checks


def test_the_receiver_keeps_what_a_real_post_sends() -> None:
    receiver = Receiver()
    try:
        request = urllib.request.Request(
            receiver.url,
            data=json.dumps({"text": "hello"}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 200
    finally:
        receiver.close()
    assert receiver.count == 1
    assert receiver.bodies == [{"text": "hello"}]


def test_webhooks_without_incident_expectations_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "drill.yaml"
    path.write_text(
        "name: d\nload: {model: iris, rate: 1, duration_s: 2, requests: [{inputs: [{a: 1}]}]}\n"
        "webhooks: [oncall]\n"
    )
    with pytest.raises(ExperimentError, match="webhooks"):
        load_experiment(path)
