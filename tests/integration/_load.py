"""A small open-loop load driver for fault tests: fixed rate, bounded count and time.

Requests are sent on schedule whether or not earlier ones have answered, and
latency is measured from the scheduled time, so a stall shows up in the
numbers instead of silently slowing the sender (coordinated omission).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import aiohttp
import numpy as np

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


def body_for(index: int) -> tuple[bytes, int]:
    row = ROWS[index % len(ROWS)]
    payload = (
        '{"inputs":[{"name":"x","datatype":"FP32","shape":[1,4],"data":['
        + ",".join(f"{v:.1f}" for v in row)
        + "]}]}"
    )
    return payload.encode(), int(petal_rule(row[np.newaxis, :])[0])


async def open_loop(
    url: str, rate: float, seconds: float, request_timeout: float = 5.0
) -> list[Outcome]:
    """POST one row every 1/rate seconds for `seconds`; every request is awaited."""
    total = int(rate * seconds)
    connector = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(connector=connector) as session:
        start = time.perf_counter()

        async def one(index: int) -> Outcome:
            scheduled = start + index / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            body, expected = body_for(index)
            try:
                async with session.post(
                    url,
                    data=body,
                    headers={"content-type": "application/json"},
                    timeout=aiohttp.ClientTimeout(total=request_timeout),
                ) as response:
                    payload = await response.json(content_type=None)
                    status = response.status
                    served_by = response.headers.get("failsoft-served-by", "")
                    degraded = response.headers.get("failsoft-degraded") == "true"
            except (aiohttp.ClientError, TimeoutError):
                return Outcome(
                    scheduled - start, time.perf_counter() - scheduled, 0, False, False, ""
                )
            correct = status == 200 and payload["outputs"][0]["data"] == [expected]
            return Outcome(
                scheduled - start,
                time.perf_counter() - scheduled,
                status,
                correct,
                degraded,
                served_by,
            )

        return await asyncio.gather(*(one(i) for i in range(total)))


def p99(outcomes: list[Outcome]) -> float:
    return float(np.percentile([o.latency for o in outcomes], 99)) if outcomes else 0.0


def summary(outcomes: list[Outcome]) -> str:
    failed = [o for o in outcomes if not o.correct]
    return (
        f"{len(outcomes)} requests, {len(failed)} wrong or failed "
        f"(statuses {sorted({o.status for o in failed})}), p99 {p99(outcomes) * 1000:.1f} ms"
    )
