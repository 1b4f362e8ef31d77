"""Overload: goodput at 3x capacity with and without admission control, priority
shedding, tenant isolation, and SIGTERM under load.

The target is `failsoft serve` in front of benchmarks/_slow_model.py, a python
backend whose calls each hold one of SLOTS slots for SERVICE_MS (replicas =
SLOTS, `execution: thread`): capacity is about SLOTS / SERVICE_MS, latency
grows with concurrency, and the model's deadline (`timeout_ms`) is 500 ms.
Everything runs on loopback; the load is a Python asyncio + aiohttp driver in
this process.

0. unloaded p50/p99: open loop at 20% of the nominal capacity, on the two
   servers of step 2 (the first traffic they see).
1. capacity: closed loop at 2x and 4x SLOTS connections on the same two
   servers; the best rate of 200 answers within the deadline is the capacity.
2. 3x capacity, open loop (latency from each request's scheduled send time,
   so a stalled server shows as latency, not as fewer samples), to failsoft
   WITH admission control (the default adaptive limiter, default options
   otherwise) and to a plain server: failsoft WITHOUT admission control or
   any other protection (`limiter: {enabled: false}`, bulkhead 100000,
   breaker, ejection, retries, hedging and throttling off; the last two do
   not apply to in-process replicas anyway): goodput (200 within the
   deadline) per second, as % of the measured capacity and of the nominal
   one (SLOTS / SERVICE_MS), p99 of the 200s, 503/429/504, client timeouts.
3. priorities at 3x: 20% critical, 50% default, 30% sheddable
   (`Failsoft-Priority`, sent by a tenant whose ceiling is critical):
   success (200 within the deadline) per priority.
4. tenants (a fresh server): two keyed tenants with `requests_per_s` quotas
   of 60% of capacity each; one floods at 3x capacity, the other sends 30%.
5. SIGTERM under load: 70% of capacity to the server of step 2 with
   admission control, SIGTERM to it mid-run. A request is *accepted* when it
   got any HTTP answer or was written to an established connection; it
   *failed* on a 5xx other than 503 with Retry-After, any other unexpected
   status, a reset/disconnect, or a client timeout after it was sent.
   Connection refused (after the listener closed) is not accepted.

Targets: goodput with admission control >= 90% of capacity; its p99 of 200s
<= 2x the unloaded p99; critical success >= 99% and sheddable the lowest;
quiet tenant success >= 99%; no accepted request fails on SIGTERM and the
server exits 0. Exit 0 when all are met, 1 when one is missed, 2 on a setup
failure. The last line states the goodput.

    python benchmarks/overload.py            # 30 s overload runs (about 4 minutes)
    python benchmarks/overload.py --quick    # 10 s overload runs (about 1.5 minutes)
    python benchmarks/overload.py --quick --limiter '{queue_timeout_ms: 20}'   # try options

The servers log at failsoft's default level (`info`, which writes a warning
line for every shed request; to a file in the temporary directory), as a
deployment would; --log-level sets another for experiments.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
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
from failsoft.control.tenants import key_digest, new_key

BENCH = Path(__file__).resolve().parent
HOST = "127.0.0.1"
MODEL = "slow"
INFER_PATH = f"/v2/models/{MODEL}/infer"
BODY = b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1,4],"data":[1.0,2.0,3.0,4.0]}]}'
DEADLINE_MS = 500
DEADLINE_S = DEADLINE_MS / 1000.0
CLIENT_TIMEOUT_S = DEADLINE_S + 1.5  # well past the deadline: the server must answer first
OVERLOAD = 3.0

TARGET_GOODPUT = 0.90
TARGET_P99_FACTOR = 2.0
TARGET_CRITICAL = 0.99
TARGET_QUIET = 0.99
MAX_LAG_MS = 20.0  # a driver sending later than this (p99) measures itself, not the server
_send_lag_p99_ms: list[float] = []  # every open-loop run's, for the summary

# Outcomes that are not an HTTP status.
REFUSED = -1  # the connection could not be made (nothing listening)
DISCONNECTED = -2  # reset or closed before the whole answer arrived
TIMED_OUT = -3  # no answer within CLIENT_TIMEOUT_S
DROPPED = -4  # the driver had too many requests in flight and did not send it
CLIENT_ERROR = -5  # any other client-side error
UNFINISHED = -6  # still running when the run ended
OUTCOME_NAMES = {
    REFUSED: "refused",
    DISCONNECTED: "disconnected",
    TIMED_OUT: "client timeout",
    DROPPED: "not sent (driver cap)",
    CLIENT_ERROR: "client error",
    UNFINISHED: "unfinished",
}


# --- load: open loop over several classes of traffic, and a closed loop ----------------


@dataclass(frozen=True, slots=True)
class Traffic:
    """One kind of request: a label, its share of its stream and its extra headers."""

    label: str
    weight: float = 1.0
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Stream:
    """Requests sent at a fixed ``rate``, split between ``kinds`` by weight."""

    rate: float
    kinds: tuple[Traffic, ...]


@dataclass
class Run:
    """Every scheduled request of one open-loop run, by index in schedule order."""

    labels: list[str]
    kind: np.ndarray  # index into labels
    scheduled: np.ndarray  # s after the start of the schedule
    status: np.ndarray  # HTTP status, or one of the negative outcomes above
    latency: np.ndarray  # s, from the scheduled send time (nan if never sent)
    retry_after: np.ndarray  # the answer carried Retry-After
    sent: np.ndarray  # the request was written to a connection
    reused: np.ndarray  # ... to a kept-alive connection
    send_lag: np.ndarray  # s the driver sent late (negative: early)
    duration_s: float
    limiter: list[tuple[float, dict[str, Any]]] = field(default_factory=list)

    def mask(self, label: str | None = None) -> np.ndarray:
        if label is None:
            return np.ones(self.status.size, dtype=bool)
        return np.asarray(self.kind == self.labels.index(label))

    def good(self, mask: np.ndarray | None = None) -> np.ndarray:
        good = (self.status == 200) & (self.latency <= DEADLINE_S)
        return np.asarray(good if mask is None else good & mask)

    def count(self, status: int, mask: np.ndarray | None = None) -> int:
        hit = self.status == status
        return int((hit if mask is None else hit & mask).sum())

    def p_ok(self, q: float, mask: np.ndarray | None = None) -> float:
        """Percentile ``q`` (ms) of the 200 answers' latencies."""
        ok = self.status == 200
        values = self.latency[ok if mask is None else ok & mask]
        return float(np.percentile(values, q) * 1e3) if values.size else math.nan


