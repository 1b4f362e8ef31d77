"""Drift detection on simulated time: false alarms on unshifted traffic, and detection time.

Runs the gateway's own drift code (``DriftService``: the bounded queue, the
batched sketch updates, the windows and their verdicts) with the demo's iris
v1 profile and the demo's drift settings, on an injected clock, at 100
requests per second of one iris row each, drawn at random from the iris data
set (the reference distribution); the outputs are the real ONNX model's.

1. No shift: ``--minutes`` (30) of traffic per seed, over ``--seeds`` seeds;
   every evaluation (every 5 s, each window) that alerts is a false alarm.
   The baseline is a naive rule on the same traffic: the raw PSI of the
   newest 50 rows (half a second) above the alert threshold, checked at each
   evaluation, with no minimum count and no correction for sample size.
2. Shift: each of the 4 features in turn +1 standard deviation after 5
   minutes of clean traffic; the time from the shift to DriftDetected naming
   that feature (evaluations every 5 s, so times are multiples of 5 s).
3. The hot path: what drift costs per answer, against one model call.

Usage: python benchmarks/drift.py [--minutes 30] [--seeds 5]
Measured here (2 shared cores): 0 alarms in 3,600 window judgements (5 seeds x
30 simulated minutes), against 1,067 for the naive rule; detection 15-25 s
(petal length 15 s); the queue's put 0.4-1.2 us per answer, the batched
sketching and judging 1.5-4.0 us per answer, 0.13-0.20x of one iris model call.
About 45 s.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from failsoft.config import ProcessBackend, load_config
from failsoft.data.distance import psi
from failsoft.data.drift import DriftDetected
from failsoft.data.drift_service import DriftService
from failsoft.data.sketches import NumericSketch
from failsoft.demo import _load, default_data_dir, prepare_demo
from failsoft.observe.events import Event, EventBus

RATE = 100
FLUSH_S = 0.5


class SimClock:
    """Time that moves only when the simulation says so."""

    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:  # pragma: no cover - not used here
        raise RuntimeError("the simulation drives the service itself")

    def call_later(self, seconds: float, callback: Callable[[], None]) -> Callable[[], None]:
        raise RuntimeError("not used")  # pragma: no cover


@dataclass
class Run:
    alarms: list[DriftDetected] = field(default_factory=list)
    alarm_times: list[float] = field(default_factory=list)
    evaluations: int = 0
    naive_alarms: int = 0
    max_margin: float = 0.0  # the highest observed distance / its alert threshold


def setup() -> tuple[object, Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]], np.ndarray]:
    from failsoft.backends import _local_loader

    config = load_config(prepare_demo(default_data_dir(), progress=lambda message: None))
    iris = config.models["iris"]
    backend = iris.versions["v1"]
    local = backend.worker if isinstance(backend, ProcessBackend) else backend
    predict = _local_loader(local, iris)()  # type: ignore[arg-type]
    rows, _ = _load("iris")
    return config, predict, rows


def simulate(
    config: object,
    predict: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
    rows: np.ndarray,
    seconds: float,
    seed: int,
    shift: tuple[float, int] | None = None,
    stop_on_alarm: bool = False,
) -> Run:
    """Traffic through a DriftService on a simulated clock; what it said."""
    clock = SimClock()
    bus = EventBus()
    run = Run()

    def seen(event: Event) -> None:
        if isinstance(event, DriftDetected):
            run.alarms.append(event)
            run.alarm_times.append(clock.t)

    bus.subscribe(seen, (DriftDetected,))
    service = DriftService(bus, clock)
    service.configure(config.models, strict=True)  # type: ignore[attr-defined]
    options = config.models["iris"].drift  # type: ignore[attr-defined]
    monitor = service.monitors[("iris", "v1")]
    rng = np.random.default_rng(seed)
    sd = rows.std(axis=0)
    per_flush = round(RATE * FLUSH_S)
    steps_per_evaluation = round(options.evaluate_every_s / FLUSH_S)
    step = 0
    while clock.t < seconds:
        batch = rows[rng.integers(0, len(rows), per_flush)].copy()
        if shift is not None and clock.t >= shift[0]:
            batch[:, shift[1]] += sd[shift[1]]
        outputs = predict({"features": batch})
        for i in range(per_flush):  # one request each, as the gateway queues them
            service.offer(
                "iris",
                "v1",
                {"features": batch[i : i + 1]},
                {name: value[i : i + 1] for name, value in outputs.items()},
            )
        clock.t += FLUSH_S
        step += 1
        service.flush()
        if step % steps_per_evaluation == 0:
            before = len(run.alarms)
            reports = monitor.evaluate(clock.t)
            run.evaluations += len(reports)
            for report in reports:
                for feature in report.features:
                    if feature.status != "too_few":
                        run.max_margin = max(run.max_margin, feature.value / feature.alert)
            # The naive rule: the raw PSI of the newest 50 rows above the alert threshold.
            if any(
                psi(c.sketch, NumericSketch.of(batch[:, j])).value > options.psi_alert  # type: ignore[arg-type]
                for j, c in enumerate(monitor.profile.inputs)
            ):
                run.naive_alarms += 1
            if stop_on_alarm and len(run.alarms) > before:
                break
    assert not service.dropped, service.dropped
    return run


def null_alert_chance(options: object, reference_rows: int) -> float:
    """P(a numeric feature alerts) with no drift, for a window of the minimum count: the
    lower bound of the interval passes the alert threshold only when n_eff * PSI, which is
    close to chi-squared with (bins - 1) degrees of freedom, passes the value solved here."""
    from scipy.stats import chi2

    n = options.min_count  # type: ignore[attr-defined]
    n_eff = n * reference_rows / (n + reference_rows)
    df = options.bins - 1  # type: ignore[attr-defined]
    z, alert = options.z, options.psi_alert  # type: ignore[attr-defined]
    # low = (nc - z * sqrt(2 * (df + 2 nc))) / n_eff with nc = n_eff * psi - df; find psi.
    value = 0.0
    while True:
        nc = max(n_eff * value - df, 0.0)
        if (nc - z * math.sqrt(2 * (df + 2 * nc))) / n_eff > alert:
            break
        value += 0.001
    return float(chi2.sf(n_eff * value, df))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    config, predict, rows = setup()
    started = time.perf_counter()
    alarms = evaluations = naive = 0
    margin = 0.0
    for seed in range(args.seeds):
        run = simulate(config, predict, rows, args.minutes * 60, seed)
        alarms += len(run.alarms)
        evaluations += run.evaluations
        naive += run.naive_alarms
        margin = max(margin, run.max_margin)
        print(
            f"no shift, seed {seed}: {args.minutes:g} min at {RATE} req/s, "
            f"{run.evaluations} window evaluations, {len(run.alarms)} alarms "
            f"(naive rule: {run.naive_alarms}); highest distance/alert {run.max_margin:.3f}",
            flush=True,
        )
    upper = 3.0 / evaluations if evaluations else math.nan  # the rule of three, 95%
    print(
        f"false alarms: {alarms} in {evaluations} window evaluations "
        f"({args.seeds} x {args.minutes:g} simulated minutes); rate {alarms / evaluations:.2g} "
        f"per evaluation (95% upper bound {upper:.2g}); naive rule: {naive} "
        f"(ratio to the naive rule: {alarms / naive if naive else 0:.2f}x)"
    )
    print(f"highest observed distance, as a share of its alert threshold: {margin:.3f}")
    options = config.models["iris"].drift  # type: ignore[attr-defined]
    print(
        "analytic chance that one feature alerts in one evaluation of a window of "
        f"{options.min_count} rows from the reference: {null_alert_chance(options, 150):.1g}"
    )
    shift_at = 300.0
    times = []
    for column in range(rows.shape[1]):
        run = simulate(
            config, predict, rows, shift_at + 300, 100 + column, (shift_at, column), True
        )
        if not run.alarms:
            print(f"shift of features[{column}] by +1 sd: NOT detected within 300 s")
            continue
        first = run.alarms[0]
        seconds = run.alarm_times[0] - shift_at
        times.append(seconds)
        print(
            f"shift of features[{column}] by +1 sd: detected {seconds:.0f} s after the shift, "
            f"window {first.window}, naming {', '.join(first.features)}",
            flush=True,
        )
    if times:
        print(f"detection: {min(times):.0f}-{max(times):.0f} s after a +1 sd shift (target 60 s)")
    hot_path(config, predict, rows)
    print(f"simulated in {time.perf_counter() - started:.1f} s of real time")


def hot_path(
    config: object,
    predict: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
    rows: np.ndarray,
    answers: int = 20_000,
) -> None:
    """What drift costs per answer on the gateway's event loop (the queue's put on the
    request path, and its share of the batched sketch updates and judgements), against
    one call of the iris ONNX model on one row, measured in the same run."""
    clock = SimClock()
    service = DriftService(EventBus(), clock)
    service.configure(config.models, strict=True)  # type: ignore[attr-defined]
    one = {"features": rows[:1]}
    outputs = predict(one)
    started = time.perf_counter()
    for _ in range(answers):
        predict(one)
    model_us = (time.perf_counter() - started) / answers * 1e6
    per_flush = 1000  # 2,000 answers a second, flushed every 0.5 s
    put = work = 0.0
    for flush in range(answers // per_flush):
        started = time.perf_counter()
        for _ in range(per_flush):
            service.offer("iris", "v1", one, outputs)
        put += time.perf_counter() - started
        clock.t += FLUSH_S
        started = time.perf_counter()
        service.flush()
        if flush % 10 == 9:  # every 5 s
            service.evaluate()
        work += time.perf_counter() - started
    put_us, work_us = put / answers * 1e6, work / answers * 1e6
    print(
        f"hot path: queueing an answer {put_us:.2f} us, its share of sketching and judging "
        f"{work_us:.2f} us off the request; the iris model's own call {model_us:.1f} us "
        f"(ratio {(put_us + work_us) / model_us:.2f}x of one model call)"
    )


if __name__ == "__main__":
    main()
