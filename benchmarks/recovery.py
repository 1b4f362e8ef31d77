"""Recovery from a total outage: failsoft against HAProxy, in front of the same upstreams.

Starts three upstream replicas, each its own process (benchmarks/_control_upstream.py:
uvicorn + a plain ASGI app answering the V2 route of an iris-like model with a
fixed answer, label 0; every route answers 500 while a shared switch file
exists), and in front of all three, on free loopback ports:

- ``failsoft``: ``failsoft serve`` with an ``http`` version over the three
  replicas, the demo's 1 s deadline (``timeout_ms: 1000``) and golden health
  check (the setosa row, expect label 0), every resilience option at its
  default;
- ``haproxy``: a typical configuration with health checks: roundrobin,
  ``option httpchk GET /v2/models/iris/ready`` with ``inter 1s fall 3 rise 2``
  (HAProxy's own defaults for inter, fall and rise written out), ``retries 3``
  and ``option redispatch``, ``timeout connect 1s`` and ``timeout server 1s``
  (failsoft's deadline), one thread, keep-alive (skipped when not installed).

Both get the same open-loop load at the same time, RATE (50) requests/s each,
from one Python asyncio + aiohttp driver (failsoft.drills.load's
send_on_schedule), and live through the same faults at the same instants:

(a) outage: after a warm-up, all three replicas answer 500 for 10 s (the
    switch file is created), then heal at once (it is removed);
(b) crash: after a warm-up, all three replicas are SIGKILLed, and started
    again (same ports) 5 s later.

Each scenario round starts fresh gateways and upstreams, so state from one
fault does not carry over. For each gateway it counts the requests sent at
or after the heal (a) or restart (b) instant that failed: any status but 200,
a 200 with ``Failsoft-Degraded: true``, a reset, a timeout (5 s). It also
reports the time from that instant to the first good answer and to the last
failure, and in (b) how many failures fall after the instant all three
replicas answered their ready route again (polled every 10 ms from the
driver); before that no gateway can succeed.

Targets (failsoft): (a) at most 5 requests failed or degraded after the heal;
(b) no more failures after the restart than HAProxy. Exit 0 when met, 1 when
one is missed (or HAProxy is missing for (b)), 2 on a setup failure.

    python benchmarks/recovery.py                 # 2 rounds of each scenario (about 3 minutes)
    python benchmarks/recovery.py --quick         # 1 round, shorter warm-up and tail (~1 minute)
    python benchmarks/recovery.py --quick --scenario outage --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _control_upstream import EXPECTED_LABEL, INFER_PATH, MODEL, READY_PATHS, REQUEST
from _load import (
    REPO,
    ServerProcess,
    free_port,
    run_async,
    send_on_schedule,
    src_env,
    wait_until_answers,
)

if str(REPO / "src") not in sys.path:
    sys.path.insert(1, str(REPO / "src"))
from failsoft.config import ConfigError, load_config

HOST = "127.0.0.1"
REPLICAS = 3
RATE = 50.0  # requests/s to each gateway
CLIENT_TIMEOUT_S = 5.0
DEADLINE_MS = 1000  # failsoft's timeout_ms (the demo's); HAProxy's timeout server
OUTAGE_S = 10.0  # scenario (a): all replicas answer 500 this long
DOWN_S = 5.0  # scenario (b): all replicas dead this long
TARGET_OUTAGE_FAILED = 5  # (a): failsoft's failed or degraded requests after the heal
FAILSOFT, HAPROXY = "failsoft", "haproxy"
OUTAGE, CRASH = "outage", "crash"
CONTROL_UPSTREAM = Path(__file__).with_name("_control_upstream.py")

# Outcomes that are not an HTTP status.
DISCONNECTED = -2  # refused, reset or closed before the whole answer
TIMED_OUT = -3
CLIENT_ERROR = -5
UNFINISHED = -6  # still running when the run ended
OUTCOME_NAMES = {
    DISCONNECTED: "refused/reset",
    TIMED_OUT: "client timeout",
    CLIENT_ERROR: "client error",
    UNFINISHED: "unfinished",
}


# --- the gateways' configurations -----------------------------------------------------


def failsoft_config(upstream_urls: Sequence[str]) -> dict[str, Any]:
    """The demo's iris model over three http replicas; every resilience option at its default."""
    return {
        "models": {
            MODEL: {
                "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}],
                "outputs": [
                    {"name": "label", "datatype": "INT64", "shape": [-1], "labels": [0, 1, 2]},
                    {
                        "name": "probabilities",
                        "datatype": "FP32",
                        "shape": [-1, 3],
                        "range": [0, 1],
                    },
                ],
                "versions": {"v1": {"backend": "http", "urls": list(upstream_urls)}},
                "timeout_ms": DEADLINE_MS,
                "health_check": {
                    "inputs": {"features": [[5.1, 3.5, 1.4, 0.2]]},
                    "expect": {"label": EXPECTED_LABEL},
                },
            }
        }
    }


