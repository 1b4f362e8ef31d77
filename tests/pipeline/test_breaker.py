from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from failsoft.clock import ManualClock
from failsoft.observe.events import Event
from failsoft.pipeline.breaker import (
    BreakerOptions,
    BreakerState,
    BreakerTransition,
    CircuitBreaker,
)

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


class Harness:
    def __init__(self, **options: Any) -> None:
        self.clock = ManualClock()
        self.events: list[Event] = []
        self.breaker = CircuitBreaker(
            BreakerOptions(**options), self.clock, self.events.append, "m", "v1", "r0"
        )

    def fail(self, times: int = 1, seconds: float = 0.01) -> None:
        for _ in range(times):
            assert self.breaker.allow()
            self.breaker.record(False, seconds)

    def succeed(self, times: int = 1, seconds: float = 0.01) -> None:
        for _ in range(times):
            assert self.breaker.allow()
            self.breaker.record(True, seconds)

    def take_events(self) -> list[Event]:
        taken, self.events[:] = list(self.events), []
        return taken


def moved(old: BreakerState, new: BreakerState, reason: str) -> BreakerTransition:
    return BreakerTransition("m", "v1", "r0", old, new, reason)


async def open_then_half_open(h: Harness) -> None:
    h.fail()
    assert h.breaker.state is OPEN
    await h.clock.advance(h.breaker.snapshot()["open_until"])  # type: ignore[arg-type]
    assert h.breaker.state is HALF_OPEN
    h.take_events()


# --- closed -> open ------------------------------------------------------------


def test_failure_rate_opens_with_exact_event() -> None:
    h = Harness(window_size=4, minimum_calls=4)
    h.succeed()
    h.fail()
    h.succeed()
    assert h.breaker.state is CLOSED
    h.fail()
    assert h.breaker.state is OPEN
    assert h.events == [moved(CLOSED, OPEN, "failure rate 50% >= 50% over 4 calls")]


def test_no_verdict_before_minimum_calls() -> None:
    h = Harness(window_size=10, minimum_calls=5)
    h.fail(4)
    assert h.breaker.state is CLOSED
    assert h.events == []
    h.fail()
    assert h.events == [moved(CLOSED, OPEN, "failure rate 100% >= 50% over 5 calls")]


def test_count_window_minimum_is_capped_at_window_size() -> None:
    h = Harness(window_size=3, minimum_calls=10)
    h.fail(3)
    assert h.events == [moved(CLOSED, OPEN, "failure rate 100% >= 50% over 3 calls")]


def test_count_window_forgets_the_oldest_outcome() -> None:
    h = Harness(window_size=4, minimum_calls=4, failure_rate_threshold=0.75)
    h.fail(2)
    h.succeed(2)
    h.succeed(2)  # both failures slide out
    snapshot = h.breaker.snapshot()
    assert snapshot["calls"] == 4
    assert snapshot["failure_rate"] == 0.0
    h.fail(3)
    assert h.events == [moved(CLOSED, OPEN, "failure rate 75% >= 75% over 4 calls")]


async def test_time_window_keeps_calls_within_the_window() -> None:
    h = Harness(window="time", window_size=10, minimum_calls=4)
    h.fail(3)
    await h.clock.advance(9.5)
    assert h.breaker.snapshot()["calls"] == 3
    h.fail()
    assert h.events == [moved(CLOSED, OPEN, "failure rate 100% >= 50% over 4 calls")]


async def test_time_window_drops_calls_older_than_the_window() -> None:
    h = Harness(window="time", window_size=10, minimum_calls=4, failure_rate_threshold=0.75)
    h.fail(2)
    await h.clock.advance(5)
    h.succeed(2)
    assert h.breaker.snapshot()["calls"] == 4
    await h.clock.advance(5)
    snapshot = h.breaker.snapshot()
    assert snapshot["calls"] == 2
    assert snapshot["failure_rate"] == 0.0
    h.fail()
    assert h.breaker.state is CLOSED
    await h.clock.advance(60)
    assert h.breaker.snapshot()["calls"] == 0


async def test_time_window_minimum_is_not_capped() -> None:
    h = Harness(window="time", window_size=2, minimum_calls=5)
    h.fail(4)
    assert h.breaker.state is CLOSED
    h.fail()
    assert h.breaker.state is OPEN


def test_slow_call_rate_opens() -> None:
    h = Harness(window_size=4, minimum_calls=4, slow_call_ms=100, slow_call_rate_threshold=0.5)
    h.succeed(seconds=0.1)  # exactly slow_call_ms counts as slow
    h.succeed(seconds=0.099)
    h.succeed(seconds=0.2)
    assert h.breaker.state is CLOSED
    h.succeed(seconds=0.01)
    assert h.events == [moved(CLOSED, OPEN, "slow call rate 50% >= 50% over 4 calls")]


