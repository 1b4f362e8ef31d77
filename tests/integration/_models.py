"""Python-backend models used by the integration tests (imported by the server)."""

from __future__ import annotations

import numpy as np


def shout(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """BYTES in, BYTES out: upper-cases each element."""
    text = inputs["text"]
    upper = np.array([item.upper() for item in text.ravel()], dtype=object).reshape(text.shape)
    return {"upper": upper}


def broken(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    raise RuntimeError("this model always fails")


def petal_rule(features: np.ndarray) -> np.ndarray:
    """The reference answer of the `faulty` model: iris classes from petal length."""
    petal = features[:, 2]
    return np.where(petal < 2.5, 0, np.where(petal < 4.9, 1, 2)).astype(np.int64)


def faulty(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A correct model whose replica can be told to misbehave.

    The fault is read from $FAULT_DIR/<replica> (replica from $FAILSOFT_REPLICA
    in worker processes, or $FAULT_NAME for stand-alone servers): `slow` adds
    3 s, `error` fails half the calls, `garbage` answers NaN-filled nonsense.
    """
    import os
    import time

    features = inputs["x"]
    name = os.environ.get("FAILSOFT_REPLICA") or os.environ.get("FAULT_NAME", "")
    try:
        with open(os.path.join(os.environ["FAULT_DIR"], name)) as handle:
            fault = handle.read().strip()
    except (KeyError, OSError):
        fault = ""
    if fault == "slow":
        time.sleep(3.0)
    elif fault == "error" and np.random.default_rng().random() < 0.5:
        raise RuntimeError("injected error")
    elif fault == "garbage":
        return {"label": np.full((len(features), 2), -7, dtype=np.int64)}
    return {"label": petal_rule(features)}


def heuristic(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The degraded answer when no replica can give one."""
    return {"label": petal_rule(inputs["x"])}


def petal_width(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A regression: predicts petal width as a third of petal length (FP32 [rows])."""
    return {"value": (inputs["x"][:, 2] / 3.0).astype(np.float32)}


def slow_rule(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The petal rule, taking half a second: keeps requests in flight for drain tests."""
    import time

    time.sleep(0.5)
    return {"label": petal_rule(inputs["x"])}


def first_label(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Takes x (FP32 [rows, 3]) and k (INT64 [rows, 2]): 1 where x's column b exceeds a."""
    x = inputs["x"]
    return {"label": (x[:, 1] > x[:, 0]).astype(np.int64)}
