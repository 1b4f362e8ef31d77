"""Two gateways on one PostgreSQL store, one SIGKILLed under load: does any client notice?

Starts two real gateways (``failsoft serve`` on loopback, the demo's iris
model, ``store.heartbeat_s`` 0.5) on one PostgreSQL store, a schema of this
run's own dropped at the end, and drives an open-loop load of RATE (200)
V2 infer requests/s at them. After WARM_S one gateway is SIGKILLed (its
whole process group); the load goes on for TAIL_S. Infer is idempotent, so
the client retries a failed request once (a refused/reset connection, a
timeout, or 502/503/504) and no more. Three setups, one after the other in the
same run (each after WARMUP_S of unmeasured load, so the adaptive limiters
have learnt the model's latency):

- ``haproxy``: HAProxy in front of both (roundrobin, health check
  ``GET /v2/health/ready`` every 1 s, down after 2 failures, ``retry-on
  conn-failure empty-response response-timeout``, ``option redispatch``, the
  configuration of the README); the client sends to HAProxy and retries
  there. HAProxy names the server that answered in a response header, and its
  stats page is polled every 20 ms for when it marks the killed one DOWN;
- ``haproxy-plain`` (information, not judged): the same without HAProxy's retry of a
  request already sent (``retry-on conn-failure`` only), so a request in
  flight at the kill fails and only the client's retry saves it;
- ``direct`` (no balancer): the client knows both addresses, alternates
  between them and retries on the *other* one (what
  ``tests/integration/test_failover.py`` runs, short).

For each it prints: requests; failed without the client's retry (the first
attempt: what a client that does not retry would have seen, the comparison);
failed after the one retry (target 0); the share of the requests sent after
the kill that the survivor answered (target 1.000); and for HAProxy,
how long after the kill it marked the dead one DOWN (it sends nothing new to
it from then on) and its own retries and redispatches.

With ``--service-ms 50`` the gateways serve a model that takes 50 ms a call
(benchmarks/_slow_model.py, admission control off) instead of iris, so about
ten requests are in flight when the gateway dies.

Exit 0 when every target is met, 1 when one is missed, 2 on a setup failure.

    PYTHONPATH=src python3 benchmarks/failover.py                  # 3 setups, ~2 minutes
    PYTHONPATH=src python3 benchmarks/failover.py --service-ms 50  # killed mid-request
    PYTHONPATH=src python3 benchmarks/failover.py --setup haproxy --tail 20
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script
from benchmarks.multi_instance import gateway_yaml, postgres_schema, start_gateway

from failsoft.drills.load import send_on_schedule
from failsoft.drills.server import ServerProcess

HOST = "127.0.0.1"
RATE = 200.0
WARM_S = 5.0
WARMUP_S = 3.0  # unmeasured load on both gateways before the run
TAIL_S = 10.0
CLIENT_TIMEOUT_S = 5.0
SERVICE_MS = 0.0  # > 0: the `slow` model instead of iris, so requests are in flight at the kill
SLOW_SLOTS = 32


@dataclass(frozen=True)
class Model:
    path: str
    body: bytes

    @classmethod
    def of(cls, service_ms: float) -> Model:
        if service_ms > 0:
            name, field = "slow", "x"
        else:
            name, field = "iris", "features"
        body = f'{{"inputs":[{{"name":"{field}","datatype":"FP32","shape":[1,4],'
        body += '"data":[5.1,3.5,1.4,0.2]}]}'
        return cls(f"/v2/models/{name}/infer", body.encode())


def config_yaml(demo_dir: Path, store: dict[str, object], service_ms: float) -> str:
    """The demo's iris, and with ``service_ms`` a model that sleeps that long per call
    (SLOW_SLOTS at once, so 6x the load of the run fits)."""
    config = json.loads(gateway_yaml(demo_dir, store))
    if service_ms > 0:
        # benchmarks/_slow_model.py reads these from the gateway's environment (inherited).
        os.environ["FAILSOFT_BENCH_SLOTS"] = str(SLOW_SLOTS)
        os.environ["FAILSOFT_BENCH_SERVICE_MS"] = f"{service_ms:g}"
        config["models"]["slow"] = {
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
            "outputs": [{"name": "y", "datatype": "INT64", "shape": [-1]}],
            "versions": {
                "v1": {
                    "backend": "python",
                    "function": "benchmarks._slow_model:predict",
                    "replicas": SLOW_SLOTS,
                    "execution": "thread",
                }
            },
            # Admission control off: the figure is failover's, not the limiter's (a lone
            # gateway sheds a few % of 200 req/s to this model on 2 busy cores while its
            # limiter adapts; benchmarks/overload.py measures that part).
            "limiter": {"enabled": False},
            "bulkhead": {"max_in_flight": 10_000},
        }
    return json.dumps(config, indent=1)


SERVED_BY = "X-Failsoft-Instance"  # set by HAProxy: the server that answered
RETRIED = frozenset({502, 503, 504})
DISCONNECTED, TIMED_OUT, NOT_SENT = -2, -3, -6
HAPROXY, PLAIN, DIRECT = "haproxy", "haproxy-plain", "direct"
SETUPS = (HAPROXY, PLAIN, DIRECT)
NAMES = ("gw0", "gw1")


@dataclass
class Records:
    """Every scheduled request, in schedule order (perf_counter times)."""

    sent: np.ndarray
    first_done: np.ndarray  # when the first attempt's answer (or error) came
    first: np.ndarray  # status of the first attempt, or a negative outcome
    final: np.ndarray  # status after the client's one retry (the first's when none)
    served_by: np.ndarray  # index of the gateway that answered 200, -1 when none

    @classmethod
    def empty(cls, count: int) -> Records:
        return cls(
            np.full(count, np.nan),
            np.full(count, np.nan),
            np.full(count, NOT_SENT, dtype=np.int32),
            np.full(count, NOT_SENT, dtype=np.int32),
            np.full(count, -1, dtype=np.int32),
        )


# route(index, attempt) -> (base URL, index of the gateway it goes to, or -1 for a balancer)
Route = Callable[[int, int], tuple[str, int]]


async def drive(
    model: Model,
    route: Route,
    rate: float,
    duration_s: float,
    kill_at_s: float,
    kill: Callable[[], None],
    watch: Callable[[], asyncio.Future[None] | None] = lambda: None,
    what: str = "failed answers",
) -> tuple[Records, float]:
    """``rate`` infers/s for ``duration_s``, each retried once; ``kill`` at ``kill_at_s``.

    Returns the records and the perf_counter instant of the kill.
    """
    import aiohttp

    count = round(rate * duration_s)
    records = Records.empty(count)
    offsets = [index / rate for index in range(count)]
    lags = np.zeros(count)
    clock = time.perf_counter
    killed: list[float] = []
    samples: list[str] = []
    watchers: list[asyncio.Future[None]] = []
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=256, keepalive_timeout=3.0),
        timeout=aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_S),
        skip_auto_headers=("User-Agent",),
    )
    headers = {"content-type": "application/json"}

    async def attempt(url: str, target: int) -> tuple[int, int]:
        try:
            async with session.post(url + model.path, data=model.body, headers=headers) as answer:
                text = await answer.read()
                if answer.status != 200 and len(samples) < 3:
                    samples.append(f"{answer.status} {text[:160]!r}")
                by = target
                if target < 0:
                    name = answer.headers.get(SERVED_BY, "")
                    by = NAMES.index(name) if name in NAMES else -1
                return answer.status, by
        except TimeoutError:
            return TIMED_OUT, -1
        except aiohttp.ClientError:
            return DISCONNECTED, -1

    async def one(index: int) -> None:
        url, target = route(index, 0)
        status, by = await attempt(url, target)
        records.first[index] = status
        records.first_done[index] = time.perf_counter()
        if status < 0 or status in RETRIED:
            url, target = route(index, 1)
            status, by = await attempt(url, target)
        records.final[index] = status
        records.served_by[index] = by if status == 200 else -1

    def launch(index: int, _origin: float) -> Coroutine[Any, Any, None]:
        records.sent[index] = clock()
        return one(index)

    def do_kill() -> None:
        killed.append(clock())
        kill()
        started = watch()
        if started is not None:
            watchers.append(started)

    try:
        loop = asyncio.get_running_loop()
        start = clock() + 0.05
        loop.call_at(loop.time() + (start - clock()) + kill_at_s, do_kill)
        await send_on_schedule(offsets, start, clock, lags, launch, 2 * CLIENT_TIMEOUT_S + 1)
        for watcher in watchers:
            await asyncio.wait_for(watcher, timeout=CLIENT_TIMEOUT_S * 4)
    finally:
        await session.close()
    if not killed:
        raise RuntimeError("the kill did not run")
    if samples:
        print(f"  {what}, first {len(samples)}: {'; '.join(samples)}")
    return records, killed[0]


@dataclass
class Outcome:
    setup: str
    requests: int
    after_kill: int  # requests sent at or after the kill
    in_flight: int  # sent before the kill, first answer after it
    failed_first: int  # failed without the client's retry
    failed_final: int  # failed after the one retry
    failed_final_before: int  # ... of them sent before the kill
    retried: int
    survivor_share: float  # of the requests sent after the kill, answered 200 by the survivor
    balance_before: tuple[float, float]  # share of each gateway before the kill
    kinds: dict[str, int]  # how first attempts failed
    marked_down_s: float = float("nan")  # HAProxy: kill -> the dead one DOWN
    haproxy_retries: int = 0
    haproxy_redispatches: int = 0


def outcome_of(setup: str, records: Records, killed_at: float, victim: int) -> Outcome:
    after = records.sent >= killed_at
    served = records.final == 200
    answered_after = after & served
    survivor = 1 - victim
    before = ~after & served
    shares = tuple(
        float((records.served_by[before] == gw).sum() / max(1, before.sum())) for gw in (0, 1)
    )
    kinds: dict[str, int] = {}
    names = {DISCONNECTED: "refused/reset", TIMED_OUT: "timeout", NOT_SENT: "unfinished"}
    for status in records.first[records.first != 200]:
        key = names.get(int(status), f"HTTP {int(status)}")
        kinds[key] = kinds.get(key, 0) + 1
    return Outcome(
        setup=setup,
        requests=len(records.first),
        after_kill=int(after.sum()),
        in_flight=int((~after & (records.first_done >= killed_at)).sum()),
        failed_first=int((records.first != 200).sum()),
        failed_final=int((records.final != 200).sum()),
        failed_final_before=int((~after & (records.final != 200)).sum()),
        retried=int(((records.first < 0) | np.isin(records.first, list(RETRIED))).sum()),
        survivor_share=float(
            (records.served_by[answered_after] == survivor).sum() / max(1, after.sum())
        ),
        balance_before=(shares[0], shares[1]),
        kinds=kinds,
    )


def warm_up(model: Model, urls: Sequence[str], rate: float, seconds: float) -> None:
    """Unmeasured load on every gateway: the adaptive limiters learn the model's latency
    (a cold one sheds a 50 ms model's first requests)."""
    what = "warm-up (unmeasured) failed answers"
    asyncio.run(drive(model, direct_route(urls), rate, seconds, 0, lambda: None, what=what))


# --- HAProxy --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def haproxy_config(
    gateways: Sequence[str], port: int, stats_port: int, l7_retries: bool = True
) -> str:
    retry_on = "conn-failure empty-response response-timeout" if l7_retries else "conn-failure"
    servers = "\n".join(
        f"    server {name} {url.removeprefix('http://')} check inter 1s fall 2 rise 1"
        for name, url in zip(NAMES, gateways, strict=True)
    )
    return f"""global
    nbthread 1
    maxconn 4096

defaults
    mode http
    timeout connect 1s
    timeout client 30s
    timeout server 5s
    timeout check 1s
    option http-keep-alive
    retries 3
    option redispatch

frontend stats
    bind {HOST}:{stats_port}
    stats enable
    stats uri /stats

frontend gateway
    bind {HOST}:{port}
    default_backend failsoft

backend failsoft
    balance roundrobin
    option httpchk GET /v2/health/ready
    http-check expect status 200
    retry-on {retry_on}
    http-response set-header {SERVED_BY} %[srv_name]
{servers}
"""