def _schedule(
    streams: Sequence[Stream], duration_s: float, seed: int
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Send times and kinds of all streams, merged in time order."""
    rng = np.random.default_rng(seed)
    labels: list[str] = []
    times, kinds = [], []
    for number, stream in enumerate(streams):
        n = max(1, round(stream.rate * duration_s))
        phase = number / (len(streams) * stream.rate)  # interleave the streams' sends
        times.append(phase + np.arange(n) / stream.rate)
        weights = np.array([k.weight for k in stream.kinds], dtype=float)
        counts = np.floor(weights / weights.sum() * n).astype(int)
        counts[: n - counts.sum()] += 1  # exact shares, remainder to the first kinds
        kind = np.repeat(np.arange(len(stream.kinds)) + len(labels), counts)
        rng.shuffle(kind)
        kinds.append(kind)
        labels.extend(k.label for k in stream.kinds)
    all_times, all_kinds = np.concatenate(times), np.concatenate(kinds)
    order = np.argsort(all_times, kind="stable")
    return all_times[order], all_kinds[order], labels


async def _open_loop(
    url: str,
    streams: Sequence[Stream],
    duration_s: float,
    *,
    seed: int,
    max_in_flight: int,
    connections: int,
    admin: tuple[str, str] | None,
    actions: Sequence[tuple[float, Callable[[], None]]],
) -> Run:
    import aiohttp

    times, kind, labels = _schedule(streams, duration_s, seed)
    kinds = [k for s in streams for k in s.kinds]
    headers = [{"content-type": "application/json", **dict(k.headers)} for k in kinds]
    n = times.size
    status = np.full(n, UNFINISHED, dtype=np.int32)
    latency = np.full(n, np.nan)
    retry_after = np.zeros(n, dtype=bool)
    sent = np.zeros(n, dtype=bool)
    reused = np.zeros(n, dtype=bool)
    lags = np.zeros(n)
    limiter: list[tuple[float, dict[str, Any]]] = []
    clock = time.perf_counter
    in_flight = 0

    async def on_headers_sent(_session: Any, ctx: Any, _params: Any) -> None:
        sent[ctx.trace_request_ctx] = True

    async def on_reuse(_session: Any, ctx: Any, _params: Any) -> None:
        reused[ctx.trace_request_ctx] = True

    trace = aiohttp.TraceConfig()
    trace.on_request_headers_sent.append(on_headers_sent)
    trace.on_connection_reuseconn.append(on_reuse)
    # Close idle connections before uvicorn does (5 s), so that no request is
    # ever written to a connection the server is closing for idleness.
    connector = aiohttp.TCPConnector(
        limit=connections, limit_per_host=connections, keepalive_timeout=3.0
    )
    async with aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_S),
        trace_configs=[trace],
        skip_auto_headers=("User-Agent",),
    ) as session:

        async def one(index: int, origin: float) -> None:
            nonlocal in_flight
            code = UNFINISHED  # if cancelled at the end of the run
            try:
                async with session.post(
                    url, data=BODY, headers=headers[kind[index]], trace_request_ctx=index
                ) as response:
                    await response.read()
                    code = response.status
                    retry_after[index] = "Retry-After" in response.headers
            except aiohttp.ClientConnectorError:
                code = REFUSED
            except TimeoutError:
                code = TIMED_OUT
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError):
                code = DISCONNECTED
            except aiohttp.ClientError:
                code = CLIENT_ERROR
            finally:
                in_flight -= 1
                now = clock()
                status[index] = code
                latency[index] = now - origin

        loop = asyncio.get_running_loop()
        start = clock() + 0.05
        poller = None
        if admin is not None:
            poller = asyncio.create_task(_poll_limiter(admin, limiter, start))
        wall_start = loop.time() + (start - clock())
        for delay_s, action in actions:
            loop.call_at(wall_start + delay_s, action)

        def launch(index: int, origin: float) -> Coroutine[Any, Any, None] | None:
            nonlocal in_flight
            if in_flight >= max_in_flight:
                status[index] = DROPPED
                return None
            in_flight += 1
            return one(index, origin)

        await send_on_schedule(times.tolist(), start, clock, lags, launch, CLIENT_TIMEOUT_S + 1.0)
        if poller is not None:
            poller.cancel()
            await asyncio.gather(poller, return_exceptions=True)
    return Run(
        labels,
        kind,
        times,
        status,
        latency,
        retry_after,
        sent,
        reused,
        lags,
        duration_s,
        limiter,
    )


async def _poll_limiter(
    admin: tuple[str, str], samples: list[tuple[float, dict[str, Any]]], start: float
) -> None:
    """Every 0.25 s: the model's limiter from /admin/status (limit, in flight, waiting)."""
    import aiohttp

    url, token = admin
    headers = {"authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1.0)) as session:
        while True:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, KeyError, ValueError):
                async with session.get(url, headers=headers) as response:
                    status = orjson.loads(await response.read())
                samples.append((time.perf_counter() - start, status["models"][MODEL]["limiter"]))
            await asyncio.sleep(0.25)


async def _closed_loop(url: str, connections: int, duration_s: float) -> tuple[float, int, int]:
    """(rate of 200s within the deadline, those answers, all answers) over ``duration_s``."""
    import aiohttp

    good = total = 0
    headers = {"content-type": "application/json"}
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_S)
    ) as session:
        start = time.perf_counter()
        deadline = start + duration_s

        async def worker() -> None:
            nonlocal good, total
            while (sent := time.perf_counter()) < deadline:
                ok = False
                try:
                    async with session.post(url, data=BODY, headers=headers) as response:
                        await response.read()
                        ok = response.status == 200
                except (aiohttp.ClientError, TimeoutError):
                    pass
                total += 1
                good += ok and time.perf_counter() - sent <= DEADLINE_S

        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - start
    return good / elapsed, good, total


