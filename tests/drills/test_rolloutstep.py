"""A drill's rollout step: its spec checked like the admin API checks it, and the scoring of
a rollout as it ran (failed requests while it ran, how soon clients were back on the
stable version, the outcome and its evidence)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from failsoft.drills.experiment import Experiment
from failsoft.drills.rolloutstep import (
    RolloutExpect,
    RolloutOutcome,
    RolloutStep,
    rollout_checks,
    score_rollout,
)

STARTED_AT = 1_800_000_000.0
CHECK = {"name": "replica error rate", "verdict": "fail", "value": 0.2, "threshold": 0.01}


def step(**fields: Any) -> RolloutStep:
    data = {"at_s": 2, "spec": {"model": "iris", "to": "v2"}, "expect": {"outcome": "promoted"}}
    return RolloutStep.model_validate({**data, **fields})


def test_the_spec_and_its_short_form_are_checked_naming_the_field() -> None:
    with pytest.raises(ValidationError, match="spec: steps: the last step is 60"):
        step(spec={"model": "iris", "to": "v2", "steps": [10, 60]})
    with pytest.raises(ValidationError, match="short: step_s: Input should be greater than 0"):
        step(short={"step_s": 0})
    assert step(short={"step_s": 3}).merged(True)["step_s"] == 3
    assert "step_s" not in step(short={"step_s": 3}).merged(False)
    load = {"model": "iris", "rate": 10, "duration_s": 5, "requests": [{"inputs": [{}]}]}
    with pytest.raises(ValidationError, match="rollouts\\[0\\] is at 6 s, when the load"):
        Experiment.model_validate({"name": "x", "load": load, "rollouts": [step(at_s=6)]})


def rolled_back(history_at: float, **final: Any) -> RolloutOutcome:
    shown = {
        "model": "iris",
        "candidate": "v2",
        "status": "rolled-back",
        "stage": 0,
        "stages": ["10%", "50%", "100%"],
        "reason": "10%: failed replica error rate",
        "history": [
            {"at": STARTED_AT + 2, "action": "stepped", "stage": 0},
            {
                "at": STARTED_AT + history_at,
                "action": "rolled-back",
                "checks": [CHECK | {"samples": 120}],
            },
        ],
        "verified": {"ok": True, "stable_share": 1.0, "probes_passed": 2, "probes_failed": 0},
        **final,
    }
    return RolloutOutcome(1, 2.0, 201, "", "iris-1", shown, history_at + 0.1)


def test_a_rollback_is_scored_on_the_requests_sent_while_it_ran() -> None:
    offsets = np.arange(0, 20, 0.5)  # 40 requests, 2 a second
    status = np.full(len(offsets), 200)
    status[8] = 503  # at 4.0 s: while the rollout ran
    status[30] = 503  # at 15 s: after it ended
    served = ["iris/v1/w0"] * len(offsets)
    served[23] = "iris/v2/r0"  # sent at 11.5 s, after the rollback at 11.0 s: 0.5 s late
    score = score_rollout(rolled_back(11.0), offsets, status, 20.0, served, STARTED_AT)
    assert (score.requests, score.failed) == (19, 1)  # sent in [2.0, 11.1)
    assert score.back_s == pytest.approx(0.5)
    expect = RolloutExpect(
        outcome="rolled-back", at_stage=0, max_failed_pct=10, failed_check="error"
    )
    checks = {check.name: check for check in rollout_checks(score, expect)}
    assert all(check.ok for check in checks.values()), checks
    assert checks["rollout 1 back to stable"].measured == "0.500 s"
    assert (
        "replica error rate fail 0.2 (threshold 0.01, n=120)"
        in checks["rollout 1 evidence"].measured
    )


def test_a_promotion_where_none_may_be_fails_its_outcome() -> None:
    outcome = rolled_back(11.0, status="promoted", stage=2)
    offsets = np.arange(0, 20, 0.5)
    score = score_rollout(outcome, offsets, np.full(len(offsets), 200), 20.0)
    checks = rollout_checks(score, RolloutExpect(outcome="not-promoted"))
    outcome_check = next(check for check in checks if check.name == "rollout 1 outcome")
    assert (outcome_check.measured, outcome_check.ok) == ("promoted at 100%", False)


def test_a_refused_rollout_fails_its_start_and_nothing_else_is_judged() -> None:
    refused = RolloutOutcome(1, 2.0, 400, "to: version 'v9' is not loaded", "", {}, None)
    score = score_rollout(refused, np.zeros(0), np.zeros(0), 10.0)
    (only,) = rollout_checks(score, RolloutExpect(outcome="promoted"))
    assert not only.ok
    assert "v9" in only.measured
