"""Cost of the prediction log: the same gateway with it off and on (sampling 100%).

Starts two `failsoft serve` processes with the configuration of
benchmarks/serve.py (iris v1, in-process onnx) — one without a prediction
log, one with ``predictions.enabled`` at ``sample_rate: 1.0`` — warms both,
then drives both at once, each with the same closed-loop load from a load
process of its own, for several rounds: on a shared machine the neighbours'
load swings from one second to the next, and a paired round weighs on both
alike (``--alternate`` drives them one after the other instead, as
benchmarks/serve.py does). The figure is the median of the rounds' ratios.
Then it stops the logging gateway with SIGTERM and counts the records
in its log files: every answered request must be there, none dropped.

Prints req/s of each, the on/off ratio (target >= 0.9), the gateway's CPU
time per request of each (read from /proc: on a shared machine the
throughput of a closed loop swings with the neighbours, the CPU a request
costs much less), and the log's accepted / written / dropped counts.

    PYTHONPATH=src python benchmarks/prediction_log.py            # 3 rounds of 8 s
    PYTHONPATH=src python benchmarks/prediction_log.py --quick    # 1 round of 3 s
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import signal
import statistics
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _load import (
    REPO,
    LoadResult,
    ServerProcess,
    drive,
    free_port,
    have_wrk,
    iris_body,
    src_env,
    wait_until_answers,
)
from serve import HOST, INFER_PATH, failsoft_argv, failsoft_config, make_check, metric

if str(REPO / "src") not in sys.path:
    sys.path.insert(1, str(REPO / "src"))
from failsoft.config import load_config
from failsoft.data.prediction_log import segment_files
from failsoft.demo import default_data_dir, prepare_demo


def demo_folder() -> Path:
    """The demo's model files; trained only when missing (the cached configuration is
    left as it is: gateways of other checkouts may be reading it)."""
    folder = default_data_dir()
    if not (folder / "iris-v1.onnx").is_file():
        prepare_demo(folder, progress=lambda message: print(message, flush=True))
    return folder


TARGET_RATIO = 0.9


def logging_config(model_path: Path, port: int, on: bool) -> dict[str, Any]:
    config = failsoft_config(model_path, port)
    if on:
        config["predictions"] = {"enabled": True, "sample_rate": 1.0}
    return config


def measure_one(
    server: ServerProcess, url: str, body: bytes, args: argparse.Namespace, tool: str
) -> tuple[LoadResult, float]:
    """One closed-loop run, and the gateway's CPU microseconds per request during it."""
    before = cpu_seconds(server.process.pid)
    result = drive(url, body, connections=args.connections, duration_s=args.duration, tool=tool)
    spent = cpu_seconds(server.process.pid) - before
    return result, spent / max(result.requests, 1) * 1e6


