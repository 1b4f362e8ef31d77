"""Rollout analysis: is the candidate worse than the stable version on the same window?

Pure computation on counters and sketches that the data plane collected over
one window (no I/O, no clock): ``analyse(options, candidate, stable, paired)``
returns an ``Analysis`` whose every check says pass, fail or inconclusive with
the value, the threshold and the sample size, in words a person can read.

How a check decides (the complaint about Argo Rollouts and Flagger is that low
traffic stalls or fools them):

- Below its minimum sample size a check is *inconclusive* and says what it
  needs. Above it, the check builds a confidence interval for the quantity it
  judges and decides only when the interval is clear of the threshold: *fail*
  when the whole interval is worse, *pass* when the whole interval is within,
  *inconclusive* when it straddles (more traffic will settle it). Each bound
  is one-sided at ``confidence`` (0.95 → the intervals shown are 90%).
- Rates (replica errors, contract violations, disagreements) use Wilson score
  intervals; the candidate-minus-stable error-rate difference uses Newcombe's
  hybrid score interval built from them (good at small counts and at zero).
- The latency quantile (p99) uses distribution-free order-statistic intervals
  (ranks from a Wilson interval, widened by the sketch's rank error), combined
  for "candidate ≤ factor x stable + slack" as Newcombe combines rates.
- Accuracy from feedback (labels joined to each version's predictions while
  the window runs) compares the share predicted wrong as the error rate is
  compared: Newcombe's interval of the candidate-minus-stable difference.
- Output distributions (split traffic) use PSI on the stable version's
  quantile cells for numeric outputs and the Jensen-Shannon distance for
  labels, bias-corrected for the window size (see ``failsoft.data.distance``);
  the value shown is the corrected distance, so a pass never shows a value
  over its threshold.

The overall verdict: fail if any check fails, pass if every check passes,
inconclusive otherwise. Checks whose data is absent (no paired window, no
output sketches, no latencies on either side, no probes with ``min_probes=0``)
are left out rather than reported.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from enum import StrEnum
from statistics import NormalDist
from typing import Any

import numpy as np
from pydantic import Field, model_validator

from failsoft._options import StrictModel
from failsoft.data.distance import Distance, jensen_shannon, psi
from failsoft.data.sketches import CategoricalSketch, NumericSketch, OutputSketches

__all__ = [
    "LATENCY_SKETCH_K",
    "Analysis",
    "AnalysisOptions",
    "CheckResult",
    "PairedWindow",
    "Verdict",
    "VersionWindow",
    "analyse",
    "disagree",
    "newcombe_interval",
    "wilson_interval",
]


class AnalysisOptions(StrictModel):
    """Thresholds and minimum sample sizes of a rollout analysis.

    The defaults judge a typical canary step (100 req/s, 10% weight, 60 s:
    about 600 candidate requests) decisively and stay inconclusive at a few
    requests per second until the evidence is there.
    """

    confidence: float = Field(
        0.95,
        gt=0.5,
        lt=1.0,
        description="One-sided confidence of each interval bound (0.95: 90% intervals).",
    )
    min_requests: int = Field(
        100,
        ge=1,
        description="Requests per version before error and contract rates are judged.",
    )
    error_rate_max_increase: float = Field(
        0.01,
        ge=0.0,
        le=1.0,
        description="Allowed replica error rate above the stable's (0.01 = 1 point).",
    )
    error_rate_ceiling: float = Field(
        0.05,
        gt=0.0,
        le=1.0,
        description="The candidate's replica error rate may never exceed this.",
    )
    contract_violation_max_rate: float = Field(
        0.01, ge=0.0, le=1.0, description="Allowed share of answers breaking the output contract."
    )
    latency_quantile: float = Field(0.99, gt=0.0, lt=1.0, description="Which latency quantile.")
    min_latency_samples: int = Field(
        200, ge=1, description="Latency samples per version before the quantile is judged."
    )
    latency_max_factor: float = Field(
        1.2, ge=1.0, description="Candidate quantile ≤ factor x stable quantile + slack."
    )
    latency_slack_ms: float = Field(
        5.0, ge=0.0, description="Added to the latency threshold so sub-ms jitter never fails."
    )
    latency_ceiling_ms: float | None = Field(
        None, gt=0.0, description="An absolute ceiling on the candidate's quantile, if any."
    )
    min_probes: int = Field(
        1,
        ge=0,
        description="Golden probe results the candidate needs to pass (0: the check is "
        "left out when no probe ran). Any failed probe fails.",
    )
    min_pairs: int = Field(
        100, ge=1, description="Paired (shadow) requests before disagreement is judged."
    )
    disagreement_max_rate: float = Field(
        0.05, ge=0.0, le=1.0, description="Allowed share of paired requests whose answers differ."
    )
    disagreement_tolerance: float = Field(
        0.01,
        ge=0.0,
        description="Floats agree when numpy.isclose with rtol = atol = this; labels must match.",
    )
    disagreement_outputs: tuple[str, ...] | None = Field(
        None,
        description="Outputs compared for disagreement (None: all). Name the label output "
        "of a model that also returns probabilities.",
    )
    accuracy_check: bool = Field(
        False,
        description="Judge accuracy from feedback: the labels joined during the window to "
        "each version's predictions (needs predictions.enabled and labels that come soon).",
    )
    min_labels: int = Field(
        100, ge=1, description="Labelled rows (feedback) per version before accuracy is judged."
    )
    accuracy_max_drop: float = Field(
        0.02,
        ge=0.0,
        le=1.0,
        description="Allowed share of rows predicted wrong above the stable's (0.02 = 2 points).",
    )
    accuracy_tolerance: float = Field(
        0.0, ge=0.0, description="Regression: a predicted value within this of the truth is right."
    )
    min_output_samples: int = Field(
        200, ge=1, description="Output values per version before distributions are compared."
    )
    psi_bins: int = Field(10, ge=2, le=100, description="Cells (stable quantiles) for PSI.")
    psi_warn: float = Field(0.1, ge=0.0, description="PSI noted as a moderate shift.")
    psi_fail: float = Field(0.2, gt=0.0, description="PSI that fails: a large shift.")
    js_warn: float = Field(
        0.1, ge=0.0, le=1.0, description="Jensen-Shannon distance (log base 2) noted as a shift."
    )
    js_fail: float = Field(
        0.2,
        gt=0.0,
        le=1.0,
        description="Jensen-Shannon distance that fails (≈ PSI 0.22 for small shifts).",
    )

    @model_validator(mode="after")
    def _warn_below_fail(self) -> AnalysisOptions:
        if self.psi_warn > self.psi_fail:
            raise ValueError("psi_warn must not exceed psi_fail")
        if self.js_warn > self.js_fail:
            raise ValueError("js_warn must not exceed js_fail")
        return self

    @property
    def z(self) -> float:
        return NormalDist().inv_cdf(self.confidence)

    @property
    def interval_percent(self) -> str:
        return f"{(2 * self.confidence - 1) * 100:g}%"


LATENCY_SKETCH_K = 1000
"""The ``k`` for latency sketches: exact up to about 1,000 samples, then a rank
error of 0.3%, small beside a p99's own sampling noise (k=200's 1.3% would
blur a p99 into the maximum and leave most windows inconclusive)."""


@dataclass(frozen=True, slots=True)
class VersionWindow:
    """What one version did in the analysis window.

    ``requests`` counts requests that reached the version, less those charged
    to the request, the client or the data (poison, deadlines, input contract,
    shedding); ``replica_failures`` those that failed because of the version's
    replicas (as the data plane classifies them; contract violations may be
    among them); ``contract_violations`` answers that broke the output
    contract. Latencies are in milliseconds, of answered requests, in a
    sketch built with ``k=LATENCY_SKETCH_K``.
    """

    requests: int = 0
    replica_failures: int = 0
    contract_violations: int = 0
    latencies_ms: NumericSketch | None = None
    probe_passes: int = 0
    probe_failures: int = 0
    outputs: OutputSketches | None = None
    labelled: int = 0  # rows of its predictions labelled by feedback in the window
    mislabelled: int = 0  # of those, predicted wrong

    def __post_init__(self) -> None:
        for name in (
            "requests",
            "replica_failures",
            "contract_violations",
            "probe_passes",
            "probe_failures",
            "labelled",
            "mislabelled",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.replica_failures > self.requests:
            raise ValueError("replica_failures cannot exceed requests")
        if self.contract_violations > self.requests:
            raise ValueError("contract_violations cannot exceed requests")
        if self.mislabelled > self.labelled:
            raise ValueError("mislabelled cannot exceed labelled")


@dataclass(frozen=True, slots=True)
class PairedWindow:
    """Shadow comparisons in the window: requests answered by both versions,
    and how many of those answers ``disagree``."""

    pairs: int
    disagreements: int

    def __post_init__(self) -> None:
        if self.pairs < 0 or self.disagreements < 0:
            raise ValueError("pairs and disagreements must not be negative")
        if self.disagreements > self.pairs:
            raise ValueError("disagreements cannot exceed pairs")


class Verdict(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One check's decision. ``value`` and ``threshold`` are in the check's own
    unit (a rate, milliseconds, a distance); ``samples`` is the candidate's
    sample size and ``stable_samples`` the stable's, when it has one."""

    name: str
    verdict: Verdict
    value: float | None
    threshold: float | None
    samples: int
    detail: str
    stable_samples: int | None = None

    def __str__(self) -> str:
        return self.detail

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (non-finite numbers become None)."""
        return {
            "name": self.name,
            "verdict": self.verdict.value,
            "value": _finite_or_none(self.value),
            "threshold": _finite_or_none(self.threshold),
            "samples": self.samples,
            "stable_samples": self.stable_samples,
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class Analysis:
    verdict: Verdict
    checks: tuple[CheckResult, ...]

    def check(self, name: str) -> CheckResult:
        for check in self.checks:
            if check.name == name:
                return check
        raise KeyError(name)

    def __str__(self) -> str:
        counts = {verdict: 0 for verdict in Verdict}
        for check in self.checks:
            counts[check.verdict] += 1
        head = (
            f"analysis: {self.verdict} ({counts[Verdict.PASS]} passed, "
            f"{counts[Verdict.FAIL]} failed, {counts[Verdict.INCONCLUSIVE]} inconclusive)"
        )
        return "\n".join([head, *(f"  - {check.detail}" for check in self.checks)])

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict.value, "checks": [c.to_dict() for c in self.checks]}


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


# -- statistics -------------------------------------------------------------


def wilson_interval(successes: float, n: int, z: float) -> tuple[float, float]:
    """Wilson score interval for a proportion; each bound one-sided at ``z``.
    With ``n == 0``: (0, 1)."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    denominator = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denominator
    half = z * math.sqrt(max(p * (1 - p), 0.0) / n + z2 / (4 * n * n)) / denominator
    low = 0.0 if successes <= 0 else max(centre - half, 0.0)
    high = 1.0 if successes >= n else min(centre + half, 1.0)
    return low, high


