from __future__ import annotations

import random

import numpy as np
import pytest
from pydantic import ValidationError

from failsoft.clock import ManualClock
from failsoft.pipeline.hedge import (
    MIN_SAMPLES,
    HedgeOptions,
    LatencyTracker,
    hedge_budget,
    hedge_delay,
)
from failsoft.pipeline.retry import RetryBudget


def filled(values: list[float], size: int = 512) -> LatencyTracker:
    tracker = LatencyTracker(size)
    for value in values:
        tracker.observe(value)
    return tracker


# Options


def test_option_defaults() -> None:
    options = HedgeOptions()
    assert (options.delay_quantile, options.max_hedges, options.budget_ratio) == (0.95, 1, 0.1)


@pytest.mark.parametrize(
    "fields",
    [
        {"delay_quantile": 0.4},
        {"delay_quantile": 1.0},
        {"min_delay_ms": 0.0},
        {"min_delay_ms": 10.0, "max_delay_ms": 5.0},
        {"max_hedges": 4},
        {"max_hedges": -1},
        {"budget_ratio": -0.1},
        {"budget_window_s": 0.0},
        {"hedge_after": 3},
    ],
)
def test_invalid_options_are_rejected(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        HedgeOptions.model_validate(fields)


# LatencyTracker


def test_no_quantile_before_enough_samples() -> None:
    tracker = filled([0.01] * (MIN_SAMPLES - 1))
    assert tracker.quantile(0.5) is None
    tracker.observe(0.01)
    assert tracker.quantile(0.5) == 0.01


@pytest.mark.parametrize("q", [0.0, 0.25, 0.5, 0.9, 0.95, 0.999, 1.0])
def test_quantiles_match_numpy_on_known_data(q: float) -> None:
    values = [float(v) for v in random.Random(3).sample(range(1, 201), 200)]
    tracker = filled(values)
    assert tracker.quantile(q) == pytest.approx(float(np.quantile(values, q)))


def test_exact_quantiles_of_one_to_hundred_and_one() -> None:
    tracker = filled([float(v) for v in range(101, 0, -1)])
    assert tracker.quantile(0.0) == 1.0
    assert tracker.quantile(0.5) == 51.0
    assert tracker.quantile(0.95) == 96.0
    assert tracker.quantile(1.0) == 101.0


def test_ring_keeps_only_the_last_size_samples() -> None:
    tracker = filled([1000.0] * 40 + [float(v) for v in range(1, 33)], size=32)
    assert len(tracker) == 32
    assert tracker.quantile(0.0) == 1.0
    assert tracker.quantile(1.0) == 32.0


def test_answer_is_cached_until_refresh_every_observations() -> None:
    tracker = filled([0.01] * 512)
    assert tracker.refresh_every == 32
    assert tracker.quantile(1.0) == 0.01
    for _ in range(tracker.refresh_every - 1):
        tracker.observe(9.0)
    assert tracker.quantile(1.0) == 0.01  # the cached sort does not see them yet
    tracker.observe(9.0)
    assert tracker.quantile(1.0) == 9.0


def test_refresh_every_has_a_floor_of_one() -> None:
    assert LatencyTracker(MIN_SAMPLES).refresh_every == 1


def test_invalid_samples_are_dropped() -> None:
    tracker = filled([0.01] * MIN_SAMPLES)
    for bad in (float("nan"), float("inf"), -0.5):
        tracker.observe(bad)
    assert len(tracker) == MIN_SAMPLES
    assert tracker.quantile(1.0) == 0.01


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="size must be at least"):
        LatencyTracker(MIN_SAMPLES - 1)
    with pytest.raises(ValueError, match="q must be within"):
        filled([0.01] * MIN_SAMPLES).quantile(1.5)


# hedge_delay and budget


def test_delay_is_the_minimum_without_data() -> None:
    assert hedge_delay(LatencyTracker(), HedgeOptions(min_delay_ms=3.0)) == 0.003


@pytest.mark.parametrize(
    ("latency_s", "expected_s"),
    [(0.0001, 0.002), (0.020, 0.020), (9.0, 0.5)],
)
def test_delay_is_the_quantile_clamped(latency_s: float, expected_s: float) -> None:
    tracker = filled([latency_s] * 100)
    assert hedge_delay(tracker, HedgeOptions()) == pytest.approx(expected_s)


def test_delay_uses_the_configured_quantile() -> None:
    tracker = filled([float(v) / 1000.0 for v in range(1, 101)])
    options = HedgeOptions(delay_quantile=0.5, max_delay_ms=1000.0)
    assert hedge_delay(tracker, options) == pytest.approx(0.0505)


def test_hedge_budget_is_a_retry_budget_with_the_hedge_numbers() -> None:
    options = HedgeOptions(budget_ratio=0.1, budget_min_per_s=0.0, budget_window_s=5.0)
    budget = hedge_budget(options, ManualClock())
    assert isinstance(budget, RetryBudget)
    for _ in range(30):
        budget.deposit()
    granted = sum(budget.try_withdraw() for _ in range(10))
    assert granted == 3
