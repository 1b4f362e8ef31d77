from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from failsoft.clock import ManualClock
from failsoft.observe.events import Event
from failsoft.routing.ejection import (
    EjectionOptions,
    OutlierDetector,
    ReplicaEjected,
    ReplicaReturned,
)


class Setup:
    def __init__(self, replicas: int = 3, **options: Any) -> None:
        self.clock = ManualClock()
        self.events: list[Event] = []
        self.detector = OutlierDetector(
            [f"r{i}" for i in range(replicas)],
            EjectionOptions(**options),
            self.clock,
            self.events.append,
            "iris",
            "v1",
        )

    def fail(self, index: int, times: int = 1) -> None:
        for _ in range(times):
            self.detector.record(index, False)

    def succeed(self, index: int, times: int = 1) -> None:
        for _ in range(times):
            self.detector.record(index, True)


def ejected(replica: str, reason: str, seconds: float, times: int = 1) -> ReplicaEjected:
    return ReplicaEjected("iris", "v1", replica, reason, seconds, times)


def back(replica: str) -> ReplicaReturned:
    return ReplicaReturned("iris", "v1", replica)


def test_consecutive_failures_eject() -> None:
    s = Setup(consecutive_failures=5)
    s.fail(0, 4)
    assert not s.detector.is_ejected(0)
    s.fail(0)
    assert s.detector.is_ejected(0)
    assert s.events == [ejected("r0", "consecutive_failures", 30.0)]


def test_a_success_resets_the_run_of_failures() -> None:
    s = Setup(consecutive_failures=5, minimum_requests=100)
    for _ in range(3):
        s.fail(0, 4)
        s.succeed(0)
    assert not s.detector.is_ejected(0)
    assert s.detector.snapshot(0)["consecutive_failures"] == 0
    assert s.events == []


def test_failure_rate_ejects_only_with_enough_calls() -> None:
    s = Setup(consecutive_failures=100, failure_rate_threshold=0.5, minimum_requests=10)
    for _ in range(4):
        s.fail(0)
        s.succeed(0)
    s.fail(0)  # 5 of 9 failed, but 9 calls are too few
    assert not s.detector.is_ejected(0)
    assert s.detector.snapshot(0)["failure_rate"] == pytest.approx(5 / 9)
    s.succeed(0)  # 10 calls at 50%: a success never ejects
    assert not s.detector.is_ejected(0)
    s.fail(0)  # 6 of 11
    assert s.detector.is_ejected(0)
    assert s.events == [ejected("r0", "failure_rate", 30.0)]


def test_a_low_failure_rate_does_not_eject() -> None:
    s = Setup(consecutive_failures=100, failure_rate_threshold=0.5, minimum_requests=10)
    for _ in range(20):
        s.fail(0)
        s.succeed(0, 2)
    assert not s.detector.is_ejected(0)
    assert s.events == []


async def test_the_failure_rate_counts_only_the_current_interval() -> None:
    s = Setup(consecutive_failures=100, minimum_requests=10, interval_ms=10000.0)
    s.fail(0, 8)
    await s.clock.advance(10.0)
    s.fail(0, 2)  # 10 failures in total, but only 2 in this interval
    assert not s.detector.is_ejected(0)
    assert s.detector.snapshot(0)["interval_calls"] == 2
    await s.clock.advance(10.0)
    assert s.detector.snapshot(0)["interval_calls"] == 0
    assert s.detector.snapshot(0)["failure_rate"] == 0.0


async def test_a_replica_returns_after_its_ejection_time() -> None:
    s = Setup(consecutive_failures=1, base_ejection_ms=30000.0)
    s.fail(0)
    await s.clock.advance(29.9)
    assert s.detector.is_ejected(0)
    assert s.detector.snapshot(0)["ejected_for_s"] == pytest.approx(0.1)
    await s.clock.advance(0.1)
    assert not s.detector.is_ejected(0)
    assert s.events == [ejected("r0", "consecutive_failures", 30.0), back("r0")]
    assert s.detector.snapshot(0) == {
        "ejected": False,
        "ejected_for_s": 0.0,
        "times_ejected": 1,
        "consecutive_failures": 0,
        "interval_calls": 0,
        "failure_rate": 0.0,
    }


