from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import to_rgb
from matplotlib.image import imread

from failsoft.drills.chart import (
    FAULT_ALPHA,
    FAULT_COLOR,
    P99_COLOR,
    SUCCESS_COLOR,
    draw_timeline,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FAULT_START, FAULT_END = 20.0, 30.0
GAP_START, GAP_END = 40, 46  # buckets 40..45 have no requests


def _drill(path: Path) -> None:
    n = 60
    seconds = [float(i) for i in range(n)]
    success: list[float | None] = []
    degraded: list[float | None] = []
    p99: list[float | None] = []
    for i in range(n):
        if GAP_START <= i < GAP_END:
            success.append(None)
            degraded.append(None)
            p99.append(None)
        elif FAULT_START <= i < FAULT_END:
            success.append(80.0)
            degraded.append(15.0)
            p99.append(250.0)
        else:
            success.append(99.8)
            degraded.append(0.0)
            p99.append(30.0)
    draw_timeline(
        path,
        "drill: kill one replica",
        seconds,
        success,
        degraded,
        p99,
        [("kill replica a", FAULT_START, FAULT_END)],
        availability_target_pct=99.0,
        p99_target_ms=100.0,
        detected_at_s=21.5,
        recovered_at_s=32.0,
    )


def _rgb(path: Path) -> np.ndarray:
    image = imread(path)
    return np.asarray(image[..., :3] * 255.0, dtype=float)


def _near(pixels: np.ndarray, rgb: tuple[float, float, float], tolerance: float) -> np.ndarray:
    return np.asarray(np.all(np.abs(pixels - np.asarray(rgb)) <= tolerance, axis=-1), dtype=bool)


def _band_rgb() -> tuple[float, float, float]:
    """The fault band's colour over the white panel background."""
    r, g, b = to_rgb(FAULT_COLOR)
    a = FAULT_ALPHA
    return (255 * (1 - a + a * r), 255 * (1 - a + a * g), 255 * (1 - a + a * b))


def _p99_panel(pixels: np.ndarray) -> np.ndarray:
    """Rows in the lower panel (the figure's lower half, above the axis and legend)."""
    height = pixels.shape[0]
    return pixels[int(height * 0.55) : int(height * 0.78)]


def test_draws_a_png_with_the_fault_band_only_inside_the_window(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "folder" / "timeline.png"
    _drill(path)

    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 20_000
    pixels = _rgb(path)
    assert pixels.shape[:2] == (600, 1000)

    band = _near(_p99_panel(pixels), _band_rgb(), tolerance=6).sum(axis=0)
    columns = np.flatnonzero(band > 0.5 * _p99_panel(pixels).shape[0])
    assert columns.size > 0, "no fault band found in the p99 panel"
    left, right = int(columns[0]), int(columns[-1])
    # One contiguous band, 10 of the 60 seconds wide (axes span ~850-950 px).
    assert columns.size >= right - left - 4  # the detected line crosses it
    assert 130 <= right - left <= 170
    # Centred on t=25 of 0..60, i.e. ~42 % across an axes that starts at ~7 %.
    assert 0.38 < (left + right) / 2 / pixels.shape[1] < 0.52
    # No band colour anywhere else in the panel.
    outside = np.concatenate([band[: left - 3], band[right + 4 :]])
    assert outside.max() == 0


def test_a_bucket_without_requests_breaks_the_line(tmp_path: Path) -> None:
    path = tmp_path / "timeline.png"
    _drill(path)
    pixels = _rgb(path)
    panel = _p99_panel(pixels)

    # Calibrate seconds -> pixel columns from the fault band (t=20..30).
    band = _near(panel, _band_rgb(), tolerance=6).sum(axis=0)
    columns = np.flatnonzero(band > 0.5 * panel.shape[0])
    left, right = int(columns[0]), int(columns[-1])
    per_second = (right - left) / (FAULT_END - FAULT_START)

    def column(t: float) -> int:
        return round(left + (t - FAULT_START) * per_second)

    height = pixels.shape[0]
    for color, rows in (
        (SUCCESS_COLOR, pixels[int(height * 0.05) : int(height * 0.5)]),
        (P99_COLOR, pixels[int(height * 0.5) : int(height * 0.85)]),
    ):
        r, g, b = to_rgb(color)
        line = _near(rows, (255 * r, 255 * g, 255 * b), tolerance=40)
        assert line[:, column(10.5)].any(), f"the {color} line is missing where there were requests"
        assert line[:, column(50.5)].any()
        for t in (41.5, 42.5, 43.5, 44.5):
            assert not line[:, column(t)].any(), f"a line at {t}s, where there were no requests"


def test_mismatched_lengths_raise_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"seconds has 3, p99_ms has 2"):
        draw_timeline(
            tmp_path / "x.png",
            "t",
            [0.0, 1.0, 2.0],
            [100.0, 100.0, 100.0],
            [0.0, 0.0, 0.0],
            [10.0, 10.0],
            [],
        )
    assert not (tmp_path / "x.png").exists()


def test_fault_that_ends_before_it_starts_raises_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="ends"):
        draw_timeline(tmp_path / "x.png", "t", [0.0], [100.0], [0.0], [10.0], [("f", 5.0, 2.0)])


def test_empty_input_draws_an_empty_chart(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    draw_timeline(path, "drill: nothing sent", [], [], [], [], [])
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert _rgb(path).shape[:2] == (600, 1000)


def test_buckets_that_all_lack_requests_draw_a_chart(tmp_path: Path) -> None:
    path = tmp_path / "gaps.png"
    draw_timeline(
        path,
        "drill: all gaps",
        [0.0, 1.0, 2.0],
        [None, None, None],
        [None, None, None],
        [None, None, None],
        [("outage", 0.0, 3.0)],
        detected_at_s=1.0,
    )
    assert path.read_bytes().startswith(PNG_SIGNATURE)


def test_importing_the_module_does_not_import_matplotlib() -> None:
    code = "import sys, failsoft.drills.chart; assert 'matplotlib' not in sys.modules"
    src = Path(__file__).resolve().parents[2] / "src"
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(src)},
        check=False,
    )
    assert result.returncode == 0, result.stderr
