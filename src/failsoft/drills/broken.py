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


def iris_confused(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A plausible bad model: right on most flowers, but it swaps versicolor and virginica
    (1 and 2) where the two meet, petal length 4.5 to 5.0 cm. Its answers are well-formed,
    its golden probe (a setosa) passes; only comparing its labels with the stable
    version's tells (the rollout-wrong-predictions drill: 3 of its 20 flowers are there)."""
    from failsoft.demo import iris_rules

    features = inputs["features"]
    answer = iris_rules(inputs)
    label = answer["label"]
    confused = (features[:, 2] >= 4.5) & (features[:, 2] < 5.0) & (label > 0)
    label[confused] = 3 - label[confused]
    probabilities = np.full((len(label), 3), 0.05, dtype=np.float32)
    probabilities[np.arange(len(label)), label] = 0.9
    return {"label": label, "probabilities": probabilities}
