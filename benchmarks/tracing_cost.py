"""What tracing costs per request, in-process, against the same app with tracing off.

Drives the real FailsoftApp through its ASGI entry (no sockets, no load
driver: on a shared machine those dominate and hide microseconds) with an
in-process Python model, one request at a time, and switches tracing between
rounds of the same process: off, on at ratio 1.0 without an exporter (the
SDK's own cost), on at 1.0 exporting OTLP/HTTP to a local sink, and on at
0.01. Rounds alternate so noise hits every mode alike; the median round of
each counts. Prints microseconds per request and the ratio to off.

    PYTHONPATH=src python benchmarks/tracing_cost.py           # 7 rounds of 2,000
    PYTHONPATH=src python benchmarks/tracing_cost.py --quick   # 3 rounds of 500
    PYTHONPATH=/path/to/main/src python benchmarks/tracing_cost.py --off-only  # the baseline
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _otlp_sink import OtlpSink
from failsoft.config import parse_config

try:
    from failsoft.observe import tracing
except ImportError:  # a checkout from before tracing: --off-only measures it as the baseline
    tracing = None  # type: ignore[assignment]
from failsoft.observe.events import EventBus
from failsoft.observe.metrics import Metrics
from failsoft.runtime import Runtime
from failsoft.server.app import FailsoftApp

BODY = orjson.dumps(
    {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1.0, 2.0]}]}
)
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


def answer(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"y": (inputs["x"][:, 0] > inputs["x"][:, 1]).astype(np.int64)}


def config() -> dict[str, Any]:
    return {
        "models": {
            "m": {
                "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
                "outputs": [{"name": "y", "datatype": "INT64", "shape": [-1]}],
                "versions": {
                    "v1": {"backend": "python", "function": "tracing_cost:answer", "replicas": 2}
                },
                "health_check": {"enabled": False},
            }
        }
    }


async def one(app: FailsoftApp) -> int:
    status = 0

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": BODY, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v2/models/m/infer",
        "headers": HEADERS,
        "query_string": b"",
    }
    await app(scope, receive, send)
    return status


async def run(requests: int, rounds: int, off_only: bool) -> dict[str, list[float]]:
    parsed = parse_config(config())
    app = FailsoftApp(Runtime(parsed, EventBus()), parsed.server, Metrics())
    await app.runtime.start()
    timings: dict[str, list[float]] = {}
    with OtlpSink() as sink:
        modes: dict[str, Any] = {"off": None}  # None: leave tracing as it is (off)
        if tracing is not None and not off_only:
            modes = {
                "off": tracing.TracingOptions(),
                "on 1.0, no export": tracing.TracingOptions(enabled=True, exporter="none"),
                "on 1.0, OTLP": tracing.TracingOptions(enabled=True, endpoint=sink.url),
                "on 0.01, OTLP": tracing.TracingOptions(
                    enabled=True, endpoint=sink.url, sample_ratio=0.01
                ),
            }
        try:
            for _ in range(requests):  # warm up
                assert await one(app) == 200
            for _ in range(rounds):
                for name, options in modes.items():
                    if tracing is not None and options is not None:
                        tracing.configure(options)
                        # The last mode's export must not run during this one.
                        if not tracing.wait_closed(30.0):
                            raise RuntimeError("the previous exporter did not shut down in 30 s")
                    began = time.perf_counter()
                    for _ in range(requests):
                        if await one(app) != 200:
                            raise RuntimeError(f"{name}: a request failed")
                    spent = time.perf_counter() - began
                    timings.setdefault(name, []).append(spent / requests * 1e6)
        finally:
            if tracing is not None:
                tracing.configure(tracing.TracingOptions())
            await app.runtime.close()
        print(f"otlp sink: {sink.posts} exports, {sink.bytes} bytes")
    return timings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per round and mode")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="3 rounds of 500")
    parser.add_argument(
        "--off-only",
        action="store_true",
        help="only tracing off (run it on main too: what the hooks cost when off)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.rounds = 500, 3
    timings = asyncio.run(run(args.requests, args.rounds, args.off_only))
    baseline = statistics.median(timings["off"])
    print(f"\nmedian of {args.rounds} rounds of {args.requests} requests, one at a time\n")
    print(f"{'mode':<20} {'us/request':>11} {'ratio to off':>13} {'added us':>9}")
    for name, values in timings.items():
        median = statistics.median(values)
        print(f"{name:<20} {median:>11.1f} {median / baseline:>13.2f} {median - baseline:>9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