def open_loop(
    url: str,
    streams: Sequence[Stream],
    duration_s: float,
    *,
    seed: int = 1,
    admin: tuple[str, str] | None = None,
    actions: Sequence[tuple[float, Callable[[], None]]] = (),
    max_in_flight: int = 4000,
    connections: int = 1000,
) -> Run:
    total = sum(s.rate for s in streams) * duration_s
    if not 0 < total <= 200_000:
        raise ValueError(f"{total:.0f} requests is out of bounds (1..200000)")
    run: Run = run_async(
        _open_loop(
            url,
            streams,
            duration_s,
            seed=seed,
            max_in_flight=max_in_flight,
            connections=connections,
            admin=admin,
            actions=actions,
        )
    )
    _send_lag_p99_ms.append(float(np.percentile(run.send_lag, 99) * 1e3))
    return run


def closed_loop(url: str, connections: int, duration_s: float) -> tuple[float, int, int]:
    rate, good, total = run_async(_closed_loop(url, connections, duration_s))
    return float(rate), int(good), int(total)


def plain(rate: float, label: str = "all") -> list[Stream]:
    return [Stream(rate, (Traffic(label),))]


# --- servers -------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    server: ServerProcess
    base: str
    admin: tuple[str, str] | None  # (status URL, token) when it has a limiter to watch

    @property
    def url(self) -> str:
        return self.base + INFER_PATH


@dataclass
class Settings:
    slots: int
    service_ms: float
    admin_token: str
    log_level: str | None  # None: failsoft's default
    tmp: Path
    servers: list[ServerProcess]
    startup_timeout_s: float
    limiter: dict[str, Any] | None  # options for the servers with admission control


def model_config(
    slots: int, admission: bool, limiter: dict[str, Any] | None = None
) -> dict[str, Any]:
    model: dict[str, Any] = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "y", "datatype": "INT64", "shape": [-1]}],
        "versions": {
            "v1": {
                "backend": "python",
                "function": "_slow_model:predict",
                "replicas": slots,
                "execution": "thread",
            }
        },
        "timeout_ms": DEADLINE_MS,
    }
    if limiter and admission:
        model["limiter"] = limiter
    if not admission:  # a plain server: nothing between the request and the model
        model["limiter"] = {"enabled": False}
        model["bulkhead"] = {"max_in_flight": 100_000}
        for strategy in ("breaker", "ejection", "retry", "hedge", "throttle"):
            model[strategy] = {"enabled": False}
    return model


