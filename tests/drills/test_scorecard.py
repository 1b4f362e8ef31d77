"""The scorecard, judged on synthetic runs: Outcomes built from numpy arrays.

Every run is 10 requests per second for 10 s (offsets 0.0, 0.1, ... 9.9), and
the fault window is [3 s, 6 s) on model iris unless a test says otherwise.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from failsoft.drills.deploy import DeployOutcome
from failsoft.drills.experiment import Experiment
from failsoft.drills.load import NO_ANSWER, NOT_SENT, AttackOutcomes, Outcomes, ReadinessPolls
from failsoft.drills.scorecard import (
    MAX_PENALTY_NOTES,
    Check,
    FaultWindow,
    Scorecard,
    answer_label,
    detection,
    healed,
    is_reaction,
    onset,
    penalty_notes,
    recovery,
    replica_penalties,
    score,
    timeline,
)

RATE = 10
DURATION_S = 10.0
FAULT = FaultWindow("error iris/v1/w0", "iris", 3.0, 6.0, "error", "v1", "w0", "f1")
FAST_S = 0.010


def _outcomes_at(offsets: list[float] | np.ndarray, priority: list[str] | None = None) -> Outcomes:
    """Every request answered correctly in 10 ms, at the given scheduled offsets."""
    offsets = np.asarray(offsets, dtype=float)
    size = len(offsets)
    return Outcomes(
        offsets=offsets,
        latency_s=np.full(size, FAST_S),
        status=np.full(size, 200, dtype=np.int32),
        correct=np.ones(size, dtype=bool),
        degraded=np.zeros(size, dtype=bool),
        priority=priority if priority is not None else ["default"] * size,
        started_at=1_700_000_000.0,
    )


def _clean_run(priority: list[str] | None = None) -> Outcomes:
    return _outcomes_at(np.arange(int(RATE * DURATION_S)) / RATE, priority)


def _between(outcomes: Outcomes, start_s: float, end_s: float) -> np.ndarray:
    return (outcomes.offsets >= start_s) & (outcomes.offsets < end_s)


def _fail(outcomes: Outcomes, mask: np.ndarray, status: int = 503) -> None:
    outcomes.status[mask] = status
    outcomes.correct[mask] = False


def _experiment(
    hypothesis: dict[str, Any] | None = None, expect: dict[str, Any] | None = None
) -> Experiment:
    return Experiment.model_validate(
        {
            "name": "synthetic",
            "load": {
                "model": "iris",
                "rate": RATE,
                "duration_s": DURATION_S,
                "requests": [{"inputs": [{"name": "features"}], "expect": {"label": [0]}}],
            },
            "hypothesis": hypothesis or {"availability_pct": 99, "p99_ms": 100},
            # As scheduled; score() judges the windows it is given, as they really ran.
            "faults": [
                {
                    "at_s": 3,
                    "for_s": 3,
                    "kind": "error",
                    "model": "iris",
                    "version": "v1",
                    "replica": "w0",
                }
            ],
            # Scored from the AttackOutcomes given; here so poison bounds validate.
            "attack": {"rate": 10, "requests": [{"kind": "poison", "inputs": [{"name": "x"}]}]},
            "expect": expect or {},
        }
    )


def _score(
    outcomes: Outcomes,
    *,
    hypothesis: dict[str, Any] | None = None,
    expect: dict[str, Any] | None = None,
    windows: list[FaultWindow] | None = None,
    events: list[dict[str, Any]] | None = None,
    **kwargs: Any,
) -> Scorecard:
    return score(
        _experiment(hypothesis, expect),
        outcomes,
        [FAULT] if windows is None else windows,
        events or [],
        duration_s=DURATION_S,
        **kwargs,
    )


def _check(card: Scorecard, name: str) -> Check:
    (check,) = [check for check in card.checks if check.name == name]
    return check


def _failed(card: Scorecard) -> list[str]:
    return [check.name for check in card.checks if not check.ok]


def _ejected(at_s: float, model: str = "iris") -> dict[str, Any]:
    return {"type": "ReplicaEjected", "model": model, "at_s": at_s}


# --- a clean run and the phases -------------------------------------------------------


def test_clean_run_passes_every_check() -> None:
    card = _score(
        _clean_run(),
        expect={
            "max_detect_s": 1,
            "max_recover_s": 2,
            "max_lost": 0,
            "max_degraded_pct": 0,
            "max_retry_amplification": 1.5,
        },
        events=[_ejected(3.2)],
        attempts=100,
        requests_served=100,
    )

    assert [check.name for check in card.checks] == [
        "availability before",
        "p99 before",
        "availability during",
        "p99 during",
        "availability after",
        "p99 after",
        "time to detect",
        "time to recover",
        "requests lost",
        "degraded answers",
        "retry amplification",
    ]
    assert _failed(card) == []
    assert card.passed
    assert card.requests == 100
    assert card.lost == 0


def test_phases_split_requests_by_scheduled_offset_around_the_fault() -> None:
    outcomes = _outcomes_at([2.9, 3.0, 5.9, 6.0, 6.1])

    card = _score(outcomes)

    assert card.phases["before"].requests == 1  # 2.9 < start
    assert card.phases["during"].requests == 2  # start <= 3.0, 5.9 < end
    assert card.phases["after"].requests == 2  # end <= 6.0, 6.1


def test_phases_span_from_first_fault_start_to_last_fault_end() -> None:
    windows = [
        FaultWindow("a", "iris", 2.0, 3.0),
        FaultWindow("b", "iris", 5.0, 7.0),
    ]

    card = _score(_clean_run(), windows=windows)

    assert card.phases["before"].requests == 20
    assert card.phases["during"].requests == 50  # the gap between faults is "during"
    assert card.phases["after"].requests == 30


def test_phase_latency_quantiles_count_correct_answers_only() -> None:
    outcomes = _clean_run()
    during = _between(outcomes, 3.0, 6.0)
    outcomes.latency_s[during] = 0.020
    wrong = during & (outcomes.offsets < 4.0)
    outcomes.correct[wrong] = False  # answered 200, but with the wrong label, slowly
    outcomes.latency_s[wrong] = 5.0

    stats = _score(outcomes).phases["during"]

    assert stats.requests == 30
    assert stats.available_pct == pytest.approx(100 * 20 / 30)
    assert stats.p50_ms == pytest.approx(20.0)
    assert stats.p99_ms == pytest.approx(20.0)


def test_phase_without_correct_answers_has_no_latency_quantiles() -> None:
    outcomes = _clean_run()
    during = _between(outcomes, 3.0, 6.0)
    _fail(outcomes, during, status=NO_ANSWER)
    outcomes.latency_s[during] = np.nan

    card = _score(outcomes)

    assert card.phases["during"].available_pct == 0.0
    assert card.phases["during"].p50_ms is None
    assert card.phases["during"].p99_ms is None
    assert _check(card, "p99 during").measured == "-"
    assert not _check(card, "p99 during").ok


def test_empty_phase_has_no_checks() -> None:
    outcomes = _outcomes_at([3.5, 6.5])  # nothing scheduled before the fault

    card = _score(outcomes)

    assert card.phases["before"].requests == 0
    assert card.phases["before"].available_pct is None
    assert not [check for check in card.checks if check.name.endswith("before")]


def test_run_without_faults_is_all_before() -> None:
    card = _score(_clean_run(), windows=[], expect={"max_recover_s": 1})

    assert card.phases["before"].requests == 100
    assert card.recover_s is None
    assert "time to recover" not in [check.name for check in card.checks]


# --- the steady-state hypothesis ----------------------------------------------------


def test_availability_below_hypothesis_during_fault_fails_only_that_check() -> None:
    outcomes = _clean_run()
    lost = np.flatnonzero(_between(outcomes, 3.0, 6.0))[:3]  # 3 of the 30 during the fault
    outcomes.status[lost] = NO_ANSWER
    outcomes.correct[lost] = False
    outcomes.latency_s[lost] = np.nan

    card = _score(outcomes)

    assert _failed(card) == ["availability during"]
    check = _check(card, "availability during")
    assert check.measured == "90.00%"
    assert check.expected == ">= 99%"
    assert not card.passed


def test_availability_exactly_at_hypothesis_holds() -> None:
    outcomes = _clean_run()
    _fail(outcomes, np.flatnonzero(_between(outcomes, 3.0, 6.0))[:3])

    card = _score(outcomes, hypothesis={"availability_pct": 90})

    assert _check(card, "availability during").ok


def test_p99_above_hypothesis_fails_the_p99_check_of_that_phase() -> None:
    outcomes = _clean_run()
    outcomes.latency_s[_between(outcomes, 6.0, 10.0)] = 0.250

    card = _score(outcomes)

    assert _failed(card) == ["p99 after"]
    assert _check(card, "p99 after").measured == "250.0 ms"
    assert _check(card, "p99 after").expected == "<= 100 ms"


def test_no_p99_checks_without_a_p99_hypothesis() -> None:
    outcomes = _clean_run()
    outcomes.latency_s[:] = 5.0

    card = _score(outcomes, hypothesis={"availability_pct": 99})

    assert [check.name for check in card.checks] == [
        "availability before",
        "availability during",
        "availability after",
    ]
    assert card.passed


def test_without_correctness_any_200_counts_as_available() -> None:
    outcomes = _clean_run()
    outcomes.correct[_between(outcomes, 3.0, 6.0)] = False  # 200 with wrong answers

    card = _score(outcomes, hypothesis={"availability_pct": 99, "correctness": False})

    assert card.phases["during"].available_pct == 100.0
    assert card.lost == 0


# --- time to detect -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "reaction"),
    [
        ({"type": "BreakerTransition", "new": "open"}, True),
        ({"type": "BreakerTransition", "new": "half_open"}, False),
        ({"type": "BreakerTransition", "new": "closed"}, False),
        ({"type": "HealthChanged", "healthy": False}, True),
        ({"type": "HealthChanged", "healthy": True}, False),
        ({"type": "ReplicaStateChanged", "available": False}, True),
        ({"type": "ReplicaStateChanged", "available": True}, False),
        ({"type": "ReplicaEjected"}, True),
        ({"type": "WorkerRestarted"}, True),
        ({"type": "AttemptFailed"}, True),
        ({"type": "ReplicaKilled"}, False),
        ({"type": "FallbackUsed"}, True),
        ({"type": "RequestShed"}, True),
        ({"type": "FaultAdded"}, False),
        ({"type": "ConfigReloaded"}, False),
    ],
    ids=lambda value: str(value) if isinstance(value, bool) else "-".join(map(str, value.values())),
)
def test_is_reaction(event: dict[str, Any], reaction: bool) -> None:
    assert is_reaction(event) is reaction


def test_detection_is_the_first_reaction_after_the_fault_start() -> None:
    events = [
        {"type": "BreakerTransition", "model": "iris", "new": "open", "at_s": 4.5},
        {"type": "HealthChanged", "model": "iris", "healthy": False, "at_s": 3.4},
        {"type": "ReplicaStateChanged", "model": "iris", "available": False, "at_s": 3.9},
    ]

    assert detection(FAULT, events, _clean_run()) == pytest.approx(0.4)


def test_detection_ignores_reactions_before_the_fault_start() -> None:
    events = [_ejected(2.5), _ejected(4.0)]

    assert detection(FAULT, events, _clean_run()) == pytest.approx(1.0)


def test_detection_counts_a_reaction_exactly_at_the_fault_start() -> None:
    assert detection(FAULT, [_ejected(3.0)], _clean_run()) == 0.0


def test_detection_ignores_reactions_of_other_models() -> None:
    events = [_ejected(3.1, model="wine"), _ejected(4.0, model="iris")]

    assert detection(FAULT, events, _clean_run()) == pytest.approx(1.0)


def test_detection_ignores_events_that_are_not_reactions() -> None:
    events = [
        {"type": "BreakerTransition", "model": "iris", "new": "closed", "at_s": 3.1},
        {"type": "HealthChanged", "model": "iris", "healthy": True, "at_s": 3.2},
        {"type": "ReplicaStateChanged", "model": "iris", "available": True, "at_s": 3.3},
        {"type": "FaultAdded", "model": "iris", "at_s": 3.0},
        _ejected(4.0),
    ]

    assert detection(FAULT, events, _clean_run()) == pytest.approx(1.0)


def test_detection_counts_a_degraded_answer_after_the_fault_start() -> None:
    outcomes = _clean_run()
    outcomes.degraded[outcomes.offsets == 2.0] = True  # before the fault: not a detection
    outcomes.degraded[outcomes.offsets >= 3.5] = True

    assert detection(FAULT, [_ejected(4.0)], outcomes) == pytest.approx(0.5)


def test_detection_counts_a_degraded_answer_at_the_fault_start() -> None:
    outcomes = _clean_run()
    outcomes.degraded[outcomes.offsets == 3.0] = True

    assert detection(FAULT, [], outcomes) == 0.0


def test_detection_is_none_without_any_reaction() -> None:
    events = [_ejected(2.0), _ejected(4.0, model="wine")]

    assert detection(FAULT, events, _clean_run()) is None


def test_time_to_detect_check_holds_within_max_detect_s() -> None:
    card = _score(_clean_run(), expect={"max_detect_s": 1}, events=[_ejected(3.75)])

    check = _check(card, "time to detect")
    assert check.ok
    assert check.measured == "0.75 s"
    assert check.expected == "<= 1 s"
    assert card.detect_s == [pytest.approx(0.75)]
    assert card.detected_at_s == pytest.approx(3.75)


def test_time_to_detect_check_fails_when_slower_than_max_detect_s() -> None:
    card = _score(_clean_run(), expect={"max_detect_s": 1}, events=[_ejected(4.5)])

    assert _failed(card) == ["time to detect"]
    assert _check(card, "time to detect").measured == "1.50 s"


def test_never_detected_fails_max_detect_s() -> None:
    card = _score(_clean_run(), expect={"max_detect_s": 1})

    check = _check(card, "time to detect")
    assert card.detect_s == [None]
    assert card.detected_at_s is None
    assert check.measured == "never"
    assert not check.ok


def test_time_to_detect_is_the_worst_fault_and_never_if_any_went_unseen() -> None:
    windows = [FaultWindow("a", "iris", 2.0, 3.0), FaultWindow("b", "iris", 5.0, 7.0)]

    seen_both = _score(
        _clean_run(),
        windows=windows,
        expect={"max_detect_s": 1},
        events=[_ejected(2.2), _ejected(5.5)],
    )
    missed_second = _score(
        _clean_run(),
        windows=windows,
        expect={"max_detect_s": 1},
        events=[{"type": "HealthChanged", "model": "iris", "healthy": False, "at_s": 2.2}],
    )

    assert seen_both.detect_s == [pytest.approx(0.2), pytest.approx(0.5)]
    assert _check(seen_both, "time to detect").measured == "0.50 s"
    assert missed_second.detect_s[1] is None
    assert _check(missed_second, "time to detect").measured == "never"
    assert not _check(missed_second, "time to detect").ok


# --- time to detect a kill: from the kill to what the gateway observed ---------------

KILL = FaultWindow("kill iris/v1/w0", "iris", 3.0, 6.0, "kill", "v1", "w0", "f1")


def _killed(at_s: float, fault: str = "f1", replica: str = "w0") -> dict[str, Any]:
    return {
        "type": "ReplicaKilled",
        "model": "iris",
        "version": "v1",
        "replica": replica,
        "fault": fault,
        "at_s": at_s,
    }


def _down(at_s: float, replica: str = "w0", version: str = "v1") -> dict[str, Any]:
    return {
        "type": "ReplicaStateChanged",
        "model": "iris",
        "version": version,
        "replica": replica,
        "available": False,
        "at_s": at_s,
    }


def test_a_kill_fault_starts_at_its_first_kill() -> None:
    events = [_killed(3.45), _killed(4.5)]

    assert onset(KILL, events) == 3.45
    assert onset(FAULT, events) == 3.0  # other kinds start when they are added


def test_kill_detection_runs_from_the_kill_to_the_supervisor_noticing_the_exit() -> None:
    events = [_killed(3.45), _down(3.47)]

    assert detection(KILL, events, _clean_run()) == pytest.approx(0.02)


def test_the_kill_itself_is_never_the_detection() -> None:
    assert detection(KILL, [_killed(3.45)], _clean_run()) is None


@pytest.mark.parametrize(
    "observed",
    [
        {"type": "AttemptFailed", "failure_class": "infra"},
        {"type": "WorkerRestarted", "exit_code": -9},
        {"type": "HealthChanged", "healthy": False},
        {"type": "BreakerTransition", "new": "open"},
        {"type": "ReplicaEjected"},
    ],
    ids=lambda event: event["type"],
)
def test_kill_detection_counts_each_kind_of_observation(observed: dict[str, Any]) -> None:
    event = {**observed, "model": "iris", "version": "v1", "replica": "w0", "at_s": 3.6}

    assert detection(KILL, [_killed(3.45), event], _clean_run()) == pytest.approx(0.15)


def test_kill_detection_ignores_what_came_before_the_kill() -> None:
    events = [_down(3.2), _killed(3.45), _down(3.9)]  # 3.2: the fault was added, no kill yet

    assert detection(KILL, events, _clean_run()) == pytest.approx(0.45)


def test_kill_detection_ignores_other_replicas_and_versions() -> None:
    events = [_killed(3.45), _down(3.5, replica="w1"), _down(3.55, version="v2"), _down(3.7)]

    assert detection(KILL, events, _clean_run()) == pytest.approx(0.25)


def test_kill_detection_follows_this_faults_kills_only() -> None:
    events = [_killed(3.2, fault="f2"), _down(3.25), _killed(3.45), _down(3.5)]

    assert detection(KILL, events, _clean_run()) == pytest.approx(0.05)


def test_a_kill_of_every_replica_is_observed_on_any_of_them() -> None:
    window = FaultWindow("kill iris/v1", "iris", 3.0, 6.0, "kill", "v1", None, "f1")
    events = [_killed(3.1, replica="w1"), _killed(3.12), _down(3.15, replica="w1")]

    assert detection(window, events, _clean_run()) == pytest.approx(0.05)


def test_a_kill_without_a_fault_id_matches_kills_by_target() -> None:
    window = FaultWindow("kill iris/v1/w0", "iris", 3.0, 6.0, "kill", "v1", "w0")
    events = [_killed(3.2, replica="w1"), _killed(3.4, fault="f9"), _down(3.5)]

    assert onset(window, events) == 3.4
    assert detection(window, events, _clean_run()) == pytest.approx(0.1)


def test_a_kill_that_never_happened_is_never_detected() -> None:
    card = _score(_clean_run(), windows=[KILL], events=[_down(3.5)], expect={"max_detect_s": 1})

    assert card.detect_s == [None]
    assert card.detected_at_s is None
    assert _check(card, "time to detect").measured == "never"


def test_a_kills_detection_time_is_marked_where_it_was_observed() -> None:
    card = _score(
        _clean_run(),
        windows=[KILL],
        events=[_killed(3.45), _down(3.47)],
        expect={"max_detect_s": 0.1},
    )

    assert card.detect_s == [pytest.approx(0.02)]
    assert card.detected_at_s == pytest.approx(3.47)
    assert _check(card, "time to detect").ok


def test_a_degraded_answer_after_the_kill_is_a_detection() -> None:
    outcomes = _clean_run()
    outcomes.degraded[outcomes.offsets == 3.2] = True  # before the kill: not caused by it
    outcomes.degraded[outcomes.offsets == 3.6] = True

    assert detection(KILL, [_killed(3.45)], outcomes) == pytest.approx(0.15)


def test_detection_of_a_replica_fault_ignores_other_replicas() -> None:
    window = FaultWindow("error iris/v1/w0", "iris", 3.0, 6.0, "error", "v1", "w0", "f1")
    events = [
        {
            "type": "BreakerTransition",
            "model": "iris",
            "version": "v1",
            "replica": "w1",
            "new": "open",
            "at_s": 3.1,
        },
        {"type": "RequestShed", "model": "iris", "at_s": 3.4},  # names no replica: counts
    ]

    assert detection(window, events, _clean_run()) == pytest.approx(0.4)


# --- time to recover ----------------------------------------------------------------


def test_recovery_starts_at_the_first_healthy_second_after_the_fault() -> None:
    outcomes = _clean_run()
    _fail(outcomes, _between(outcomes, 3.0, 8.0))  # seconds 6 and 7 still failing

    card = _score(outcomes, expect={"max_recover_s": 2})

    assert card.recovered_at_s == 8.0
    assert card.recover_s == 2.0
    check = _check(card, "time to recover")
    assert check.ok
    assert check.measured == "2.00 s"
    assert check.expected == "<= 2 s"


def test_recovery_slower_than_max_recover_s_fails() -> None:
    outcomes = _clean_run()
    _fail(outcomes, _between(outcomes, 3.0, 8.0))

    card = _score(outcomes, expect={"max_recover_s": 1})

    assert "time to recover" in _failed(card)


def test_recovery_needs_every_later_second_healthy() -> None:
    outcomes = _clean_run()
    _fail(outcomes, _between(outcomes, 3.0, 6.0))
    _fail(outcomes, _between(outcomes, 7.0, 8.0))  # second 6 healthy, second 7 relapses

    card = _score(outcomes)

    assert card.recovered_at_s == 8.0
    assert card.recover_s == 2.0


def test_recovery_needs_no_degraded_answers() -> None:
    outcomes = _clean_run()
    outcomes.degraded[_between(outcomes, 6.0, 7.5)] = True  # correct, but from a fallback

    card = _score(outcomes)

    assert card.recovered_at_s == 8.0


def test_recovery_needs_the_p99_hypothesis() -> None:
    outcomes = _clean_run()
    outcomes.latency_s[_between(outcomes, 6.0, 7.0)] = 0.5

    card = _score(outcomes)

    assert card.recovered_at_s == 7.0


def test_recovery_is_immediate_when_healthy_right_after_a_fault_ending_mid_second() -> None:
    window = FaultWindow("kill", "iris", 3.0, 6.5)

    card = _score(_clean_run(), windows=[window])

    assert card.recovered_at_s == 6.5
    assert card.recover_s == 0.0


def test_run_ending_unhealthy_never_recovers() -> None:
    outcomes = _clean_run()
    _fail(outcomes, _between(outcomes, 3.0, 6.0))
    _fail(outcomes, _between(outcomes, 9.0, 10.0))  # healthy 6..9, then fails again

    card = _score(outcomes, expect={"max_recover_s": 3})

    assert card.recover_s is None
    assert card.recovered_at_s is None
    check = _check(card, "time to recover")
    assert check.measured == "never"
    assert not check.ok


def test_recovery_skips_seconds_without_requests() -> None:
    outcomes = _outcomes_at([5.5, 6.5, 8.5, 9.5])  # second 7 has none
    _fail(outcomes, outcomes.offsets == 6.5)

    line = timeline(outcomes, DURATION_S)

    assert line.success_pct[7] is None
    assert recovery(line, 6.0, 99.0, None) == 8.0


# --- failed or degraded after heal -------------------------------------------------


def test_after_heal_counts_failed_and_degraded_requests_after_the_last_fault() -> None:
    outcomes = _clean_run()
    _fail(outcomes, _between(outcomes, 3.0, 6.2))  # 2 after the end at 6.0
    outcomes.degraded[_between(outcomes, 6.2, 6.5)] = True  # 3 more, answered by a fallback
    outcomes.degraded[_between(outcomes, 4.0, 5.0)] = True  # during: not counted

    card = _score(outcomes, hypothesis={"availability_pct": 0}, expect={"max_failed_after_heal": 5})

    assert card.failed_after_heal == 5
    check = _check(card, "failed or degraded after heal")
    assert check.measured == "5"
    assert check.expected == "<= 5"
    assert check.ok


def test_after_heal_above_the_bound_fails() -> None:
    outcomes = _clean_run()
    _fail(outcomes, _between(outcomes, 6.0, 6.6), status=NO_ANSWER)

    card = _score(outcomes, hypothesis={"availability_pct": 0}, expect={"max_failed_after_heal": 5})

    assert card.failed_after_heal == 6
    assert _failed(card) == ["failed or degraded after heal"]


def test_after_heal_counts_from_the_end_of_the_last_fault() -> None:
    windows = [FaultWindow("a", "iris", 2.0, 3.0), FaultWindow("b", "iris", 4.0, 7.0)]
    outcomes = _clean_run()
    _fail(outcomes, _between(outcomes, 3.0, 4.0))  # between the faults: not after the heal
    _fail(outcomes, _between(outcomes, 7.0, 7.1))

    card = _score(outcomes, hypothesis={"availability_pct": 0}, windows=windows)

    assert card.failed_after_heal == 1


def test_after_heal_of_a_clean_run_is_zero_and_without_faults_unknown() -> None:
    assert _score(_clean_run()).failed_after_heal == 0
    assert _score(_clean_run()).healed_at_s == 6.0
    assert _score(_clean_run(), windows=[]).failed_after_heal is None
    assert _score(_clean_run(), windows=[]).healed_at_s is None


def _back(at_s: float, replica: str = "w0") -> dict[str, Any]:
    return {**_down(at_s, replica), "available": True}


ALL_KILLED = FaultWindow("kill iris/v1", "iris", 3.0, 6.0, "kill", "v1", None, "f1")


def test_a_fault_heals_at_its_end() -> None:
    assert healed(FAULT, [_back(4.0)]) == 6.0


def test_a_kill_heals_when_the_first_killed_replica_is_back() -> None:
    events = [
        _killed(3.1, replica="w1"),
        _killed(3.12),
        _down(3.13),
        _back(3.6, replica="w1"),
        _back(3.8),
    ]

    assert healed(ALL_KILLED, events) == 3.6


def test_a_kill_repeated_heals_after_its_last_kill() -> None:
    events = [_killed(3.1), _back(3.5), _killed(4.1), _back(4.4), _killed(5.1), _back(5.7)]

    assert healed(KILL, events) == 5.7


def test_a_kill_whose_replica_never_came_back_heals_at_the_faults_end() -> None:
    assert healed(KILL, [_killed(3.1), _back(3.6, replica="w1")]) == 6.0
    assert healed(KILL, []) == 6.0


def test_after_heal_of_a_kill_counts_from_the_first_replica_back() -> None:
    outcomes = _clean_run()
    outcomes.degraded[_between(outcomes, 3.1, 3.9)] = True  # the fallback, until 3.9

    card = _score(
        outcomes,
        windows=[ALL_KILLED],
        events=[_killed(3.1, replica="w1"), _killed(3.12), _back(3.6, replica="w1")],
        expect={"max_failed_after_heal": 2},
    )

    assert card.healed_at_s == 3.6
    assert card.failed_after_heal == 3  # 3.6, 3.7 and 3.8: the healed worker left unused
    assert _failed(card) == ["failed or degraded after heal"]


# --- the timeline -------------------------------------------------------------------


def test_timeline_has_one_bucket_per_second_of_the_run() -> None:
    outcomes = _clean_run()
    _fail(outcomes, _between(outcomes, 3.0, 3.5))
    outcomes.degraded[_between(outcomes, 4.0, 4.2)] = True

    line = timeline(outcomes, 10.5)

    assert line.seconds == [float(second) for second in range(11)]
    assert line.success_pct[2] == 100.0
    assert line.success_pct[3] == 50.0
    assert line.degraded_pct[4] == 20.0
    assert line.p99_ms[0] == pytest.approx(FAST_S * 1000)
    assert line.success_pct[10] is None  # nothing scheduled in the last half second


# --- losses, retries, error budget --------------------------------------------------


def _four_losses() -> Outcomes:
    outcomes = _clean_run()
    outcomes.status[10] = NOT_SENT
    outcomes.status[11] = NO_ANSWER
    outcomes.status[12] = 503
    outcomes.correct[10:14] = False  # index 13 answered 200 with the wrong label
    outcomes.latency_s[10:12] = np.nan
    return outcomes


@pytest.mark.parametrize(("max_lost", "ok"), [(4, True), (3, False)])
def test_requests_lost_counts_everything_not_correct(max_lost: int, ok: bool) -> None:
    card = _score(
        _four_losses(), hypothesis={"availability_pct": 50}, expect={"max_lost": max_lost}
    )

    assert card.lost == 4
    check = _check(card, "requests lost")
    assert check.measured == "4"
    assert check.expected == f"<= {max_lost}"
    assert check.ok is ok


def test_degraded_share_is_over_every_request() -> None:
    outcomes = _clean_run()
    outcomes.degraded[:5] = True

    card = _score(outcomes, expect={"max_degraded_pct": 4})

    assert card.degraded_pct == 5.0
    assert _check(card, "degraded answers").measured == "5.00%"
    assert _failed(card) == ["degraded answers"]


def test_retry_amplification_is_attempts_per_request_served() -> None:
    card = _score(
        _clean_run(),
        expect={"max_retry_amplification": 1.5},
        attempts=150,
        requests_served=100,
    )

    assert card.retry_amplification == 1.5
    assert _check(card, "retry amplification").measured == "1.50x"
    assert _check(card, "retry amplification").ok


def test_retry_amplification_above_the_bound_fails() -> None:
    card = _score(
        _clean_run(),
        expect={"max_retry_amplification": 1.5},
        attempts=160,
        requests_served=100,
    )

    assert _failed(card) == ["retry amplification"]


def test_unknown_retry_amplification_fails_the_bound() -> None:
    card = _score(_clean_run(), expect={"max_retry_amplification": 2})

    assert card.retry_amplification is None
    assert _check(card, "retry amplification").measured == "-"
    assert not _check(card, "retry amplification").ok


def test_error_budget_is_measured_against_the_hypothesis_by_default() -> None:
    card = _score(_four_losses(), hypothesis={"availability_pct": 98})

    # 100 requests at 98% allow 2 losses; 4 were lost
    assert card.objective_pct == 98
    assert card.error_budget_used_pct == pytest.approx(200.0)


def test_error_budget_uses_the_gateway_objective_when_given() -> None:
    card = _score(_four_losses(), hypothesis={"availability_pct": 98}, objective_pct=96)

    assert card.objective_pct == 96
    assert card.error_budget_used_pct == pytest.approx(100.0)


def test_error_budget_of_a_perfect_objective() -> None:
    clean = _score(_clean_run(), objective_pct=100)
    lossy = _score(_four_losses(), objective_pct=100)

    assert clean.error_budget_used_pct == 0.0
    assert lossy.error_budget_used_pct is None


# --- priorities ---------------------------------------------------------------------


def _alternating() -> Outcomes:
    """Even requests critical, odd ones sheddable; every sheddable one fails in the fault."""
    outcomes = _clean_run(["critical", "sheddable"] * 50)
    sheddable = np.asarray(outcomes.priority) == "sheddable"
    _fail(outcomes, sheddable & _between(outcomes, 3.0, 6.0), status=429)
    return outcomes


def test_availability_judges_only_the_hypothesis_priorities() -> None:
    card = _score(
        _alternating(),
        hypothesis={"availability_pct": 99, "priorities": ["critical"]},
        windows=[FaultWindow("latency", "iris", 3.0, 6.0)],
    )

    assert card.phases["during"].requests == 15
    assert card.phases["during"].available_pct == 100.0
    assert _check(card, "availability during").ok


def test_availability_judges_every_priority_without_a_filter() -> None:
    card = _score(_alternating(), hypothesis={"availability_pct": 99})

    assert card.phases["during"].requests == 30
    assert card.phases["during"].available_pct == 50.0
    assert _failed(card) == ["availability during"]


def test_p99_judges_only_the_hypothesis_priorities() -> None:
    outcomes = _clean_run(["critical", "sheddable"] * 50)
    outcomes.latency_s[np.asarray(outcomes.priority) == "sheddable"] = 0.8

    filtered = _score(
        outcomes, hypothesis={"availability_pct": 99, "p99_ms": 100, "priorities": ["critical"]}
    )
    unfiltered = _score(outcomes, hypothesis={"availability_pct": 99, "p99_ms": 100})

    assert filtered.passed
    assert _failed(unfiltered) == ["p99 before", "p99 during", "p99 after"]


def _three_priorities(failures: dict[str, int]) -> Outcomes:
    """Priorities cycle critical, default, sheddable; fail the first N of each in the fault."""
    outcomes = _clean_run(["critical", "default", "sheddable"] * 33 + ["critical"])
    priorities = np.asarray(outcomes.priority)
    during = _between(outcomes, 3.0, 6.0)
    for name, count in failures.items():
        _fail(outcomes, np.flatnonzero(during & (priorities == name))[:count], status=429)
    return outcomes


def test_sheddable_first_holds_when_critical_beats_default_beats_sheddable() -> None:
    outcomes = _three_priorities({"default": 5, "sheddable": 10})

    card = _score(outcomes, hypothesis={"availability_pct": 0}, expect={"sheddable_first": True})

    check = _check(card, "sheddable shed first")
    assert check.ok
    assert check.measured == "critical 100.0%, default 50.0%, sheddable 0.0%"
    assert check.expected == "critical >= default >= sheddable"


def test_sheddable_first_holds_when_all_priorities_are_equal() -> None:
    card = _score(_clean_run(["critical", "sheddable"] * 50), expect={"sheddable_first": True})

    assert _check(card, "sheddable shed first").ok


@pytest.mark.parametrize(
    "failures",
    [
        {"critical": 5, "sheddable": 1},  # critical shed before sheddable
        {"default": 5, "sheddable": 1},  # default shed before sheddable
        {"critical": 5},  # critical shed before default
    ],
    ids=["critical-below-sheddable", "default-below-sheddable", "critical-below-default"],
)
def test_sheddable_first_fails_when_the_order_is_wrong(failures: dict[str, int]) -> None:
    outcomes = _three_priorities(failures)

    card = _score(outcomes, hypothesis={"availability_pct": 0}, expect={"sheddable_first": True})

    assert _failed(card) == ["sheddable shed first"]


def test_sheddable_first_judges_only_the_fault() -> None:
    outcomes = _three_priorities({})
    priorities = np.asarray(outcomes.priority)
    _fail(outcomes, (priorities == "critical") & (outcomes.offsets < 3.0))  # before: not judged

    card = _score(outcomes, hypothesis={"availability_pct": 0}, expect={"sheddable_first": True})

    assert _check(card, "sheddable shed first").ok


def test_sheddable_first_needs_two_priorities_to_compare() -> None:
    card = _score(_clean_run(), expect={"sheddable_first": True})

    check = _check(card, "sheddable shed first")
    assert check.measured == "default 100.0%"
    assert not check.ok


# --- a hostile client's attack -------------------------------------------------------


def _attack(statuses: list[int], degraded: list[bool] | None = None) -> AttackOutcomes:
    """Attack requests cycling poison, deadline, oversize from 3 s at 10/s, answered so."""
    size = len(statuses)
    kinds = ["poison", "deadline", "oversize"] * (size // 3) + ["poison", "deadline"][: size % 3]
    return AttackOutcomes(
        offsets=3.0 + np.arange(size) / 10,
        kinds=kinds,
        status=np.asarray(statuses, dtype=np.int32),
        degraded=np.asarray(degraded or [False] * size),
        start_s=3.0,
        end_s=3.0 + size / 10,
    )


@pytest.mark.parametrize(
    ("status", "degraded", "label"),
    [
        (422, False, "422"),
        (200, True, "200 degraded"),
        (200, False, "200"),
        (413, False, "413"),
        (NO_ANSWER, False, "no answer"),
        (NOT_SENT, False, "not sent"),
    ],
)
def test_answer_label(status: int, degraded: bool, label: str) -> None:
    assert answer_label(status, degraded) == label


def test_poison_answered_422_or_by_a_fallback_is_contained() -> None:
    attack = _attack(
        [422, 504, 413, 200, 504, 413, 200, 200, 413, 503, 504, 413, NO_ANSWER],
        [False, False, False, True, False, False, False, True, False, False, False, False, False],
    )

    card = _score(_clean_run(), windows=[], attack=attack, expect={"max_poison_uncontained": 0})

    # poison: 422, 200 degraded (contained); 200 undegraded, 503, no answer (not)
    assert card.poison_uncontained == 3
    assert card.attack == {
        "poison": {"422": 1, "200 degraded": 1, "200": 1, "503": 1, "no answer": 1},
        "deadline": {"504": 3, "200 degraded": 1},
        "oversize": {"413": 4},
    }
    check = _check(card, "poison uncontained")
    assert check.measured == "3 of 5"
    assert check.expected == "<= 0"
    assert _failed(card) == ["poison uncontained"]


def test_poison_all_contained_holds() -> None:
    card = _score(
        _clean_run(),
        windows=[],
        attack=_attack([422, 504, 413, 422, 504, 413]),
        expect={"max_poison_uncontained": 0},
    )

    assert _check(card, "poison uncontained").measured == "0 of 2"
    assert card.passed


def test_the_attack_is_a_window_for_the_phases_and_the_recovery() -> None:
    outcomes = _clean_run()
    outcomes.degraded[_between(outcomes, 4.0, 5.5)] = True  # good answers from a fallback

    card = _score(
        outcomes,
        windows=[],
        attack=_attack([422, 504, 413] * 10),  # 3.0 s to 6.0 s
        expect={"max_recover_s": 0, "max_degraded_pct": 1},
    )

    assert [card.phases[name].requests for name in ("before", "during", "after")] == [30, 30, 40]
    assert card.attack_window == FaultWindow(
        "attack: poison, deadline, oversize", "iris", 3.0, 6.0, kind="attack"
    )
    assert card.faults == []
    assert card.detect_s == []
    assert card.recovered_at_s == 6.0
    assert card.failed_after_heal is None  # no fault to heal from
    assert _failed(card) == ["degraded answers"]


def test_a_fault_and_an_attack_span_the_phases_together() -> None:
    card = _score(_clean_run(), attack=_attack([422, 504, 413] * 20))  # 3.0 s to 9.0 s

    assert card.phases["during"].requests == 60  # from the fault's 3.0 s to the attack's 9.0 s
    assert card.healed_at_s == 6.0  # the fault's end: the attack is no fault


def test_a_run_without_an_attack_has_no_attack_figures() -> None:
    card = _score(_clean_run())

    assert card.attack is None
    assert card.attack_window is None
    assert card.poison_uncontained is None


# --- readiness and replica penalties --------------------------------------------------


def _polls(statuses: list[int]) -> ReadinessPolls:
    return ReadinessPolls(np.arange(len(statuses)) * 0.1, np.asarray(statuses, dtype=np.int32))


def test_readiness_counts_every_poll_not_answered_200() -> None:
    polls = _polls([200] * 95 + [503, 503, NO_ANSWER, 500, 200])

    card = _score(_clean_run(), readiness=polls, expect={"max_not_ready": 0})

    assert (card.readiness_polls, card.not_ready) == (100, 4)
    check = _check(card, "readiness not ready")
    assert check.measured == "4 of 100"
    assert check.expected == "<= 0"
    assert _failed(card) == ["readiness not ready"]


def test_readiness_always_200_holds() -> None:
    card = _score(_clean_run(), readiness=_polls([200] * 100), expect={"max_not_ready": 0})

    assert _check(card, "readiness not ready").ok


def test_readiness_bound_without_polls_fails() -> None:
    card = _score(_clean_run(), expect={"max_not_ready": 0})

    assert card.readiness_polls is None
    assert _check(card, "readiness not ready").measured == "-"
    assert not _check(card, "readiness not ready").ok


def _event(kind: str, at_s: float, model: str = "iris", **fields: Any) -> dict[str, Any]:
    return {"type": kind, "model": model, "at_s": at_s, **fields}


def test_replica_penalties_count_breaker_openings_ejections_and_failed_probes() -> None:
    events = [
        _event("BreakerTransition", -0.5, new="open"),  # before the load: not this run
        _event("BreakerTransition", 1.0, new="open"),
        _event("BreakerTransition", 2.0, new="half_open"),
        _event("BreakerTransition", 2.1, new="open"),
        _event("BreakerTransition", 3.0, new="closed"),
        _event("ReplicaEjected", 4.0),
        _event("HealthChanged", 5.0, healthy=False),
        _event("HealthChanged", 6.0, healthy=True),
        _event("ReplicaEjected", 4.0, model="wine"),
        _event("FallbackUsed", 4.5),
    ]

    assert replica_penalties("iris", events) == {
        "breaker opened": 2,
        "ejected": 1,
        "probe failed": 1,
    }
    assert penalty_notes("iris", events) == [
        "breaker opened ?/? at 1.0 s: no reason given",
        "breaker opened ?/? at 2.1 s: no reason given",
        "ejected ?/? at 4.0 s: no reason given",
        "probe failed ?/? at 5.0 s: no reason given",
    ]


def test_penalty_notes_name_the_replica_and_reason_and_stop_at_a_few() -> None:
    events = [
        _event("ReplicaEjected", float(i), version="v1", replica=f"w{i}", reason="5 in a row")
        for i in range(MAX_PENALTY_NOTES + 3)
    ]

    card = _score(_clean_run(), events=events, expect={"max_replicas_penalised": 0})

    assert card.penalty_notes == [
        f"ejected v1/w{i} at {i:.1f} s: 5 in a row" for i in range(MAX_PENALTY_NOTES)
    ]
    assert card.replica_penalties == {
        "breaker opened": 0,
        "ejected": MAX_PENALTY_NOTES + 3,
        "probe failed": 0,
    }


def test_a_penalty_note_shows_the_last_failure_charged_before_it() -> None:
    events = [
        _event("AttemptFailed", 0.5, replica="w1", message="an earlier one"),
        _event("AttemptFailed", 1.9, replica="w0", message="timed out after 1000 ms", count=5),
        _event("AttemptFailed", 2.0, model="wine", replica="w0", message="not this model"),
        _event("ReplicaEjected", 2.1, version="v1", replica="w0", reason="consecutive_failures"),
        _event("AttemptFailed", 3.0, replica="w0", message="after it"),
    ]

    assert penalty_notes("iris", events) == [
        "ejected v1/w0 at 2.1 s: consecutive_failures; last charged failure: w0 at 1.9 s, "
        "timed out after 1000 ms (x5 within a second)"
    ]


def test_replicas_penalised_check() -> None:
    events = [_event("BreakerTransition", 4.0, new="open")]

    card = _score(_clean_run(), events=events, expect={"max_replicas_penalised": 0})
    unbounded = _score(_clean_run(), events=events)

    assert card.replica_penalties == {"breaker opened": 1, "ejected": 0, "probe failed": 0}
    assert _check(card, "replicas penalised").measured == "1"
    assert _failed(card) == ["replicas penalised"]
    assert unbounded.replica_penalties is None
    assert card.requests == unbounded.requests  # the count of requests, not of penalties


def test_the_new_checks_come_after_the_others_in_a_fixed_order() -> None:
    card = _score(
        _clean_run(),
        windows=[],
        attack=_attack([422, 504, 413]),
        readiness=_polls([200]),
        expect={
            "max_degraded_pct": 1,
            "max_poison_uncontained": 0,
            "max_replicas_penalised": 0,
            "max_not_ready": 0,
        },
    )

    assert [check.name for check in card.checks][-4:] == [
        "degraded answers",
        "poison uncontained",
        "replicas penalised",
        "readiness not ready",
    ]


# --- the scorecard as JSON ----------------------------------------------------------


def test_scorecard_to_json_is_serialisable_and_says_whether_it_passed() -> None:
    outcomes = _four_losses()
    outcomes.degraded[40:45] = True
    card = _score(
        outcomes,
        expect={"max_detect_s": 1, "max_recover_s": 3, "max_lost": 0},
        events=[_ejected(3.3)],
        attempts=120,
        requests_served=100,
    )

    data = json.loads(json.dumps(card.to_json()))

    assert data["failed_after_heal"] == 0  # the losses and degraded answers came before
    assert data["attack"] is None
    assert data["passed"] is False
    assert data["passed"] == card.passed
    assert data["name"] == "synthetic"
    assert data["phases"]["during"]["requests"] == 30
    assert {check["name"]: check["ok"] for check in data["checks"]}["requests lost"] is False
    assert data["faults"] == [
        {
            "label": "error iris/v1/w0",
            "model": "iris",
            "start_s": 3.0,
            "end_s": 6.0,
            "kind": "error",
            "version": "v1",
            "replica": "w0",
            "fault_id": "f1",
        }
    ]
    assert len(data["timeline"]["seconds"]) == 10


def test_scorecard_to_json_of_a_passing_run() -> None:
    card = _score(_clean_run())

    data = card.to_json()

    assert data["passed"] is True
    json.dumps(data)


def test_a_kill_seen_before_the_drill_saw_its_fault_added_still_counts() -> None:
    # The first call to reach the replica can be killed before the admin answer arrives.
    events = [_killed(2.98), _down(3.01)]

    assert onset(KILL, events) == 2.98
    assert detection(KILL, events, _clean_run()) == pytest.approx(0.03)


# --- deploys ----------------------------------------------------------------------------


def _deploy(**changes: Any) -> DeployOutcome:
    fields: dict[str, Any] = {
        "number": 1,
        "expect": "refused",
        "start_s": 4.0,
        "end_s": 4.05,
        "status": 409,
        "result": "refused",
        "reason": "revision 2 was not applied: iris/v3 failed its probe",
        "revision_before": 1,
        "revision_after": 1,
        "revision": 2,
        "wanted_reason": "failed its probe",
    }
    fields.update(changes)
    return DeployOutcome(**fields)


def test_a_refused_deploy_passes_its_check() -> None:
    card = _score(_clean_run(), windows=[], deploys=[_deploy()], expect={"max_lost": 0})

    check = _check(card, "deploy 1 refused")
    assert check.ok
    assert check.measured == "refused (409), revision kept"
    assert check.expected == "refused, revision kept, reason has 'failed its probe'"
    assert card.passed
    assert card.deploys == [_deploy()]


def test_a_deploy_applied_when_it_should_be_refused_fails_its_check() -> None:
    applied = _deploy(status=200, result="applied", reason="", revision_after=2)

    card = _score(_clean_run(), windows=[], deploys=[applied])

    assert _failed(card) == ["deploy 1 refused"]
    assert _check(card, "deploy 1 refused").measured == "applied as revision 2 (200)"


def test_each_deploy_gets_its_own_check() -> None:
    applied = _deploy(
        number=2,
        expect="applied",
        start_s=7.0,
        end_s=7.5,
        status=200,
        result="applied",
        reason="",
        revision_after=3,
        revision=3,
        wanted_reason=None,
    )
    deploys = [_deploy(), applied]

    card = _score(_clean_run(), windows=[], deploys=deploys)

    assert [check.name for check in card.checks if check.name.startswith("deploy")] == [
        "deploy 1 refused",
        "deploy 2 applied",
    ]
    assert card.passed


def test_deploys_are_windows_for_the_phases_and_the_recovery() -> None:
    outcomes = _clean_run()
    _fail(outcomes, _between(outcomes, 4.0, 4.2))  # two requests lost while it applied

    card = _score(
        outcomes,
        windows=[],
        deploys=[_deploy(), _deploy(number=2, start_s=6.0, end_s=6.05)],
        expect={"max_lost": 0, "max_recover_s": 1},
    )

    assert [card.phases[name].requests for name in ("before", "during", "after")] == [40, 21, 39]
    assert card.recovered_at_s == 6.05
    assert card.detect_s == []
    assert _failed(card) == ["availability during", "requests lost"]
    assert card.lost == 2


def test_a_scorecard_with_deploys_is_json() -> None:
    card = _score(_clean_run(), windows=[], deploys=[_deploy()])

    data = json.loads(json.dumps(card.to_json()))

    assert data["deploys"][0]["result"] == "refused"
    assert data["deploys"][0]["reason"].endswith("failed its probe")


def test_a_run_without_deploys_has_no_deploy_checks() -> None:
    card = _score(_clean_run())

    assert card.deploys == []
    assert not [check for check in card.checks if check.name.startswith("deploy")]
