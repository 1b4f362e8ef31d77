"""Models for benchmarks/autoscale.py (``python`` backends run in worker processes).

Input ``x`` (FP32 [-1, 4]); output ``label`` (INT64 [-1]): 0 when the petal
length (column 2) is under 2.5, else 1, so an answer can be checked.

- ``io_wait`` waits ``IO_WAIT_S`` per call (a sleep: like a call to a remote
  store or an accelerator), so a worker serves ~50 calls/s whatever the
  cores, and more workers add capacity even on two cores.
- ``cpu_spin`` burns ``CPU_SPIN_S`` of CPU per call in pure Python (holding
  the GIL): more workers than cores add nothing.
"""

from __future__ import annotations

import time

import numpy as np

IO_WAIT_S = 0.020
CPU_SPIN_S = 0.020


def _label(x: np.ndarray) -> np.ndarray:
    return (x[:, 2] >= 2.5).astype(np.int64)


def io_wait(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    time.sleep(IO_WAIT_S)
    return {"label": _label(inputs["x"])}


def cpu_spin(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    end = time.thread_time() + CPU_SPIN_S
    spins = 0
    while time.thread_time() < end:
        spins += 1
    return {"label": _label(inputs["x"])}