async def test_ejection_time_grows_with_times_ejected_and_is_capped() -> None:
    s = Setup(consecutive_failures=1, base_ejection_ms=30000.0, max_ejection_ms=100000.0)
    for expected in (30.0, 60.0, 90.0, 100.0, 100.0):
        s.fail(0)
        assert s.detector.snapshot(0)["ejected_for_s"] == expected
        await s.clock.advance(expected)
        assert not s.detector.is_ejected(0)
    assert s.events == [
        event
        for times, seconds in enumerate((30.0, 60.0, 90.0, 100.0, 100.0), start=1)
        for event in (ejected("r0", "consecutive_failures", seconds, times), back("r0"))
    ]


async def test_times_ejected_is_forgiven_one_step_per_max_ejection_time_in_service() -> None:
    s = Setup(consecutive_failures=1, base_ejection_ms=10000.0, max_ejection_ms=100000.0)
    for _ in range(3):
        s.fail(0)
        await s.clock.advance(100.0)
        assert not s.detector.is_ejected(0)
    assert s.detector.snapshot(0)["times_ejected"] == 3
    await s.clock.advance(99.0)
    assert s.detector.snapshot(0)["times_ejected"] == 3
    await s.clock.advance(1.0)
    assert s.detector.snapshot(0)["times_ejected"] == 2
    await s.clock.advance(500.0)
    assert s.detector.snapshot(0)["times_ejected"] == 0
    s.fail(0)
    assert s.events[-1] == ejected("r0", "consecutive_failures", 10.0, 1)


def test_records_while_ejected_are_ignored() -> None:
    s = Setup(consecutive_failures=2)
    s.fail(0, 2)
    s.fail(0, 10)
    s.succeed(0)
    assert s.events == [ejected("r0", "consecutive_failures", 30.0)]
    assert s.detector.snapshot(0)["consecutive_failures"] == 2


async def test_no_more_than_the_allowed_share_is_ejected() -> None:
    s = Setup(replicas=3, consecutive_failures=2, max_ejection_percent=50.0)
    s.fail(0, 2)
    s.fail(1, 5)  # an outlier too, but 2 of 3 would be over 50%
    s.fail(2, 5)
    assert [s.detector.is_ejected(i) for i in range(3)] == [True, False, False]
    await s.clock.advance(30.0)
    assert not s.detector.is_ejected(0)
    s.fail(1)  # room again: its run of failures was kept
    assert s.events == [
        ejected("r0", "consecutive_failures", 30.0),
        back("r0"),
        ejected("r1", "consecutive_failures", 30.0),
    ]


async def test_an_expired_ejection_frees_its_place_under_the_cap() -> None:
    s = Setup(replicas=3, consecutive_failures=1)
    s.fail(0)
    await s.clock.advance(30.0)
    s.fail(1)  # replica 0 is due back though nobody asked yet
    assert s.events == [
        ejected("r0", "consecutive_failures", 30.0),
        back("r0"),
        ejected("r1", "consecutive_failures", 30.0),
    ]
    assert not s.detector.is_ejected(0)
    assert s.detector.returned() == [0]


def test_the_cap_scales_with_the_set() -> None:
    s = Setup(replicas=4, consecutive_failures=1, max_ejection_percent=50.0)
    for index in range(4):
        s.fail(index)
    assert [s.detector.is_ejected(i) for i in range(4)] == [True, True, False, False]


def test_a_lone_replica_can_still_be_ejected() -> None:
    s = Setup(replicas=1, consecutive_failures=1, max_ejection_percent=10.0)
    s.fail(0)
    assert s.detector.is_ejected(0)
    assert s.events == [ejected("r0", "consecutive_failures", 30.0)]


