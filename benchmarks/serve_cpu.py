"""CPU a request, thread by thread, of the gateway with drift and the prediction log on or off.

Where `serve.py --candidate assurance` loses its throughput: starts one
`failsoft serve` per variant (the demo's iris model, configured as serve.py
configures it: `off` with neither, `drift`, `log` at a sampling rate of 100%,
`both`), checks each answers correctly, warms them up, then drives them in
interleaved rounds (wrk -t1 -c16, or the Python load driver) and reads the
CPU times of every thread of each gateway and of its child processes (the
log's writer) from /proc before and after. Prints per variant the requests a
second and the microseconds of CPU a request: the event loop's thread (user,
system), the gateway's other threads, its children; the loop's thread's minor
page faults a request; then the ratios to `off`
measured in the same run, for CPU a request (off/variant: what a gateway
bound by its loop's thread would keep) and for throughput (variant/off).

    PYTHONPATH=src python benchmarks/serve_cpu.py                      # 8 rounds of 4 s
    PYTHONPATH=src python benchmarks/serve_cpu.py --variants off,drift --rounds 12

Linux only (/proc). Between runs of one commit on a 2-core virtual machine a
variant's CPU a request moved by 2-4 us (of ~145): compare variants within a
run, not across runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _load import REPO, ServerProcess, drive, free_port, have_wrk, iris_body, wait_until_answers
from serve import HOST, INFER_PATH, failsoft_server, make_check

if str(REPO / "src") not in sys.path:
    sys.path.insert(1, str(REPO / "src"))
from failsoft.demo import default_data_dir, prepare_demo

VARIANTS = {  # name: (drift, prediction log)
    "off": (False, False),
    "drift": (True, False),
    "log": (False, True),
    "both": (True, True),
}
TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")

Times = dict[tuple[int, int], tuple[int, int, int]]  # (pid, tid) -> user, system ticks; faults


@dataclass
class Variant:
    name: str
    server: ServerProcess
    url: str
    requests: int = 0
    seconds: float = 0.0
    before: Times = field(default_factory=dict)


def thread_times(pid: int) -> Times:
    """Every thread of ``pid`` and of its children (one level: the writer process)."""
    times: Times = {}
    pids = [pid]
    for tid in _tasks(pid):
        try:
            pids += [int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
        except OSError:
            continue
    for process in pids:
        for tid in _tasks(process):
            try:
                stat = Path(f"/proc/{process}/task/{tid}/stat").read_text()
            except OSError:
                continue  # ended meanwhile
            fields = stat[stat.rindex(")") + 2 :].split()
            times[(process, tid)] = (int(fields[11]), int(fields[12]), int(fields[7]))
    return times


def _tasks(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


def per_request(variant: Variant, after: Times) -> dict[str, float]:
    """Microseconds of CPU a request: the loop's thread (user, system), other threads,
    children; and the loop's thread's minor page faults a request."""
    pid = variant.server.process.pid
    parts = {"loop user": 0.0, "loop sys": 0.0, "threads": 0.0, "children": 0.0}
    faults = 0
    for key, (user, system, minor) in after.items():
        user0, system0, minor0 = variant.before.get(key, (0, 0, 0))
        spent_user, spent_system = (user - user0) * TICK_S, (system - system0) * TICK_S
        process, tid = key
        if process == pid and tid == pid:
            faults = minor - minor0
            parts["loop user"] += spent_user
            parts["loop sys"] += spent_system
        elif process == pid:
            parts["threads"] += spent_user + spent_system
        else:
            parts["children"] += spent_user + spent_system
    requests = max(variant.requests, 1)
    costs = {name: seconds / requests * 1e6 for name, seconds in parts.items()}
    return costs | {"faults": faults / requests}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--variants",
        default="off,drift,log,both",
        help=f"comma-separated, from {', '.join(VARIANTS)}; off is always measured",
    )
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per round")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--warmup", type=float, default=3.0)
    args = parser.parse_args(argv)
    names = ["off", *(v for v in args.variants.split(",") if v and v != "off")]
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    if args.rounds < 1 or args.duration <= 0:
        parser.error("--rounds must be at least 1 and --duration above 0")
    if not Path("/proc/self/task").is_dir():
        print("error: this benchmark reads /proc (Linux only)", file=sys.stderr)
        return 2
    tool = "wrk" if have_wrk() else "python"
    config_path = prepare_demo(default_data_dir(), progress=lambda m: print(m, flush=True))
    model_path = config_path.parent / "iris-v1.onnx"
    body = iris_body()
    variants: list[Variant] = []
    with tempfile.TemporaryDirectory(prefix="failsoft-cpu-") as tmp:
        try:
            for name in names:
                drift, log = VARIANTS[name]
                port = free_port()
                server = failsoft_server(name, model_path, port, Path(tmp), drift=drift, log=log)
                variants.append(Variant(name, server, f"http://{HOST}:{port}{INFER_PATH}"))
            for variant in variants:
                check = make_check(variant.name, model_path)
                wait_until_answers(variant.server, variant.url, body, 60.0, check)
                drive(variant.url, body, connections=args.connections, duration_s=args.warmup)
            for variant in variants:
                variant.before = thread_times(variant.server.process.pid)
            for round_no in range(1, args.rounds + 1):
                line = []
                for variant in variants:
                    result = drive(
                        variant.url,
                        body,
                        connections=args.connections,
                        duration_s=args.duration,
                        tool=tool,
                    )
                    if result.errors:
                        raise RuntimeError(f"{variant.name}: {result.errors} requests failed")
                    variant.requests += result.requests
                    variant.seconds += result.duration_s
                    line.append(f"{variant.name} {result.rps:,.0f}")
                print(f"round {round_no}: " + ", ".join(line) + " req/s", flush=True)
            costs = {v.name: per_request(v, thread_times(v.server.process.pid)) for v in variants}
        except RuntimeError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        finally:
            for variant in variants:
                variant.server.stop()
    report(variants, costs, args, tool)
    return 0


def report(
    variants: list[Variant],
    costs: dict[str, dict[str, float]],
    args: argparse.Namespace,
    tool: str,
) -> None:
    print(
        f"\n{tool}, {args.connections} connections, {args.rounds} interleaved rounds of "
        f"{args.duration:g} s; microseconds of CPU a request"
    )
    header = ["variant", "req/s", "loop user", "loop sys", "threads", "children", "total"]
    print("".join(f"{h:>11}" for h in header) + "   cpu ratio   req/s ratio   faults")
    off = variants[0]
    off_total = _total(costs["off"])
    off_rps = off.requests / off.seconds
    for variant in variants:
        cost = costs[variant.name]
        total = _total(cost)
        rps = variant.requests / variant.seconds
        cells = [f"{variant.name:>11}", f"{rps:>11,.0f}"]
        cells += [f"{cost[part]:>11.1f}" for part in ("loop user", "loop sys", "threads")]
        cells += [f"{cost['children']:>11.1f}", f"{total:>11.1f}"]
        ratios = f"   {off_total / total:>9.3f}   {rps / off_rps:>11.3f}"
        print("".join(cells) + ratios + f"   {cost['faults']:>6.3f}")


def _total(cost: dict[str, float]) -> float:
    return sum(value for name, value in cost.items() if name != "faults")


if __name__ == "__main__":
    sys.exit(main())
