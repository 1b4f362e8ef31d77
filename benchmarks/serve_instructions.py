"""Instructions per request of the gateway with its data checks on and off, counted
by callgrind: the noise-free twin of ``serve.py --candidate drift|assurance``.

On a shared virtual machine the throughput of one gateway swings by more than
the few percent these features cost (on one 2-core VM, 2-second slices of the
same gateway ranged 2,200-3,100 req/s). Callgrind counts the instructions a
process executes, whatever else the machine does: on that VM three runs of
failsoft alone agreed within 2%, and their ratios within 0.01. It leaves out
what instructions do not show: cache misses, the kernel's work, and waits;
so it bounds from above what a gateway bound by its event loop keeps.

Both gateways (failsoft as ``serve.py`` configures it, and the same with the
candidate's features on) run under ``valgrind --tool=callgrind``. Each gets
``--warm`` requests, then its counters are zeroed, then ``--requests``
requests over ``--connections`` connections; once one more write of the
log and flush of drift have passed, the counters are dumped and read (and
the log checked to hold no record unwritten).

Callgrind runs a program about 50-100x slower, so work driven by the clock
would be charged to 50-100x fewer requests than at full speed. Drift's flush
and the log's write (every 0.5 s) are stretched by ``--slowdown`` so that
each request carries the share of them it carries at full speed. Drift's
judging (every 5 s: once per ~15,000 requests at full speed) would fall in a
run or not by chance, so it is put off beyond the run and not counted. What
each gateway does on its own clock whether loaded or not (timers, metrics,
the audit checkpoint: about 6 million instructions a second under callgrind,
a fifth of the count at 40 requests a second) is counted first over an idle
period, and its rate times the counted period is taken off: the period
depends on how fast valgrind runs the gateway, which the other core's load
changes.

    PYTHONPATH=src python benchmarks/serve_instructions.py                     # assurance
    PYTHONPATH=src python benchmarks/serve_instructions.py --candidate drift
    PYTHONPATH=src python benchmarks/serve_instructions.py --requests 500      # quick look

It needs valgrind (Debian: ``apt-get install valgrind``); a run of 3,000
requests takes about 8 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _load import REPO, ServerProcess, free_port, iris_body, src_env, wait_until_answers
from serve import DRIFT_TARGET_RATIO, SELF_BASELINED, failsoft_argv, failsoft_config, metric

if str(REPO / "src") not in sys.path:
    sys.path.insert(1, str(REPO / "src"))
from failsoft.config import load_config
from failsoft.demo import default_data_dir, prepare_demo

HOST = "127.0.0.1"
INFER_PATH = "/v2/models/iris/infer"
DRIFT_FLUSH_S = 0.5  # drift's flush_every_s, the log's flush_interval_s (their defaults)
NEVER_WITHIN_RUN_S = 3600.0  # drift's judging: see the module's docstring
MAX_INTERVAL_S = 60.0  # the most either option allows


def stretched_config(model_path: Path, port: int, candidate: str | None, slowdown: float) -> Any:
    """``serve.py``'s configuration, its clock-driven intervals stretched by ``slowdown``."""
    drift = candidate in SELF_BASELINED
    config = failsoft_config(model_path, port, drift=drift, log=candidate == "assurance")
    flush_s = min(DRIFT_FLUSH_S * slowdown, MAX_INTERVAL_S)
    if drift:
        config["models"]["iris"]["drift"].update(
            flush_every_s=flush_s, evaluate_every_s=NEVER_WITHIN_RUN_S
        )
    if candidate == "assurance":
        config["predictions"]["flush_interval_s"] = flush_s
    return config


class CountedGateway:
    """``failsoft serve`` under callgrind, with its counters zeroed and dumped on demand."""

    def __init__(self, name: str, config: Any, port: int, tmp_dir: Path) -> None:
        self.name = name
        self.url = f"http://{HOST}:{port}"
        path = tmp_dir / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        load_config(path)  # a bad config is our bug: fail before starting
        self._out = tmp_dir / f"callgrind-{name}"
        argv = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={self._out}.%p",
            "--dump-line=no",
            *failsoft_argv(path, port),
        ]
        self.server = ServerProcess(name, argv, tmp_dir, src_env())

    def control(self, flag: str) -> None:
        subprocess.run(
            ["callgrind_control", flag, str(self.server.process.pid)],
            check=True,
            capture_output=True,
            timeout=300,
        )

    def instructions_dumped(self) -> int:
        """The instructions of the last dump (callgrind numbers dumps .1, .2, ...)."""
        dumps = sorted(self._out.parent.glob(f"{self._out.name}.*.*"))
        if not dumps:
            raise RuntimeError(f"{self.name}: callgrind wrote no dump")
        text = dumps[-1].read_text(errors="replace")
        found = re.search(r"^summary:\s+(\d+)", text, re.MULTILINE)
        if found is None:
            raise RuntimeError(f"{self.name}: no summary in {dumps[-1].name}")
        return int(found.group(1))


