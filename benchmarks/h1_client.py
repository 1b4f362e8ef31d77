"""Upstream client: failsoft's H1Pool against aiohttp, requests/s and CPU per request.

Starts one upstream on a free loopback port, in its own process so that this
process's CPU time is the client's alone: nginx when it is on PATH, otherwise
this file as a tiny uvloop + httptools server (``--serve PORT``), labelled as
such. It answers ``POST /v2/models/demo/infer`` with a fixed 150-byte JSON.

Then, in one uvloop run, each client sends N POSTs of a 90-byte V2 body with
the headers the http backend sends, first one after the other (sequential),
then from 16 concurrent tasks; the clients take turns for several rounds and
the best round of each counts. aiohttp is a ClientSession over a TCPConnector
set up as ``failsoft.backends.http.new_session`` does, used as
``HttpReplica.infer`` uses it (a per-request ClientTimeout, ``read()`` of the
body); H1Pool is ``failsoft.backends.h1pool.H1Pool``. Every answer's status is
checked and the first body of each run compared with the expected one.

Prints requests/s and client CPU microseconds per request for each, and the
H1Pool/aiohttp ratios (higher is better for H1Pool, for both).

    python benchmarks/h1_client.py              # N=20000, 3 rounds
    python benchmarks/h1_client.py --quick      # N=5000, 1 round
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import aiohttp
import httptools
import orjson
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _load import REPO, ServerProcess, free_port, wait_until_answers
from _upstreams import have_nginx

if str(REPO / "src") not in sys.path:
    sys.path.insert(1, str(REPO / "src"))
from failsoft.backends.h1pool import H1Pool

HOST = "127.0.0.1"
PATH = "/v2/models/demo/infer"
CONCURRENCY = 16


def _padded_json(value: dict[str, object], size: int) -> bytes:
    """``value`` as JSON with an ``id`` field padded so the whole is ``size`` bytes."""
    bare = orjson.dumps({"id": "", **value})
    padded = orjson.dumps({"id": "x" * (size - len(bare)), **value})
    assert len(padded) == size, (len(padded), size)
    return padded


ANSWER = _padded_json(
    {
        "model_name": "demo",
        "model_version": "v1",
        "outputs": [{"name": "label", "datatype": "INT64", "shape": [1], "data": [1]}],
    },
    150,
)
BODY = _padded_json(
    {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}, 90
)
HEADERS = (
    ("Content-Type", "application/json"),
    ("X-Request-Id", "0f8e3b2a-bench"),
    ("Failsoft-Timeout-Ms", "5000"),
)
TIMEOUT_S = 5.0


# --- the upstream --------------------------------------------------------------------


def nginx_argv(port: int, work_dir: Path) -> list[str]:
    """One nginx process answering ANSWER on ``port``; all its state in ``work_dir``."""
    temp_paths = "\n".join(
        f"    {kind}_temp_path {work_dir / (kind + '_temp')};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    config = f"""daemon off;