async def test_returned_lists_each_comeback_once() -> None:
    s = Setup(replicas=3, consecutive_failures=1, max_ejection_percent=100.0)
    assert s.detector.returned() == []
    s.fail(2)
    s.fail(0)
    await s.clock.advance(30.0)
    assert s.detector.returned() == [0, 2]  # ended here, without an is_ejected call
    assert s.detector.returned() == []
    assert s.events[-2:] == [back("r0"), back("r2")]


async def test_a_replica_ejected_again_before_returned_is_read_is_not_listed() -> None:
    s = Setup(replicas=2, consecutive_failures=1)
    s.fail(1)
    await s.clock.advance(30.0)
    assert not s.detector.is_ejected(1)
    s.fail(1)
    assert s.detector.returned() == []


def test_a_disabled_detector_never_ejects_passively() -> None:
    s = Setup(replicas=3, enabled=False, consecutive_failures=1)
    s.fail(0, 100)
    assert not s.detector.is_ejected(0)
    assert s.events == []
    assert s.detector.eject(0, "probe failed")
    assert s.detector.is_ejected(0)
    assert s.events == [ejected("r0", "probe failed", 30.0)]


async def test_explicit_ejection_respects_the_cap_and_the_current_state() -> None:
    s = Setup(replicas=3, max_ejection_percent=50.0)
    assert s.detector.eject(0, "probe failed")
    assert not s.detector.eject(0, "probe failed")  # already out
    assert not s.detector.eject(1, "probe failed")  # 2 of 3 is over 50%
    assert s.events == [ejected("r0", "probe failed", 30.0)]
    await s.clock.advance(30.0)
    assert s.detector.eject(1, "probe failed")
    assert s.detector.eject(0, "probe failed") is False
    assert s.events == [
        ejected("r0", "probe failed", 30.0),
        back("r0"),
        ejected("r1", "probe failed", 30.0),
    ]


def test_snapshot_of_an_ejected_replica() -> None:
    s = Setup(consecutive_failures=3)
    s.fail(1, 3)
    assert s.detector.snapshot(1) == {
        "ejected": True,
        "ejected_for_s": 30.0,
        "times_ejected": 1,
        "consecutive_failures": 3,
        "interval_calls": 3,
        "failure_rate": 1.0,
    }


def test_checked_methods_reject_unknown_indices() -> None:
    s = Setup(replicas=2)
    with pytest.raises(IndexError):
        s.detector.eject(2, "probe failed")
    with pytest.raises(IndexError):
        s.detector.snapshot(-1)


def test_a_detector_needs_a_replica() -> None:
    with pytest.raises(ValueError, match="at least one replica"):
        Setup(replicas=0)


@pytest.mark.parametrize(
    "options",
    [
        {"consecutive_failures": 0},
        {"failure_rate_threshold": 0.0},
        {"failure_rate_threshold": 1.5},
        {"minimum_requests": 0},
        {"interval_ms": 0.0},
        {"base_ejection_ms": 0.0},
        {"base_ejection_ms": 60000.0, "max_ejection_ms": 30000.0},
        {"max_ejection_percent": 0.0},
        {"max_ejection_percent": 101.0},
        {"unknown": 1},
    ],
)
def test_invalid_options_are_rejected(options: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        EjectionOptions(**options)


def test_reinstate_ends_an_ejection_early_but_keeps_the_count() -> None:
    events: list[object] = []
    clock = ManualClock()
    detector = OutlierDetector(
        ["a", "b", "c"], EjectionOptions(consecutive_failures=1), clock, events.append, "m", "v1"
    )
    assert not detector.reinstate(0)
    detector.record(0, False)
    assert detector.is_ejected(0)
    assert detector.reinstate(0)
    assert not detector.is_ejected(0)
    assert detector.returned() == [0]
    assert isinstance(events[-1], ReplicaReturned)
    detector.record(0, False)
    assert detector.snapshot(0)["times_ejected"] == 2
