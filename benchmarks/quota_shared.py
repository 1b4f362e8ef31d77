"""One tenant quota held by two gateways through Redis, and held apart while Redis is down.

Starts a redis-server of its own on an ephemeral port (so it can stop it) and
two real gateways (``failsoft serve``) sharing it through ``quotas:``. One
tenant has ``requests_per_s: 50`` with ``burst_s: 1``. The driver offers
200 req/s open loop, alternating between the gateways, for DURATION_S and
reports the rate admitted (200s) after the first WARMUP_S (the first burst),
as a ratio to the quota: 1.00 is exact.

Then, under the same load, it stops Redis for OUTAGE_S seconds and starts it
again: every gateway falls back to its share (rate / 2) and returns to Redis.
It reports requests that failed other than with 429, each gateway's admitted
rate while Redis was down as a ratio to its share, and how long after Redis
was back both gateways said ``failsoft_quota_mode{mode="redis"} 1``.

Baseline, in the same run: two gateways without ``quotas:`` (each limits on
its own, as before) under the same load admit about 2 x the quota.

Target (issue 15): shared admitted rate 48-52/s (ratio 0.96-1.04); 0 failed;
each gateway within its share while Redis is down; both back on Redis.

    python benchmarks/quota_shared.py                        # 60 s shared, 20 s outage
    python benchmarks/quota_shared.py --quick                # 10 s shared, 4 s outage
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import redis
from benchmarks._load import free_port, iris_body

from failsoft.control.tenants import key_digest, new_key
from failsoft.drills.server import ServerProcess

REPO = Path(__file__).resolve().parents[1]
QUOTA = 50.0  # requests per second, burst 1 s
OFFERED = 200.0  # requests per second, split over the gateways
WARMUP_S = 2.0  # the first burst (the full bucket) and the first leases
MAX_IN_FLIGHT = 1000
REQUEST_TIMEOUT_S = 10.0


@contextlib.contextmanager
def redis_on_port(folder: Path, port: int, timeout_s: float = 10.0) -> Iterator[str]:
    """A redis-server on 127.0.0.1:``port`` keeping nothing on disk; its URL."""
    folder.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [
            "redis-server", "--port", str(port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", str(folder),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                client.ping()
                break
            except redis.RedisError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.02)
        client.close()
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def gateway_yaml(demo_dir: Path, redis_url: str | None, prefix: str, key: str) -> str:
    """iris v1 from the demo's files and one tenant whose quota is shared through Redis
    (``redis_url`` None: each gateway limits on its own, as without ``quotas:``)."""
    quotas = {"redis_url": redis_url, "key_prefix": prefix} if redis_url else {}
    return json.dumps(
        {
            "quotas": quotas,
            "tenants": {
                "acme": {"key_sha256": key_digest(key), "requests_per_s": QUOTA, "burst_s": 1.0}
            },
            "models": {
                "iris": {
                    "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}],
                    "outputs": [
                        {"name": "label", "datatype": "INT64", "shape": [-1]},
                        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]},
                    ],
                    "versions": {"v1": {"backend": "onnx", "path": str(demo_dir / "iris-v1.onnx")}},
                }
            },
        },
        indent=1,
    )


def start_gateway(folder: Path, config_text: str) -> ServerProcess:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "failsoft.yaml"
    path.write_text(config_text)
    env = {
        "PYTHONPATH": os.pathsep.join(
            [str(REPO / "src"), str(REPO), os.environ.get("PYTHONPATH", "")]
        )
    }
    return ServerProcess(path, "--data-dir", str(folder / "data"), env=env).start()


@dataclass
class Sent:
    at: float  # seconds since the load began, when it was sent
    gateway: int
    status: int  # 0: no answer (connection error or timeout)
    latency_s: float


@dataclass
class Load:
    sent: list[Sent] = field(default_factory=list)
    refused_to_send: int = 0  # too many in flight

    def admitted(self, start: float, end: float, gateway: int | None = None) -> int:
        return sum(
            1
            for s in self.sent
            if s.status == 200 and start <= s.at < end and gateway in (None, s.gateway)
        )

    def p50_ms(self) -> float:
        """Median latency of the admitted requests, in milliseconds."""
        return 1000 * statistics.median(s.latency_s for s in self.sent if s.status == 200)

    def failed(self) -> list[Sent]:
        return [s for s in self.sent if s.status not in (200, 429)]


async def offer(urls: list[str], key: str, rate: float, duration_s: float, load: Load) -> None:
    """``rate`` requests per second for ``duration_s``, open loop, alternating over ``urls``."""
    body = iris_body()
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    in_flight: set[asyncio.Task[None]] = set()
    connector = aiohttp.TCPConnector(limit=200)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(at: float, gateway: int) -> None:
            url = f"{urls[gateway]}/v2/models/iris/infer"
            status = 0
            sent = time.monotonic()
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.post(url, data=body, headers=headers) as answer:
                    await answer.read()
                    status = answer.status
            load.sent.append(Sent(at, gateway, status, time.monotonic() - sent))

        start = time.monotonic()
        for index in range(int(rate * duration_s)):
            at = index / rate
            delay = start + at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if len(in_flight) >= MAX_IN_FLIGHT:
                load.refused_to_send += 1
                continue
            task = asyncio.create_task(one(at, index % len(urls)))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        if in_flight:
            await asyncio.wait(in_flight, timeout=REQUEST_TIMEOUT_S + 1)


def quota_mode(url: str) -> str | None:
    """Which mode a gateway's ``failsoft_quota_mode`` gauge says, or None."""
    import urllib.request

    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    for line in text.splitlines():
        if line.startswith("failsoft_quota_mode{") and line.endswith(" 1.0"):
            return line.split('mode="', 1)[1].split('"', 1)[0]
    return None