def newcombe_interval(x1: int, n1: int, x2: int, n2: int, z: float) -> tuple[float, float]:
    """Newcombe's hybrid score interval for ``x1/n1 - x2/n2`` (his method 10)."""
    p1, p2 = x1 / n1, x2 / n2
    l1, u1 = wilson_interval(x1, n1, z)
    l2, u2 = wilson_interval(x2, n2, z)
    difference = p1 - p2
    low = difference - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = difference + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return low, high


def _decide(low: float, high: float, threshold: float) -> Verdict:
    """Worse is larger: fail when the whole interval is above, pass when it is
    all at or below, inconclusive when it straddles."""
    if low > threshold:
        return Verdict.FAIL
    if high <= threshold:
        return Verdict.PASS
    return Verdict.INCONCLUSIVE


def _worst(*verdicts: Verdict) -> Verdict:
    if Verdict.FAIL in verdicts:
        return Verdict.FAIL
    if all(verdict is Verdict.PASS for verdict in verdicts):
        return Verdict.PASS
    return Verdict.INCONCLUSIVE


# -- formatting -------------------------------------------------------------


def _pct(rate: float) -> str:
    return f"{rate:.1%}" if rate == 0 or rate >= 0.01 else f"{rate:.2%}"


def _points(difference: float) -> str:
    shown = round(difference * 100, 1)
    return f"{shown + 0.0:+.1f}"  # + 0.0 turns -0.0 into 0.0


