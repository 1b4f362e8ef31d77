"""A chaos drill's timeline as a PNG: success and p99 latency per second.

``draw_timeline`` draws two panels that share the time axis (seconds since
the load started):

* top: the share of requests answered correctly per 1-second bucket, the
  share answered by a fallback (degraded) as a light filled area, and the
  availability target as a dotted line;
* bottom: the p99 latency per bucket (log scale when the values span more
  than ``LOG_SPAN`` times, else linear from zero) and the p99 target as a
  dotted line.

Every fault window is a translucent band across both panels, named once
above the top panel; when the gateway first reacted ("detected") and when
the steady state held again ("recovered") are vertical lines, named there
too. Labels that would overlap are stacked. The legend sits below the
panels, so it never covers data. A bucket without requests (``None``)
breaks the lines instead of drawing zero.

The figure is a ``matplotlib.figure.Figure`` drawn by ``FigureCanvasAgg``:
no pyplot and no global backend switch, so it is safe from any thread and
leaves an interactive pyplot alone. matplotlib is imported inside
``draw_timeline`` so that importing this module (and the CLI) stays cheap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.text import Annotation

__all__ = ["FAULT_COLOR", "LOG_SPAN", "draw_timeline"]

FAULT_COLOR = "#e8590c"
"""Colour of the fault bands (drawn at ``FAULT_ALPHA``)."""
FAULT_ALPHA = 0.18
LOG_SPAN = 20.0
"""The p99 panel is logarithmic when its largest value exceeds the smallest by more."""

SUCCESS_COLOR = "#1864ab"
DEGRADED_COLOR = "#fab005"
P99_COLOR = "#5f3dc4"
TARGET_COLOR = "#212529"
DETECTED_COLOR = "#c92a2a"
RECOVERED_COLOR = "#2b8a3e"

WIDTH_IN, HEIGHT_IN, DPI = 10.0, 6.0, 100


def _floats(values: Sequence[float | None]) -> list[float]:
    """``None`` (and non-finite values) become NaN, which breaks a line."""
    out: list[float] = []
    for v in values:
        f = math.nan if v is None else float(v)
        out.append(f if math.isfinite(f) else math.nan)
    return out


def _bucket_width(seconds: Sequence[float]) -> float:
    steps = sorted(b - a for a, b in pairwise(seconds) if b > a)
    return steps[len(steps) // 2] if steps else 1.0


def _validate(
    seconds: Sequence[float],
    series: dict[str, Sequence[float | None]],
    faults: Sequence[tuple[str, float, float]],
) -> None:
    n = len(seconds)
    wrong = {name: len(s) for name, s in series.items() if len(s) != n}
    if wrong:
        detail = ", ".join(f"{name} has {m}" for name, m in wrong.items())
        raise ValueError(f"every series needs one value per second: seconds has {n}, {detail}")
    if any(b < a for a, b in pairwise(seconds)):
        raise ValueError("seconds must be in ascending order")
    for label, start, end in faults:
        if end < start:
            raise ValueError(f"fault {label!r} ends ({end}) before it starts ({start})")


def draw_timeline(
    path: Path,
    title: str,
    seconds: Sequence[float],
    success_pct: Sequence[float | None],
    degraded_pct: Sequence[float | None],
    p99_ms: Sequence[float | None],
    faults: Sequence[tuple[str, float, float]],
    *,
    availability_target_pct: float | None = None,
    p99_target_ms: float | None = None,
    detected_at_s: float | None = None,
    recovered_at_s: float | None = None,
) -> None:
    """Draw a drill's timeline to ``path`` (a 1000x600 PNG; parent folders are created).

    ``seconds`` holds the start of each 1-second bucket; ``success_pct``,
    ``degraded_pct`` (0-100) and ``p99_ms`` hold one value per bucket, ``None``
    where the bucket had no requests. ``faults`` are ``(label, start_s, end_s)``.
    Raises ``ValueError`` when the series differ in length, ``seconds`` is not
    ascending or a fault ends before it starts. Empty series draw an empty
    chart that says "no requests".
    """
    _validate(
        seconds,
        {"success_pct": success_pct, "degraded_pct": degraded_pct, "p99_ms": p99_ms},
        faults,
    )

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import FuncFormatter, LogLocator

    fig = Figure(figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)  # becomes fig.canvas: Agg without pyplot or a global backend
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[1.1, 1.0])
    fig.suptitle(title, fontsize=13, fontweight="bold")

    # Each bucket is drawn as a step from its start to the next bucket's start;
    # one extra point closes the last bucket.
    xs = [float(s) for s in seconds]
    width = _bucket_width(xs)
    x_edges = [*xs, xs[-1] + width] if xs else []

    def closed(values: list[float]) -> list[float]:
        return [*values, values[-1]] if values else []

    success = _floats(success_pct)
    degraded = _floats(degraded_pct)
    p99 = _floats(p99_ms)
    empty = not xs or all(math.isnan(v) for v in (*success, *degraded, *p99))

    handles: list[Any] = []

    # --- top: success and degraded share ---------------------------------
    if xs:
        top.fill_between(
            x_edges,
            closed(degraded),
            0.0,
            step="post",
            color=DEGRADED_COLOR,
            alpha=0.45,
            linewidth=0,
        )
        top.step(x_edges, closed(success), where="post", color=SUCCESS_COLOR, linewidth=1.8)
    handles.append(Line2D([], [], color=SUCCESS_COLOR, linewidth=1.8, label="success %"))
    handles.append(Patch(color=DEGRADED_COLOR, alpha=0.45, label="degraded (fallback) %"))
    if availability_target_pct is not None:
        top.axhline(
            availability_target_pct, color=TARGET_COLOR, linestyle=":", linewidth=1.4, zorder=3
        )
        handles.append(
            Line2D(
                [],
                [],
                color=TARGET_COLOR,
                linestyle=":",
                linewidth=1.4,
                label=f"targets (availability {availability_target_pct:g} %"
                + (f", p99 {p99_target_ms:g} ms)" if p99_target_ms is not None else ")"),
            )
        )
    # A little room below zero, so a 0 % bucket shows above the axis line.
    top.set_ylim(-4, 105)
    top.set_yticks([0, 25, 50, 75, 100])
    top.set_ylabel("success %")

    # --- bottom: p99 latency ---------------------------------------------
    if xs:
        bottom.step(x_edges, closed(p99), where="post", color=P99_COLOR, linewidth=1.8)
    handles.append(Line2D([], [], color=P99_COLOR, linewidth=1.8, label="p99 latency"))
    if p99_target_ms is not None:
        bottom.axhline(p99_target_ms, color=TARGET_COLOR, linestyle=":", linewidth=1.4, zorder=3)
        if availability_target_pct is None:
            handles.append(
                Line2D(
                    [],
                    [],
                    color=TARGET_COLOR,
                    linestyle=":",
                    linewidth=1.4,
                    label=f"p99 target {p99_target_ms:g} ms",
                )
            )
    span = [v for v in p99 if v > 0]
    if p99_target_ms is not None and p99_target_ms > 0:
        span.append(p99_target_ms)
    if span and max(span) / min(span) > LOG_SPAN:
        bottom.set_yscale("log")
        bottom.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        bottom.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    else:
        y_top = max(span) * 1.15 if span else 1.0
        bottom.set_ylim(-0.04 * y_top, y_top)
    bottom.set_ylabel("p99 latency (ms)")
    bottom.set_xlabel("seconds since load start")

    # --- x range ----------------------------------------------------------
    ends = [x_edges[-1]] if xs else []
    ends += [end for _, _, end in faults]
    ends += [t for t in (detected_at_s, recovered_at_s) if t is not None]
    starts = [xs[0]] if xs else []
    starts += [start for _, start, _ in faults]
    x_lo = min([0.0, *starts])
    x_hi = max([x_lo + 1.0, *ends])
    top.set_xlim(x_lo, x_hi)

    for ax in (top, bottom):
        ax.grid(True, color="#dee2e6", linewidth=0.6)
        ax.set_axisbelow(True)
        ax.tick_params(labelsize=10)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)

    # --- faults, detection and recovery -------------------------------------
    labels: list[Annotation] = []
    for label, start, end in faults:
        for ax in (top, bottom):
            ax.axvspan(start, end, color=FAULT_COLOR, alpha=FAULT_ALPHA, linewidth=0)
        labels.append(_header_label(top, (start + end) / 2, label, FAULT_COLOR))
    if faults:
        handles.append(Patch(color=FAULT_COLOR, alpha=FAULT_ALPHA + 0.1, label="fault window"))
    for name, at, color in (
        ("detected", detected_at_s, DETECTED_COLOR),
        ("recovered", recovered_at_s, RECOVERED_COLOR),
    ):
        if at is None:
            continue
        for ax in (top, bottom):
            ax.axvline(at, color=color, linestyle="--", linewidth=1.3)
        labels.append(_header_label(top, at, name, color))
        handles.append(
            Line2D([], [], color=color, linestyle="--", linewidth=1.3, label=f"{name} {at:.1f} s")
        )

    if empty:
        for ax in (top, bottom):
            ax.text(
                0.5,
                0.5,
                "no requests",
                transform=ax.transAxes,
                ha="center",
                va="center",
                fontsize=14,
                color="#868e96",
            )

    fig.legend(
        handles=handles,
        loc="outside lower center",
        ncol=min(len(handles), 4),
        fontsize=9.5,
        frameon=False,
    )

    if labels:
        _unstack(fig, labels)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=DPI)


def _header_label(ax: Axes, x: float, text: str, color: str) -> Annotation:
    """A label above the panel at data ``x``, in row 0 (``_unstack`` moves it up)."""
    return ax.annotate(
        text,
        xy=(x, 1.0),
        xycoords=ax.get_xaxis_transform(),
        xytext=(0, 3),
        textcoords="offset points",
        ha="center",
        va="bottom",
        fontsize=9.5,
        fontweight="bold",
        color=color,
        annotation_clip=False,
    )


def _unstack(fig: Figure, labels: list[Annotation]) -> None:
    """Put each header label in the lowest row where it overlaps no earlier one."""
    fig.draw_without_rendering()  # runs the layout, so the extents below are final in x
    row_height = 12.0  # points
    pad = 6.0  # pixels
    placed: list[tuple[int, float, float]] = []  # (row, x0, x1) in pixels
    for ann in sorted(labels, key=lambda a: a.get_window_extent().x0):
        box = ann.get_window_extent()
        row = 0
        while any(r == row and box.x0 - pad < x1 and x0 < box.x1 + pad for r, x0, x1 in placed):
            row += 1
        placed.append((row, box.x0, box.x1))
        ann.xyann = (0, 3 + row * row_height)
