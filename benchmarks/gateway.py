"""Gateway mode: failsoft as a proxy, whole pipeline on, against bare Python proxies and HAProxy.

Starts three fast upstream replicas (one nginx process, one server block per
loopback port, a fixed V2 answer from ``return 200``; a Python stub when nginx
is missing, labelled as such) and, in front of them, four proxies on free
loopback ports:

- ``bare-h1pool`` (the baseline): ``benchmarks/_bare_proxy.py --client
  h1pool``, uvicorn + plain ASGI + failsoft's own ``H1Pool`` client (one pool
  per replica, as the http backend has), round robin, no logic. It pays for
  the same server and the same HTTP client as failsoft, so the ratio to it
  measures failsoft's pipeline alone;
- ``failsoft``: ``failsoft serve`` with an ``http`` version over the three
  replicas and its default resilience options (retries, hedging, breakers,
  ejection, as they land);
- ``bare-aiohttp`` (information): the same bare proxy on one pooled aiohttp
  session;
- ``haproxy`` (information): ``mode http``, roundrobin, one thread,
  keep-alive to the servers (``http-reuse always``), no logging (skipped when
  not installed).

It checks that each answers the expected V2 body (label 1), warms them up,
then drives each with the same closed-loop load (wrk -t1 -cN --latency, or a
Python aiohttp loop when wrk is missing) in alternating rounds (bare-h1pool,
failsoft, bare-aiohttp, haproxy, repeated); the best round of each counts.
Then it measures the latency failsoft adds at a fixed rate: open-loop runs
(1,000 req/s, latency from the scheduled send time) straight to one replica
and through each proxy, alternating, lowest p50 of each. Prints req/s, p50,
p99, the failsoft/bare-h1pool throughput ratio (target >= 0.7), the p50
latency failsoft adds over bare-h1pool at 1,000 req/s (target <= 1 ms), and
for information failsoft/bare-aiohttp, failsoft/haproxy and the p50 added
over the direct call.

    python benchmarks/gateway.py            # 2 rounds of 10 s, 5 s open loop
    python benchmarks/gateway.py --quick    # 1 round of 3 s, 2 s open loop
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import signal
import sys
import tempfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _load import (
    REPO,
    LoadResult,
    OpenLoopResult,
    ServerProcess,
    drive,
    free_port,
    have_wrk,
    open_loop,
    src_env,
    wait_until_answers,
)
from _upstreams import EXPECTED_LABEL, INFER_PATH, MODEL, REQUEST, upstream_argv

if str(REPO / "src") not in sys.path:
    sys.path.insert(1, str(REPO / "src"))
from failsoft.config import load_config

TARGET_RATIO = 0.7
TARGET_ADDED_MS = 1.0
HOST = "127.0.0.1"
REPLICAS = 3
BARE_H1, FAILSOFT, BARE_AIOHTTP, HAPROXY = "bare-h1pool", "failsoft", "bare-aiohttp", "haproxy"
DIRECT = "direct"


@dataclass
class Setup:
    """What is running: the proxies' infer URLs (in load order) and one replica's."""

    upstream_label: str
    proxies: dict[str, str]
    direct_url: str


def failsoft_config(upstream_urls: list[str]) -> dict[str, Any]:
    # The configuration the issue requires to work; resilience options at their defaults.
    return {
        "models": {
            MODEL: {
                "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
                "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]}],
                "versions": {"v1": {"backend": "http", "urls": upstream_urls}},
                "timeout_ms": 1000,
            }
        }
    }


def failsoft_argv(config_path: Path, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "failsoft",
        "serve",
        "--config",
        str(config_path),
        "--host",
        HOST,
        "--port",
        str(port),
    ]


def bare_proxy_argv(upstream_urls: list[str], port: int, client: str) -> list[str]:
    argv = [sys.executable, str(Path(__file__).with_name("_bare_proxy.py")), "--client", client]
    for url in upstream_urls:
        argv += ["--upstream", url]
    return [*argv, "--host", HOST, "--port", str(port)]


def haproxy_config(upstream_ports: list[int], port: int) -> str:
    servers = "\n".join(
        f"    server r{i} {HOST}:{p}" for i, p in enumerate(upstream_ports)
    )  # no health checks: nginx does not fail here, and checks would be extra load
    return f"""global
    nbthread 1
    maxconn 4096

