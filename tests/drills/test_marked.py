"""Requests marked degraded: true/false in a drill, judged on synthetic outcomes; and the
drill file's setup steps and marks, validated."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from failsoft.drills.experiment import Experiment
from failsoft.drills.load import Outcomes
from failsoft.drills.scorecard import score

GOOD = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]}
BAD = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 99]}]}


def experiment(**extra: Any) -> Experiment:
    data: dict[str, Any] = {
        "name": "marked",
        "load": {
            "model": "m",
            "rate": 10,
            "duration_s": 2,
            "requests": [{**GOOD, "degraded": False}] * 4 + [{**BAD, "degraded": True}],
        },
        "hypothesis": {"availability_pct": 100},
        "expect": {"max_not_as_marked": 0},
    }
    data.update(extra)
    return Experiment.model_validate(data)


def outcomes(degraded: list[int], warned: list[int], failed: list[int] = ()) -> Outcomes:  # type: ignore[assignment]
    size = 20
    status = np.full(size, 200, dtype=np.int32)
    status[list(failed)] = 503
    flags = np.zeros(size, dtype=bool)
    flags[degraded] = True
    warnings = np.zeros(size, dtype=bool)
    warnings[warned] = True
    return Outcomes(
        offsets=np.arange(size) / 10,
        latency_s=np.full(size, 0.01),
        status=status,
        correct=status == 200,
        degraded=flags,
        priority=["default"] * size,
        started_at=0.0,
        served_by=[""] * size,
        warned=warnings,
    )


VIOLATORS = [4, 9, 14, 19]  # every fifth request is the marked violator


def check(card: Any) -> Any:
    return next(c for c in card.checks if c.name == "degraded as marked")


def test_violators_degraded_and_warned_and_the_others_clean_pass() -> None:
    card = score(experiment(), outcomes(VIOLATORS, VIOLATORS), [], [], duration_s=2)
    assert card.marked == {
        "violators": 4,
        "violators_degraded": 4,
        "violators_warned": 4,
        "others": 16,
        "others_degraded": 0,
        "others_warned": 0,
        "not_as_marked": 0,
    }
    assert check(card).ok
    assert card.passed


@pytest.mark.parametrize(
    ("degraded", "warned", "failed", "wrong"),
    [
        (VIOLATORS[:3], VIOLATORS, [], 1),  # one violator answered by the version
        (VIOLATORS, VIOLATORS[1:], [], 1),  # degraded without saying why
        ([*VIOLATORS, 0, 1], VIOLATORS, [], 2),  # good requests degraded
        (VIOLATORS, [*VIOLATORS, 2], [], 1),  # a good request warned
        (VIOLATORS, VIOLATORS, [3, 4], 2),  # not answered at all
    ],
)
def test_anything_else_fails_the_check(
    degraded: list[int], warned: list[int], failed: list[int], wrong: int
) -> None:
    card = score(experiment(), outcomes(degraded, warned, failed), [], [], duration_s=2)
    assert card.marked is not None
    assert card.marked["not_as_marked"] == wrong
    assert not check(card).ok
    assert f"{wrong} otherwise" in check(card).measured


def test_setup_steps_must_name_configuration_keys() -> None:
    assert experiment(setup=[{"models": {"m": {"input_policy": "degrade"}}}]).setup
    with pytest.raises(ValidationError, match=r"setup\[0\]: give configuration keys"):
        experiment(setup=[{"modles": {}}])
    with pytest.raises(ValidationError, match="max_not_as_marked needs load requests"):
        Experiment.model_validate(
            {
                "name": "x",
                "load": {"model": "m", "rate": 1, "duration_s": 1, "requests": [GOOD]},
                "expect": {"max_not_as_marked": 0},
            }
        )
