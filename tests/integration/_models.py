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