class HAProxy:
    def __init__(self, folder: Path, gateways: Sequence[str], l7_retries: bool = True) -> None:
        self.port, self.stats_port = free_port(), free_port()
        path = folder / "haproxy.cfg"
        path.write_text(haproxy_config(gateways, self.port, self.stats_port, l7_retries))
        self.log = open(folder / "haproxy.log", "wb")  # noqa: SIM115 - closed by stop()
        self.process = subprocess.Popen(
            ["haproxy", "-db", "-f", str(path)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.url = f"http://{HOST}:{self.port}"

    def stats(self) -> dict[str, dict[str, str]]:
        """HAProxy's CSV stats, by server name (and BACKEND)."""
        import urllib.request

        with urllib.request.urlopen(f"http://{HOST}:{self.stats_port}/stats;csv", timeout=2) as r:
            lines = r.read().decode().splitlines()
        header = lines[0].lstrip("# ").split(",")
        rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]
        return {row["svname"]: row for row in rows if row.get("pxname") == "failsoft"}

    def wait_both_up(self, within_s: float = 30.0) -> None:
        deadline = time.monotonic() + within_s
        while True:
            with contextlib.suppress(OSError, KeyError, IndexError):
                rows = self.stats()
                if all(rows[name]["status"] == "UP" for name in NAMES):
                    return
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"HAProxy did not see both gateways UP within {within_s:g} s")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(10)
        self.log.close()