def haproxy_config(upstream_ports: Sequence[int], port: int) -> str:
    servers = "\n".join(f"    server r{i} {HOST}:{p} check" for i, p in enumerate(upstream_ports))
    return f"""global
    nbthread 1
    maxconn 4096

defaults
    mode http
    timeout connect 1s
    timeout client 30s
    timeout server {DEADLINE_MS}ms
    timeout check 1s
    timeout http-keep-alive 30s
    option http-keep-alive
    retries 3
    option redispatch

frontend gateway
    bind {HOST}:{port}
    default_backend replicas

backend replicas
    balance roundrobin
    option httpchk GET {READY_PATHS[0]}
    default-server inter 1s fall 3 rise 2
{servers}
"""


# --- load: two gateways at RATE each, faults at set instants --------------------------


@dataclass
class Records:
    """Every scheduled request to one gateway, in schedule order (perf_counter times)."""

    sent: np.ndarray  # when the driver sent it (nan: never)
    done: np.ndarray  # when the answer (or error) arrived
    status: np.ndarray  # HTTP status, or one of the negative outcomes above
    degraded: np.ndarray  # Failsoft-Degraded: true

    @property
    def failed(self) -> np.ndarray:
        return np.asarray((self.status != 200) | self.degraded)


async def _drive(
    urls: dict[str, str],
    duration_s: float,
    actions: Sequence[tuple[float, Callable[[], None]]],
) -> tuple[dict[str, Records], list[float]]:
    """RATE requests/s to each URL for ``duration_s``; ``actions`` run at their offsets."""
    import aiohttp

    names = list(urls)
    per_target = round(RATE * duration_s)
    offsets, owner, slot = [], [], []
    for number, name in enumerate(names):
        phase = number / (len(names) * RATE)  # interleave the gateways' sends
        for index in range(per_target):
            offsets.append(phase + index / RATE)
            owner.append(name)
            slot.append(index)
    order = np.argsort(offsets, kind="stable")
    offsets = [offsets[i] for i in order]
    owner = [owner[i] for i in order]
    slot = [slot[i] for i in order]
    records = {
        name: Records(
            np.full(per_target, np.nan),
            np.full(per_target, np.nan),
            np.full(per_target, UNFINISHED, dtype=np.int32),
            np.zeros(per_target, dtype=bool),
        )
        for name in names
    }
    lags = np.zeros(len(offsets))
    clock = time.perf_counter
    headers = {"content-type": "application/json"}
    timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_S)
    # Idle connections close before uvicorn's 5 s keep-alive does (failsoft is on uvicorn).
    sessions = {
        name: aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=64, keepalive_timeout=3.0),
            timeout=timeout,
            skip_auto_headers=("User-Agent",),
        )
        for name in names
    }
    try:

        async def one(name: str, index: int) -> None:
            record = records[name]
            code = UNFINISHED  # if cancelled at the end of the run
            try:
                async with sessions[name].post(urls[name], data=REQUEST, headers=headers) as answer:
                    await answer.read()
                    code = answer.status
                    record.degraded[index] = (
                        answer.headers.get("Failsoft-Degraded", "").lower() == "true"
                    )
            except TimeoutError:
                code = TIMED_OUT
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError):
                code = DISCONNECTED
            except aiohttp.ClientError:
                code = CLIENT_ERROR
            finally:
                record.status[index] = code
                record.done[index] = clock()

        def launch(position: int, _origin: float) -> Coroutine[Any, Any, None]:
            name, index = owner[position], slot[position]
            records[name].sent[index] = clock()
            return one(name, index)

        loop = asyncio.get_running_loop()
        start = clock() + 0.05
        wall_start = loop.time() + (start - clock())
        for delay_s, action in actions:
            loop.call_at(wall_start + delay_s, action)
        await send_on_schedule(offsets, start, clock, lags, launch, CLIENT_TIMEOUT_S + 1.0)
    finally:
        for session in sessions.values():
            await session.close()
    return records, sorted(lags.tolist())


