"""Autoscaled process workers under a 3x step in load: scale-up time, sheds, p99 recovery.

Starts a real gateway (``failsoft serve`` on loopback) whose model runs in
autoscaled ``process`` workers (``min_replicas`` 1) and offers it open-loop
load: ``--rate`` requests/s for ``--baseline`` seconds, then 3x that for
``--step`` seconds. The admin status is polled every 50 ms for the running
workers and the limiter's shed count. Figures:

- time to scale: from the step to the second worker in rotation (it passed
  its golden probe);
- sheds before the scale-up decision and in the whole run (503s counted by
  the client, and by the limiter);
- p99 recovery: the first second after the step from which on the p99 of
  every 5 s window (one starting each second) stays under max(2x, +20 ms) of
  the baseline p99 (over 1 s, 60 calls, a "p99" is the single worst call);
- the most workers running, which for ``--model cpu`` (a CPU-bound model)
  must not exceed the cores.

``--model io`` (default): each call waits 20 ms on "I/O", so a worker serves
~50/s and more workers add capacity on two cores. ``--model cpu``: each call
spins 20 ms of CPU; the run checks the workers never outnumber the cores.
``--cpu-bound`` declares it (a hard cap); without it the policy must find
out by measuring that another worker added no throughput.

    python benchmarks/autoscale.py                      # io, 20/s -> 60/s, 10 s + 40 s
    python benchmarks/autoscale.py --model cpu --rate 40 --step 30
    python benchmarks/autoscale.py --json
    python benchmarks/autoscale.py --quick              # the CI form, 6 s + 16 s
    python benchmarks/autoscale.py --drop 30 --down-cooldown 10   # then back to 20/s

Exit 0 when the targets are met (io: scaled up before any shed, p99 back
under 2x baseline within 30 s; cpu: never more workers than cores), 1 when
missed, 2 on a setup failure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from failsoft.drills.experiment import Load
from failsoft.drills.load import Outcomes, Schedule, run_load
from failsoft.drills.server import ServerProcess

REPO = Path(__file__).resolve().parents[1]
TOKEN = "autoscale-bench-admin-token"
MODEL = "scaled"
ROW = [6.0, 2.7, 5.1, 1.6]  # label 1 (petal length >= 2.5)
POLL_S = 0.05
WINDOW_S = 5.0  # a p99 over 1 s (60 calls) is the worst call; over 5 s, the 3rd worst
RECOVERY_TARGET_S = 30.0


def config_text(model: str, cpu_bound: bool, max_replicas: int, down_cooldown_s: float) -> str:
    function = "io_wait" if model == "io" else "cpu_spin"
    return f"""
models:
  {MODEL}:
    inputs:  [{{name: x, datatype: FP32, shape: [-1, 4]}}]
    outputs: [{{name: label, datatype: INT64, shape: [-1]}}]
    timeout_ms: 10000
    # A standby worker is admitted within ~1 s of the step; should it be missing, the
    # queue absorbs the step while one starts (1-2 s): a waiter is shed after 3 s only.
    limiter: {{queue_timeout_ms: 3000, standing_timeout_rtts: 0, queue_size: 1024}}
    # A worker added under load takes its share within a second, not the default 10 s.
    balancer: {{slow_start_ms: 1000}}
    health_check:
      interval_ms: 500
      inputs: {{x: [{ROW}]}}
      expect: {{label: [1]}}
    versions:
      v1:
        backend: process
        startup_timeout_s: 30
        worker: {{backend: python, function: "benchmarks._autoscale_models:{function}"}}
        autoscale:
          min_replicas: 1
          window_s: 0.5
          max_replicas: {max_replicas}
          down_cooldown_s: {down_cooldown_s:g}
          cpu_bound: {str(cpu_bound).lower()}