def measure_paired(
    servers: dict[str, ServerProcess],
    urls: dict[str, str],
    body: bytes,
    args: argparse.Namespace,
    tool: str,
) -> dict[str, tuple[LoadResult, float]]:
    """Both gateways driven at once, each by a load process of its own: whatever else
    the machine does in that window weighs on both alike."""
    before = {name: cpu_seconds(server.process.pid) for name, server in servers.items()}
    with concurrent.futures.ProcessPoolExecutor(2) as pool:
        futures = {
            name: pool.submit(
                drive,
                urls[name] + INFER_PATH,
                body,
                connections=args.connections,
                duration_s=args.duration,
                tool=tool,
            )
            for name in servers
        }
        results = {name: future.result() for name, future in futures.items()}
    return {
        name: (
            results[name],
            (cpu_seconds(servers[name].process.pid) - before[name])
            / max(results[name].requests, 1)
            * 1e6,
        )
        for name in servers
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def count_records(directory: Path) -> int:
    total = 0
    for path in segment_files(directory):
        for line in path.read_bytes().splitlines():
            if line.strip():
                orjson.loads(line)  # every line a whole record
                total += 1
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per run")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one round of 3 s")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--load", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--fail-below", type=float, default=None, metavar="RATIO")
    parser.add_argument(
        "--alternate",
        action="store_true",
        help="drive one gateway at a time, off then on (default: both at once, paired)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.rounds = 3.0, 1
    tool = ("wrk" if have_wrk() else "python") if args.load == "auto" else args.load
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    config_path = demo_folder() / "failsoft-demo.yaml"
    model_path = config_path.parent / "iris-v1.onnx"
    body = iris_body()
    servers: dict[str, ServerProcess] = {}
    urls: dict[str, str] = {}
    runs: dict[str, list[LoadResult]] = {"off": [], "on": []}
    cpu_us: dict[str, list[float]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory(prefix="failsoft-predlog-") as tmp:
        tmp_dir = Path(tmp)
        try:
            for name in ("off", "on"):
                port = free_port()
                folder = tmp_dir / name
                folder.mkdir()
                path = folder / "failsoft.yaml"
                path.write_text(
                    yaml.safe_dump(logging_config(model_path, port, name == "on"), sort_keys=False)
                )
                load_config(path)
                servers[name] = ServerProcess(
                    f"failsoft-{name}", failsoft_argv(path, port), folder, src_env()
                )
                urls[name] = f"http://{HOST}:{port}"
            for name, server in servers.items():
                wait_until_answers(
                    server, urls[name] + INFER_PATH, body, 60.0, make_check(name, model_path)
                )
                drive(
                    urls[name] + INFER_PATH,
                    body,
                    connections=args.connections,
                    duration_s=args.warmup,
                    tool=tool,
                )
            for round_no in range(1, args.rounds + 1):
                if args.alternate:
                    measured = {
                        name: measure_one(servers[name], urls[name] + INFER_PATH, body, args, tool)
                        for name in ("off", "on")
                    }
                else:
                    measured = measure_paired(servers, urls, body, args, tool)
                for name in ("off", "on"):
                    result, cpu = measured[name]
                    runs[name].append(result)
                    cpu_us[name].append(cpu)
                    print(
                        f"round {round_no} log {name:>3}: {result.rps:9.1f} req/s  "
                        f"p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:6.2f} ms  "
                        f"errors {result.errors}  cpu {cpu:6.1f} us/request",
                        flush=True,
                    )
            on_url = urls["on"]
            accepted = metric(on_url, "failsoft_prediction_log_accepted_total")
            dropped = metric(on_url, "failsoft_prediction_log_dropped_total")
            answered = metric_sum(on_url, "failsoft_requests_total")
            for name, url in urls.items():
                print(f"answers of log {name}: {codes(url)}")
            servers["on"].stop(grace_s=30.0)  # SIGTERM: the log drains before exit
            written = count_records(tmp_dir / "on" / "failsoft-data" / "predictions")
        finally:
            for server in servers.values():
                server.stop()
    how = "alternating" if args.alternate else "both at once (paired)"
    print(f"\n{args.rounds} round(s), {how}, {tool}, {args.connections} connections each")
    if args.alternate:
        best = {name: max(results, key=lambda r: r.rps) for name, results in runs.items()}
        ratio = best["on"].rps / best["off"].rps
        print(f"best: log off {best['off'].rps:9.1f} req/s, log on {best['on'].rps:9.1f} req/s")
    else:  # each round's ratio is fair: both ran through the same moment of the machine
        ratios = [on.rps / off.rps for off, on in zip(runs["off"], runs["on"], strict=True)]
        ratio = statistics.median(ratios)
        print("throughput ratio on/off per round: " + ", ".join(f"{r:.3f}" for r in ratios))
    print(f"ratio on/off: {ratio:.3f} (target >= {TARGET_RATIO})")
    cpu_ratios = [off / on for off, on in zip(cpu_us["off"], cpu_us["on"], strict=True)]
    print(
        f"gateway CPU per request, median: off {statistics.median(cpu_us['off']):.1f} us, "
        f"on {statistics.median(cpu_us['on']):.1f} us; ratio off/on per round "
        + ", ".join(f"{r:.3f}" for r in cpu_ratios)
        + f" (median {statistics.median(cpu_ratios):.3f})"
    )
    print(
        f"log: answered {answered:.0f}, accepted {accepted:.0f}, dropped {dropped:.0f}, "
        f"records on disk after SIGTERM {written}"
    )
    failed = False
    if dropped or written != int(accepted) or written < int(answered):
        print("error: records were dropped or lost", file=sys.stderr)
        failed = True
    if any(r.errors for results in runs.values() for r in results):
        print("error: some requests failed; the numbers are not valid", file=sys.stderr)
        failed = True
    if args.fail_below is not None and ratio < args.fail_below:
        print(f"error: ratio {ratio:.3f} is below {args.fail_below}", file=sys.stderr)
        failed = True
    return 1 if failed else 0


def codes(url: str) -> dict[str, float]:
    """Inference answers by status code."""
    found: dict[str, float] = {}
    with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("failsoft_requests_total{"):
                code = line.split('code="', 1)[1].split('"', 1)[0]
                found[code] = found.get(code, 0) + float(line.rsplit(" ", 1)[1])
    return found


def metric_sum(url: str, name: str) -> float:
    """The sum of a family's samples (every label set)."""
    total = 0.0
    with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                total += float(line.rsplit(" ", 1)[1])
    return total


if __name__ == "__main__":
    sys.exit(main())