def wait_mode(urls: list[str], mode: str, within_s: float) -> float:
    """Seconds until every gateway says ``mode`` (polled every 20 ms); raises when not in time."""
    start = time.monotonic()
    while not all(quota_mode(url) == mode for url in urls):
        if time.monotonic() - start > within_s:
            raise TimeoutError(f"the gateways did not all report quota mode {mode!r}")
        time.sleep(0.02)
    return time.monotonic() - start


@dataclass
class Outage:
    load: Load
    down_at: float  # seconds into the load
    up_at: float
    back_s: float  # Redis back until both gateways report mode redis
    restarted: subprocess.Popen[bytes]  # the Redis started again: the caller stops it

    def share_ratio(self, gateway: int, gateways: int = 2) -> float:
        # Skip the first half second: what was leased before the stop may still be spent.
        start, end = self.down_at + 0.5, self.up_at
        admitted = self.load.admitted(start, end, gateway)
        return admitted / ((QUOTA / gateways) * (end - start))


def shared_run(urls: list[str], key: str, duration_s: float) -> tuple[Load, float]:
    """The admitted rate after the warm-up, as a ratio to the quota."""
    load = Load()
    asyncio.run(offer(urls, key, OFFERED, duration_s, load))
    admitted = load.admitted(WARMUP_S, duration_s)
    return load, admitted / (QUOTA * (duration_s - WARMUP_S))


def outage_run(
    urls: list[str], key: str, folder: Path, port: int, down_after_s: float, outage_s: float
) -> Outage:
    """Load for down_after_s + outage_s + 3 s; Redis stopped at down_after_s for outage_s.

    ``folder``/``port``: where the running Redis was started; this stops it by
    its port's owner (``redis-cli shutdown``) and starts a new one there.
    """
    load = Load()
    total_s = down_after_s + outage_s + 3.0
    moments: dict[str, float] = {}
    restarted: list[subprocess.Popen[bytes]] = []

    async def main() -> None:
        began = time.monotonic()
        driver = asyncio.create_task(offer(urls, key, OFFERED, total_s, load))
        await asyncio.sleep(down_after_s)
        moments["down"] = time.monotonic() - began
        await asyncio.to_thread(_shutdown, port)
        await asyncio.to_thread(wait_mode, urls, "local", 10.0)
        await asyncio.sleep(max(0.0, down_after_s + outage_s - (time.monotonic() - began)))
        restarted.append(await asyncio.to_thread(restart_redis, folder, port))
        moments["up"] = time.monotonic() - began
        moments["back"] = await asyncio.to_thread(wait_mode, urls, "redis", 10.0)
        await driver

    try:
        asyncio.run(main())
    except BaseException:
        for process in restarted:
            stop(process)
        raise
    return Outage(load, moments["down"], moments["up"], moments["back"], restarted[0])


