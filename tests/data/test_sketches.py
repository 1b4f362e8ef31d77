from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from failsoft.data.sketches import CategoricalSketch, NumericSketch, OutputSketches, kind_for

floats = st.floats(allow_nan=True, allow_infinity=True, width=64)
finite = st.floats(min_value=-1e9, max_value=1e9, allow_nan=False)


def true_rank(data: np.ndarray, value: float) -> float:
    return float(np.count_nonzero(data < value)) / data.size


# -- NumericSketch ---------------------------------------------------------


@given(st.lists(floats, max_size=300))
def test_numeric_bytes_round_trip(values: list[float]) -> None:
    sketch = NumericSketch.of(values)
    again = NumericSketch.from_bytes(sketch.to_bytes())
    assert again.count == sketch.count == len(values)
    assert again.nonfinite_count == sum(1 for v in values if not np.isfinite(v))
    assert again.to_bytes() == sketch.to_bytes()
    ranks = [0.0, 0.25, 0.5, 0.99, 1.0]
    np.testing.assert_array_equal(again.quantiles(ranks), sketch.quantiles(ranks))


@given(st.lists(finite, min_size=1, max_size=150))
def test_numeric_is_exact_while_small(values: list[float]) -> None:
    data = np.array(values)
    sketch = NumericSketch.of(data)
    assert sketch.is_exact
    assert sketch.rank_error == 0.0
    ordered = np.sort(data)
    step = 1.0 / data.size + 1e-12
    for rank in (0.0, 0.1, 0.5, 0.9, 0.99, 1.0):
        value = sketch.quantile(rank)
        assert value in ordered
        below, at_most = true_rank(data, value), np.count_nonzero(data <= value) / data.size
        assert below - step <= rank <= at_most + step
    assert sketch.min == ordered[0]
    assert sketch.max == ordered[-1]


@settings(max_examples=40, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.integers(1, 3000),
    st.integers(1, 3000),
    st.integers(1, 3000),
)
def test_numeric_merge_is_associative_within_rank_error(seed: int, a: int, b: int, c: int) -> None:
    rng = np.random.default_rng(seed)
    parts = [rng.lognormal(size=a), rng.normal(size=b), rng.exponential(size=c)]
    everything = np.concatenate(parts)

    def sketches() -> list[NumericSketch]:
        return [NumericSketch.of(part) for part in parts]

    x, y, z = sketches()
    x.merge(y)
    x.merge(z)  # (a + b) + c
    p, q, r = sketches()
    q.merge(r)
    p.merge(q)  # a + (b + c)
    for merged in (x, p):
        assert merged.count == everything.size
        assert merged.min == everything.min()
        assert merged.max == everything.max()
        # The library's bound holds with 99% confidence; merges add error, so
        # allow twice the bound plus one item's worth of rank.
        allowed = 2 * max(merged.rank_error, 0.0133) + 1.0 / everything.size
        for rank in (0.05, 0.25, 0.5, 0.75, 0.95):
            assert abs(true_rank(everything, merged.quantile(rank)) - rank) <= allowed


def test_numeric_counts_nonfinite_apart_and_keeps_quantiles_finite() -> None:
    sketch = NumericSketch.of([1.0, np.nan, np.inf, -np.inf, 2.0, 3.0])
    assert sketch.count == 6
    assert sketch.finite_count == 3
    assert sketch.nonfinite_count == 3
    assert sketch.quantile(0.0) == 1.0
    assert sketch.quantile(1.0) == 3.0


def test_numeric_empty_answers_nan_not_an_exception() -> None:
    sketch = NumericSketch()
    assert sketch.is_empty
    assert np.isnan(sketch.quantile(0.5))
    assert np.isnan(sketch.quantiles([0.1, 0.9])).all()
    assert sketch.pmf([0.0]).size == 0
    assert np.isnan(sketch.min)


def test_numeric_pmf_and_cdf_on_split_points() -> None:
    sketch = NumericSketch.of(np.arange(100, dtype=np.float64))
    np.testing.assert_allclose(sketch.pmf([25.0, 50.0]), [0.25, 0.25, 0.5])
    np.testing.assert_allclose(sketch.cdf([25.0, 50.0]), [0.25, 0.5, 1.0])
    with pytest.raises(ValueError, match="strictly increasing"):
        sketch.pmf([2.0, 1.0])
    with pytest.raises(ValueError, match="rank"):
        sketch.quantile(1.5)


def test_numeric_update_takes_any_shape_and_dtype() -> None:
    sketch = NumericSketch()
    sketch.update(np.ones((4, 3), dtype=np.float32))
    sketch.update(np.arange(6, dtype=np.int64)[::2])
    sketch.update(np.empty(0))
    assert sketch.count == 15