async def send(url: str, body: bytes, requests: int, connections: int) -> int:
    """``requests`` requests over ``connections`` connections; how many were not 200."""
    import aiohttp

    left = requests
    failed = 0
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def connection() -> None:
            nonlocal left, failed
            while left > 0:
                left -= 1
                headers = {"Content-Type": "application/json"}
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    failed += response.status != 200

        await asyncio.gather(*(connection() for _ in range(connections)))
    return failed


def pending_records(gateway: CountedGateway) -> float:
    """Records the prediction log accepted and has not written (read after the dump:
    a scrape costs instructions)."""
    return metric(gateway.url, "failsoft_prediction_log_pending")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument(
        "--candidate",
        choices=list(SELF_BASELINED),
        default="assurance",
        help="drift, or drift and the prediction log (assurance, the default), against "
        "failsoft with neither",
    )
    parser.add_argument("--requests", type=int, default=3000, help="requests counted (3000)")
    parser.add_argument("--warm", type=int, default=300, help="requests before counting (300)")
    parser.add_argument(
        "--connections",
        type=int,
        default=1,
        help="connections at once (1); with more the event loop takes several requests a turn, "
        "as many as the timing allows, and the counts vary with it",
    )
    parser.add_argument(
        "--slowdown",
        type=float,
        default=70.0,
        help="how much slower the gateway runs under callgrind; clock-driven intervals "
        "are stretched by it (70)",
    )
    parser.add_argument("--startup-timeout", type=float, default=900.0)
    args = parser.parse_args(argv)
    if args.requests < 1 or args.connections < 1 or args.slowdown < 1:
        parser.error("--requests, --connections and --slowdown must be at least 1")
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("error: valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    try:
        counts = measure(args)
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    base, candidate = counts["failsoft"], counts[args.candidate]
    print(f"\n{args.requests} requests each, {args.connections} connection(s), under callgrind\n")
    print(f"{'server':12s} {'instructions/request':>22s}")
    for name, total in counts.items():
        print(f"{name:12s} {total / args.requests:22,.0f}")
    ratio = base / candidate
    print(
        f"\ninstruction ratio failsoft/{args.candidate}: {ratio:.3f} "
        f"(the throughput a loop-bound gateway would keep; target >= {DRIFT_TARGET_RATIO})"
    )
    return 0


def measure(args: argparse.Namespace) -> dict[str, int]:
    config_path = prepare_demo(default_data_dir(), progress=lambda m: print(m, flush=True))
    model_path = config_path.parent / "iris-v1.onnx"
    body = iris_body()
    flush_s = min(DRIFT_FLUSH_S * args.slowdown, MAX_INTERVAL_S)
    counts: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="failsoft-instructions-") as tmp:
        tmp_dir = Path(tmp)
        gateways: list[tuple[CountedGateway, str | None]] = []
        try:
            for name, candidate in (("failsoft", None), (args.candidate, args.candidate)):
                port = free_port()
                config = stretched_config(model_path, port, candidate, args.slowdown)
                gateways.append((CountedGateway(name, config, port, tmp_dir), candidate))
            for gateway, _ in gateways:
                url = gateway.url + INFER_PATH
                wait_until_answers(gateway.server, url, body, args.startup_timeout)
                asyncio.run(send(url, body, args.warm, args.connections))
            print("both gateways up under callgrind and warmed", flush=True)
            time.sleep(flush_s + 2)  # what the warm-up left to write and sketch
            for gateway, candidate in gateways:
                gateway.control("-z")
                idle_started = time.monotonic()
                time.sleep(flush_s + 2)
                idle_s = time.monotonic() - idle_started
                gateway.control("-d")
                idle_rate = gateway.instructions_dumped() / idle_s  # timers, metrics, ...
                gateway.control("-z")
                started = time.monotonic()
                failed = asyncio.run(
                    send(gateway.url + INFER_PATH, body, args.requests, args.connections)
                )
                took = time.monotonic() - started
                time.sleep(flush_s + 2)  # the log's last write, drift's last flush
                counted_s = time.monotonic() - started
                gateway.control("-d")
                idle = round(idle_rate * counted_s)
                counts[gateway.name] = gateway.instructions_dumped() - idle
                if candidate == "assurance" and pending_records(gateway):
                    raise RuntimeError("the prediction log had records left to write")
                print(
                    f"{gateway.name}: {args.requests} requests in {took:.0f} s "
                    f"({args.requests / took:.0f}/s), {failed} not 200; "
                    f"{idle:,} instructions of idle work over the {counted_s:.0f} s "
                    "counted, taken off",
                    flush=True,
                )
        finally:
            for gateway, _ in gateways:
                gateway.server.stop(grace_s=60)
    return counts


if __name__ == "__main__":
    sys.exit(main())
