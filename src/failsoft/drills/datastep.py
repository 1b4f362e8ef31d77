"""A drill's data: the load's requests drawn from a data set, and a shift of one feature.

    data:
      dataset: iris                 # scikit-learn's bundled data set (nothing is downloaded)
      input: features               # the model input its rows fill
      shift: {at_s: 15, column: 2, sd: 1.0}   # from 15 s on, column 2 + 1 standard deviation

Each request is one row drawn at random (seeded) from the data set, so the
traffic before the shift comes from the reference distribution a profile
built on the same data set describes. From ``shift.at_s`` on, one column is
moved by ``sd`` of its own standard deviation. The scorecard then says when
the gateway said ``DriftDetected`` (from /admin/events) and which feature it
named: ``expect.max_drift_detect_s`` bounds the time from the shift, and any
drift said before the shift is a false alarm.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

import numpy as np
import orjson
from pydantic import Field

from failsoft._options import StrictModel

__all__ = ["DataStep", "Shift", "data_bodies", "drift_checks"]


class Shift(StrictModel):
    at_s: Annotated[float, Field(ge=0)]
    column: Annotated[int, Field(ge=0)]
    sd: float = Field(default=1.0, description="how far, in the column's standard deviations")


class DataStep(StrictModel):
    dataset: Literal["iris", "breast_cancer"]
    input: str = "features"
    seed: int = 0
    shift: Shift | None = None

    def feature(self) -> str:
        return f"{self.input}[{self.shift.column}]" if self.shift is not None else ""


def _dataset(name: str) -> np.ndarray:
    from sklearn.datasets import load_breast_cancer, load_iris

    loader = load_iris if name == "iris" else load_breast_cancer
    features, _ = loader(return_X_y=True)
    return np.asarray(features, dtype=np.float32)


def data_bodies(step: DataStep, offsets: np.ndarray, scale: float) -> list[bytes]:
    """One V2 request body per scheduled request (offsets in seconds, already scaled)."""
    rows = _dataset(step.dataset)
    if step.shift is not None and step.shift.column >= rows.shape[1]:
        raise ValueError(
            f"data.shift.column {step.shift.column}: {step.dataset} has {rows.shape[1]} columns"
        )
    rng = np.random.default_rng(step.seed)
    chosen = rows[rng.integers(0, len(rows), len(offsets))].copy()
    if step.shift is not None:
        column = step.shift.column
        moved = offsets >= step.shift.at_s * scale
        chosen[moved, column] += np.float32(step.shift.sd * rows[:, column].std())
    width = rows.shape[1]
    return [
        orjson.dumps(
            {
                "inputs": [
                    {
                        "name": step.input,
                        "datatype": "FP32",
                        "shape": [1, width],
                        "data": [round(float(v), 4) for v in row],
                    }
                ]
            }
        )
        for row in chosen
    ]


def drift_checks(
    step: DataStep,
    model: str,
    events: Sequence[dict[str, Any]],
    scale: float,
    max_detect_s: float | None,
) -> tuple[list[Any], dict[str, Any]]:
    """When DriftDetected came (seconds after the shift) and what it named; a false alarm
    is one said before the shift (or at all, without one)."""
    from failsoft.drills.scorecard import Check

    said = [e for e in events if e.get("type") == "DriftDetected" and e.get("model") == model]
    shift_at = step.shift.at_s * scale if step.shift is not None else None
    early = [e for e in said if shift_at is None or e["at_s"] < shift_at]
    late = [e for e in said if shift_at is not None and e["at_s"] >= shift_at]
    first = late[0] if late else None
    detect_s = None if first is None or shift_at is None else first["at_s"] - shift_at
    named = list(first.get("features", [])) if first is not None else []
    checks = [
        Check(
            "drift false alarms",
            str(len(early)),
            "0",
            not early,
        )
    ]
    if step.shift is not None:
        wanted = step.feature()
        checks.append(
            Check(
                "drift detected",
                "never" if detect_s is None else f"{detect_s:.1f} s ({', '.join(named)})",
                ("" if max_detect_s is None else f"<= {max_detect_s:g} s, ") + f"names {wanted}",
                detect_s is not None
                and (max_detect_s is None or detect_s <= max_detect_s)
                and wanted in named,
            )
        )
    summary = {
        "feature": step.feature(),
        "shift_at_s": shift_at,
        "detect_s": detect_s,
        "named": named,
        "window": first.get("window") if first is not None else None,
        "false_alarms": len(early),
    }
    return checks, summary
