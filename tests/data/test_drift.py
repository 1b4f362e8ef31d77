"""Online drift: windows, verdicts, events, the bounded queue, on an injected clock."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from failsoft.clock import ManualClock
from failsoft.config import load_config
from failsoft.data.drift import DriftCleared, DriftDetected, DriftMonitor
from failsoft.data.drift_options import DriftOptions, DriftWindow
from failsoft.data.drift_service import DriftService
from failsoft.data.profiles import Profile, ProfileError, build_profile
from failsoft.data.sketches import CategoricalSketch, NumericSketch
from failsoft.demo import CONFIG_NAME, _load
from failsoft.observe.events import Event, EventBus
from failsoft.protocol.spec import TensorSpec

ROWS, _ = _load("iris")
SD = ROWS.std(axis=0)


def fake_outputs(features: np.ndarray) -> dict[str, np.ndarray]:
    """Petal-length rules: a stand-in model whose outputs follow its inputs."""
    label = np.where(features[:, 2] < 2.45, 0, np.where(features[:, 3] < 1.75, 1, 2))
    probabilities = np.full((len(label), 3), 0.05, dtype=np.float32)
    probabilities[np.arange(len(label)), label] = 0.9
    return {"label": label.astype(np.int64), "probabilities": probabilities}


@pytest.fixture(scope="module")
def profile(demo_dir: Path) -> Profile:
    return Profile.load(demo_dir / "iris-v1.profile.json")


def feed(
    monitor: DriftMonitor,
    start: float,
    seconds: float,
    rng: np.random.Generator,
    rate: int = 100,
    shift: int | None = None,
) -> float:
    """``rate`` rows a second for ``seconds``, evaluated every 5 s; the time at the end."""
    now = start
    while now < start + seconds:
        batch = ROWS[rng.integers(0, len(ROWS), rate // 2)].copy()
        if shift is not None:
            batch[:, shift] += SD[shift]
        monitor.update({"features": batch}, fake_outputs(batch), now)
        now += 0.5
        if round(now * 2) % 10 == 0:
            monitor.evaluate(now)
    return now


def test_clean_traffic_never_alerts_and_a_shift_is_named_within_a_minute(
    profile: Profile,
) -> None:
    events: list[Event] = []
    options = DriftOptions(outputs=False)
    monitor = DriftMonitor("iris", "v1", profile, options, events.append)
    rng = np.random.default_rng(7)
    now = feed(monitor, 0.0, 300, rng)
    assert events == []
    report = monitor.reports["30s"]
    assert report.judged
    assert 2500 <= report.rows <= 3000  # the current bucket may have just begun
    assert all(f.status == "ok" for f in report.features)
    shifted_at = now
    while not events and now < shifted_at + 120:
        now = feed(monitor, now, 5, rng, shift=3)
    (detected,) = events
    assert isinstance(detected, DriftDetected)
    assert detected.window == "30s"
    assert detected.worst == "features[3]"
    assert detected.features == ["features[3]"]
    assert now - shifted_at <= 60
    assert detected.distance > 0.2
    # The shift ends: once the 30 s window holds only clean rows again, it clears.
    now = feed(monitor, now, 60, rng)
    cleared = [e for e in events if isinstance(e, DriftCleared)]
    assert [e.window for e in cleared] == ["30s"]


def test_a_window_with_too_few_rows_is_not_judged(profile: Profile) -> None:
    events: list[Event] = []
    only_30s = DriftOptions(windows=[DriftWindow(name="30s", seconds=30, bucket_s=5)])
    monitor = DriftMonitor("iris", "v1", profile, only_30s, events.append)
    feed(monitor, 0.0, 60, np.random.default_rng(1), rate=20, shift=2)
    report = monitor.reports["30s"]
    assert 500 <= report.rows <= 600
    assert not report.judged
    assert {f.status for f in report.features} == {"too_few"}
    assert events == []  # a shifted feature on 600 rows says nothing


def test_labels_are_judged_with_jensen_shannon() -> None:
    inputs = [TensorSpec(name="colour", datatype="INT64", shape=[-1])]
    outputs = [TensorSpec(name="score", datatype="FP32", shape=[-1])]
    rng = np.random.default_rng(3)
    reference = rng.choice([0, 1, 2], p=[0.6, 0.3, 0.1], size=5000)

    def score(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"score": tensors["colour"].astype(np.float32) / 2}

    profile = build_profile("paint", "v1", inputs, outputs, {"colour": reference}, score)
    events: list[Event] = []
    monitor = DriftMonitor("paint", "v1", profile, DriftOptions(min_count=500), events.append)
    drifted = rng.choice([0, 1, 2], p=[0.1, 0.3, 0.6], size=2000)
    monitor.update({"colour": drifted}, score({"colour": drifted}), 10.0)
    (report, _) = monitor.evaluate(11.0)
    colour = next(f for f in report.features if f.name == "colour")
    assert colour.measure == "js"
    assert colour.status == "alert"
    assert isinstance(events[0], DriftDetected)
    assert "colour" in events[0].features


def service(demo_dir: Path, clock: ManualClock, events: list[Event]) -> DriftService:
    bus = EventBus()
    bus.subscribe(events.append, (DriftDetected, DriftCleared))
    drift = DriftService(bus, clock)
    drift.configure(load_config(demo_dir / CONFIG_NAME).models, strict=True)
    return drift


def test_the_queue_is_bounded_and_drops_are_counted(demo_dir: Path) -> None:
    drift = service(demo_dir, ManualClock(), [])
    assert set(drift.monitors) == {("iris", "v1"), ("iris", "v2"), ("breast-cancer", "v1")}
    row = {"features": ROWS[:1]}
    capacity = load_config(demo_dir / CONFIG_NAME).models["iris"].drift.queue
    for _ in range(capacity + 25):
        drift.offer("iris", "v1", row, fake_outputs(ROWS[:1]))
    drift.offer("iris", "v9", row, None)  # no monitor: ignored, not counted
    assert drift.dropped == {"iris": 25}
    assert drift.flush() == capacity
    assert drift.sketched == {("iris", "v1"): capacity}
    assert drift.monitors[("iris", "v1")].rows == capacity
    metrics = {family.name: family for family in drift.collect()}
    assert metrics["failsoft_drift_dropped"].samples[0].value == 25
    # The rows queued are bounded too: one request of more rows than that is dropped.
    huge = np.zeros((1_000_001, 4), dtype=np.float32)
    drift.offer("iris", "v1", {"features": huge}, None)
    assert drift.dropped == {"iris": 26}
    drift.offer("iris", "v1", {"features": huge[:999_999]}, None)
    drift.offer("iris", "v1", row, None)
    drift.offer("iris", "v1", row, None)  # one row over
    assert drift.dropped == {"iris": 27}
    assert drift.flush() == 2


def test_answers_queued_before_a_live_change_go_to_the_monitors_they_were_offered_for(
    demo_dir: Path,
) -> None:
    drift = service(demo_dir, ManualClock(), [])
    monitor = drift.monitors[("iris", "v1")]
    for i in range(10):
        drift.offer("iris", "v1", {"features": ROWS[i : i + 1]}, fake_outputs(ROWS[i : i + 1]))
    assert drift.snapshot()["queued"] == 10
    drift.configure(load_config(demo_dir / CONFIG_NAME).models, strict=False)
    assert monitor.rows == 10
    assert drift.monitors[("iris", "v1")] is monitor  # same profile: its windows go on
    assert drift.snapshot()["queued"] == 0
    assert drift.flush() == 0


async def test_the_service_sketches_and_judges_on_its_clock(demo_dir: Path) -> None:
    clock = ManualClock()
    events: list[Event] = []
    drift = service(demo_dir, clock, events)
    drift.start()
    rng = np.random.default_rng(5)
    try:
        for step in range(240):  # 2 minutes of 100 rows a second, shifted after 1 minute
            batch = ROWS[rng.integers(0, len(ROWS), 50)].copy()
            if step >= 120:
                batch[:, 0] += SD[0]
            for i in range(50):
                drift.offer("iris", "v1", {"features": batch[i : i + 1]}, None)
            await clock.advance(0.5)
            if events:
                break
    finally:
        await drift.close()
    assert drift.sketched[("iris", "v1")] >= 6000
    (detected,) = events
    assert isinstance(detected, DriftDetected)
    assert detected.worst == "features[0]"
    assert clock.now() - 1000.0 - 60 <= 60
    snapshot = drift.snapshot("iris", cells=True)
    window = snapshot["models"]["iris"]["versions"]["v1"]["windows"][0]
    assert window["drifting"] is True
    worst = window["features"][0]
    assert worst["name"] == "features[0]"
    assert len(worst["cells"]["reference"]) == len(worst["cells"]["splits"]) + 1
    assert sum(worst["cells"]["current"]) == pytest.approx(1.0, abs=1e-6)


def test_a_profile_of_another_model_is_refused_at_start_and_noted_live(
    demo_dir: Path, tmp_path: Path
) -> None:
    text = (
        (demo_dir / CONFIG_NAME)
        .read_text()
        .replace("breast-cancer-v1.profile.json", "iris-v1.profile.json")
    )
    config_path = demo_dir / "drift-wrong-profile.yaml"  # beside the model files
    config_path.write_text(text)
    models = load_config(config_path).models
    drift = DriftService(EventBus(), ManualClock())
    with pytest.raises(ProfileError, match="the profile is of model 'iris', not 'breast-cancer'"):
        drift.configure(models, strict=True)
    drift.configure(load_config(demo_dir / CONFIG_NAME).models, strict=True)
    kept = drift.monitors[("breast-cancer", "v1")]
    drift.configure(models, strict=False)
    assert drift.monitors[("breast-cancer", "v1")] is kept  # the old one goes on
    assert "not 'breast-cancer'" in drift.problems["breast-cancer"]
    assert "problem" in drift.snapshot()["models"]["breast-cancer"]


def test_window_options_are_validated() -> None:
    with pytest.raises(ValueError, match="whole number"):
        DriftWindow(name="odd", seconds=50, bucket_s=15)
    with pytest.raises(ValueError, match="warn threshold"):
        DriftOptions(psi_warn=0.3, psi_alert=0.2)


def test_the_no_false_alarm_simulation_short_form() -> None:
    """benchmarks/drift.py for 5 simulated minutes (the figure is its 30-minute run)."""
    from benchmarks.drift import setup, simulate

    config, predict, rows = setup()
    clean = simulate(config, predict, rows, 300, seed=11)
    assert clean.alarms == []
    assert clean.evaluations == 120
    assert 0 < clean.max_margin < 0.5  # the noise stays well under the alert threshold
    shifted = simulate(config, predict, rows, 180, seed=12, shift=(60.0, 2), stop_on_alarm=True)
    assert shifted.alarms[0].worst == "features[2]"
    assert shifted.alarm_times[0] - 60.0 <= 60.0


@pytest.mark.parametrize(
    "windows",
    [
        [("30s", 30, 5), ("1h", 3600, 300)],
        [("10s", 10, 1), ("1m", 60, 10), ("10m", 600, 60), ("odd", 70, 7)],
    ],
)
def test_a_window_fed_from_a_shorter_ones_buckets_holds_exactly_its_rows(
    profile: Profile, windows: list[tuple[str, float, float]]
) -> None:
    """The long windows take the short ones' closed buckets (and their open one when
    judged): each window holds the rows of its own span, as the sketches can tell."""
    options = DriftOptions(
        windows=[DriftWindow(name=n, seconds=s, bucket_s=b) for n, s, b in windows]
    )
    monitor = DriftMonitor("iris", "v1", profile, options, lambda event: None)
    sources = {w.options.name: w.source and w.source.options.name for w in monitor._windows}
    assert sources == (
        {"30s": None, "1h": "30s"}
        if len(windows) == 2
        else {"10s": None, "1m": "10s", "10m": "1m", "odd": "10s"}
    )
    rng = np.random.default_rng(11)
    sent: list[tuple[float, np.ndarray]] = []
    now = 0.25
    checked = 0
    # Traffic with pauses longer than the short windows, and a shift in one feature.
    for stretch, (seconds, rate, shift) in enumerate(
        [(40, 60, None), (0, 0, None), (130, 20, None), (45, 60, 2), (0, 0, None), (30, 40, 2)]
    ):
        if not seconds:
            for pause in (5.0, 30.0, 95.0 if stretch == 1 else 700.0):
                now += pause
                # Judged before any new row comes, the long windows first: their
                # sources have not yet seen the time either.
                for window in reversed(monitor._windows):
                    _assert_holds(window, now, sent)
        end = now + seconds
        while now < end:
            batch = ROWS[rng.integers(0, len(ROWS), rng.integers(1, rate // 2 + 2))].copy()
            if shift is not None:
                batch[:, shift] += SD[shift]
            monitor.update({"features": batch}, fake_outputs(batch), now)
            sent.append((now, batch))
            now += rng.uniform(0.1, 0.9)
            if rng.random() < 0.1:
                for window in monitor._windows:
                    _assert_holds(window, now, sent)
                    checked += 1
    assert checked > 100


def _assert_holds(window: Any, now: float, sent: list[tuple[float, np.ndarray]]) -> None:
    """The window's merged sketches against the rows sent within its span: the same row
    count, exact label counts, and each feature's ranks within the sketch's error."""
    bucket_s, buckets = window.options.bucket_s, window.options.buckets
    oldest = math.floor(now / bucket_s) - buckets + 1
    kept = [batch for when, batch in sent if math.floor(when / bucket_s) >= oldest]
    rows, sketches = window.merged(now)
    assert rows == sum(len(batch) for batch in kept), window.options.name
    if not kept:
        return
    data = np.concatenate(kept)
    features, label = sketches[:4], sketches[4]
    assert isinstance(label, CategoricalSketch)
    expected_labels = fake_outputs(data)["label"]
    distinct, counts = np.unique(expected_labels, return_counts=True)
    assert label.counts() == {
        str(value): int(count) for value, count in zip(distinct, counts, strict=True)
    }
    for column, sketch in enumerate(features):
        assert isinstance(sketch, NumericSketch)
        values = data[:, column].astype(np.float64)
        assert sketch.count == len(values)
        for split in np.quantile(values, [0.1, 0.3, 0.5, 0.7, 0.9]):
            true_rank = float(np.mean(values < split))
            assert abs(sketch.rank(split) - true_rank) <= 3 * sketch.rank_error + 1e-9


def test_windows_chain_only_where_buckets_tile() -> None:
    from failsoft.data.drift import _Window, chain_windows

    def window(name: str, seconds: float, bucket: float) -> _Window:
        return _Window(DriftWindow(name=name, seconds=seconds, bucket_s=bucket), [])

    short, hour, odd, same = (
        window("30s", 30, 5),
        window("1h", 3600, 300),
        window("21s", 21, 7),
        window("1m", 60, 5),
    )
    chain_windows([hour, odd, short, same])
    assert short.source is None
    assert odd.source is None
    assert same.source is short  # the same buckets: folded, not sketched twice
    assert hour.source is same  # the nearest shorter one that tiles it
    assert short._folds_into == [same]