async def _poll_ready(urls: Sequence[str], seen: list[float], give_up_s: float) -> None:
    """Append when each URL first answers 200 (every 10 ms), until all did or ``give_up_s``."""
    import aiohttp

    pending = set(urls)
    stop = time.perf_counter() + give_up_s
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.5)) as session:
        while pending and time.perf_counter() < stop:
            for url in list(pending):
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(url) as response:
                        if response.status == 200:
                            seen.append(time.perf_counter())
                            pending.discard(url)
            await asyncio.sleep(0.01)


# --- one round of one scenario --------------------------------------------------------


@dataclass
class Outcome:
    """One gateway in one round: what happened after the heal/restart instant."""

    gateway: str
    scenario: str
    round: int
    sent_after: int  # requests sent at or after the instant
    failed_after: int  # ... that failed or were degraded
    degraded_after: int
    failed_after_ready: int  # ... sent once all replicas answered their ready route again
    first_ok_s: float  # from the instant to the first good answer to a request sent after it
    last_failure_s: float  # from the instant to the send of the last failed request after it
    failed_during: int  # failed while the fault lasted (information)
    sent_during: int
    failed_before: int  # failed during the warm-up, up to 1 s before the fault (should be 0)
    kinds: dict[str, int]  # how the requests after the instant failed
    kinds_before: dict[str, int]  # how the warm-up failures failed
    still_failing_at_end: bool  # the last second of the run had failures: counts are low bounds


def failure_kinds(record: Records, mask: np.ndarray) -> dict[str, int]:
    """How the requests in ``mask`` failed: {"HTTP 503": n, "refused/reset": n, ...}."""
    kinds: dict[str, int] = {}
    for status in record.status[mask & ~record.degraded]:
        key = OUTCOME_NAMES.get(int(status), f"HTTP {int(status)}")
        kinds[key] = kinds.get(key, 0) + 1
    if (mask & record.degraded).any():
        kinds["degraded 200"] = int((mask & record.degraded).sum())
    return kinds


def analyse(
    name: str,
    scenario: str,
    round_no: int,
    record: Records,
    fault_at: float,
    back_at: float,
    ready_at: float,
    run_end: float,
) -> Outcome:
    sent = record.sent
    failed = record.failed
    after = sent >= back_at
    during = (sent >= fault_at) & ~after
    # Requests sent within a deadline before the fault may meet it: neither warm-up nor fault.
    before = sent < fault_at - DEADLINE_MS / 1000.0
    good_after = after & ~failed
    first_ok = float(np.nanmin(record.done[good_after]) - back_at) if good_after.any() else math.nan
    bad_after = after & failed
    last_failure = float(np.nanmax(sent[bad_after]) - back_at) if bad_after.any() else math.nan
    return Outcome(
        gateway=name,
        scenario=scenario,
        round=round_no,
        sent_after=int(after.sum()),
        failed_after=int(bad_after.sum()),
        degraded_after=int((bad_after & record.degraded).sum()),
        failed_after_ready=int((bad_after & (sent >= ready_at)).sum()),
        first_ok_s=first_ok,
        last_failure_s=last_failure,
        failed_during=int((during & failed).sum()),
        sent_during=int(during.sum()),
        failed_before=int((before & failed).sum()),
        kinds=failure_kinds(record, bad_after),
        kinds_before=failure_kinds(record, before & failed),
        still_failing_at_end=bool((bad_after & (sent >= run_end - 1.0)).any()),
    )


@dataclass
class Phases:
    warm_s: float
    tail_s: float  # after the heal / restart