def _n(count: int) -> str:
    return f"n={count:,}"


def _ms(value: float) -> str:
    if not math.isfinite(value):
        return "-"
    if abs(value) < 10:
        return f"{value:.2f} ms"
    return f"{value:.1f} ms" if abs(value) < 1000 else f"{value:,.0f} ms"


# -- checks -----------------------------------------------------------------


def _error_rate(
    options: AnalysisOptions, candidate: VersionWindow, stable: VersionWindow
) -> CheckResult:
    name = "replica error rate"
    nc, ns = candidate.requests, stable.requests
    fc, fs = candidate.replica_failures, stable.replica_failures
    rc = fc / nc if nc else math.nan
    rs = fs / ns if ns else math.nan
    increase, ceiling = options.error_rate_max_increase, options.error_rate_ceiling
    rule = f"threshold stable {_points(increase)} points, ceiling {_pct(ceiling)}"
    shown_c, shown_s = (_pct(rc) if nc else "-"), (_pct(rs) if ns else "-")
    head = f"{name} {shown_c} ({_n(nc)}) vs stable {shown_s} ({_n(ns)})"
    threshold = min(rs + increase, ceiling) if ns else ceiling
    if nc < options.min_requests or ns < options.min_requests:
        return CheckResult(
            name,
            Verdict.INCONCLUSIVE,
            rc,
            threshold,
            nc,
            f"{head}: inconclusive, needs n≥{options.min_requests:,} per version; {rule}",
            ns,
        )
    z = options.z
    low, high = newcombe_interval(fc, nc, fs, ns, z)
    rate_low, rate_high = wilson_interval(fc, nc, z)
    verdict = _worst(_decide(low, high, increase), _decide(rate_low, rate_high, ceiling))
    evidence = (
        f"difference {_points(rc - rs)} points, {options.interval_percent} interval "
        f"{_points(low)} to {_points(high)}; candidate {options.interval_percent} interval "
        f"{_pct(rate_low)} to {_pct(rate_high)}"
    )
    return CheckResult(
        name, verdict, rc, threshold, nc, f"{head}: {verdict}, {rule}; {evidence}", ns
    )