def test_default_slow_threshold_needs_every_call_slow() -> None:
    h = Harness(window_size=4, minimum_calls=4, failure_rate_threshold=1.0)
    h.succeed(seconds=0.5)
    h.succeed(3, seconds=2.0)
    assert h.breaker.snapshot()["slow_rate"] == 0.75
    h.fail(seconds=5.0)  # a slow failure counts as slow too
    assert h.events == [moved(CLOSED, OPEN, "slow call rate 100% >= 100% over 4 calls")]


def test_failure_rate_is_reported_before_slow_rate() -> None:
    h = Harness(window_size=2, minimum_calls=2, slow_call_rate_threshold=0.5)
    h.fail(2, seconds=3.0)
    assert h.events == [moved(CLOSED, OPEN, "failure rate 100% >= 50% over 2 calls")]


# --- open -> half-open, backoff -------------------------------------------------


async def test_open_refuses_until_open_time_passes() -> None:
    h = Harness(window_size=1, minimum_calls=1, open_ms=5000)
    h.fail()
    h.take_events()
    await h.clock.advance(4.999)
    assert not h.breaker.allow()
    assert h.breaker.state is OPEN
    assert h.events == []
    await h.clock.advance(0.001)
    assert h.breaker.allow()
    assert h.events == [moved(OPEN, HALF_OPEN, "open for 5.0s")]


async def test_reading_state_moves_open_to_half_open() -> None:
    h = Harness(window_size=1, minimum_calls=1, open_ms=1000)
    h.fail()
    await h.clock.advance(1)
    assert h.breaker.state is HALF_OPEN
    assert h.events[-1] == moved(OPEN, HALF_OPEN, "open for 1.0s")


async def test_open_duration_doubles_on_each_reopen_up_to_the_cap() -> None:
    h = Harness(window_size=1, minimum_calls=1, open_ms=1000, open_max_ms=3000, half_open_calls=1)
    h.fail()
    durations = []
    for _ in range(4):
        opened_for = h.breaker.snapshot()["open_until"]
        assert isinstance(opened_for, float)
        durations.append(opened_for)
        await h.clock.advance(opened_for - 0.01)
        assert not h.breaker.allow()
        await h.clock.advance(0.01)
        h.fail()
    assert durations == [1.0, 2.0, 3.0, 3.0]
    assert h.breaker.snapshot()["times_opened"] == 5


async def test_closing_resets_the_backoff() -> None:
    h = Harness(window_size=1, minimum_calls=1, open_ms=1000, half_open_calls=1)
    h.fail()
    await h.clock.advance(1)
    h.fail()  # probe fails: open for 2s
    assert h.breaker.snapshot()["open_until"] == 2.0
    await h.clock.advance(2)
    h.succeed()
    assert h.breaker.state is CLOSED
    h.fail()
    assert h.breaker.snapshot()["open_until"] == 1.0


# --- half-open -------------------------------------------------------------------


async def test_half_open_lets_through_only_the_probe_limit() -> None:
    h = Harness(window_size=1, minimum_calls=1, half_open_calls=3)
    await open_then_half_open(h)
    assert [h.breaker.allow() for _ in range(4)] == [True, True, True, False]


async def test_release_frees_a_probe_slot_without_a_verdict() -> None:
    h = Harness(window_size=1, minimum_calls=1, half_open_calls=2)
    await open_then_half_open(h)
    assert h.breaker.allow()
    assert h.breaker.allow()
    assert not h.breaker.allow()
    h.breaker.release()
    assert h.breaker.state is HALF_OPEN
    assert h.breaker.allow()
    assert not h.breaker.allow()
    assert h.events == []


async def test_release_cannot_free_more_slots_than_are_in_flight() -> None:
    h = Harness(window_size=1, minimum_calls=1, half_open_calls=2)
    await open_then_half_open(h)
    h.succeed()
    h.breaker.release()
    h.breaker.release()
    assert h.breaker.allow()
    assert not h.breaker.allow()


async def test_one_failed_probe_reopens() -> None:
    h = Harness(window_size=1, minimum_calls=1, half_open_calls=3)
    await open_then_half_open(h)
    h.succeed(2)
    h.fail()
    assert h.events == [moved(HALF_OPEN, OPEN, "probe failed")]
    assert not h.breaker.allow()


async def test_all_probes_succeeding_closes_with_a_fresh_window() -> None:
    h = Harness(window_size=2, minimum_calls=1, half_open_calls=3)
    await open_then_half_open(h)
    h.succeed(2)
    assert h.breaker.state is HALF_OPEN
    h.succeed()
    assert h.events == [moved(HALF_OPEN, CLOSED, "3 probes succeeded")]
    assert h.breaker.snapshot()["calls"] == 0


async def test_slow_probes_reopen_at_the_slow_threshold() -> None:
    h = Harness(window_size=1, minimum_calls=1, half_open_calls=3, slow_call_ms=100)
    await open_then_half_open(h)
    h.succeed(3, seconds=0.5)
    assert h.events == [moved(HALF_OPEN, OPEN, "3 of 3 probes slow")]


async def test_some_slow_probes_below_the_threshold_still_close() -> None:
    h = Harness(window_size=1, minimum_calls=1, half_open_calls=3, slow_call_ms=100)
    await open_then_half_open(h)
    h.succeed(2, seconds=0.5)
    h.succeed()
    assert h.breaker.state is CLOSED


