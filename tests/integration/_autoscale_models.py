"""Worker models for tests/integration/test_autoscale.py (run in worker processes)."""

from __future__ import annotations

import os

import numpy as np


def wrong_on_w1(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Label 1 for every row, except in worker ``w1``, which answers 7: its golden probe fails."""
    rows = len(inputs["x"])
    label = 7 if os.environ.get("FAILSOFT_REPLICA") == "w1" else 1
    return {"label": np.full(rows, label, dtype=np.int64)}
