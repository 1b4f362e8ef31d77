"""Python-backend models for the admission tests: one answers at once, one waits for a gate."""

from __future__ import annotations

import threading

import numpy as np

GATE = threading.Event()
ENTERED = threading.Semaphore(0)


def label(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"label": np.zeros(len(inputs["x"]), dtype=np.int64)}


def gated(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Signals it was entered, then answers only once the test opens the gate."""
    ENTERED.release()
    GATE.wait(timeout=10)
    return label(inputs)


def heuristic(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"label": np.ones(len(inputs["x"]), dtype=np.int64)}


def nan_on_huge(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A model that answers NaN for inputs over 1e30: a poison input breaks it."""
    x = inputs["x"]
    score = np.where(np.abs(x).max(axis=1) > 1e30, np.nan, 0.5).astype(np.float32)
    return {"label": np.zeros(len(x), dtype=np.int64), "score": score}
