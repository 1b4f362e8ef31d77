"""A model with bounded capacity for benchmarks/overload.py (a `python` backend).

Each call holds one of ``SLOTS`` slots for ``SERVICE_MS`` of wall time (a
sleep: it releases the GIL, so the gateway's CPU is not what limits it), so
the model answers at most ``SLOTS / SERVICE_MS`` requests a second and calls
beyond ``SLOTS`` wait for a slot: latency grows with concurrency, as on a GPU
or a fixed pool of workers. Both numbers come from the environment so that
the benchmark sets them for the server process it starts:

    FAILSOFT_BENCH_SLOTS (4), FAILSOFT_BENCH_SERVICE_MS (20)

Input ``x`` (FP32 [-1, 4]); output ``y`` (INT64 [-1]): the row sums, rounded,
so an answer can be checked.
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np

SLOTS = int(os.environ.get("FAILSOFT_BENCH_SLOTS", "4"))
SERVICE_S = float(os.environ.get("FAILSOFT_BENCH_SERVICE_MS", "20")) / 1000.0
_slots = threading.BoundedSemaphore(SLOTS)


def predict(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    x = inputs["x"]
    with _slots:
        time.sleep(SERVICE_S)
    return {"y": np.rint(x.sum(axis=1)).astype(np.int64)}