def _accuracy(
    options: AnalysisOptions, candidate: VersionWindow, stable: VersionWindow
) -> CheckResult | None:
    """The share of labelled rows predicted wrong, candidate against stable (only with
    ``accuracy_check``: labels that come late would leave every step inconclusive)."""
    nc, ns = candidate.labelled, stable.labelled
    if not options.accuracy_check:
        return None
    name = "accuracy (feedback)"
    wc, ws = candidate.mislabelled, stable.mislabelled
    rc = wc / nc if nc else math.nan
    rs = ws / ns if ns else math.nan
    drop = options.accuracy_max_drop
    rule = f"wrong at most stable {_points(drop)} points"
    shown_c = _pct(1 - rc) if nc else "-"
    shown_s = _pct(1 - rs) if ns else "-"
    head = f"{name} {shown_c} ({_n(nc)} labels) vs stable {shown_s} ({_n(ns)})"
    threshold = rs + drop if ns else math.nan
    if nc < options.min_labels or ns < options.min_labels:
        return CheckResult(
            name,
            Verdict.INCONCLUSIVE,
            rc,
            threshold,
            nc,
            f"{head}: inconclusive, needs n≥{options.min_labels:,} labels per version; {rule}",
            ns,
        )
    low, high = newcombe_interval(wc, nc, ws, ns, options.z)
    verdict = _decide(low, high, drop)
    evidence = (
        f"wrong: difference {_points(rc - rs)} points, {options.interval_percent} interval "
        f"{_points(low)} to {_points(high)}"
    )
    return CheckResult(
        name, verdict, rc, threshold, nc, f"{head}: {verdict}, {rule}; {evidence}", ns
    )


