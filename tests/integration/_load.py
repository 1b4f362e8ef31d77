"""Open-loop load for the fault tests, on failsoft's own drill driver.

Requests leave at a fixed rate whether or not earlier ones answered, and
latency counts from the scheduled send, so a stall shows up in the numbers
instead of slowing the sender (no coordinated omission).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from failsoft.drills.experiment import Load
from failsoft.drills.load import run_load
from tests.integration._models import petal_rule

ROWS = np.array(
    [[5.1, 3.5, 1.4, 0.2], [6.0, 2.7, 5.1, 1.6], [5.7, 2.8, 4.1, 1.3], [6.7, 3.0, 5.2, 2.3]],
    dtype=np.float32,
)


@dataclass
class Outcome:
    sent_at: float  # seconds since the start of the run
    latency: float
    status: int
    correct: bool
    degraded: bool
    served_by: str


def demo_load(model: str, rate: float, seconds: float, timeout_ms: int) -> Load:
    """The four rows above, each with the label the petal rule (and every demo model) gives."""
    requests = [
        {
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": row.tolist()}],
            "expect": {"label": [int(petal_rule(row[np.newaxis, :])[0])]},
        }
        for row in ROWS
    ]
    return Load.model_validate(
        {
            "model": model,
            "rate": rate,
            "duration_s": seconds,
            "timeout_ms": timeout_ms,
            "requests": requests,
        }
    )


async def open_loop(
    base_url: str, model: str, rate: float, seconds: float, timeout_ms: int = 5000
) -> list[Outcome]:
    """POST one row every 1/rate seconds for ``seconds``; every request is awaited."""
    got = await run_load(base_url, demo_load(model, rate, seconds, timeout_ms))
    return [
        Outcome(
            float(got.offsets[i]),
            float(got.latency_s[i]) if not np.isnan(got.latency_s[i]) else float("inf"),
            int(got.status[i]),
            bool(got.correct[i]),
            bool(got.degraded[i]),
            got.served_by[i],
        )
        for i in range(len(got.offsets))
    ]


def p99(outcomes: list[Outcome]) -> float:
    return float(np.percentile([o.latency for o in outcomes], 99)) if outcomes else 0.0


def summary(outcomes: list[Outcome]) -> str:
    failed = [o for o in outcomes if not o.correct]
    return (
        f"{len(outcomes)} requests, {len(failed)} wrong or failed "
        f"(statuses {sorted({o.status for o in failed})}), p99 {p99(outcomes) * 1000:.1f} ms"
    )