def start_target(
    settings: Settings, name: str, admission: bool, tenants: dict[str, Any] | None = None
) -> Target:
    server: dict[str, Any] = {"admin_token": settings.admin_token}
    if settings.log_level is not None:
        server["log_level"] = settings.log_level
    config: dict[str, Any] = {
        "server": server,
        "models": {MODEL: model_config(settings.slots, admission, settings.limiter)},
    }
    if tenants:
        config["tenants"] = tenants
    path = settings.tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    load_config(path)  # a bad configuration is this benchmark's bug: fail before starting
    port = free_port(HOST)
    env = src_env()
    env["PYTHONPATH"] = os.pathsep.join([str(BENCH), env["PYTHONPATH"]])
    env["FAILSOFT_BENCH_SLOTS"] = str(settings.slots)
    env["FAILSOFT_BENCH_SERVICE_MS"] = str(settings.service_ms)
    argv = [sys.executable, "-m", "failsoft", "serve", "--config", str(path)]
    server = ServerProcess(name, [*argv, "--host", HOST, "--port", str(port)], settings.tmp, env)
    settings.servers.append(server)
    base = f"http://{HOST}:{port}"

    def check(answer: bytes) -> None:
        outputs = {o["name"]: o for o in orjson.loads(answer)["outputs"]}
        if outputs["y"]["data"] != [10]:
            raise RuntimeError(f"{name} answered {answer[:300]!r}; expected y = [10]")

    wait_until_answers(server, base + INFER_PATH, BODY, settings.startup_timeout_s, check)
    limiter = admin_status(base, settings.admin_token)["models"][MODEL]["limiter"]
    if limiter["enabled"] != admission:
        raise RuntimeError(f"{name}: limiter enabled is {limiter['enabled']}, not {admission}")
    admin = (base + "/admin/status", settings.admin_token) if limiter["enabled"] else None
    return Target(name, server, base, admin)