async def marked_down(proxy: HAProxy, name: str, since: float, seen: list[float]) -> None:
    """Append the seconds from ``since`` until HAProxy shows ``name`` DOWN (polled, bounded)."""
    loop = asyncio.get_running_loop()
    while time.perf_counter() - since < 4 * CLIENT_TIMEOUT_S:
        with contextlib.suppress(OSError, KeyError, IndexError):
            rows = await loop.run_in_executor(None, proxy.stats)
            if rows[name]["status"].startswith("DOWN"):
                seen.append(time.perf_counter() - since)
                return
        await asyncio.sleep(0.02)


# --- one setup ------------------------------------------------------------------------


def kill_group(server: ServerProcess) -> None:
    assert server.process is not None
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.process.pid, signal.SIGKILL)


def direct_route(urls: Sequence[str]) -> Route:
    """Alternate between the gateways; the retry goes to the other one."""

    def route(index: int, attempt: int) -> tuple[str, int]:
        target = (index + attempt) % len(urls)
        return urls[target], target

    return route


def run_setup(
    setup: str,
    demo_dir: Path,
    root: Path,
    rate: float,
    warm_s: float,
    tail_s: float,
    service_ms: float = SERVICE_MS,
) -> Outcome:
    with postgres_schema("failsoft_failover") as url:
        store = {"url": url, "poll_s": 30.0, "heartbeat_s": 0.5}
        config = config_yaml(demo_dir, store, service_ms)
        gateways: list[ServerProcess] = []
        proxy: HAProxy | None = None
        try:
            for name in NAMES:
                gateways.append(start_gateway(root / setup / name, config))
            victim = 0
            seen: list[float] = []
            if setup in (HAPROXY, PLAIN):
                proxy = HAProxy(root / setup, [g.url for g in gateways], setup == HAPROXY)
                proxy.wait_both_up()
                balancer = proxy.url

                def route(index: int, attempt: int) -> tuple[str, int]:
                    return balancer, -1

                def watch() -> asyncio.Future[None] | None:
                    assert proxy is not None
                    since = time.perf_counter()
                    return asyncio.ensure_future(marked_down(proxy, NAMES[victim], since, seen))
            else:
                route = direct_route([g.url for g in gateways])

                def watch() -> asyncio.Future[None] | None:
                    return None

            dead = gateways[victim]
            model = Model.of(service_ms)
            warm_up(model, [g.url for g in gateways], rate, WARMUP_S)
            duration_s = warm_s + tail_s
            load = drive(model, route, rate, duration_s, warm_s, lambda: kill_group(dead), watch)
            records, killed_at = asyncio.run(load)
            outcome = outcome_of(setup, records, killed_at, victim)
            if proxy is not None:
                outcome.marked_down_s = seen[0] if seen else float("nan")
                row = proxy.stats()["BACKEND"]
                outcome.haproxy_retries = int(row.get("wretr") or 0)
                outcome.haproxy_redispatches = int(row.get("wredis") or 0)
            return outcome
        finally:
            if proxy is not None:
                proxy.stop()
            for server in gateways:
                server.stop()