master_process off;
worker_processes 1;
pid {work_dir / "nginx.pid"};
error_log {work_dir / "nginx-error.log"} warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    server_tokens off;
    keepalive_timeout 75s;
    keepalive_requests 1000000;
{temp_paths}
    server {{
        listen {HOST}:{port};
        location = {PATH} {{
            default_type application/json;
            return 200 '{ANSWER.decode()}';
        }}
    }}
}}
"""
    config_path = work_dir / "nginx.conf"
    config_path.write_text(config)
    error_log = str(work_dir / "nginx-error.log")
    return ["nginx", "-p", str(work_dir), "-e", error_log, "-c", str(config_path)]


class _StubServer(asyncio.Protocol):
    """The fallback upstream: every complete request gets the fixed answer."""

    RESPONSE = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(ANSWER), ANSWER)
    )

    def __init__(self) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            if self._transport is not None:
                self._transport.close()

    def on_message_complete(self) -> None:
        if self._transport is not None:
            self._transport.write(self.RESPONSE)


async def serve_stub(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(_StubServer, HOST, port)
    await server.serve_forever()


def start_upstream(work_dir: Path) -> tuple[str, ServerProcess, int]:
    port = free_port(HOST)
    if have_nginx():
        label, argv = "nginx", nginx_argv(port, work_dir)
    else:
        label = "python stub (no nginx on PATH; slower, but the ratios still compare the clients)"
        argv = [sys.executable, str(Path(__file__).resolve()), "--serve", str(port)]
    server = ServerProcess("upstream", argv, work_dir)

    def check(answer: bytes) -> None:
        if answer != ANSWER:
            raise RuntimeError(f"unexpected answer: {answer!r}")

    wait_until_answers(server, f"http://{HOST}:{port}{PATH}", BODY, 15.0, check)
    return label, server, port


# --- the clients --------------------------------------------------------------------

Post = Callable[[], Awaitable[bytes]]


@dataclass
class Client:
    name: str
    post: Post
    close: Callable[[], Awaitable[None]]


def aiohttp_client(port: int) -> Client:
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(
            limit=128, limit_per_host=128, keepalive_timeout=30, ttl_dns_cache=300
        ),
        skip_auto_headers=("User-Agent",),
        auto_decompress=False,
    )
    url = f"http://{HOST}:{port}{PATH}"
    headers = dict(HEADERS)

    async def post() -> bytes:
        async with session.post(
            url, data=BODY, headers=headers, timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)
        ) as response:
            payload = await response.read()
            if response.status != 200:
                raise RuntimeError(f"aiohttp: HTTP {response.status}")
            return payload

    return Client("aiohttp", post, session.close)


def h1pool_client(port: int) -> Client:
    pool = H1Pool(HOST, port, max_connections=128)

    async def post() -> bytes:
        response = await pool.request("POST", PATH, HEADERS, BODY, TIMEOUT_S)
        if response.status != 200:
            raise RuntimeError(f"h1pool: HTTP {response.status}")
        return response.body

    return Client("h1pool", post, pool.close)


@dataclass
class Run:
    requests_per_s: float
    cpu_us_per_request: float


async def timed(post: Post, requests: int, concurrency: int) -> Run:
    """``requests`` POSTs from ``concurrency`` tasks; wall and process CPU time."""
    first = await post()
    if first != ANSWER:
        raise RuntimeError(f"unexpected answer: {first!r}")
    share, extra = divmod(requests, concurrency)

    async def worker(count: int) -> None:
        for _ in range(count):
            await post()

    wall, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker(share + (i < extra)) for i in range(concurrency)))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return Run(requests / wall, cpu / requests * 1e6)


async def measure(port: int, requests: int, rounds: int) -> dict[tuple[str, str], Run]:
    """Best round of each (mode, client); the clients take turns within each round."""
    clients = [aiohttp_client(port), h1pool_client(port)]
    modes = {"sequential": 1, f"{CONCURRENCY} concurrent": CONCURRENCY}
    best: dict[tuple[str, str], Run] = {}
    try:
        for client in clients:  # warm-up: connections, caches, code paths
            await timed(client.post, min(2000, requests), CONCURRENCY)
        for _ in range(rounds):
            for mode, concurrency in modes.items():
                for client in clients:
                    run = await timed(client.post, requests, concurrency)
                    key = (mode, client.name)
                    if key not in best or run.requests_per_s > best[key].requests_per_s:
                        best[key] = run
    finally:
        for client in clients:
            await client.close()
    return best


def report(label: str, requests: int, rounds: int, best: dict[tuple[str, str], Run]) -> None:
    print(f"upstream: {label}; {len(ANSWER)}-byte answer, {len(BODY)}-byte POST body")
    print(f"N={requests} per run, best of {rounds} round(s), uvloop\n")
    print(f"{'mode':<15} {'client':<8} {'req/s':>9} {'cpu us/req':>11}")
    for (mode, name), run in best.items():
        print(f"{mode:<15} {name:<8} {run.requests_per_s:>9.0f} {run.cpu_us_per_request:>11.1f}")
    print()
    for mode in dict.fromkeys(mode for mode, _ in best):
        fast, base = best[(mode, "h1pool")], best[(mode, "aiohttp")]
        print(
            f"H1Pool/aiohttp {mode}: {fast.requests_per_s / base.requests_per_s:.2f}x req/s, "
            f"{base.cpu_us_per_request / fast.cpu_us_per_request:.2f}x less CPU per request"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000, help="POSTs per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="N=5000, 1 round")
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve is not None:
        uvloop.run(serve_stub(args.serve))
        return 0
    requests, rounds = (5000, 1) if args.quick else (args.requests, args.rounds)
    with tempfile.TemporaryDirectory(prefix="failsoft-h1-") as tmp:
        label, server, port = start_upstream(Path(tmp))
        try:
            best = uvloop.run(measure(port, requests, rounds))
        finally:
            server.stop()
    report(label, requests, rounds, best)
    return 0


if __name__ == "__main__":
    sys.exit(main())