"""


@dataclass
class StepFigures:
    model: str
    rate: float
    baseline_s: float
    step_s: float
    drop_s: float  # back at the baseline rate after the step
    baseline_p99_ms: float
    scale_up_s: float | None  # from the step to the second worker in rotation
    sheds_before_scale_up: int  # 503s sent before the second worker was in rotation
    sheds_total: int
    limiter_sheds: int
    p99_recovery_s: float | None  # from the step
    p99_after_ms: float  # p99 over the step's last 10 s
    window_p99_ms: list[float]  # p99 of the WINDOW_S window starting each second of the step
    max_workers: int
    step_end_workers: int
    scale_down_s: float | None  # from the drop to the first worker taken out of rotation
    end_workers: int
    cores: int
    requests: int
    failed: int  # neither 200 nor a shed 503


def _load(rate: float, seconds: float) -> Load:
    return Load.model_validate(
        {
            "model": MODEL,
            "rate": rate,
            "duration_s": seconds,
            "timeout_ms": 10_000,
            "requests": [
                {
                    "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": ROW}],
                    "expect": {"label": [1]},
                }
            ],
        }
    )


async def _poll(
    url: str, stop: asyncio.Event, seen: list[tuple[float, int, int]], http: httpx.AsyncClient
) -> None:
    """(perf_counter, workers in rotation, limiter sheds) every POLL_S until ``stop``."""
    while not stop.is_set():
        try:
            status = (
                await http.get(f"{url}/admin/status", headers={"Authorization": f"Bearer {TOKEN}"})
            ).json()
            model = status["models"][MODEL]
            replicas = model["versions"]["v1"]["replicas"]
            running = sum(bool(r["available"] and r["healthy"]) for r in replicas)
            shed = sum(model["limiter"]["shed"].values())
            seen.append((time.perf_counter(), running, shed))
            if os.environ.get("AUTOSCALE_TRACE"):
                limiter = model["limiter"]
                print(
                    f"{time.perf_counter():.2f} run={running} limit={limiter['limit']} "
                    f"in_flight={limiter['in_flight']} "
                    f"waiting={sum(limiter['waiting'].values())} shed={shed} "
                    f"rtt={limiter['short_rtt_ms']} min={limiter['min_rtt_ms']}",
                    file=sys.stderr,
                )
        except (httpx.HTTPError, KeyError, ValueError):
            pass
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), POLL_S)


async def _drive(
    url: str, rate: float, baseline_s: float, step_s: float, drop_s: float
) -> tuple[Schedule, list[Outcomes], list[tuple[float, int, int]]]:
    schedule = Schedule.soon(0.2)
    step = Schedule(schedule.clock + baseline_s, schedule.wall + baseline_s)
    seen: list[tuple[float, int, int]] = []
    stop = asyncio.Event()
    async with httpx.AsyncClient(timeout=5.0) as http:
        poller = asyncio.create_task(_poll(url, stop, seen, http))
        base, extra = await asyncio.gather(
            run_load(url, _load(rate, baseline_s + step_s + drop_s), schedule=schedule),
            run_load(url, _load(2 * rate, step_s), schedule=step, seed=1),
        )
        stop.set()
        await poller
    return schedule, [base, extra], seen


def _p99_ms(latencies: np.ndarray) -> float:
    return float(np.percentile(latencies, 99) * 1000) if len(latencies) else math.nan


def figures(
    model: str,
    rate: float,
    baseline_s: float,
    step_s: float,
    schedule: Schedule,
    loads: list[Outcomes],
    seen: list[tuple[float, int, int]],
    cores: int,
    drop_s: float = 0.0,
) -> StepFigures:
    # Every request on one time line: seconds since the baseline load started.
    sent = np.concatenate([loads[0].offsets, loads[1].offsets + baseline_s])
    latency = np.concatenate([loads[0].latency_s, loads[1].latency_s])
    status = np.concatenate([loads[0].status, loads[1].status])
    ok = status == 200
    shed = status == 503
    warm = 2.0  # the first seconds load the pools and the limiter's first RTTs
    base = ok & (sent >= warm) & (sent < baseline_s)
    baseline_p99 = _p99_ms(latency[base])
    scaled_at = next(
        (at - schedule.clock for at, running, _ in seen if running >= 2 and at > schedule.clock),
        None,
    )
    scale_up_s = scaled_at - baseline_s if scaled_at is not None else None
    before = sent < (scaled_at if scaled_at is not None else math.inf)
    bound = max(2 * baseline_p99, baseline_p99 + 20.0)
    end = baseline_s + step_s
    # p99 of each WINDOW_S window, one starting every second of the step.
    windows = []
    for second in range(int(step_s - WINDOW_S) + 1):
        start = baseline_s + second
        window = ok & (sent >= start) & (sent < start + WINDOW_S)
        windows.append(_p99_ms(latency[window]) if window.sum() else math.inf)
    # Recovered at the first window from which on every window is under the bound.
    recovery = None
    for second in range(len(windows)):
        if all(p99 < bound for p99 in windows[second:]):
            recovery = float(second)
            break
    tail = ok & (sent >= end - min(10.0, step_s / 2)) & (sent < end)
    at_end = [(at - schedule.clock, running) for at, running, _ in seen]
    at_drop = next((r for t, r in reversed(at_end) if t < end), 0)  # workers as the step ends
    scale_down_s = next(
        (t - end for t, running in at_end if t >= end and 0 < running < at_drop), None
    )
    return StepFigures(
        model=model,
        rate=rate,
        baseline_s=baseline_s,
        step_s=step_s,
        drop_s=drop_s,
        baseline_p99_ms=round(baseline_p99, 1),
        scale_up_s=round(scale_up_s, 2) if scale_up_s is not None else None,
        sheds_before_scale_up=int((shed & before).sum()),
        sheds_total=int(shed.sum()),
        limiter_sheds=max((s for _, _, s in seen), default=0),
        p99_recovery_s=recovery,
        p99_after_ms=round(_p99_ms(latency[tail]), 1),
        window_p99_ms=[round(p99, 1) for p99 in windows],
        max_workers=max((r for _, r, _ in seen), default=0),
        step_end_workers=at_drop,
        scale_down_s=round(scale_down_s, 2) if scale_down_s is not None else None,
        end_workers=at_end[-1][1] if at_end else 0,
        cores=cores,
        requests=len(sent),
        failed=int((~ok & ~shed).sum()),
    )


def run_step(
    directory: Path,
    *,
    model: str = "io",
    rate: float = 20.0,
    baseline_s: float = 10.0,
    step_s: float = 40.0,
    cpu_bound: bool = False,
    max_replicas: int = 4,
    drop_s: float = 0.0,
    down_cooldown_s: float = 60.0,
) -> StepFigures:
    """Start a gateway in ``directory``, drive the step, stop it; the figures."""
    from failsoft.backends.autoscale import usable_cores

    path = directory / "failsoft.yaml"
    path.write_text(config_text(model, cpu_bound, max_replicas, down_cooldown_s))
    env = {
        "PYTHONPATH": os.pathsep.join(
            [str(REPO), str(REPO / "src"), os.environ.get("PYTHONPATH", "")]
        ),
        "FAILSOFT_ADMIN_TOKEN": TOKEN,
    }
    with ServerProcess(path, env=env) as server:
        url = server.url.rstrip("/")
        schedule, loads, seen = asyncio.run(_drive(url, rate, baseline_s, step_s, drop_s))
        if os.environ.get("AUTOSCALE_TRACE"):
            lines = list(server.logs)
            while not server._lines.empty():
                lines.append(server._lines.get_nowait())
            for line in lines:
                if "scal" in str(line.get("msg")) or "health" in str(line.get("msg")):
                    print(line, file=sys.stderr)
    return figures(model, rate, baseline_s, step_s, schedule, loads, seen, usable_cores(), drop_s)


def met(found: StepFigures) -> bool:
    if found.model == "cpu":
        return found.max_workers <= found.cores
    return (
        found.scale_up_s is not None
        and found.sheds_before_scale_up == 0
        and found.p99_recovery_s is not None
        and found.p99_recovery_s <= RECOVERY_TARGET_S
    )


def _print(found: StepFigures) -> None:
    print(
        f"autoscale step: model {found.model}, {found.rate:g}/s for {found.baseline_s:g} s, "
        f"then {3 * found.rate:g}/s for {found.step_s:g} s ({found.requests} requests)"
    )
    scale = f"{found.scale_up_s:.2f} s" if found.scale_up_s is not None else "never"
    recovery = f"{found.p99_recovery_s:g} s" if found.p99_recovery_s is not None else "never"
    rows: list[tuple[str, Any]] = [
        ("baseline p99", f"{found.baseline_p99_ms:.1f} ms"),
        ("time to scale (step -> 2nd worker in rotation)", scale),
        ("sheds before the scale-up", found.sheds_before_scale_up),
        (
            "sheds in the whole run (client / limiter)",
            f"{found.sheds_total} / {found.limiter_sheds}",
        ),
        ("p99 (5 s windows) back under max(2x, +20 ms) after", recovery),
        (
            "p99 of the 5 s windows of the step (ms)",
            " ".join(f"{p:.0f}" for p in found.window_p99_ms),
        ),
        ("p99 over the last 10 s of the step", f"{found.p99_after_ms:.1f} ms"),
        (
            "ratio p99 end of step / baseline",
            f"{found.p99_after_ms / found.baseline_p99_ms:.2f}",
        ),
        ("most workers running (cores)", f"{found.max_workers} ({found.cores})"),
        (
            f"workers: end of step; after the drop to {found.rate:g}/s (first out after)",
            f"{found.step_end_workers}; {found.end_workers} "
            f"({found.scale_down_s if found.scale_down_s is not None else '-'} s)",
        ),
        ("failed (not 200, not shed)", found.failed),
    ]
    for name, value in rows:
        print(f"  {name:<50} {value}")
    print(f"  target: {'met' if met(found) else 'MISSED'}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="example: python benchmarks/autoscale.py --model io --rate 20 --step 40",
    )
    parser.add_argument("--model", choices=["io", "cpu"], default="io")
    parser.add_argument("--rate", type=float, default=20.0, help="baseline requests/s")
    parser.add_argument("--baseline", type=float, default=10.0, help="seconds at the baseline")
    parser.add_argument("--step", type=float, default=40.0, help="seconds at 3x the baseline")
    parser.add_argument("--cpu-bound", action="store_true", help="declare the model CPU-bound")
    parser.add_argument("--max-replicas", type=int, default=4)
    parser.add_argument(
        "--drop", type=float, default=0.0, help="seconds back at the baseline after the step"
    )
    parser.add_argument(
        "--down-cooldown", type=float, default=60.0, help="autoscale.down_cooldown_s"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--quick", action="store_true", help="the CI form: 6 s + 16 s")
    args = parser.parse_args()
    if args.quick:
        args.baseline, args.step = 6.0, 16.0
    if args.rate <= 0 or args.baseline < 3 or args.step < 5 or not 1 <= args.max_replicas <= 64:
        parser.error("--rate must be > 0, --baseline >= 3, --step >= 5, --max-replicas 1..64")
    if args.drop < 0 or args.down_cooldown <= 0:
        parser.error("--drop must be >= 0 and --down-cooldown > 0 (seconds)")
    with tempfile.TemporaryDirectory(prefix="failsoft-autoscale-") as scratch:
        try:
            found = run_step(
                Path(scratch),
                model=args.model,
                rate=args.rate,
                baseline_s=args.baseline,
                step_s=args.step,
                cpu_bound=args.cpu_bound,
                drop_s=args.drop,
                down_cooldown_s=args.down_cooldown,
                max_replicas=args.max_replicas,
            )
        except Exception as error:  # a setup failure: say what, exit 2
            print(f"autoscale: setup failed: {error}", file=sys.stderr)
            return 2
    if args.json:
        print(json.dumps(asdict(found), indent=2))
    else:
        _print(found)
    return 0 if met(found) else 1


if __name__ == "__main__":
    sys.exit(main())