def print_outcome(o: Outcome, rate: float, service_ms: float) -> None:
    model = f"a {service_ms:g} ms model" if service_ms > 0 else "iris (onnx)"
    print(
        f"\n== {o.setup}: {rate:g} req/s open loop to {model}, gw0 SIGKILLed, client retries once"
    )
    print(
        f"  requests: {o.requests} ({o.after_kill} sent at or after the kill, "
        f"{o.in_flight} in flight at it)"
    )
    print(
        f"  failed without the client's retry (first attempt): {o.failed_first} "
        f"= {o.failed_first / o.requests:.4f} of requests  {o.kinds or ''}"
    )
    print(
        f"  failed after one client retry: {o.failed_final} "
        f"= {o.failed_final / o.requests:.4f} (target 0; {o.retried} retried; "
        f"{o.failed_final_before} sent before the kill)"
    )
    print(
        f"  requests sent after the kill answered by the survivor: {o.survivor_share:.3f} "
        f"(target 1.000); before the kill gw0 {o.balance_before[0]:.2f}, "
        f"gw1 {o.balance_before[1]:.2f}"
    )
    if o.setup in (HAPROXY, PLAIN):
        print(
            f"  HAProxy marked gw0 DOWN {o.marked_down_s:.2f} s after the kill "
            f"(check inter 1s fall 2); its retries {o.haproxy_retries}, "
            f"redispatches {o.haproxy_redispatches}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setup", choices=[*SETUPS, "all"], default="all")
    parser.add_argument("--rate", type=float, default=RATE)
    parser.add_argument("--warm", type=float, default=WARM_S, help="seconds before the kill")
    parser.add_argument("--tail", type=float, default=TAIL_S, help="seconds after the kill")
    parser.add_argument(
        "--service-ms",
        type=float,
        default=SERVICE_MS,
        help="serve a model that takes this long per call instead of iris (requests in flight)",
    )
    args = parser.parse_args(argv)
    setups = list(SETUPS) if args.setup == "all" else [args.setup]
    if {HAPROXY, PLAIN} & set(setups) and shutil.which("haproxy") is None:
        print("failover: haproxy is not installed (apt-get install -y haproxy)", file=sys.stderr)
        return 2
    from failsoft.demo import prepare_demo

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so `finally` stops the servers
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="failsoft-failover-") as scratch:
        root = Path(scratch)
        try:
            prepare_demo(root / "demo", progress=lambda message: None)
            for setup in setups:
                outcome = run_setup(
                    setup, root / "demo", root, args.rate, args.warm, args.tail, args.service_ms
                )
                print_outcome(outcome, args.rate, args.service_ms)
                outcomes.append(outcome)
        except Exception as error:  # a setup failure: say what, exit 2
            print(f"failover: setup failed: {error}", file=sys.stderr)
            return 2
    judged = [o for o in outcomes if o.setup != PLAIN]  # haproxy-plain is information
    met = all(o.failed_final == 0 and o.survivor_share == 1.0 for o in judged)
    verdict = "met" if met else "MISSED"
    names = ", ".join(o.setup for o in judged)
    print(f"\ntarget ({names}): 0 failed after the retry, survivor serves all: {verdict}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
