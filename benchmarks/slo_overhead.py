"""What counting SLOs and watching for incidents costs per request, on the event loop.

Emits N ``RequestFinished`` events (1 % failed, 2 % degraded) on an EventBus
with the gateway's metrics observer subscribed (the baseline), then on one
with ``Operate`` (SLO book + incidents) subscribed too, and prints the time
per event of each and their ratio. No store: saving runs on a thread every
few seconds and is not on this path.

    python benchmarks/slo_overhead.py             # 1,000,000 events per side
"""

from __future__ import annotations

import argparse
import time

from failsoft.clock import SystemClock
from failsoft.config import parse_config
from failsoft.control.operate import Operate
from failsoft.errors import FailureClass
from failsoft.observe.events import EventBus, RequestFinished
from failsoft.observe.metrics import Metrics


def events(count: int) -> list[RequestFinished]:
    made = []
    for n in range(count):
        failed = n % 100 == 0
        made.append(
            RequestFinished(
                "iris",
                "v1",
                503 if failed else 200,
                FailureClass.REPLICA if failed else None,
                0.003,
                "v1/r0",
                n % 50 == 1,
                "acme",
            )
        )
    return made


def run(bus: EventBus, batch: list[RequestFinished]) -> float:
    emit = bus.emit
    started = time.perf_counter()
    for event in batch:
        emit(event)
    return (time.perf_counter() - started) / len(batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    args = parser.parse_args()
    python = {"backend": "python", "function": "tests._runtime_models:healthy"}
    model = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
        "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]}],
        "versions": {"v1": python},
        "slo": {"quality_pct": 99, "latency_ms": 10, "per_tenant": True},
    }
    config = parse_config({"models": {"iris": model}})
    batch = events(args.events)
    base_bus = EventBus()
    base_bus.subscribe(Metrics().observe)
    slo_bus = EventBus()
    slo_bus.subscribe(Metrics().observe)
    Operate(config, slo_bus, SystemClock(), None)
    run(base_bus, batch[:10_000])  # warm up
    run(slo_bus, batch[:10_000])
    base = min(run(base_bus, batch) for _ in range(3))
    with_slo = min(run(slo_bus, batch) for _ in range(3))
    print(f"metrics only: {base * 1e6:.2f} us/event")
    print(
        f"metrics + SLOs + incidents: {with_slo * 1e6:.2f} us/event "
        f"(+{(with_slo - base) * 1e6:.2f} us, {with_slo / base:.2f}x the baseline)"
    )


if __name__ == "__main__":
    main()