class Round:
    """Upstreams, failsoft and HAProxy for one scenario round; stop() ends them all."""

    def __init__(self, tmp: Path, startup_timeout_s: float) -> None:
        self.tmp = tmp
        self.servers: list[ServerProcess] = []
        self.timeout_s = startup_timeout_s
        self.fail_file = tmp / "fail"
        ports: set[int] = set()
        while len(ports) < REPLICAS + 2:
            ports.add(free_port(HOST))
        *self.upstream_ports, self.failsoft_port, self.haproxy_port = sorted(ports)
        self.upstream_urls = [f"http://{HOST}:{p}" for p in self.upstream_ports]
        self.upstreams: list[ServerProcess] = []
        self.urls: dict[str, str] = {}

    def upstream_argv(self, index: int) -> list[str]:
        return [
            sys.executable,
            str(CONTROL_UPSTREAM),
            "--host",
            HOST,
            "--port",
            str(self.upstream_ports[index]),
            "--fail-file",
            str(self.fail_file),
            "--name",
            f"r{index}",
        ]

    def start_upstreams(self, generation: int = 0) -> None:
        self.upstreams = []
        for index in range(REPLICAS):
            server = ServerProcess(
                f"upstream-r{index}-{generation}", self.upstream_argv(index), self.tmp, src_env()
            )
            self.servers.append(server)
            self.upstreams.append(server)

    def check(self, name: str) -> Callable[[bytes], None]:
        def check(answer: bytes) -> None:
            outputs = {o["name"]: o for o in orjson.loads(answer)["outputs"]}
            if outputs["label"]["data"] != EXPECTED_LABEL:
                raise RuntimeError(f"{name} answered {answer[:300]!r}; expected {EXPECTED_LABEL}")

        return check

    def start(self, with_haproxy: bool) -> None:
        self.start_upstreams()
        for server, url in zip(self.upstreams, self.upstream_urls, strict=True):
            wait_until_answers(server, url + INFER_PATH, REQUEST, self.timeout_s, self.check(url))
        config_path = self.tmp / "failsoft.yaml"
        config_path.write_text(yaml.safe_dump(failsoft_config(self.upstream_urls), sort_keys=False))
        load_config(config_path)  # a bad configuration is this benchmark's bug
        argv = [sys.executable, "-m", "failsoft", "serve", "--config", str(config_path)]
        argv += ["--host", HOST, "--port", str(self.failsoft_port)]
        started = [(ServerProcess(FAILSOFT, argv, self.tmp, src_env()), self.failsoft_port)]
        if with_haproxy:
            haproxy_path = self.tmp / "haproxy.cfg"
            haproxy_path.write_text(haproxy_config(self.upstream_ports, self.haproxy_port))
            haproxy = ServerProcess(HAPROXY, ["haproxy", "-db", "-f", str(haproxy_path)], self.tmp)
            started.append((haproxy, self.haproxy_port))
        for server, port in started:
            self.servers.append(server)
            url = f"http://{HOST}:{port}{INFER_PATH}"
            wait_until_answers(server, url, REQUEST, self.timeout_s, self.check(server.name))
            self.urls[server.name] = url

    def kill_upstreams(self) -> None:
        for server in self.upstreams:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.process.pid, signal.SIGKILL)

    def stop(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fail_file.unlink()
        for server in reversed(self.servers):
            server.stop()

    def failsoft_metrics(self) -> dict[str, float]:
        """failsoft's breaker transitions (by new state) and ejections, summed over replicas."""
        base = self.urls[FAILSOFT].removesuffix(INFER_PATH)
        try:
            with urllib.request.urlopen(base + "/metrics", timeout=5.0) as response:
                text = response.read().decode()
        except OSError:
            return {}
        samples: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("failsoft_breaker_transitions_total{"):
                state = line.partition('state="')[2].partition('"')[0]
                key = f"breaker to {state}"
            elif line.startswith("failsoft_ejections_total{"):
                key = "ejections"
            else:
                continue
            with contextlib.suppress(ValueError):
                samples[key] = samples.get(key, 0.0) + float(line.rpartition(" ")[2])
        return samples


def run_round(
    scenario: str, round_no: int, phases: Phases, args: argparse.Namespace, with_haproxy: bool
) -> list[Outcome]:
    fault_s = OUTAGE_S if scenario == OUTAGE else DOWN_S
    duration_s = phases.warm_s + fault_s + phases.tail_s
    with tempfile.TemporaryDirectory(prefix="failsoft-recovery-") as tmp:
        setup = Round(Path(tmp), args.startup_timeout)
        try:
            setup.start(with_haproxy)
            instants: dict[str, float] = {}
            ready: list[float] = []
            pollers: list[asyncio.Future[None]] = []  # a reference, so the task is not collected
            ready_urls = [url + READY_PATHS[1] for url in setup.upstream_urls]

            def fault() -> None:
                instants["fault"] = time.perf_counter()
                if scenario == OUTAGE:
                    setup.fail_file.touch()
                else:
                    setup.kill_upstreams()

            def back() -> None:
                instants["back"] = time.perf_counter()
                if scenario == OUTAGE:
                    setup.fail_file.unlink()
                    ready.extend([instants["back"]] * REPLICAS)  # they answer at once
                else:
                    setup.start_upstreams(generation=1)
                    pollers.append(
                        asyncio.ensure_future(_poll_ready(ready_urls, ready, phases.tail_s))
                    )

            actions = [(phases.warm_s, fault), (phases.warm_s + fault_s, back)]
            print(
                f"\n== {scenario} round {round_no}: {RATE:g} req/s to each of "
                f"{', '.join(setup.urls)}; warm-up {phases.warm_s:g} s, "
                + (
                    f"all replicas answer 500 for {fault_s:g} s, then heal at once"
                    if scenario == OUTAGE
                    else f"all replicas SIGKILLed, restarted {fault_s:g} s later"
                )
                + f", {phases.tail_s:g} s after",
                flush=True,
            )
            before = setup.failsoft_metrics()
            started = time.perf_counter()
            records, lags = run_async(_drive(setup.urls, duration_s, actions))
            after = setup.failsoft_metrics()
        finally:
            setup.stop()
    if "fault" not in instants or "back" not in instants:
        raise RuntimeError(f"{scenario}: the fault actions did not run")
    back_at = instants["back"]
    ready_at = max(ready) if len(ready) == REPLICAS else math.nan
    run_end = started + duration_s
    lag_p99_ms = float(np.percentile(lags, 99) * 1e3)
    print(
        f"  replicas answering again {1e3 * (ready_at - back_at):.0f} ms after the "
        f"{'heal' if scenario == OUTAGE else 'restart'}; driver send lag p99 {lag_p99_ms:.1f} ms"
    )
    changes = {
        key: round(value - before.get(key, 0.0))
        for key, value in after.items()
        if value - before.get(key, 0.0) >= 0.5
    }
    if changes:
        print(
            "  failsoft /metrics during the run: "
            + ", ".join(f"{k} {v}" for k, v in changes.items())
        )
    outcomes = []
    for name, record in records.items():
        outcome = analyse(
            name, scenario, round_no, record, instants["fault"], back_at, ready_at, run_end
        )
        outcomes.append(outcome)
        print(
            f"  {name:<9} after: {outcome.failed_after:>4} of {outcome.sent_after} failed "
            f"({outcome.degraded_after} degraded; {outcome.failed_after_ready} once the replicas "
            f"answered)  first good answer {_ms(outcome.first_ok_s)}  last failure "
            f"{_ms(outcome.last_failure_s)}  {outcome.kinds or ''}\n"
            f"  {'':<9} during the fault: {outcome.failed_during} of {outcome.sent_during} failed; "
            f"warm-up failures {outcome.failed_before} {outcome.kinds_before or ''}"
            + ("  STILL FAILING AT THE END: a lower bound" if outcome.still_failing_at_end else ""),
            flush=True,
        )
    return outcomes


def _ms(seconds: float) -> str:
    return "never" if math.isnan(seconds) else f"{seconds * 1e3:.0f} ms"


# --- the report -----------------------------------------------------------------------


@dataclass
class Verdict:
    name: str
    measured: str
    target: str
    passed: bool


def verdicts(outcomes: list[Outcome], scenarios: Sequence[str]) -> list[Verdict]:
    def total(gateway: str, scenario: str) -> int | None:
        rows = [o for o in outcomes if o.gateway == gateway and o.scenario == scenario]
        return sum(o.failed_after for o in rows) if rows else None

    found = []
    if OUTAGE in scenarios:
        rounds = [o for o in outcomes if o.gateway == FAILSOFT and o.scenario == OUTAGE]
        worst = max(o.failed_after for o in rounds)
        found.append(
            Verdict(
                "(a) failsoft failed/degraded after heal",
                f"{worst} (worst of {len(rounds)} round(s))",
                f"<= {TARGET_OUTAGE_FAILED}",
                worst <= TARGET_OUTAGE_FAILED,
            )
        )
    if CRASH in scenarios:
        ours, theirs = total(FAILSOFT, CRASH), total(HAPROXY, CRASH)
        assert ours is not None
        found.append(
            Verdict(
                "(b) failures after restart vs HAProxy",
                f"failsoft {ours}, haproxy {'n/a' if theirs is None else theirs}",
                "failsoft <= haproxy",
                theirs is not None and ours <= theirs,
            )
        )
    return found


def ratio(ours: int, theirs: int) -> str:
    if theirs == 0:
        return "n/a (haproxy 0)" if ours else "1.00 (both 0)"
    return f"{ours / theirs:.2f}"


def report(outcomes: list[Outcome], args: argparse.Namespace, load_before: float) -> int:
    print(
        f"\n== summary: {RATE:g} req/s open loop to each gateway, failsoft and HAProxy "
        "in the same run"
    )
    print(
        f"{'scenario':<8} {'round':>5} {'gateway':<9} {'failed after':>12} {'degraded':>8} "
        f"{'after ready':>11} {'first ok':>9} {'last fail':>9}"
    )
    for o in outcomes:
        print(
            f"{o.scenario:<8} {o.round:>5} {o.gateway:<9} {o.failed_after:>12} "
            f"{o.degraded_after:>8} {o.failed_after_ready:>11} {_ms(o.first_ok_s):>9} "
            f"{_ms(o.last_failure_s):>9}"
            + ("  (still failing at end)" if o.still_failing_at_end else "")
        )
    for scenario in args.scenarios:
        ours = [o for o in outcomes if o.scenario == scenario and o.gateway == FAILSOFT]
        theirs = [o for o in outcomes if o.scenario == scenario and o.gateway == HAPROXY]
        if ours and theirs:
            a, b = sum(o.failed_after for o in ours), sum(o.failed_after for o in theirs)
            print(
                f"{scenario}: failures after the {'heal' if scenario == OUTAGE else 'restart'}, "
                f"failsoft/haproxy = {a}/{b} = {ratio(a, b)}"
            )
    checks = verdicts(outcomes, args.scenarios)
    print(f"\n{'check':<42} {'measured':<36} {'target':<20} result")
    for check in checks:
        print(
            f"{check.name:<42} {check.measured:<36} {check.target:<20} "
            f"{'ok' if check.passed else 'MISSED'}"
        )
    cpus = os.cpu_count() or 1
    if load_before > cpus / 4:
        print(
            f"note: the 1-minute load average was {load_before:.1f} on {cpus} CPUs before the "
            "run; other work shared the machine"
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "rate": RATE,
                    "quick": args.quick,
                    "haproxy": any(o.gateway == HAPROXY for o in outcomes),
                    "outcomes": [asdict(o) for o in outcomes],
                    "checks": [asdict(c) for c in checks],
                },
                indent=2,
                allow_nan=True,
            )
        )
    return 0 if all(c.passed for c in checks) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 round, 3 s warm-up, 10 s tail")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per scenario (2; quick 1)")
    parser.add_argument(
        "--scenario", choices=["outage", "crash", "all"], default="all", help="which to run"
    )
    parser.add_argument("--no-haproxy", action="store_true", help="failsoft only")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the results here")
    parser.add_argument("--startup-timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 2)
    if rounds < 1:
        parser.error("--rounds must be >= 1")
    phases = Phases(3.0, 10.0) if args.quick else Phases(5.0, 20.0)
    args.scenarios = [OUTAGE, CRASH] if args.scenario == "all" else [args.scenario]
    with_haproxy = not args.no_haproxy and shutil.which("haproxy") is not None
    if not with_haproxy:
        print("haproxy: " + ("left out" if args.no_haproxy else "not installed") + ", skipped")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so `finally` stops the servers

    load_before = os.getloadavg()[0]
    outcomes: list[Outcome] = []
    try:
        for scenario in args.scenarios:
            for round_no in range(1, rounds + 1):
                outcomes += run_round(scenario, round_no, phases, args, with_haproxy)
    except (RuntimeError, OSError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return report(outcomes, args, load_before)


if __name__ == "__main__":
    sys.exit(main())