def _shutdown(port: int) -> None:
    with contextlib.suppress(redis.RedisError):
        redis.Redis(port=port, socket_timeout=2).shutdown(nosave=True)


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def restart_redis(folder: Path, port: int) -> subprocess.Popen[bytes]:
    """A redis-server on ``port`` again (the caller ``stop``s it)."""
    process = subprocess.Popen(
        [
            "redis-server", "--port", str(port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", str(folder),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    client = redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            client.close()
            return process
        except redis.RedisError:
            if process.poll() is not None or time.monotonic() > deadline:
                stop(process)
                raise RuntimeError("redis-server did not restart") from None
            time.sleep(0.02)


def take_cost_ns(calls: int = 200_000) -> tuple[float, float]:
    """Nanoseconds per admission charge: a local ``TokenBucket`` against a ``LeasedBucket``
    spending its slice (what the request path does with shared quotas), in this process."""
    from failsoft.clock import SystemClock
    from failsoft.control.quota_leases import QuotaLeases
    from failsoft.control.quota_options import QuotaOptions
    from failsoft.control.tenants import TokenBucket

    clock = SystemClock()
    local = TokenBucket(1e12, 1e12, clock)
    owner = QuotaLeases(QuotaOptions(redis_url="redis://unused"), clock)  # never started
    leased = owner.bucket("t", "requests", 1e12, 1e12)
    figures = []
    for bucket in (local, leased):
        best = float("inf")
        for _ in range(5):
            if bucket is leased:
                leased.granted(calls + 1.0)  # type: ignore[attr-defined]
            start = time.perf_counter_ns()
            for _ in range(calls):
                bucket.take(1)
            best = min(best, (time.perf_counter_ns() - start) / calls)
        figures.append(best)
    return figures[0], figures[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of shared load")
    parser.add_argument("--outage", type=float, default=20.0, help="seconds Redis is down")
    parser.add_argument("--quick", action="store_true", help="10 s shared, a 4 s outage")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.outage = 10.0, 4.0
    from failsoft.demo import prepare_demo

    with tempfile.TemporaryDirectory(prefix="failsoft-quota-") as tmp:
        root = Path(tmp)
        prepare_demo(root / "demo", progress=lambda message: None)
        token_ns, leased_ns = take_cost_ns()
        print(
            f"request path: a charge costs {leased_ns:.0f} ns on a leased slice, "
            f"{token_ns:.0f} ns on a local token bucket: ratio {leased_ns / token_ns:.2f}"
        )
        port = free_port()
        key = new_key()
        gateways: list[ServerProcess] = []
        try:
            with redis_on_port(root / "redis", port) as url:
                for name in ("a", "b"):
                    config = gateway_yaml(root / "demo", url, "bench:", key)
                    gateways.append(start_gateway(root / name, config))
                urls = [g.url for g in gateways]
                wait_mode(urls, "redis", 10.0)
                load, ratio = shared_run(urls, key, args.duration)
                failed = len(load.failed())
                print(
                    f"shared: {OFFERED:.0f} req/s offered over 2 gateways for "
                    f"{args.duration:.0f} s, quota {QUOTA:.0f}/s: admitted "
                    f"{ratio * QUOTA:.2f}/s after {WARMUP_S:.0f} s = {ratio:.3f} x quota "
                    f"(target 0.96-1.04); failed other than 429: {failed}; "
                    f"p50 of admitted {load.p50_ms():.1f} ms"
                )
                outage = outage_run(urls, key, root / "redis", port, 3.0, args.outage)
                stop(outage.restarted)
            baseline_s = min(args.duration, 15.0)
            local = [
                start_gateway(root / f"local-{name}", gateway_yaml(root / "demo", None, "", key))
                for name in ("a", "b")
            ]
            gateways += local
            local_load, local_ratio = shared_run([g.url for g in local], key, baseline_s)
            print(
                f"baseline: the same load on two gateways limiting on their own (no quotas:) "
                f"for {baseline_s:.0f} s: {local_ratio:.3f} x quota; shared/baseline = "
                f"{ratio / local_ratio:.3f}; p50 of admitted {local_load.p50_ms():.1f} ms, "
                f"shared/baseline = {load.p50_ms() / local_load.p50_ms():.2f}"
            )
            shares = [outage.share_ratio(g) for g in range(2)]
            outage_failed = len(outage.load.failed())
            print(
                f"outage: Redis down {args.outage:.0f} s under load: failed other than 429: "
                f"{outage_failed}; admitted per gateway while down = "
                f"{shares[0]:.3f}, {shares[1]:.3f} x its share ({QUOTA / 2:.0f}/s); "
                f"both back on Redis {outage.back_s * 1000:.0f} ms after it was"
            )
        finally:
            for gateway in gateways:
                gateway.stop()
        met = 0.96 <= ratio <= 1.04 and failed == 0 and outage_failed == 0
        met = met and all(share <= 1.04 for share in shares)
        print("target met" if met else "target MISSED")
        return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