defaults
    mode http
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 30s
    option http-keep-alive
    http-reuse always

frontend gateway
    bind {HOST}:{port}
    default_backend replicas

backend replicas
    balance roundrobin
{servers}
"""


def haproxy_argv(config_path: Path) -> list[str]:
    # -db: foreground, no daemon; no pidfile, no stats socket, no log lines.
    return ["haproxy", "-db", "-f", str(config_path)]


def make_check(name: str) -> Callable[[bytes], None]:
    def check(answer: bytes) -> None:
        try:
            outputs = {o["name"]: o for o in orjson.loads(answer)["outputs"]}
            label = outputs["label"]
            ok = label["data"] == EXPECTED_LABEL and label["datatype"] == "INT64"
        except (KeyError, TypeError, ValueError) as error:
            raise RuntimeError(
                f"{name} gave an unreadable answer ({error}): {answer[:300]!r}"
            ) from None
        if not ok:
            raise RuntimeError(
                f"{name} answered {answer[:300]!r}; expected label {EXPECTED_LABEL} (INT64)"
            )

    return check


def served_by(url: str, requests: int) -> collections.Counter[str]:
    """How failsoft spread ``requests`` answers over its replicas (Failsoft-Served-By)."""
    seen: collections.Counter[str] = collections.Counter()
    for _ in range(requests):
        request = urllib.request.Request(
            url, data=REQUEST, method="POST", headers={"content-type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=5.0) as response:
                response.read()
                seen[response.headers.get("Failsoft-Served-By", "(no header)")] += 1
        except OSError as error:  # urllib's HTTPError and URLError included
            raise RuntimeError(f"failsoft stopped answering {url}: {error}") from None
    return seen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per closed-loop run")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="one round of 3 s, 2 s of open loop")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of load first")
    parser.add_argument("--load", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--rate", type=float, default=1000.0, help="open-loop requests/s")
    parser.add_argument(
        "--open-loop-duration", type=float, default=5.0, help="seconds per open-loop run"
    )
    parser.add_argument("--startup-timeout", type=float, default=60.0)
    parser.add_argument(
        "--fail-below",
        type=float,
        default=None,
        metavar="RATIO",
        help="exit 1 when failsoft/bare-h1pool throughput is below RATIO",
    )
    parser.add_argument(
        "--fail-above-ms",
        type=float,
        default=None,
        metavar="MS",
        help="exit 1 when failsoft adds more than MS to bare-h1pool's open-loop p50",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.rounds, args.open_loop_duration = 3.0, 1, 2.0
    tool = ("wrk" if have_wrk() else "python") if args.load == "auto" else args.load
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so `finally` stops the servers

    load_before = os.getloadavg()[0]
    try:
        label, runs, opens = measure(args, tool)
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return report(label, runs, opens, args, tool, load_before)


def start_all(tmp_dir: Path, servers: list[ServerProcess], timeout_s: float) -> Setup:
    """Start the upstreams and the proxies (appending each to ``servers``), check answers."""
    ports: set[int] = set()
    while len(ports) < REPLICAS + 4:
        ports.add(free_port(HOST))
    upstream_ports, (h1_port, failsoft_port, aiohttp_port, haproxy_port) = (
        sorted(ports)[:REPLICAS],
        sorted(ports)[REPLICAS:],
    )
    upstream_urls = [f"http://{HOST}:{p}" for p in upstream_ports]

    upstream_label, argv = upstream_argv(upstream_ports, tmp_dir)
    upstream = ServerProcess("upstreams", argv, tmp_dir)
    servers.append(upstream)
    for url in upstream_urls:
        wait_until_answers(upstream, url + INFER_PATH, REQUEST, timeout_s, make_check(url))
    print(f"upstreams: {REPLICAS} replicas ({upstream_label}) at {', '.join(upstream_urls)}")

    config_path = tmp_dir / "failsoft.yaml"
    config_path.write_text(yaml.safe_dump(failsoft_config(upstream_urls), sort_keys=False))
    load_config(config_path)  # a bad config is our bug: fail before starting
    commands = [
        (BARE_H1, bare_proxy_argv(upstream_urls, h1_port, "h1pool"), src_env(), h1_port),
        (FAILSOFT, failsoft_argv(config_path, failsoft_port), src_env(), failsoft_port),
        (BARE_AIOHTTP, bare_proxy_argv(upstream_urls, aiohttp_port, "aiohttp"), None, aiohttp_port),
    ]
    if shutil.which("haproxy"):
        haproxy_path = tmp_dir / "haproxy.cfg"
        haproxy_path.write_text(haproxy_config(upstream_ports, haproxy_port))
        commands.append((HAPROXY, haproxy_argv(haproxy_path), None, haproxy_port))
    else:
        print("haproxy: not installed, skipped")
    started = []
    for name, command, env, port in commands:
        servers.append(ServerProcess(name, command, tmp_dir, env))
        started.append((servers[-1], port))

    proxies = {}
    for server, port in started:
        url = f"http://{HOST}:{port}{INFER_PATH}"
        wait_until_answers(server, url, REQUEST, timeout_s, make_check(server.name))
        proxies[server.name] = url
        print(f"{server.name}: answers label {EXPECTED_LABEL} at {url}", flush=True)
    spread = served_by(proxies[FAILSOFT], 3 * REPLICAS)
    print(
        "failsoft spread over replicas: "
        + ", ".join(f"{name} x{n}" for name, n in sorted(spread.items())),
        flush=True,
    )
    return Setup(upstream_label, proxies, upstream_urls[0] + INFER_PATH)


def measure(
    args: argparse.Namespace, tool: str
) -> tuple[str, dict[str, list[LoadResult]], dict[str, list[OpenLoopResult]]]:
    """Start everything, check it, warm up, run the rounds; always stop everything."""
    servers: list[ServerProcess] = []
    with tempfile.TemporaryDirectory(prefix="failsoft-gateway-") as tmp:
        try:
            setup = start_all(Path(tmp), servers, args.startup_timeout)
            for url in setup.proxies.values():
                drive(url, REQUEST, connections=args.connections, duration_s=args.warmup, tool=tool)

            runs: dict[str, list[LoadResult]] = {name: [] for name in setup.proxies}
            for round_no in range(1, args.rounds + 1):
                for name, url in setup.proxies.items():
                    result = drive(
                        url,
                        REQUEST,
                        connections=args.connections,
                        duration_s=args.duration,
                        tool=tool,
                    )
                    runs[name].append(result)
                    print(
                        f"round {round_no} {name:>10}: {result.rps:10.1f} req/s  "
                        f"p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:6.2f} ms  "
                        f"errors {result.errors}",
                        flush=True,
                    )

            targets = {DIRECT: setup.direct_url, **setup.proxies}
            for url in targets.values():  # warm the driver's code paths and connections
                open_loop(url, REQUEST, rate=args.rate, duration_s=0.5)
            opens: dict[str, list[OpenLoopResult]] = {name: [] for name in targets}
            for round_no in range(1, args.rounds + 1):
                for name, url in targets.items():
                    open_result = open_loop(
                        url, REQUEST, rate=args.rate, duration_s=args.open_loop_duration
                    )
                    opens[name].append(open_result)
                    print(
                        f"open loop {round_no} {name:>10}: p50 {open_result.p50_ms:6.2f} ms  "
                        f"p99 {open_result.p99_ms:6.2f} ms  errors {open_result.errors}",
                        flush=True,
                    )
        finally:
            for server in reversed(servers):
                server.stop()
    return setup.upstream_label, runs, opens


def report(
    upstream_label: str,
    runs: dict[str, list[LoadResult]],
    opens: dict[str, list[OpenLoopResult]],
    args: argparse.Namespace,
    tool: str,
    load_before: float,
) -> int:
    best = {name: max(results, key=lambda r: r.rps) for name, results in runs.items()}
    how = (
        f"wrk -t1 -c{args.connections} -d{round(args.duration)}s"
        if tool == "wrk"
        else f"python aiohttp, {args.connections} connections, {args.duration:g}s"
    )
    print(
        f"\nbest of {args.rounds} round(s), closed loop ({how}), {MODEL} [1,4] FP32 row, "
        f"{REPLICAS} upstream replicas: {upstream_label}\n"
    )
    print(f"{'proxy':<13} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for name, result in best.items():
        print(
            f"{name:<13} {result.rps:>10.1f} {result.p50_ms:>8.2f} {result.p99_ms:>8.2f} "
            f"{sum(r.errors for r in runs[name]):>7}"
        )
    ratio = best[FAILSOFT].rps / best[BARE_H1].rps
    print(f"\nratio failsoft/bare-h1pool: {ratio:.2f} (target >= {TARGET_RATIO})")
    for other in (BARE_AIOHTTP, HAPROXY):
        if other in best:
            print(
                f"ratio failsoft/{other}: {best[FAILSOFT].rps / best[other].rps:.2f} (information)"
            )

    low = {name: min(results, key=lambda r: r.p50_ms) for name, results in opens.items()}
    print(
        f"\nopen loop, {args.rate:g} req/s for {args.open_loop_duration:g}s, latency from the "
        f"scheduled send time, lowest p50 of {args.rounds} round(s)\n"
    )
    print(
        f"{'target':<13} {'p50 ms':>8} {'+p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} "
        f"{'max ms':>8} {'errors':>7} {'send lag p99':>13}"
    )
    for name, lowest in low.items():
        plus = lowest.p50_ms - low[DIRECT].p50_ms
        print(
            f"{'direct r0' if name == DIRECT else name:<13} {lowest.p50_ms:>8.2f} "
            f"{'' if name == DIRECT else f'{plus:.2f}':>8} {lowest.p90_ms:>8.2f} "
            f"{lowest.p99_ms:>8.2f} {lowest.max_ms:>8.2f} "
            f"{sum(r.errors for r in opens[name]):>7} {lowest.send_lag_p99_ms:>10.2f} ms"
        )
    print(
        "(+p50: over the direct call; send lag: how late the driver itself sent, "
        "already in the latencies)"
    )
    added = low[FAILSOFT].p50_ms - low[BARE_H1].p50_ms
    print(
        f"\nadded p50 latency over bare-h1pool: {added:.2f} ms (target <= {TARGET_ADDED_MS:g} ms); "
        f"over the direct call: {low[FAILSOFT].p50_ms - low[DIRECT].p50_ms:.2f} ms (information)"
    )

    cpus = os.cpu_count() or 1
    if load_before > cpus / 4:
        print(
            f"note: the 1-minute load average was {load_before:.1f} on {cpus} CPUs before "
            "the run; other work may have shared the machine and made the numbers noisy"
        )
    if not upstream_label.startswith("nginx"):
        print("note: without nginx the upstream is a Python stub; the ratios mean little")
    if tool == "python":
        print(
            "note: the Python load driver shares the CPU and may be the bottleneck; "
            "install wrk for a truer number"
        )
    failed = any(r.errors for results in runs.values() for r in results) or any(
        r.errors for results in opens.values() for r in results
    )
    if failed:
        print("error: some requests failed; the numbers above are not valid", file=sys.stderr)
        return 1
    if args.fail_below is not None and ratio < args.fail_below:
        print(f"error: ratio {ratio:.2f} is below {args.fail_below}", file=sys.stderr)
        return 1
    if args.fail_above_ms is not None and added > args.fail_above_ms:
        print(
            f"error: added p50 latency {added:.2f} ms is above {args.fail_above_ms} ms",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