def _contract(
    options: AnalysisOptions, candidate: VersionWindow, stable: VersionWindow
) -> CheckResult:
    name = "output contract violations"
    n, violations = candidate.requests, candidate.contract_violations
    rate = violations / n if n else math.nan
    limit = options.contract_violation_max_rate
    stable_rate = (
        f"; stable {_pct(stable.contract_violations / stable.requests)} ({_n(stable.requests)})"
        if stable.requests
        else ""
    )
    head = f"{name} {_pct(rate) if n else '-'} ({_n(n)})"
    rule = f"threshold {_pct(limit)}"
    if n < options.min_requests:
        detail = f"{head}: inconclusive, needs n≥{options.min_requests:,}; {rule}{stable_rate}"
        return CheckResult(name, Verdict.INCONCLUSIVE, rate, limit, n, detail, stable.requests)
    low, high = wilson_interval(violations, n, options.z)
    verdict = _decide(low, high, limit)
    detail = (
        f"{head}: {verdict}, {rule}; {options.interval_percent} interval "
        f"{_pct(low)} to {_pct(high)}{stable_rate}"
    )
    return CheckResult(name, verdict, rate, limit, n, detail, stable.requests)


_Z99 = NormalDist().inv_cdf(0.995)  # DataSketches states its rank error bound at 99%


def _quantile_interval(
    sketch: NumericSketch, quantile: float, z: float
) -> tuple[float, float, float]:
    """The quantile and a distribution-free interval for it: the values at the
    ranks of a Wilson interval around ``quantile``, widened by the sketch's
    rank error (its 99% bound taken as 2.58 standard deviations, added in
    quadrature)."""
    n = sketch.finite_count
    low_rank, high_rank = wilson_interval(quantile * n, n, z)
    sketch_spread = z * sketch.rank_error / _Z99
    low_rank = max(quantile - math.hypot(quantile - low_rank, sketch_spread), 0.0)
    high_rank = min(quantile + math.hypot(high_rank - quantile, sketch_spread), 1.0)
    point, low, high = sketch.quantiles([quantile, low_rank, high_rank])
    return float(point), float(low), float(high)


