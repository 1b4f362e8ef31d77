"""A drill's flag steps: how they are written (and refused), which versions a step switches
off, and how the scorecard judges one on a synthetic run (10 req/s for 10 s)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from failsoft.drills.experiment import Expectations, ExperimentError, load_experiment
from failsoft.drills.flagstep import FlagOutcome, score_flag, switched_versions
from failsoft.drills.scorecard import flag_checks
from tests.drills.test_experiment import _drill, _problems, _write

HALT = {"kind": "boolean", "value": True}


def test_a_flag_step_loads(tmp_path: Path) -> None:
    path = _write(
        tmp_path, _drill(flags=[{"at_s": 2, "for_s": 3, "key": "failsoft.halt.iris", "spec": HALT}])
    )
    step = load_experiment(path).flags[0]
    assert (step.at_s, step.for_s, step.key, step.spec) == (2, 3, "failsoft.halt.iris", HALT)


@pytest.mark.parametrize(
    ("flags", "expect", "problem"),
    [
        (
            [{"at_s": 2, "key": "x", "spec": {"kind": "boolean", "value": "yes"}}],
            {},
            "flags[0]: spec: value: 'yes' is not a boolean",
        ),
        (
            [{"at_s": 8, "for_s": 3, "key": "x", "spec": HALT}],
            {},
            "flags[0] runs to 11 s, after the load (10 s)",
        ),
        ([{"at_s": 1, "key": "bad key", "spec": HALT}], {}, "flags[0].key: String should match"),
        ([], {"max_calls_to_switched": 0}, "need flags"),
    ],
)
def test_a_bad_flag_step_is_named(
    tmp_path: Path, flags: list[Any], expect: dict[str, Any], problem: str
) -> None:
    path = _write(tmp_path, _drill(flags=flags, expect=expect))
    problems = _problems(path)
    assert any(problem in line for line in problems), problems
    with pytest.raises(ExperimentError):
        load_experiment(path)


@pytest.mark.parametrize(
    ("key", "spec", "switched"),
    [
        ("failsoft.halt.iris", HALT, ["v1", "v2"]),
        ("failsoft.halt.iris.v2", HALT, ["v2"]),
        ("failsoft.disable.iris.v1", HALT, ["v1"]),
        ("failsoft.disable.iris.v1", {**HALT, "value": False}, []),
        ("failsoft.disable.iris.v9", HALT, []),
        ("failsoft.halt.other", HALT, []),
        ("failsoft.feature.iris.hedging", {**HALT, "value": False}, []),
        ("banner", {"kind": "string", "value": "x"}, []),
        (
            "failsoft.halt.iris",
            {**HALT, "rules": [{"when": {"tenants": ["a"]}, "value": True}]},
            [],
        ),
    ],
)
def test_the_versions_a_step_switches_off(key: str, spec: Any, switched: list[str]) -> None:
    assert switched_versions(key, spec, "iris", ["v1", "v2"]) == switched


OFFSETS = np.arange(100) / 10


def run(served_by: list[str], status: list[int] | None = None) -> dict[str, Any]:
    outcome = FlagOutcome(1, "failsoft.halt.iris.v1", 3.0, 3.02, 200, "", 6.0, 6.01, ["v1"], 0)
    degraded = np.array(["fallback" in who for who in served_by])
    codes = np.array(status or [200] * 100)
    scored = score_flag(outcome, "iris", OFFSETS, codes, degraded, served_by)
    checks = flag_checks(scored, Expectations(max_switch_effective_s=1, max_calls_to_switched=0))
    return {"score": scored, "checks": {c.name: (c.measured, c.ok) for c in checks}}


def test_a_switch_that_held_passes() -> None:
    served = ["iris/v1/w0"] * 31 + ["iris/v1/fallback:version:v2"] * 29 + ["iris/v1/w0"] * 40
    result = run(served)
    scored = result["score"]
    assert scored.effective_s == pytest.approx(0.02)  # the admin call's round trip
    assert scored.answers == {"fallback": 29, "clean 503": 0, "other": 0}
    assert result["checks"] == {
        "flag 1 set": ("200 in 20 ms", True),
        "flag 1 effective": ("0.02 s", True),
        "flag 1 calls to v1": ("0", True),
        "flag 1 answers while switched": ("0 other of 29", True),
    }


def test_an_answer_from_the_switched_version_while_it_held_fails() -> None:
    served = ["iris/v1/w0"] * 45 + ["iris/v1/fallback:version:v2"] * 15 + ["iris/v1/w0"] * 40
    status = [200] * 100
    status[50] = 503
    result = run(served, status)
    assert result["score"].effective_s == pytest.approx(1.4)  # the last v1 answer, at 4.4 s
    assert result["score"].answers == {"fallback": 14, "clean 503": 1, "other": 14}
    assert result["checks"]["flag 1 effective"] == ("1.40 s", False)
    assert result["checks"]["flag 1 answers while switched"] == ("14 other of 29", False)
