"""Models that load and answer well-formed but wrong: what a bad deploy looks like.

Drills deploy them (``backend: python``) to see the golden probe refuse a
version before it takes traffic. Their answers pass the iris demo's output
contract (a label of 0-2, probabilities in [0, 1]); only their correctness
is off, which only a known input with a known answer can tell.
"""

from __future__ import annotations

import numpy as np


def iris_always_virginica(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every flower is a virginica (class 2), with full confidence."""
    rows = len(inputs["features"])
    probabilities = np.zeros((rows, 3), dtype=np.float32)
    probabilities[:, 2] = 1.0
    return {"label": np.full(rows, 2, dtype=np.int64), "probabilities": probabilities}