def admin_status(base: str, token: str) -> dict[str, Any]:
    request = urllib.request.Request(
        base + "/admin/status", headers={"authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=5.0) as response:
        return dict(orjson.loads(response.read()))


def scrape(base: str) -> dict[str, float]:
    """The failsoft_* samples of /metrics, keyed by 'name{labels}' (none if it fails)."""
    try:
        with urllib.request.urlopen(base + "/metrics", timeout=5.0) as response:
            text = response.read().decode()
    except OSError as error:
        print(f"  /metrics: {error}")
        return {}
    samples = {}
    for line in text.splitlines():
        if line.startswith("failsoft_") and " " in line:
            key, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                samples[key] = float(value)
    return samples


def metric_delta(before: dict[str, float], after: dict[str, float], prefix: str) -> dict[str, int]:
    return {
        key: round(after[key] - before.get(key, 0.0))
        for key in sorted(after)
        if key.startswith(prefix) and after[key] - before.get(key, 0.0) >= 0.5
    }


def print_metrics(before: dict[str, float], after: dict[str, float]) -> None:
    """What failsoft counted during a run: sheds, failures, breakers, ejections."""
    for prefix in (
        "failsoft_shed_total",
        "failsoft_request_failures_total",
        "failsoft_breaker_transitions_total",
        "failsoft_ejections_total",
        "failsoft_retries_denied_total",
    ):
        delta = metric_delta(before, after, prefix)
        if delta:
            model_label = f'model="{MODEL}",'
            short = ", ".join(
                f"{key[len(prefix) :].replace(model_label, '')} {n}" for key, n in delta.items()
            )
            print(f"  /metrics {prefix}: {short}")


# --- the steps -----------------------------------------------------------------------


@dataclass
class Check:
    name: str
    measured: str
    target: str
    passed: bool


def _fmt(value: float, digits: int = 1) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def _lag_note(run: Run) -> str:
    lag = float(np.percentile(run.send_lag, 99) * 1e3)
    return f"send lag p99 {lag:.1f} ms" + (" (DRIVER LAGGED)" if lag > MAX_LAG_MS else "")


def step_capacity(targets: list[Target], slots: int, seconds: float) -> float:
    print(f"\n== 1. capacity: closed loop, {seconds:g} s per point", flush=True)
    best = 0.0
    for target in targets:
        for connections in (2 * slots, 4 * slots):
            rate, good, total = closed_loop(target.url, connections, seconds)
            print(
                f"  {target.name:<14} {connections:>3} connections: {rate:7.1f} good/s "
                f"({good} of {total} answers were 200 within {DEADLINE_MS} ms)",
                flush=True,
            )
            best = max(best, rate)
    print(f"  capacity: {best:.1f} good/s (the best point)")
    return best


def describe(name: str, run: Run, capacity: float, nominal: float) -> dict[str, Any]:
    goodput = int(run.good().sum()) / run.duration_s
    row: dict[str, Any] = {
        "name": name,
        "offered": run.status.size / run.duration_s,
        "goodput": goodput,
        "pct": 100.0 * goodput / capacity,
        "pct_nominal": 100.0 * goodput / nominal,
        "ok": run.count(200),
        "late": int(((run.status == 200) & (run.latency > DEADLINE_S)).sum()),
        "p50": run.p_ok(50),
        "p99": run.p_ok(99),
        "503": run.count(503),
        "503_no_ra": int(((run.status == 503) & ~run.retry_after).sum()),
        "429": run.count(429),
        "504": run.count(504),
        "other": int(((run.status >= 400) & ~np.isin(run.status, (429, 503, 504))).sum()),
        "client": int((run.status < 0).sum()),
        "timeouts": run.count(TIMED_OUT),
    }
    print(
        f"  {name:<24} offered {row['offered']:6.1f}/s  goodput {goodput:6.1f}/s "
        f"({row['pct']:5.1f}% of capacity, {row['pct_nominal']:5.1f}% of nominal)  "
        f"200: {row['ok']} (late {row['late']})  "
        f"p50 {_fmt(row['p50'])} ms  p99 {_fmt(row['p99'])} ms  503: {row['503']}  "
        f"429: {row['429']}  504: {row['504']}  other: {row['other']}  "
        f"client-side: {row['client']} ({row['timeouts']} timeouts)  {_lag_note(run)}",
        flush=True,
    )
    return row


def limiter_summary(run: Run) -> str:
    if not run.limiter:
        return "  limiter: no samples"
    limits = np.array([s["limit"] for _, s in run.limiter])
    flying = np.array([s["in_flight"] for _, s in run.limiter])
    waiting = np.array([sum(s["waiting"].values()) for _, s in run.limiter])
    series = []
    next_t = 0.0
    for t, sample in run.limiter:
        if t >= next_t:
            series.append(f"{t:.0f}s:{sample['limit']}")
            next_t = t + max(1.0, run.duration_s / 10)
    last = run.limiter[-1][1]
    return (
        f"  limiter: limit min {limits.min()} median {np.median(limits):.0f} max "
        f"{limits.max()}; in flight median {np.median(flying):.0f}, waiting median "
        f"{np.median(waiting):.0f} max {waiting.max()}; short/min RTT at end "
        f"{_fmt(last['short_rtt_ms'] or math.nan)}/{_fmt(last['min_rtt_ms'] or math.nan)} ms\n"
        f"  limit over time: {' '.join(series)}"
    )


def step_sigterm(
    target: Target, capacity: float, seconds: float, drain_wait_s: float
) -> tuple[dict[str, Any], list[Check]]:
    rate = 0.7 * capacity
    at = seconds / 2
    print(
        f"\n== 5. SIGTERM: {rate:.0f}/s (70% of capacity) for {seconds:g} s to "
        f"{target.name}, SIGTERM at {at:g} s",
        flush=True,
    )
    signalled: list[float] = []
    exited: list[float] = []
    process = target.server.process

    def watch() -> None:  # when the server exits, while the load goes on
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=seconds + drain_wait_s)
            exited.append(time.perf_counter())

    def terminate() -> None:
        signalled.append(time.perf_counter())
        os.kill(process.pid, signal.SIGTERM)
        threading.Thread(target=watch, daemon=True).start()

    run = open_loop(target.url, plain(rate), seconds, actions=[(at, terminate)])
    try:
        code: int | None = process.wait(timeout=drain_wait_s)
    except subprocess.TimeoutExpired:  # still draining: a failure of its own
        code = None
    time.sleep(0.1)  # let the watcher note the time
    exited_after = exited[0] - signalled[0] if exited and signalled else math.nan
    status = run.status
    answered = status > 0
    clean = (
        (status == 200) | ((status == 503) & run.retry_after) | ((status == 429) & run.retry_after)
    )
    bad_answer = answered & ~clean
    bad_transport = ~answered & run.sent & np.isin(status, (DISCONNECTED, TIMED_OUT, UNFINISHED))
    failed = bad_answer | bad_transport
    accepted = answered | bad_transport
    after = run.scheduled >= at
    result: dict[str, Any] = {
        "scheduled": status.size,
        "accepted": int(accepted.sum()),
        "failed": int(failed.sum()),
        "failed_answers": int(bad_answer.sum()),
        "failed_reused": int((bad_transport & run.reused).sum()),
        "failed_new": int((bad_transport & ~run.reused).sum()),
        "ok_before": int(((status == 200) & ~after).sum()),
        "ok_after": int(((status == 200) & after).sum()),
        "503_after": int(((status == 503) & after).sum()),
        "refused": run.count(REFUSED),
        "not_sent_errors": int((~answered & ~run.sent & (status != REFUSED)).sum()),
        "exit": code,
        "exit_s": exited_after,
    }
    kinds = {
        OUTCOME_NAMES.get(int(s), f"HTTP {s}"): int(n)
        for s, n in zip(*np.unique(status[failed], return_counts=True), strict=True)
    }
    print(
        f"  {result['scheduled']} scheduled, {result['accepted']} accepted, "
        f"{result['failed']} accepted and failed {kinds or ''} "
        f"(on a kept-alive connection: {result['failed_reused']}, on a new one: "
        f"{result['failed_new']}, bad answers: {result['failed_answers']})\n"
        f"  200 before SIGTERM {result['ok_before']}, 200 after {result['ok_after']}, "
        f"503 + Retry-After after {result['503_after']}, refused {result['refused']}, "
        f"other errors before sending {result['not_sent_errors']}\n"
        f"  exit code {code}, {_fmt(result['exit_s'], 2)} s after SIGTERM  {_lag_note(run)}",
        flush=True,
    )
    checks = [
        Check(
            "SIGTERM: accepted requests failed",
            f"{result['failed']} of {result['accepted']}",
            "0",
            result["failed"] == 0,
        ),
        Check("SIGTERM: exit code", str(code), "0", code == 0),
    ]
    return result, checks


def step_unloaded(targets: list[Target], rate: float, seconds: float) -> float:
    """Open loop at low load on each target; the first one's p99 (ms) is the baseline."""
    print(f"\n== unloaded: open loop at {rate:.0f}/s (20% of nominal capacity), {seconds:g} s")
    nominal = rate / 0.2
    rows = [
        describe(t.name, open_loop(t.url, plain(rate), seconds), nominal, nominal) for t in targets
    ]
    return float(rows[0]["p99"])


def step_overload(
    with_ac: Target, without: Target, capacity: float, base_p99: float, args: argparse.Namespace
) -> tuple[dict[str, dict[str, Any]], list[Check]]:
    rate = OVERLOAD * capacity
    print(
        f"\n== 2. overload: open loop at {rate:.0f}/s ({OVERLOAD:g}x capacity), {args.duration:g} s"
    )
    rows = {}
    for target in (with_ac, without):
        time.sleep(args.settle)
        before = scrape(target.base)
        run = open_loop(target.url, plain(rate), args.duration, admin=target.admin)
        rows[target.name] = describe(target.name, run, capacity, nominal_capacity(args))
        print_metrics(before, scrape(target.base))
        if target.admin is not None:
            print(limiter_summary(run))
    ac, no_ac = rows[with_ac.name], rows[without.name]
    limit_p99 = TARGET_P99_FACTOR * base_p99
    no_retry_after = ac["503_no_ra"] + no_ac["503_no_ra"]
    checks = [
        Check(
            "goodput with admission control",
            f"{ac['pct']:.1f}% of capacity",
            f">= {TARGET_GOODPUT:.0%}",
            ac["pct"] >= 100 * TARGET_GOODPUT,
        ),
        Check(
            "p99 of 200s with admission control",
            f"{_fmt(ac['p99'])} ms (unloaded {_fmt(base_p99)} ms)",
            f"<= {_fmt(limit_p99)} ms (2x)",
            ac["p99"] <= limit_p99,
        ),
        Check("503s carry Retry-After", f"{no_retry_after} without", "0", no_retry_after == 0),
    ]
    return rows, checks


def step_priorities(
    target: Target, capacity: float, args: argparse.Namespace, key: str
) -> tuple[dict[str, float], list[Check]]:
    """The priority mix, all sent by one tenant whose configured ceiling is critical."""
    rate = OVERLOAD * capacity
    print(
        f"\n== 3. priorities: {rate:.0f}/s, 20% critical, 50% default, 30% sheddable, "
        f"{args.duration:g} s"
    )
    mix = tuple(
        Traffic(name, weight, (("Failsoft-Priority", name), ("Authorization", f"Bearer {key}")))
        for name, weight in (("critical", 0.2), ("default", 0.5), ("sheddable", 0.3))
    )
    time.sleep(args.settle)
    run = open_loop(target.url, [Stream(rate, mix)], args.duration, seed=3, admin=target.admin)
    success = {}
    for kind in mix:
        mask = run.mask(kind.label)
        success[kind.label] = 100.0 * int(run.good(mask).sum()) / max(1, int(mask.sum()))
        print(
            f"  {kind.label:<10} sent {int(mask.sum()):>6}  success {success[kind.label]:6.2f}%  "
            f"503: {run.count(503, mask):>6}  504: {run.count(504, mask):>4}  "
            f"p99 of 200s {_fmt(run.p_ok(99, mask))} ms"
        )
    goodput = int(run.good().sum()) / run.duration_s
    print(
        f"  goodput {goodput:.1f}/s: {100.0 * goodput / capacity:.1f}% of capacity, "
        f"{100.0 * goodput / nominal_capacity(args):.1f}% of nominal  {_lag_note(run)}"
    )
    print(limiter_summary(run))
    lowest = min(success, key=lambda k: success[k])
    checks = [
        Check(
            "critical success at 3x",
            f"{success['critical']:.2f}%",
            f">= {TARGET_CRITICAL:.0%}",
            success["critical"] >= 100 * TARGET_CRITICAL,
        ),
        Check(
            "sheddable shed first",
            f"lowest success: {lowest}",
            "sheddable",
            success["sheddable"] <= min(success.values()),
        ),
    ]
    return success, checks


def step_tenants(
    settings: Settings, capacity: float, args: argparse.Namespace
) -> tuple[dict[str, dict[str, float]], list[Check]]:
    """A fresh server with two keyed tenants, quotas 60% of capacity; one floods."""
    keys = {"flooder": new_key(), "quiet": new_key()}
    quota = round(0.6 * capacity, 1)
    tenants: dict[str, Any] = {
        name: {"key_sha256": key_digest(key), "requests_per_s": quota} for name, key in keys.items()
    }
    if args.burst_s is not None:
        for entry in tenants.values():
            entry["burst_s"] = args.burst_s
    target = start_target(settings, "with-tenants", admission=True, tenants=tenants)
    open_loop(target.url, plain(0.2 * capacity), 1.0)  # warm up (anonymous: no quota)
    rates = {"flooder": OVERLOAD * capacity, "quiet": 0.3 * capacity}
    print(
        f"\n== 4. tenants: quotas {quota:g} req/s each (burst_s {args.burst_s or 'default'}); "
        f"flooder {rates['flooder']:.0f}/s, quiet {rates['quiet']:.0f}/s, {args.duration:g} s"
    )
    streams = [
        Stream(rates[name], (Traffic(name, 1, (("Authorization", f"Bearer {key}"),)),))
        for name, key in keys.items()
    ]
    run = open_loop(target.url, streams, args.duration, seed=4, admin=target.admin)
    target.server.stop()
    rows = {}
    for name in keys:
        mask = run.mask(name)
        pct = 100.0 * int(run.good(mask).sum()) / max(1, int(mask.sum()))
        rows[name] = {"success": pct, "429": run.count(429, mask), "503": run.count(503, mask)}
        print(
            f"  {name:<8} sent {int(mask.sum()):>6}  success {pct:6.2f}%  "
            f"429: {run.count(429, mask):>6}  503: {run.count(503, mask):>5}  "
            f"504: {run.count(504, mask):>4}  p99 of 200s {_fmt(run.p_ok(99, mask))} ms"
        )
    quiet_failed = run.mask("quiet") & ~run.good()
    if quiet_failed.any():
        when = run.scheduled[quiet_failed]
        print(
            f"  quiet tenant failures: sent from {when.min():.2f} s to {when.max():.2f} s "
            f"({int((when < 1.0).sum())} of {when.size} in the first second)"
        )
    print(f"  {_lag_note(run)}")
    print(limiter_summary(run))
    check = Check(
        "quiet tenant success",
        f"{rows['quiet']['success']:.2f}% (flooder 429s: {rows['flooder']['429']})",
        f">= {TARGET_QUIET:.0%}",
        rows["quiet"]["success"] >= 100 * TARGET_QUIET,
    )
    return rows, [check]


def nominal_capacity(args: argparse.Namespace) -> float:
    """The model's capacity on paper: SLOTS calls of SERVICE_MS each, back to back."""
    return float(args.slots * 1000.0 / args.service_ms)


def measure(args: argparse.Namespace, settings: Settings) -> tuple[list[Check], dict[str, Any]]:
    slots, service_ms = settings.slots, settings.service_ms
    nominal = nominal_capacity(args)
    print(
        f"model: {slots} slots x {service_ms:g} ms (about {nominal:.0f} req/s), deadline "
        f"{DEADLINE_MS} ms, overload runs {args.duration:g} s",
        flush=True,
    )
    # Only a tenant allowed critical work may send it (anonymous requests get default at most).
    ops_key = new_key()
    ops = {"ops": {"key_sha256": key_digest(ops_key), "priority": "critical"}}
    with_ac = start_target(settings, "with-admission", admission=True, tenants=ops)
    without = start_target(settings, "plain-no-admission", admission=False)
    print(f"servers: {with_ac.name} at {with_ac.base}, {without.name} at {without.base}")
    for target in (with_ac, without):  # warm up code paths and connections, at low load
        open_loop(target.url, plain(0.2 * nominal), 1.0)

    facts: dict[str, Any] = {"nominal": nominal}
    checks: list[Check] = []
    facts["unloaded_p99"] = step_unloaded([with_ac, without], 0.2 * nominal, args.unloaded_seconds)
    capacity = facts["capacity"] = step_capacity([with_ac, without], slots, args.capacity_seconds)
    facts["overload"], found = step_overload(
        with_ac, without, capacity, facts["unloaded_p99"], args
    )
    checks += found
    facts["priorities"], found = step_priorities(with_ac, capacity, args, ops_key)
    checks += found
    without.server.stop()
    facts["tenants"], found = step_tenants(settings, capacity, args)
    checks += found
    time.sleep(args.settle)
    facts["sigterm"], found = step_sigterm(with_ac, capacity, args.sigterm_seconds, 30.0)
    checks += found
    return checks, facts


def report(checks: list[Check], facts: dict[str, Any], load_before: float) -> int:
    print("\n== summary")
    capacity, nominal = facts["capacity"], facts["nominal"]
    print(
        f"capacity {capacity:.1f} good/s measured, {nominal:.0f}/s nominal; "
        f"unloaded p99 {_fmt(facts['unloaded_p99'])} ms\n"
    )
    print(
        f"{'at 3x capacity':<24} {'goodput/s':>9} {'% cap':>6} {'% nom':>6} {'p99 ms':>8} "
        f"{'503':>6} {'429':>5} {'504':>6} {'timeouts':>8}"
    )
    for row in facts["overload"].values():
        print(
            f"{row['name']:<24} {row['goodput']:>9.1f} {row['pct']:>5.1f}% "
            f"{row['pct_nominal']:>5.1f}% {_fmt(row['p99']):>8} "
            f"{row['503']:>6} {row['429']:>5} {row['504']:>6} {row['timeouts']:>8}"
        )
    print(f"\n{'check':<38} {'measured':<40} {'target':<16} result")
    for check in checks:
        print(
            f"{check.name:<38} {check.measured:<40} {check.target:<16} "
            f"{'ok' if check.passed else 'MISSED'}"
        )
    worst = max(_send_lag_p99_ms, default=math.nan)
    print(
        f"load driver: worst send lag p99 over all open-loop runs {_fmt(worst)} ms"
        + (
            f" -- over {MAX_LAG_MS:g} ms: the driver was a bottleneck, numbers are suspect"
            if worst > MAX_LAG_MS
            else " (kept its schedule)"
        )
    )
    cpus = os.cpu_count() or 1
    if load_before > cpus / 4:
        print(
            f"note: the 1-minute load average was {load_before:.1f} on {cpus} CPUs before the "
            "run; other work shared the machine"
        )
    ac, no_ac = list(facts["overload"].values())
    print(
        f"goodput with admission control: {ac['pct']:.0f}% of capacity "
        f"(target >= {TARGET_GOODPUT:.0%}), {ac['pct_nominal']:.0f}% of nominal; "
        f"plain server: {no_ac['pct']:.0f}% of capacity, {no_ac['pct_nominal']:.0f}% of nominal"
    )
    return 0 if all(c.passed for c in checks) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 s overload runs")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per overload run")
    parser.add_argument("--slots", type=int, default=4, help="model slots (replicas)")
    parser.add_argument("--service-ms", type=float, default=20.0, help="model time per call")
    parser.add_argument(
        "--log-level",
        default=None,
        choices=["debug", "info", "warning", "error"],
        help="the servers' log level (default: failsoft's, info; at info and warning "
        "every shed request writes a line)",
    )
    parser.add_argument(
        "--limiter",
        type=lambda text: dict(yaml.safe_load(text)),
        default=None,
        metavar="YAML",
        help="limiter options for the servers with admission control, e.g. "
        "'{queue_timeout_ms: 20}' (default: failsoft's defaults)",
    )
    parser.add_argument(
        "--burst-s",
        type=float,
        default=None,
        help="the tenants' quota burst_s (default: failsoft's default, 1 s)",
    )
    parser.add_argument("--startup-timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    if args.slots < 1 or args.service_ms <= 0 or args.duration <= 0:
        parser.error("--slots must be >= 1, --service-ms and --duration > 0")
    if args.quick:
        args.duration = 10.0
    args.capacity_seconds = 3.0 if args.quick else 8.0
    args.unloaded_seconds = 5.0 if args.quick else 15.0
    args.sigterm_seconds = 8.0 if args.quick else 20.0
    args.settle = 2.0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so `finally` stops the servers

    load_before = os.getloadavg()[0]
    servers: list[ServerProcess] = []
    with tempfile.TemporaryDirectory(prefix="failsoft-overload-") as tmp:
        settings = Settings(
            args.slots,
            args.service_ms,
            secrets.token_urlsafe(16),
            args.log_level,
            Path(tmp),
            servers,
            args.startup_timeout,
            args.limiter,
        )
        try:
            checks, facts = measure(args, settings)
        except (RuntimeError, OSError, ConfigError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        finally:
            for server in reversed(servers):
                server.stop()
    return report(checks, facts, load_before)


if __name__ == "__main__":
    sys.exit(main())
