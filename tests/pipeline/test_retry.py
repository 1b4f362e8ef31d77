from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from failsoft.clock import ManualClock
from failsoft.errors import FailureClass
from failsoft.pipeline.retry import (
    RetryBudget,
    RetryOptions,
    backoff_delay,
    retry_budget,
)


class SteppedClock(ManualClock):
    """A ManualClock that sync tests (and hypothesis) can move without an event loop."""

    def step(self, seconds: float) -> None:
        self._now += seconds


def withdraw_all(budget: RetryBudget, limit: int = 10_000) -> int:
    granted = 0
    while granted < limit and budget.try_withdraw():
        granted += 1
    return granted


# Options


def test_option_defaults() -> None:
    options = RetryOptions()
    assert options.max_attempts == 3
    assert options.retry_on == {FailureClass.REPLICA}


def test_retry_on_takes_the_names_of_earlier_releases() -> None:
    options = RetryOptions.model_validate({"retry_on": ["infra", "logic"]})
    assert options.retry_on == frozenset({FailureClass.REPLICA})
    assert RetryOptions.model_validate({"retry_on": []}).retry_on == frozenset()


def test_only_replica_failures_can_be_retried() -> None:
    with pytest.raises(ValidationError, match="only replica failures can be retried"):
        RetryOptions.model_validate({"retry_on": ["replica", "request"]})


