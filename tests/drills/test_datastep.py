"""A drill's data step: requests drawn from a data set, one column shifted, and its checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest

from failsoft.drills.datastep import DataStep, Shift, data_bodies, drift_checks
from failsoft.drills.experiment import ExperimentError, load_experiment


def rows(bodies: list[bytes]) -> np.ndarray:
    return np.array([orjson.loads(body)["inputs"][0]["data"] for body in bodies])


def test_rows_come_from_the_data_set_and_one_column_moves_at_the_shift() -> None:
    from sklearn.datasets import load_iris

    iris = load_iris().data
    step = DataStep(dataset="iris", shift=Shift(at_s=10, column=2, sd=1.0))
    offsets = np.arange(2000) / 100  # 20 s at 100 req/s
    drawn = rows(data_bodies(step, offsets, scale=1.0))
    before, after = drawn[offsets < 10], drawn[offsets >= 10]
    assert len(before) == len(after) == 1000
    assert np.isin(np.round(before[:, 2], 1), np.round(iris[:, 2], 1)).all()
    moved = after[:, 2].mean() - before[:, 2].mean()
    assert moved == pytest.approx(iris[:, 2].std(), abs=0.25)
    assert abs(after[:, 0].mean() - before[:, 0].mean()) < 0.15  # the others stay
    # The same seed, the same requests; a scaled drill shifts at the scaled time.
    assert data_bodies(step, offsets, 1.0) == data_bodies(step, offsets, 1.0)
    half = rows(data_bodies(step, offsets, scale=0.5))
    assert half[offsets >= 5, 2].mean() > before[:, 2].mean() + 1


def test_a_column_past_the_data_set_is_refused() -> None:
    step = DataStep(dataset="iris", shift=Shift(at_s=1, column=4))
    with pytest.raises(ValueError, match="iris has 4 columns"):
        data_bodies(step, np.arange(10.0), 1.0)


def test_checks_time_the_detection_and_count_early_alarms() -> None:
    step = DataStep(dataset="iris", shift=Shift(at_s=20, column=2))
    said = [
        {"type": "DriftDetected", "model": "iris", "at_s": 5.0, "features": ["features[0]"]},
        {"type": "DriftDetected", "model": "iris", "at_s": 38.5, "features": ["features[2]"]},
        {"type": "DriftDetected", "model": "other", "at_s": 1.0, "features": ["x"]},
    ]
    checks, summary = drift_checks(step, "iris", said, 1.0, 60)
    assert [(c.name, c.ok) for c in checks] == [
        ("drift false alarms", False),
        ("drift detected", True),
    ]
    assert summary["detect_s"] == pytest.approx(18.5)
    assert summary["false_alarms"] == 1
    wrong = [{"type": "DriftDetected", "model": "iris", "at_s": 30.0, "features": ["x[1]"]}]
    checks, _ = drift_checks(step, "iris", wrong, 1.0, 60)
    assert checks[1].ok is False  # it must name the shifted feature
    checks, summary = drift_checks(step, "iris", [], 1.0, 60)
    assert checks[1].measured == "never"
    assert summary["detect_s"] is None


def test_a_drill_needs_requests_or_data(tmp_path: Path) -> None:
    path = tmp_path / "d.yaml"
    path.write_text("name: d\nload: {model: iris, rate: 10, duration_s: 5}\n")
    with pytest.raises(ExperimentError, match="give at least one request"):
        load_experiment(path)
    path.write_text(
        "name: d\nload: {model: iris, rate: 10, duration_s: 5}\n"
        "data: {dataset: iris, shift: {at_s: 9, column: 1}}\n"
    )
    with pytest.raises(ExperimentError, match="after the load's end"):
        load_experiment(path)


def test_the_short_form_keeps_a_minimum_length() -> None:
    experiment = load_experiment(Path(__file__).parents[2] / "drills" / "data-shift.yaml")
    assert experiment.scale_for(None) == 1.0
    assert experiment.scale_for(10) == pytest.approx(45 / 60)
    assert experiment.scale_for(100) == 1.0
