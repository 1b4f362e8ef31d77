"""The rollout state machine, pure: stages per strategy, refusals naming the field, and the
decision for each analysis verdict at each moment of a step."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from failsoft.control.analysis import Analysis, CheckResult, Verdict
from failsoft.control.rollouts import (
    RolloutSpec,
    RolloutState,
    Stage,
    Status,
    decide,
    new_rollout_id,
)


def spec(**fields: object) -> RolloutSpec:
    return RolloutSpec.model_validate({"model": "iris", "to": "v2", **fields})


def state(stage: int = 0, extensions: int = 0) -> RolloutState:
    return RolloutState("iris-1", "iris", "v1", "v2", Status.PROGRESSING, stage, 0.0, extensions)


def analysis(verdict: Verdict) -> Analysis:
    check = CheckResult("replica error rate", verdict, 0.2, 0.01, 300, "detail", 3000)
    return Analysis(verdict, (check,))


def test_each_strategy_has_its_stages() -> None:
    assert spec().stages("v1") == [Stage(10, 0.0), Stage(50, 0.0), Stage(100, 0.0)]
    assert spec(strategy="shadow", shadow=0.5, steps=[25, 100]).stages("v1") == [
        Stage(0, 0.5),
        Stage(25, 0.0),
        Stage(100, 0.0),
    ]
    assert spec(strategy="ab").stages("v1") == [Stage(50, 0.0), Stage(100, 0.0)]
    ab = spec(strategy="ab", weights={"v1": 80, "v2": 20})
    assert ab.stages("v1") == [Stage(20, 0.0), Stage(100, 0.0)]
    assert spec(strategy="blue-green").stages("v1") == [Stage(0, 1.0), Stage(100, 0.0)]
    assert [s.label for s in spec(strategy="shadow").stages("v1")] == [
        "shadow 100%",
        "10%",
        "50%",
        "100%",
    ]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"steps": [10, 60]}, "steps: the last step is 60, it must be 100"),
        ({"steps": [0, 100]}, "steps[0]: 0 is not a percent in 1..100"),
        ({"steps": [50, 50, 100]}, "must increase"),
        ({"strategy": "ab", "steps": [100]}, "steps: an ab rollout holds one split"),
        ({"strategy": "blue-green", "steps": [50, 100]}, "switches 100% at once"),
        ({"weights": {"v1": 50, "v2": 50}}, "weights: only an ab rollout takes weights"),
        ({"strategy": "ab", "weights": {"v1": 70, "v2": 20}}, "v1 70 + v2 20 = 90"),
        ({"step_s": 10, "check_every_s": 20}, "check_every_s: 20 is longer than step_s"),
        ({"on_inconclusive": "pray"}, "on_inconclusive"),
        ({"analysis": {"min_requests": 0}}, "analysis.min_requests"),
    ],
)
def test_a_bad_spec_names_the_field(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError) as refused:
        spec(**fields)
    assert message in str(refused.value)


def test_the_served_versions_are_checked_naming_the_field() -> None:
    assert spec().problems("v1", ["v1", "v2"]) == []
    (missing,) = spec(to="v3").problems("v1", ["v1", "v2"])
    assert missing.startswith("to: version 'v3' of 'iris' is not loaded (versions: v1, v2)")
    (same,) = spec(to="v1").problems("v1", ["v1", "v2"])
    assert same.startswith("to: 'v1' is already the default version")
    wrong = spec(strategy="ab", weights={"v0": 50, "v2": 50})
    assert wrong.problems("v1", ["v1", "v2"])[0].startswith("weights: name the stable version")


def test_a_fail_rolls_back_at_once_whenever_it_comes() -> None:
    decision = decide(spec(), state(), analysis(Verdict.FAIL), 1.0, 60.0)
    assert decision.action == "rollback"
    assert decision.reason == "10%: failed replica error rate"


def test_a_pass_waits_for_the_end_of_the_step_then_moves_on() -> None:
    assert decide(spec(), state(), analysis(Verdict.PASS), 59.0, 60.0).action == "wait"
    moved = decide(spec(), state(), analysis(Verdict.PASS), 60.0, 60.0)
    assert (moved.action, moved.reason) == ("advance", "10%: every check passed; on to 50%")
    assert decide(spec(), state(stage=1), analysis(Verdict.PASS), 60.0, 60.0).action == "promote"


def test_inconclusive_extends_up_to_the_limit_then_does_what_it_was_told() -> None:
    extended = decide(spec(), state(extensions=2), analysis(Verdict.INCONCLUSIVE), 180, 180)
    assert extended.action == "extend"
    assert "extension 3 of 3" in extended.reason
    held = decide(spec(), state(extensions=3), analysis(Verdict.INCONCLUSIVE), 240, 240)
    assert held.action == "hold"
    assert "after 3 extension(s); holding" in held.reason
    told = spec(on_inconclusive="rollback", max_extensions=0)
    assert decide(told, state(), analysis(Verdict.INCONCLUSIVE), 60, 60).action == "rollback"


def test_ab_promotes_on_a_pass_after_its_one_split() -> None:
    ab = spec(strategy="ab", weights={"v1": 50, "v2": 50})
    assert decide(ab, state(), analysis(Verdict.PASS), 60, 60).action == "promote"


def test_state_round_trips_through_json_and_ids_are_readable() -> None:
    original = state(stage=1, extensions=2).with_decision({"action": "stepped"}, reason="why")
    assert RolloutState.from_json(original.as_json()) == original
    assert new_rollout_id("Iris v2!").startswith("iris-v2-")