def _latency(
    options: AnalysisOptions, candidate: VersionWindow, stable: VersionWindow
) -> CheckResult | None:
    q = options.latency_quantile
    name = f"p{q * 100:g} latency"
    if candidate.latencies_ms is None and stable.latencies_ms is None:
        return None
    c = candidate.latencies_ms or NumericSketch()
    s = stable.latencies_ms or NumericSketch()
    nc, ns = c.finite_count, s.finite_count
    factor, slack, ceiling = (
        options.latency_max_factor,
        options.latency_slack_ms,
        options.latency_ceiling_ms,
    )
    qc, c_low, c_high = _quantile_interval(c, q, options.z) if nc else (math.nan,) * 3
    qs, s_low, s_high = _quantile_interval(s, q, options.z) if ns else (math.nan,) * 3
    threshold = factor * qs + slack if ns else math.inf
    if ceiling is not None:
        threshold = min(threshold, ceiling)
    rule = f"threshold {factor:g}x stable + {slack:g} ms = {_ms(threshold)}" + (
        f" (ceiling {_ms(ceiling)})" if ceiling is not None else ""
    )
    head = f"{name} {_ms(qc)} ({_n(nc)}) vs stable {_ms(qs)} ({_n(ns)})"
    needed = options.min_latency_samples
    if nc < needed or ns < needed:
        detail = f"{head}: inconclusive, needs n≥{needed:,} per version; {rule}"
        return CheckResult(name, Verdict.INCONCLUSIVE, qc, threshold, nc, detail, ns)
    # Candidate minus (factor x stable + slack), with each side's uncertainty
    # combined in quadrature (the MOVER method, as Newcombe's for rates).
    margin = qc - (factor * qs + slack)
    high = margin + math.hypot(c_high - qc, factor * (qs - s_low))
    low = margin - math.hypot(qc - c_low, factor * (s_high - qs))
    verdicts = [_decide(low, high, 0.0)]
    if ceiling is not None:
        verdicts.append(_decide(c_low, c_high, ceiling))
    verdict = _worst(*verdicts)
    evidence = (
        f"candidate {options.interval_percent} interval {_ms(c_low)} to {_ms(c_high)}; "
        f"candidate - threshold {_ms(low)} to {_ms(high)}"
    )
    return CheckResult(
        name, verdict, qc, threshold, nc, f"{head}: {verdict}, {rule}; {evidence}", ns
    )


def _probes(options: AnalysisOptions, candidate: VersionWindow) -> CheckResult | None:
    name = "golden probes"
    passed, failed = candidate.probe_passes, candidate.probe_failures
    total = passed + failed
    if total == 0 and options.min_probes == 0:
        return None
    head = f"{name} {failed} failed of {total} (n={total:,})"
    if failed:
        verdict = Verdict.FAIL
        detail = f"{head}: fail, threshold 0 failures"
    elif passed >= options.min_probes:
        verdict = Verdict.PASS
        detail = f"{head}: pass, threshold 0 failures"
    else:
        verdict = Verdict.INCONCLUSIVE
        detail = f"{head}: inconclusive, needs n≥{options.min_probes:,}; threshold 0 failures"
    return CheckResult(name, verdict, float(failed), 0.0, total, detail)


def _disagreement(options: AnalysisOptions, paired: PairedWindow | None) -> CheckResult | None:
    if paired is None:
        return None
    name = "disagreement (paired)"
    n, k = paired.pairs, paired.disagreements
    rate = k / n if n else math.nan
    limit = options.disagreement_max_rate
    head = f"{name} {_pct(rate) if n else '-'} ({_n(n)})"
    rule = f"threshold {_pct(limit)}"
    if n < options.min_pairs:
        detail = f"{head}: inconclusive, needs n≥{options.min_pairs:,} pairs; {rule}"
        return CheckResult(name, Verdict.INCONCLUSIVE, rate, limit, n, detail)
    low, high = wilson_interval(k, n, options.z)
    verdict = _decide(low, high, limit)
    detail = (
        f"{head}: {verdict}, {rule}; {options.interval_percent} interval "
        f"{_pct(low)} to {_pct(high)}"
    )
    return CheckResult(name, verdict, rate, limit, n, detail)


