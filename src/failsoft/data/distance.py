"""Distances between two distributions held in sketches, with their noise.

- ``psi``: the population stability index of a numeric output, on ``bins``
  cells cut at the *reference's* quantiles (equal-mass cells for the
  reference), plus one cell for non-finite values when either side has any.
  Each cell gets half a count before the shares are taken, so an empty cell
  gives a large but finite term. Common reading: < 0.1 no shift, 0.1-0.2 a
  moderate shift, > 0.2 a large one.
- ``jensen_shannon``: the Jensen-Shannon *distance* (square root of the
  divergence, log base 2; 0 = same, 1 = disjoint) between two label
  distributions, over the union of their retained labels plus an "other" cell
  for what the frequent-items sketches did not retain.

Both are biased upwards on small samples: two samples of one distribution,
of sizes ``n`` and ``m``, read a PSI of about ``(cells - 1) / n_eff`` with
``n_eff = n * m / (n + m)`` (``n_eff * PSI`` is close to chi-squared with
``cells - 1`` degrees of freedom; so is ``8 ln 2 * n_eff * JS²``). A fixed
threshold therefore flags tiny windows. ``Distance.interval`` corrects the bias
and gives a confidence interval for the distance *between the populations*
(normal approximation of the noncentral chi-squared), so a caller can decide
only when the interval is clear of its threshold. The interval ignores the
sketches' own rank error (about 1% of a cell's share at k=200), which adds at
most a few thousandths to a PSI.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from failsoft.data.sketches import CategoricalSketch, NumericSketch

__all__ = [
    "Distance",
    "jensen_shannon",
    "jensen_shannon_of_counts",
    "psi",
    "psi_of_counts",
    "reference_splits",
]

_LN2 = math.log(2.0)


@dataclass(frozen=True, slots=True)
class Distance:
    """An observed distance and what is needed to judge its noise."""

    measure: Literal["psi", "js"]
    value: float
    cells: int
    n_reference: int
    n_current: int

    @property
    def n_effective(self) -> float:
        """``n * m / (n + m)``: the sample size a one-sample test would need."""
        total = self.n_reference + self.n_current
        return self.n_reference * self.n_current / total if total else 0.0

    def _to_chi(self, value: float) -> float:
        return value if self.measure == "psi" else 8.0 * _LN2 * value * value

    def _from_chi(self, chi: float) -> float:
        chi = max(chi, 0.0)
        return chi if self.measure == "psi" else math.sqrt(chi / (8.0 * _LN2))

    def interval(self, z: float) -> tuple[float, float]:
        """A bias-corrected interval for the population distance; each bound is
        one-sided at the confidence of the normal quantile ``z`` (1.645 → 95%).

        With no samples on either side: (0, inf)."""
        n = self.n_effective
        if n <= 0:
            return 0.0, math.inf
        df = max(self.cells - 1, 1)
        noncentrality = max(n * self._to_chi(self.value) - df, 0.0)
        centre = noncentrality / n
        spread = math.sqrt(2.0 * (df + 2.0 * noncentrality)) / n
        return self._from_chi(centre - z * spread), self._from_chi(centre + z * spread)

    def corrected(self) -> float:
        """The distance less its expected small-sample bias (never below 0)."""
        n = self.n_effective
        if n <= 0:
            return self.value
        df = max(self.cells - 1, 1)
        return self._from_chi(self._to_chi(self.value) - df / n)


def psi_of_counts(reference: np.ndarray, current: np.ndarray) -> float:
    """PSI between two histograms on the same cells (counts, half a count added)."""
    expected = np.asarray(reference, dtype=np.float64) + 0.5
    actual = np.asarray(current, dtype=np.float64) + 0.5
    expected /= expected.sum()
    actual /= actual.sum()
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def jensen_shannon_of_counts(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon distance (log base 2, in [0, 1]) between two histograms."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    if p.sum() <= 0 or q.sum() <= 0:
        return 0.0
    p = p / p.sum()
    q = q / q.sum()
    m = (p + q) / 2.0

    def kl(a: np.ndarray) -> float:
        used = a > 0
        return float(np.sum(a[used] * np.log2(a[used] / m[used])))

    divergence = (kl(p) + kl(q)) / 2.0
    return math.sqrt(min(max(divergence, 0.0), 1.0))


def reference_splits(reference: NumericSketch, bins: int) -> list[float]:
    """Split points at the reference's quantiles ``1/bins, ..., (bins-1)/bins``,
    duplicates dropped (a discrete output has fewer, wider cells)."""
    if bins < 2:
        raise ValueError(f"bins must be at least 2 (got {bins})")
    if not reference.finite_count:
        return []
    points = reference.quantiles([i / bins for i in range(1, bins)])
    return [float(p) for p in np.unique(points)]


def _histogram(sketch: NumericSketch, splits: list[float], nonfinite_cell: bool) -> np.ndarray:
    if sketch.finite_count:
        shares = sketch.pmf(splits) if splits else np.ones(1)
        counts = shares * sketch.finite_count
    else:
        counts = np.zeros(len(splits) + 1)
    if nonfinite_cell:
        counts = np.append(counts, float(sketch.nonfinite_count))
    return counts


def psi(reference: NumericSketch, current: NumericSketch, bins: int = 10) -> Distance:
    """PSI of ``current`` against ``reference`` on the reference's quantile cells."""
    splits = reference_splits(reference, bins)
    nonfinite = bool(reference.nonfinite_count or current.nonfinite_count)
    expected = _histogram(reference, splits, nonfinite)
    actual = _histogram(current, splits, nonfinite)
    value = psi_of_counts(expected, actual) if reference.count and current.count else 0.0
    return Distance("psi", value, len(expected), reference.count, current.count)


def _label_counts(sketch: CategoricalSketch, labels: list[str]) -> np.ndarray:
    counts = sketch.counts()
    known = [float(counts.get(label, 0)) for label in labels]
    return np.array([*known, max(float(sketch.count) - sum(known), 0.0)])


def jensen_shannon(reference: CategoricalSketch, current: CategoricalSketch) -> Distance:
    """JS distance between two label distributions; symmetric in its arguments
    (the reference only names which side is which)."""
    labels = sorted(set(reference.counts()) | set(current.counts()))
    p = _label_counts(reference, labels)
    q = _label_counts(current, labels)
    cells = int(np.count_nonzero((p + q) > 0))
    value = jensen_shannon_of_counts(p, q)
    return Distance("js", value, max(cells, 1), reference.count, current.count)
