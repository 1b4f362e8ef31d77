"""A PNG of reference vs now for a model's worst-drifting features (``drift status --png``).

One panel per feature: the share of rows in each of the reference's
quantile cells (numbers) or per label (categories), reference and current
window side by side, titled with the distance and its verdict.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["draw"]


def draw(
    model: str, entry: dict[str, Any], path: Path, *, window: str | None = None, features: int = 4
) -> None:
    """Draw ``entry`` (one model of /admin/drift?cells=1) to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: list[tuple[str, dict[str, Any]]] = []
    for version, state in entry.get("versions", {}).items():
        reports = [
            r
            for r in state["windows"]
            if (window is None or r["window"] == window) and r["rows"] > 0
        ]
        if not reports:
            continue  # nothing seen yet: nothing to compare
        report = reports[0]  # the shortest window: what the traffic looks like now
        for feature in report["features"][:features]:
            panels.append((f"{version} {report['window']}", feature))
    count = max(len(panels), 1)
    columns = min(count, 4)
    rows = -(-count // columns)
    figure, grid = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.6 * rows), squeeze=False)
    axes = [axis for row in grid for axis in row]
    for axis in axes[len(panels) :]:
        axis.set_axis_off()
    if not panels:
        axes[0].text(0.5, 0.5, "no traffic sketched yet", ha="center", va="center")
    for axis, (where, feature) in zip(axes, panels, strict=False):
        cells = feature.get("cells") or {}
        reference, current = cells.get("reference", []), cells.get("current", [])
        if "labels" in cells:
            ticks = [str(label) for label in cells["labels"]]
        else:
            splits = cells.get("splits", [])
            edges = ["min", *(f"{s:.3g}" for s in splits)]
            ticks = [f">={edge}" for edge in edges]
        positions = list(range(len(reference)))
        axis.bar([p - 0.2 for p in positions], reference, width=0.4, label="reference")
        axis.bar([p + 0.2 for p in positions], current, width=0.4, label="now")
        axis.set_xticks(positions)
        axis.set_xticklabels(ticks[: len(positions)], rotation=60, fontsize=7)
        low = feature.get("low")
        axis.set_title(
            f"{feature['display']} ({where})\n{feature['measure']} {feature['value'] or 0:.3f}"
            f" (low {low or 0:.3f}) {feature['status']}",
            fontsize=9,
        )
        axis.set_ylabel("share of rows")
        axis.legend(fontsize=7)
    figure.suptitle(f"drift of {model}: reference vs now", fontsize=11)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