def _distribution(
    options: AnalysisOptions, output: str, candidate: OutputSketches, stable: OutputSketches
) -> CheckResult:
    name = f"output {output!r} distribution"
    c, s = candidate.get(output), stable.get(output)
    numeric = isinstance(c or s, NumericSketch)
    measure = "PSI" if numeric else "JS distance"
    warn, fail = (
        (options.psi_warn, options.psi_fail) if numeric else (options.js_warn, options.js_fail)
    )
    nc = c.count if c is not None else 0
    ns = s.count if s is not None else 0
    rule = f"threshold {fail:g} (warn {warn:g})"
    if c is not None and s is not None and type(c) is not type(s):
        detail = (
            f"{name}: inconclusive, numeric on one version and categorical on the other "
            f"({_n(nc)} vs stable {_n(ns)})"
        )
        return CheckResult(name, Verdict.INCONCLUSIVE, None, fail, nc, detail, ns)
    needed = options.min_output_samples
    if c is None or s is None or nc < needed or ns < needed:
        detail = (
            f"{name}: {measure} - ({_n(nc)} vs stable {_n(ns)}): inconclusive, "
            f"needs n≥{needed:,} values per version; {rule}"
        )
        return CheckResult(name, Verdict.INCONCLUSIVE, None, fail, nc, detail, ns)
    distance: Distance
    if isinstance(c, NumericSketch) and isinstance(s, NumericSketch):
        distance = psi(s, c, options.psi_bins)
    else:
        assert isinstance(c, CategoricalSketch)
        assert isinstance(s, CategoricalSketch)
        distance = jensen_shannon(s, c)
    low, high = distance.interval(options.z)
    value = distance.corrected()
    verdict = _decide(low, high, fail)
    note = (
        f", above the warn level {warn:g}" if value > warn and verdict is not Verdict.FAIL else ""
    )
    detail = (
        f"{name}: {measure} {value:.3f} ({_n(nc)} vs stable {_n(ns)}): {verdict}{note}, "
        f"{rule}; {options.interval_percent} interval {low:.3f} to {high:.3f}, "
        f"uncorrected {distance.value:.3f} over {distance.cells} cells"
    )
    return CheckResult(name, verdict, value, fail, nc, detail, ns)


def analyse(
    options: AnalysisOptions,
    candidate: VersionWindow,
    stable: VersionWindow,
    paired: PairedWindow | None = None,
) -> Analysis:
    """Judge the candidate against the stable version on one window."""
    checks: list[CheckResult | None] = [
        _error_rate(options, candidate, stable),
        _contract(options, candidate, stable),
        _latency(options, candidate, stable),
        _probes(options, candidate),
        _disagreement(options, paired),
        _accuracy(options, candidate, stable),
    ]
    if candidate.outputs is not None or stable.outputs is not None:
        mine = candidate.outputs or OutputSketches()
        theirs = stable.outputs or OutputSketches()
        names = list(theirs) + [name for name in mine if name not in theirs]
        checks += [_distribution(options, name, mine, theirs) for name in names]
    results = tuple(check for check in checks if check is not None)
    return Analysis(_worst(*(check.verdict for check in results)), results)


# -- one shadow pair --------------------------------------------------------


def disagree(
    a: Mapping[str, np.ndarray],
    b: Mapping[str, np.ndarray],
    tolerance: float,
    *,
    outputs: Collection[str] | None = None,
) -> bool:
    """Whether two versions' answers to one request differ.

    Compared: ``outputs`` (every output of either answer when None). A missing
    output, a different shape, a label (integer, boolean, BYTES) that differs,
    or a float beyond ``numpy.isclose(rtol=tolerance, atol=tolerance)`` is a
    disagreement; NaN agrees with NaN. A batched request is one pair: any row
    that differs makes the pair disagree.
    """
    names = set(a) | set(b) if outputs is None else outputs
    for name in names:
        if name not in a or name not in b:
            return True
        x, y = np.asarray(a[name]), np.asarray(b[name])
        if x.shape != y.shape:
            return True
        if x.dtype.kind in "fc" or y.dtype.kind in "fc":
            if x.dtype.kind not in "biufc" or y.dtype.kind not in "biufc":
                return True
            if not np.allclose(x, y, rtol=tolerance, atol=tolerance, equal_nan=True):
                return True
        elif not np.array_equal(x, y):
            return True
    return False