async def test_outcomes_of_calls_from_before_a_transition_are_ignored() -> None:
    h = Harness(window_size=2, minimum_calls=2, half_open_calls=1)
    assert h.breaker.allow()  # a call that will finish late
    h.fail(2)
    h.breaker.record(False, 0.01)  # lands while open
    h.breaker.release()
    assert h.breaker.snapshot()["calls"] == 0
    await h.clock.advance(5)
    assert h.breaker.state is HALF_OPEN
    h.breaker.record(True, 0.01)  # not a probe: no probe is in flight
    assert h.breaker.state is HALF_OPEN
    assert h.breaker.allow()
    assert not h.breaker.allow()


# --- disabled, options, snapshot -------------------------------------------------


async def test_disabled_breaker_always_allows_and_records_nothing() -> None:
    h = Harness(enabled=False, window_size=1, minimum_calls=1)
    h.fail(50, seconds=10.0)
    h.breaker.release()
    await h.clock.advance(100)
    assert h.breaker.state is CLOSED
    assert h.events == []
    assert h.breaker.snapshot()["calls"] == 0


@pytest.mark.parametrize(
    "options",
    [
        {"open_ms": 2000, "open_max_ms": 1000},
        {"failure_rate_threshold": 0},
        {"failure_rate_threshold": 1.01},
        {"slow_call_rate_threshold": -0.1},
        {"slow_call_rate_threshold": 1.5},
        {"slow_call_ms": 0},
        {"open_ms": 0},
        {"window_size": 0},
        {"minimum_calls": 0},
        {"half_open_calls": 0},
        {"window": "sliding"},
        {"windw_size": 10},
    ],
)
def test_invalid_options_are_rejected(options: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        BreakerOptions(**options)  # type: ignore[arg-type]


def test_open_max_error_names_both_fields() -> None:
    with pytest.raises(ValidationError, match=r"open_max_ms .* must be >= open_ms"):
        BreakerOptions(open_ms=2000, open_max_ms=1000)


def test_boundary_options_are_accepted() -> None:
    options = BreakerOptions(
        failure_rate_threshold=1.0, open_ms=1000, open_max_ms=1000, window_size=1
    )
    assert options.open_max_ms == options.open_ms


async def test_snapshot_in_each_state() -> None:
    h = Harness(window_size=4, minimum_calls=4, open_ms=5000, slow_call_ms=100)
    h.succeed(seconds=0.2)
    h.fail()
    assert h.breaker.snapshot() == {
        "state": "closed",
        "failure_rate": 0.5,
        "slow_rate": 0.5,
        "calls": 2,
        "open_until": None,
        "times_opened": 0,
        "probes": 0,
    }
    h.fail(2)
    await h.clock.advance(1.5)
    assert h.breaker.snapshot() == {
        "state": "open",
        "failure_rate": 0.0,
        "slow_rate": 0.0,
        "calls": 0,
        "open_until": 3.5,
        "times_opened": 1,
        "probes": 0,
    }
    await h.clock.advance(3.5)
    h.breaker.allow()
    snapshot = h.breaker.snapshot()
    assert snapshot["state"] == "half_open"
    assert snapshot["open_until"] is None
    assert snapshot["probes"] == 1


# --- property ------------------------------------------------------------------------

operation = st.tuples(
    st.booleans(),  # ok
    st.floats(min_value=0, max_value=3),  # seconds the call took
    st.floats(min_value=0, max_value=8),  # clock advance afterwards
    st.booleans(),  # release instead of record
)


@settings(max_examples=200, deadline=None)
@given(
    window=st.sampled_from(["count", "time"]),
    window_size=st.integers(1, 6),
    minimum_calls=st.integers(1, 6),
    half_open_calls=st.integers(1, 3),
    operations=st.lists(operation, max_size=60),
)
def test_breaker_invariants_hold_for_any_sequence(
    window: str,
    window_size: int,
    minimum_calls: int,
    half_open_calls: int,
    operations: list[tuple[bool, float, float, bool]],
) -> None:
    h = Harness(
        window=window,
        window_size=window_size,
        minimum_calls=minimum_calls,
        half_open_calls=half_open_calls,
        open_ms=1000,
        open_max_ms=4000,
    )

    async def run() -> None:
        for ok, seconds, advance, release in operations:
            if h.breaker.allow():
                if release:
                    h.breaker.release()
                else:
                    h.breaker.record(ok, seconds)
            assert h.breaker.state in set(BreakerState)
            snapshot = h.breaker.snapshot()
            if snapshot["state"] == "open":
                remaining = snapshot["open_until"]
                assert isinstance(remaining, float)
                assert 0 < remaining <= 4.0 + 1e-9
                assert not h.breaker.allow()
            await h.clock.advance(advance)

    asyncio.run(run())
    previous = CLOSED
    for event in h.events:
        assert isinstance(event, BreakerTransition)
        assert event.old is previous
        assert event.new is not event.old
        previous = event.new
