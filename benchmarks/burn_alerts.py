"""Time to page, on the injected clock, through the real event bus.

A model with a 99.9 % availability objective gets steady good traffic for a
history (none, 1 hour, 3 days), then one of:

- outage: every request fails, 10 requests/s;
- blip: 60 s of 10 % errors at 1 request/s, then an hour of good traffic.

``RequestFinished`` events are emitted on an EventBus as the server emits
them; ``Operate`` judges the burn rates every 5 s on a ManualClock (no
sleeping: hours of traffic take seconds). Printed: the time from the first
failure to the page, and its ratio to the baseline: the time the 1h/5m 14.4x
rule needs in theory with a full hour of good history (14.4 x 0.1 % x 3600 s
= 51.8 s). Targets: outage paged within 120 s; blip: no page.

    python benchmarks/burn_alerts.py
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from failsoft.clock import ManualClock
from failsoft.config import parse_config
from failsoft.control.burn import BurnAlert
from failsoft.control.operate import Operate
from failsoft.errors import FailureClass
from failsoft.observe.events import Event, EventBus, RequestFinished

THEORY_S = 14.4 * 0.001 * 3600


def config() -> Any:
    python = {"backend": "python", "function": "tests._runtime_models:healthy"}
    model = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
        "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]}],
        "versions": {"v1": python},
        "objective_pct": 99.9,
    }
    return parse_config({"models": {"iris": model}})


async def scenario(history_s: int, kind: str) -> tuple[float | None, list[str]]:
    clock = ManualClock(1_800_000_000.0)
    bus = EventBus()
    operate = Operate(config(), bus, clock, None, wall=clock.now)
    pages: list[tuple[float, str]] = []

    def seen(event: Event) -> None:
        if isinstance(event, BurnAlert) and event.firing and event.severity == "page":
            pages.append((clock.now(), event.rule))

    bus.subscribe(seen, (BurnAlert,))
    rate = 10 if kind == "outage" else 1

    async def traffic(seconds: int, rate: int, fail_every: int, step: int = 1) -> None:
        sent = 0
        for _ in range(seconds // step):
            for _ in range(rate * step):
                sent += 1
                failed = bool(fail_every) and sent % fail_every == 0
                status = 503 if failed else 200
                failure = FailureClass.REPLICA if failed else None
                bus.emit(RequestFinished("iris", "v1", status, failure, 0.004))
            await clock.advance(float(step))

    await traffic(history_s, rate, 0, step=60)
    operate.start()
    first = clock.now()
    if kind == "outage":
        await traffic(300, 10, 1)
    else:
        await traffic(60, 1, 10)
        await traffic(3600, 1, 0)
    await operate.close()
    if not pages:
        return None, []
    return pages[0][0] - first, [rule for _, rule in pages]


async def main() -> int:
    met = True
    for history in (0, 3600, 3 * 86_400):
        label = {0: "no history", 3600: "1 h of history", 3 * 86_400: "3 d of history"}[history]
        paged, rules = await scenario(history, "outage")
        ok = paged is not None and paged <= 120
        met &= ok
        shown = "never" if paged is None else f"{paged:.0f} s ({paged / THEORY_S:.2f}x theory)"
        print(f"outage at 10 req/s, {label}: paged after {shown} by {rules[:1]}")
        paged, rules = await scenario(history, "blip")
        if history:  # with no history at all the blip is the whole history
            met &= paged is None
        print(f"60 s blip of 10 % at 1 req/s, {label}: {'no page' if paged is None else rules}")
    print("targets met" if met else "targets NOT met")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
