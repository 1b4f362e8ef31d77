"""RecentEvents: the bounded ring behind /admin/events."""

from __future__ import annotations

from failsoft.errors import FailureClass
from failsoft.observe.events import RequestFinished
from failsoft.observe.recent import RecentEvents
from failsoft.pipeline.breaker import BreakerState, BreakerTransition
from failsoft.pipeline.fallback import FallbackUsed
from failsoft.routing.ejection import ReplicaEjected


class Wall:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_state_changes_are_kept_in_order_with_their_fields_and_time() -> None:
    wall = Wall()
    recent = RecentEvents(wall=wall)
    recent.observe(ReplicaEjected("iris", "v1", "w0", "5 consecutive failures", 30.0, 1))
    wall.now += 0.5
    recent.observe(
        BreakerTransition("iris", "v1", "w1", BreakerState.CLOSED, BreakerState.OPEN, "rate")
    )
    events = recent.snapshot()["events"]
    assert [e["type"] for e in events] == ["ReplicaEjected", "BreakerTransition"]
    assert [e["seq"] for e in events] == [1, 2]
    assert events[0]["replica"] == "w0"
    assert events[1]["new"] == "open"  # enums become their JSON values
    assert events[1]["time"] == 1_000.5


def test_per_request_events_are_not_kept() -> None:
    recent = RecentEvents(wall=Wall())
    recent.observe(RequestFinished("iris", "v1", 502, FailureClass.REPLICA, 0.01))
    assert recent.snapshot()["events"] == []


def test_a_flood_of_fallbacks_folds_into_one_entry_per_second() -> None:
    wall = Wall()
    recent = RecentEvents(wall=wall)
    for _ in range(500):
        recent.observe(FallbackUsed("iris", "v1", "version:v2", "down"))
        wall.now += 0.001
    wall.now += 1.0
    recent.observe(FallbackUsed("iris", "v1", "version:v2", "down"))
    events = recent.snapshot()["events"]
    assert [e["count"] for e in events] == [500, 1]


def test_the_ring_is_bounded() -> None:
    recent = RecentEvents(capacity=3, wall=Wall())
    for index in range(10):
        recent.observe(ReplicaEjected("iris", "v1", f"w{index}", "x", 1.0, 1))
    assert [e["replica"] for e in recent.snapshot()["events"]] == ["w7", "w8", "w9"]
