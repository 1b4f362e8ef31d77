from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from failsoft.data.distance import (
    jensen_shannon,
    jensen_shannon_of_counts,
    psi,
    psi_of_counts,
    reference_splits,
)
from failsoft.data.sketches import CategoricalSketch, NumericSketch

seeds = st.integers(0, 2**32 - 1)
counts = st.lists(st.integers(0, 1000), min_size=1, max_size=12)


@settings(max_examples=50, deadline=None)
@given(seeds, st.integers(1, 5000))
def test_psi_of_a_distribution_with_itself_is_zero(seed: int, n: int) -> None:
    sketch = NumericSketch.of(np.random.default_rng(seed).lognormal(size=n))
    assert psi(sketch, sketch).value == pytest.approx(0.0, abs=1e-12)
    assert psi(sketch, sketch.copy()).value == pytest.approx(0.0, abs=1e-12)


@given(counts, counts)
def test_psi_of_counts_is_never_negative(a: list[int], b: list[int]) -> None:
    size = min(len(a), len(b))
    assert psi_of_counts(np.array(a[:size]), np.array(b[:size])) >= 0.0


def test_psi_of_counts_by_hand() -> None:
    # shares 0.5/0.5 against 0.25/0.75 after half a count: (100.5, 100.5) vs (50.5, 150.5)
    e = np.array([100.5, 100.5]) / 201
    a = np.array([50.5, 150.5]) / 201
    expected = float(np.sum((a - e) * np.log(a / e)))
    assert psi_of_counts(np.array([100, 100]), np.array([50, 150])) == pytest.approx(expected)


@given(counts, counts)
def test_jensen_shannon_is_symmetric_and_bounded(a: list[int], b: list[int]) -> None:
    size = min(len(a), len(b))
    p, q = np.array(a[:size]), np.array(b[:size])
    forward = jensen_shannon_of_counts(p, q)
    assert forward == pytest.approx(jensen_shannon_of_counts(q, p), abs=1e-12)
    assert 0.0 <= forward <= 1.0
    assert jensen_shannon_of_counts(p, p) == pytest.approx(0.0, abs=1e-7)


@given(st.lists(st.integers(0, 5), max_size=200), st.lists(st.integers(0, 5), max_size=200))
def test_jensen_shannon_of_sketches_is_symmetric_and_bounded(a: list[int], b: list[int]) -> None:
    x, y = CategoricalSketch.of(np.array(a, np.int64)), CategoricalSketch.of(np.array(b, np.int64))
    assert jensen_shannon(x, y).value == pytest.approx(jensen_shannon(y, x).value, abs=1e-12)
    assert 0.0 <= jensen_shannon(x, y).value <= 1.0


def test_jensen_shannon_extremes() -> None:
    cats = CategoricalSketch.of(np.array([b"cat"] * 10, dtype=object))
    dogs = CategoricalSketch.of(np.array([b"dog"] * 10, dtype=object))
    assert jensen_shannon(cats, dogs).value == pytest.approx(1.0)
    assert jensen_shannon(cats, cats).value == 0.0


def test_reference_splits_are_the_reference_quantiles_without_duplicates() -> None:
    uniform = NumericSketch.of(np.arange(1000, dtype=np.float64))
    splits = reference_splits(uniform, 10)
    assert len(splits) == 9
    np.testing.assert_allclose(splits, np.arange(100, 1000, 100), atol=15)  # KLL rank error
    coarse = NumericSketch.of(np.repeat([0.0, 1.0], 500))
    assert reference_splits(coarse, 10) == [0.0, 1.0]
    with pytest.raises(ValueError, match="bins"):
        reference_splits(uniform, 1)


def test_psi_catches_a_one_sd_shift_and_not_a_resample() -> None:
    rng = np.random.default_rng(3)
    stable = NumericSketch.of(rng.normal(size=20_000))
    same = NumericSketch.of(rng.normal(size=20_000))
    shifted = NumericSketch.of(rng.normal(1.0, size=20_000))
    assert psi(stable, same).value < 0.01
    # A one-standard-deviation shift of a normal reads a PSI of about 1.
    assert 0.7 < psi(stable, shifted).value < 1.4


def test_psi_gives_non_finite_values_their_own_cell() -> None:
    rng = np.random.default_rng(4)
    stable = NumericSketch.of(rng.normal(size=5_000))
    broken = NumericSketch.of(np.where(rng.random(5_000) < 0.2, np.nan, rng.normal(size=5_000)))
    distance = psi(stable, broken)
    assert distance.cells == 11
    assert distance.value > 0.5


def test_small_sample_bias_matches_chi_squared_and_the_interval_corrects_it() -> None:
    """Two samples of one distribution (200 vs 1,800) read PSI ≈ 9 / n_eff on
    10 cells; the corrected interval's upper bound stays below 0.2 in >= 97%
    of 400 seeded trials, though the raw PSI alone would pass 0.1 often."""
    rng = np.random.default_rng(5)
    scaled, upper_below, raw_over_warn = [], 0, 0
    for _ in range(400):
        stable = NumericSketch.of(rng.normal(size=1_800))
        candidate = NumericSketch.of(rng.normal(size=200))
        distance = psi(stable, candidate)
        scaled.append(distance.value * distance.n_effective)
        upper_below += distance.interval(1.645)[1] < 0.2
        raw_over_warn += distance.value > 0.05
    assert 8.0 < float(np.mean(scaled)) < 10.0  # chi-squared with 9 degrees of freedom
    assert upper_below >= 0.97 * 400
    assert raw_over_warn > 100


def test_interval_brackets_a_real_shift() -> None:
    rng = np.random.default_rng(6)
    truth = psi(
        NumericSketch.of(rng.normal(size=400_000), k=2000),
        NumericSketch.of(rng.normal(0.5, size=400_000), k=2000),
    ).value
    covered = 0
    for _ in range(200):
        stable = NumericSketch.of(rng.normal(size=1_800))
        candidate = NumericSketch.of(rng.normal(0.5, size=200))
        low, high = psi(stable, candidate).interval(1.645)
        covered += low <= truth <= high
    assert covered >= 0.8 * 200  # nominal 90%


def test_distance_of_empty_sides() -> None:
    empty = NumericSketch()
    some = NumericSketch.of([1.0, 2.0])
    assert psi(empty, some).value == 0.0
    assert psi(empty, some).interval(1.645) == (0.0, math.inf)
    assert jensen_shannon(CategoricalSketch(), CategoricalSketch()).value == 0.0