@pytest.mark.parametrize(
    "fields",
    [
        {"max_attempts": 0},
        {"max_attempts": 11},
        {"backoff_base_ms": -1.0},
        {"backoff_base_ms": 10.0, "backoff_max_ms": 5.0},
        {"budget_ratio": 1.5},
        {"budget_min_per_s": -1.0},
        {"budget_window_s": 0.0},
        {"budget_window_s": 601.0},
        {"retry_on": ["sometimes"]},
        {"retries": 3},
    ],
)
def test_invalid_options_are_rejected(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        RetryOptions.model_validate(fields)


def test_backoff_range_error_names_both_fields() -> None:
    with pytest.raises(ValidationError, match=r"backoff_max_ms .* backoff_base_ms"):
        RetryOptions(backoff_base_ms=10.0, backoff_max_ms=5.0)


@pytest.mark.parametrize(
    ("ratio", "min_per_s", "window_s"), [(-0.1, 1.0, 1.0), (0.1, -1.0, 1.0), (0.1, 1.0, 0.0)]
)
def test_invalid_budget_arguments(ratio: float, min_per_s: float, window_s: float) -> None:
    with pytest.raises(ValueError, match="must be"):
        RetryBudget(ratio, min_per_s, window_s, ManualClock())


# Budget


def test_floor_allows_min_per_s_times_window_without_requests() -> None:
    budget = RetryBudget(ratio=0.2, min_per_s=2.0, window_s=5.0, clock=ManualClock())
    assert withdraw_all(budget) == 10


def test_ratio_allows_a_share_of_requests() -> None:
    budget = RetryBudget(ratio=0.2, min_per_s=0.0, window_s=10.0, clock=ManualClock())
    for _ in range(100):
        budget.deposit()
    assert withdraw_all(budget) == 20


def test_ratio_and_floor_add_up() -> None:
    budget = RetryBudget(ratio=0.5, min_per_s=1.0, window_s=3.0, clock=ManualClock())
    for _ in range(10):
        budget.deposit()
    assert withdraw_all(budget) == 5 + 3


def test_float_rounding_does_not_cost_a_retry() -> None:
    budget = RetryBudget(ratio=0.29, min_per_s=0.0, window_s=10.0, clock=ManualClock())
    for _ in range(100):
        budget.deposit()
    assert withdraw_all(budget) == 29


def test_requests_deposited_later_allow_more_retries() -> None:
    budget = RetryBudget(ratio=0.1, min_per_s=0.0, window_s=10.0, clock=ManualClock())
    assert not budget.try_withdraw()
    for _ in range(10):
        budget.deposit()
    assert budget.try_withdraw()
    assert not budget.try_withdraw()


async def test_old_requests_stop_counting() -> None:
    clock = ManualClock()
    budget = RetryBudget(ratio=0.5, min_per_s=0.0, window_s=10.0, clock=clock)
    for _ in range(10):
        budget.deposit()
    await clock.advance(5.0)
    for _ in range(4):
        budget.deposit()
    assert budget.snapshot()["requests"] == 14
    # One window and one bucket later the first ten have left; the last four remain.
    await clock.advance(6.0)
    assert budget.snapshot()["requests"] == 4
    assert withdraw_all(budget) == 2


async def test_old_retries_stop_counting() -> None:
    clock = ManualClock()
    budget = RetryBudget(ratio=0.0, min_per_s=1.0, window_s=10.0, clock=clock)
    assert withdraw_all(budget) == 10
    await clock.advance(5.0)
    assert not budget.try_withdraw()
    await clock.advance(6.0)
    assert withdraw_all(budget) == 10


async def test_a_long_pause_clears_the_window() -> None:
    clock = ManualClock()
    budget = RetryBudget(ratio=1.0, min_per_s=0.0, window_s=1.0, clock=clock)
    for _ in range(50):
        budget.deposit()
    assert withdraw_all(budget, limit=30) == 30
    await clock.advance(3600.0)
    assert budget.snapshot() == {"requests": 0.0, "retries": 0.0, "available": 0.0}


def test_window_counts_at_least_one_full_window() -> None:
    clock = SteppedClock(start=0.0)
    budget = RetryBudget(ratio=1.0, min_per_s=0.0, window_s=10.0, clock=clock)
    clock.step(0.999)  # late in bucket 0
    budget.deposit()
    clock.step(9.999)  # 9.999 s later, still within one window: must still count
    assert budget.snapshot()["requests"] == 1
    clock.step(1.01)  # past window + one bucket: must be gone
    assert budget.snapshot()["requests"] == 0


def test_a_late_burst_of_retries_still_counts_one_window_later() -> None:
    clock = SteppedClock(start=0.0)
    budget = RetryBudget(ratio=0.0, min_per_s=1.0, window_s=10.0, clock=clock)
    clock.step(0.9)  # late in bucket 0
    assert withdraw_all(budget) == 10
    clock.step(9.2)  # 10.1: bucket 10, but the burst is only 9.2 s old
    assert not budget.try_withdraw()
    clock.step(1.0)  # 11.1: bucket 0 has left the window
    assert withdraw_all(budget) == 10


def test_snapshot_reports_requests_retries_and_available() -> None:
    budget = RetryBudget(ratio=0.5, min_per_s=0.0, window_s=10.0, clock=ManualClock())
    for _ in range(6):
        budget.deposit()
    assert budget.try_withdraw()
    assert budget.snapshot() == {"requests": 6.0, "retries": 1.0, "available": 2.0}


def test_retry_budget_follows_options() -> None:
    options = RetryOptions(budget_ratio=0.0, budget_min_per_s=0.5, budget_window_s=4.0)
    assert withdraw_all(retry_budget(options, ManualClock())) == 2


# (what, how many or how long): bursts of requests and retries, and pauses
# measured in windows.
Operation = tuple[str, float]
operations = st.lists(
    st.one_of(
        st.tuples(st.just("deposit"), st.integers(1, 40)),
        st.tuples(st.just("withdraw"), st.integers(1, 40)),
        st.tuples(st.just("advance"), st.integers(0, 150).map(lambda n: n / 100)),
    ),
    max_size=60,
)
floors = st.one_of(st.just(0.0), st.floats(min_value=0.0, max_value=3.0))


def run(
    budget: RetryBudget, clock: SteppedClock, window_s: float, op: str, amount: float
) -> list[float]:
    """Apply one operation; the times of the retries it was granted."""
    if op == "advance":
        clock.step(amount * window_s)
        return []
    if op == "deposit":
        for _ in range(int(amount)):
            budget.deposit()
        return []
    return [clock.now() for _ in range(int(amount)) if budget.try_withdraw()]


@settings(max_examples=200, deadline=None)
@given(
    ratio=st.floats(min_value=0.0, max_value=1.0),
    min_per_s=floors,
    window_s=st.sampled_from([0.5, 1.0, 2.5, 10.0]),
    ops=operations,
)
def test_never_more_retries_than_the_window_allows(
    ratio: float, min_per_s: float, window_s: float, ops: list[Operation]
) -> None:
    """Retries in the window up to any retry <= ratio * requests + floor * window.

    The documented slack: requests count for up to one bucket (window / 10)
    longer than the window, so the requests side looks back window * 1.1.
    """
    clock = SteppedClock()
    budget = RetryBudget(ratio, min_per_s, window_s, clock)
    deposits: list[float] = []
    withdrawals: list[float] = []
    for op, amount in ops:
        granted = run(budget, clock, window_s, op, amount)
        if op == "deposit":
            deposits.extend([clock.now()] * int(amount))
        for now in granted:
            withdrawals.append(now)
            recent_retries = sum(1 for t in withdrawals if t > now - window_s + 1e-9)
            lookback = window_s * 1.1 + 1e-9
            recent_requests = sum(1 for t in deposits if t >= now - lookback)
            assert recent_retries <= ratio * recent_requests + min_per_s * window_s + 1e-6


@settings(max_examples=100, deadline=None)
@given(
    min_per_s=st.floats(min_value=0.0, max_value=5.0),
    window_s=st.sampled_from([0.5, 1.0, 2.5, 10.0]),
    ops=operations,
)
def test_floor_is_always_available_after_a_quiet_window(
    min_per_s: float, window_s: float, ops: list[Operation]
) -> None:
    """Whatever happened before, one quiet window (plus a bucket) restores the full floor."""
    clock = SteppedClock()
    budget = RetryBudget(0.2, min_per_s, window_s, clock)
    for op, amount in ops:
        run(budget, clock, window_s, op, amount)
    # Cross the quiet window in uneven steps, looking each time, so the ring
    # rotates bucket by bucket instead of being cleared at once.
    for _ in range(8):
        clock.step(window_s * 1.1 / 8 + 1e-6)
        budget.snapshot()
    assert withdraw_all(budget) == int(min_per_s * window_s + 1e-9)


# Backoff


def test_backoff_stays_within_the_growing_ceiling() -> None:
    rng = random.Random(7)
    for retry in range(1, 12):
        ceiling = min(0.05, 0.002 * 2 ** (retry - 1))
        delays = [backoff_delay(retry, 0.002, 0.05, rng) for _ in range(200)]
        assert all(0.0 <= delay <= ceiling for delay in delays)
        # Full jitter spreads over the whole range: some near zero, some near the ceiling.
        assert min(delays) < ceiling * 0.1
        assert max(delays) > ceiling * 0.9


def test_backoff_is_capped_even_for_huge_retry_numbers() -> None:
    rng = random.Random(1)
    assert all(0.0 <= backoff_delay(5000, 0.002, 0.05, rng) <= 0.05 for _ in range(100))


def test_backoff_draws_from_the_given_rng() -> None:
    first = [backoff_delay(3, 0.01, 1.0, random.Random(42)) for _ in range(3)]
    assert first[0] == first[1] == first[2]
    rng = random.Random(42)
    sequence = [backoff_delay(3, 0.01, 1.0, rng) for _ in range(3)]
    assert len(set(sequence)) == 3
    assert sequence[0] == first[0]


def test_backoff_asks_uniform_zero_to_ceiling() -> None:
    calls: list[tuple[float, float]] = []

    class Recording(random.Random):
        def uniform(self, a: float, b: float) -> float:
            calls.append((a, b))
            return b

    assert backoff_delay(1, 0.002, 0.05, Recording()) == 0.002
    assert backoff_delay(3, 0.002, 0.05, Recording()) == 0.008
    assert backoff_delay(9, 0.002, 0.05, Recording()) == 0.05
    assert calls == [(0.0, 0.002), (0.0, 0.008), (0.0, 0.05)]


def test_zero_base_means_no_wait() -> None:
    assert backoff_delay(4, 0.0, 0.0, random.Random(0)) == 0.0


@pytest.mark.parametrize(("retry", "base", "cap"), [(0, 0.1, 1.0), (1, -0.1, 1.0), (1, 0.1, -1)])
def test_backoff_rejects_invalid_arguments(retry: int, base: float, cap: float) -> None:
    with pytest.raises(ValueError, match=r"retry counts from 1|must be >= 0"):
        backoff_delay(retry, base, cap, random.Random(0))
