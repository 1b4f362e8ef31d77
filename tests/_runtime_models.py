"""Python-backend models and heuristics for tests/test_runtime.py.

Every model takes ``x`` (FP32, [rows, 2]) and returns ``label`` (INT64,
[rows], 0 or 1) and ``score`` (FP32, [rows], within [0, 1]). ``STATE``
records the calls and lets a test make ``flaky`` fail; the test module
resets it before each test.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from failsoft.errors import BadRequest

Tensors = dict[str, np.ndarray]


@dataclass
class State:
    calls: Counter[str] = field(default_factory=Counter)
    failing: bool = False

    def reset(self) -> None:
        self.calls.clear()
        self.failing = False


STATE = State()


def answer(x: np.ndarray) -> Tensors:
    """The right answer for ``x``: the model every test expects when nothing fails."""
    label = (x[:, 0] > x[:, 1]).astype(np.int64)
    score = (1.0 / (1.0 + np.exp(-x.sum(axis=1)))).astype(np.float32)
    return {"label": label, "score": score}


def healthy(inputs: Tensors) -> Tensors:
    STATE.calls["healthy"] += 1
    return answer(inputs["x"])


def backup(inputs: Tensors) -> Tensors:
    STATE.calls["backup"] += 1
    return answer(inputs["x"])


def flaky(inputs: Tensors) -> Tensors:
    """``healthy`` until a test sets ``STATE.failing``."""
    STATE.calls["flaky"] += 1
    if STATE.failing:
        raise RuntimeError("flaky is failing now")
    return answer(inputs["x"])


def broken(inputs: Tensors) -> Tensors:
    STATE.calls["broken"] += 1
    raise RuntimeError("model is down")


def picky(inputs: Tensors) -> Tensors:
    """Refuses negative features the way an input contract would: the client's fault."""
    STATE.calls["picky"] += 1
    x = inputs["x"]
    if (x < 0).any():
        raise BadRequest(f"input 'x': value {x.min()} is outside the declared range [0, inf]")
    return answer(x)


def overconfident(inputs: Tensors) -> Tensors:
    """Fine by its own contract (no range on score), outside the range of the others'."""
    STATE.calls["overconfident"] += 1
    rows = len(inputs["x"])
    return {"label": np.ones(rows, dtype=np.int64), "score": np.full(rows, 7.0, dtype=np.float32)}


def heuristic(inputs: Tensors) -> Tensors:
    """The degraded answer: always class 1, with a middling score."""
    STATE.calls["heuristic"] += 1
    rows = len(inputs["x"])
    return {"label": np.ones(rows, dtype=np.int64), "score": np.full(rows, 0.5, dtype=np.float32)}


def nan_heuristic(inputs: Tensors) -> Tensors:
    """A heuristic answering garbage: the output contract must catch it."""
    STATE.calls["nan_heuristic"] += 1
    rows = len(inputs["x"])
    return {
        "label": np.ones(rows, dtype=np.int64),
        "score": np.full(rows, np.nan, dtype=np.float32),
    }


def raising_heuristic(inputs: Tensors) -> Tensors:
    STATE.calls["raising_heuristic"] += 1
    raise ZeroDivisionError("heuristic divided by zero")


def slow(inputs: Tensors) -> Tensors:
    """``healthy``, after 0.2 s: a call that is still in flight when a test acts."""
    import time

    time.sleep(0.2)
    return answer(inputs["x"])