class _Counting:
    """Stands in for a DataSketches sketch and counts calls to ``update``."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls = 0

    def update(self, *args: Any) -> None:
        self.calls += 1
        self.inner.update(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_updates_are_one_library_call_per_batch_or_per_distinct_label() -> None:
    numeric = NumericSketch()
    numeric._kll = _Counting(numeric._kll)  # type: ignore[assignment]
    numeric.update(np.random.default_rng(0).normal(size=100_000))
    assert numeric._kll.calls == 1  # type: ignore[attr-defined]

    labels = CategoricalSketch()
    labels._items = _Counting(labels._items)  # type: ignore[assignment]
    labels.update(np.random.default_rng(0).integers(0, 3, size=100_000))
    assert labels._items.calls == 3  # type: ignore[attr-defined]
    assert labels.count == 100_000


def test_numeric_rejects_corrupt_bytes() -> None:
    blob = NumericSketch.of([1.0, 2.0]).to_bytes()
    with pytest.raises(ValueError, match="not a serialised numeric sketch"):
        NumericSketch.from_bytes(b"nope" + blob[4:])
    with pytest.raises(ValueError, match=r"corrupt|truncated"):
        NumericSketch.from_bytes(blob[:-3])


# -- CategoricalSketch -----------------------------------------------------

labels = st.lists(st.integers(-3, 12), max_size=300)


@given(labels)
def test_categorical_counts_are_exact_while_labels_fit(values: list[int]) -> None:
    sketch = CategoricalSketch.of(np.array(values, dtype=np.int64))
    expected = {str(k): v for k, v in Counter(values).items()}
    assert sketch.counts() == expected
    assert sketch.count == len(values)
    assert sketch.is_exact
    assert sketch.other_count == 0


@given(labels, labels, labels)
def test_categorical_merge_matches_counting_everything(
    a: list[int], b: list[int], c: list[int]
) -> None:
    x, y, z = (CategoricalSketch.of(np.array(v, dtype=np.int64)) for v in (a, b, c))
    y.merge(z)
    x.merge(y)
    assert x.counts() == {str(k): v for k, v in Counter(a + b + c).items()}


@given(st.lists(st.text(max_size=5), max_size=100))
def test_categorical_bytes_round_trip(values: list[str]) -> None:
    sketch = CategoricalSketch.of(np.array([v.encode() for v in values], dtype=object))
    again = CategoricalSketch.from_bytes(sketch.to_bytes())
    assert again.counts() == sketch.counts() == dict(Counter(values))
    assert again.lg_max_k == sketch.lg_max_k
    # (The library's bytes depend on its hash map's history, so compare contents.)
    assert CategoricalSketch.from_bytes(again.to_bytes()).counts() == sketch.counts()


def test_categorical_top_is_most_frequent_first() -> None:
    sketch = CategoricalSketch.of(np.array([b"cat", b"dog", b"dog", b"\xff", b"dog"], dtype=object))
    assert sketch.top(2) == [("dog", 3), ("\\xff", 1)]
    assert sketch.estimate(b"dog") == 3
    assert CategoricalSketch.of(np.array([True, False, True])).counts() == {"True": 2, "False": 1}
    assert CategoricalSketch.of(np.array(["a", "b", "a"])).counts() == {"a": 2, "b": 1}


def test_categorical_beyond_capacity_is_approximate_within_its_bound() -> None:
    rng = np.random.default_rng(0)
    values = np.concatenate([np.zeros(5_000, np.int64), rng.integers(1, 2_000, size=5_000)])
    sketch = CategoricalSketch.of(values, lg_max_k=4)  # room for 12 labels
    assert not sketch.is_exact
    assert sketch.count == 10_000
    assert abs(sketch.estimate(0) - 5_000) <= sketch.max_error
    assert sketch.top(1)[0][0] == "0"
    assert sketch.other_count > 0


# -- OutputSketches --------------------------------------------------------


def batch(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    return {
        "probabilities": rng.dirichlet([1, 1, 1], size=n).astype(np.float32),
        "label": rng.integers(0, 3, size=n),
        "name": np.array([b"setosa", b"versicolor"] * (n // 2), dtype=object),
    }


def test_outputs_pick_a_sketch_by_dtype_and_round_trip() -> None:
    rng = np.random.default_rng(7)
    sketches = OutputSketches()
    sketches.update(batch(rng, 100))
    sketches.update(batch(rng, 50))
    assert sketches.names() == ["probabilities", "label", "name"]
    assert sketches.kind("probabilities") == "numeric"
    assert sketches.kind("label") == sketches.kind("name") == "categorical"
    assert sketches.numeric("probabilities").count == 450
    assert sketches.categorical("name").counts() == {"setosa": 75, "versicolor": 75}

    again = OutputSketches.from_bytes(sketches.to_bytes())
    assert again.names() == sketches.names()
    assert again.numeric("probabilities").to_bytes() == sketches.numeric("probabilities").to_bytes()
    assert again.categorical("label").counts() == sketches.categorical("label").counts()
    assert again.categorical("name").counts() == sketches.categorical("name").counts()


def test_outputs_merge_adds_and_adopts() -> None:
    rng = np.random.default_rng(8)
    a, b = OutputSketches(), OutputSketches()
    a.update(batch(rng, 10))
    b.update(batch(rng, 20))
    b.update({"extra": np.ones(4)})
    a.merge(b)
    assert a.categorical("label").count == 30
    assert a.numeric("extra").count == 4
    b.update({"extra": np.ones(1)})
    assert a.numeric("extra").count == 4  # adopted as a copy


def test_outputs_kind_override_and_mismatch() -> None:
    counts = OutputSketches({"n": "numeric"})
    counts.update({"n": np.array([1, 2, 3])})
    assert counts.kind("n") == "numeric"
    labels = OutputSketches()
    labels.update({"n": np.array([1, 2, 3])})
    with pytest.raises(ValueError, match="numeric here and categorical there"):
        counts.merge(labels)
    with pytest.raises(TypeError, match="categorical sketch"):
        labels.numeric("n")
    with pytest.raises(TypeError, match="no sketch"):
        kind_for(np.dtype(np.complex64))


def test_outputs_refuse_corrupt_bytes() -> None:
    sketches = OutputSketches()
    sketches.update(batch(np.random.default_rng(9), 10))
    blob = sketches.to_bytes()
    with pytest.raises(ValueError, match="corrupt"):
        OutputSketches.from_bytes(blob[:-5])
    with pytest.raises(ValueError, match="trailing"):
        OutputSketches.from_bytes(blob + b"x")
    with pytest.raises(ValueError, match="not a serialised"):
        OutputSketches.from_bytes(NumericSketch().to_bytes())
