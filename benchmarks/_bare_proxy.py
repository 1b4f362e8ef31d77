"""The baseline proxy: the least a Python HTTP proxy in front of V2 servers can do.

A plain ASGI callable (no framework) on uvicorn with uvloop and httptools,
and one upstream HTTP client, chosen with ``--client``:

- ``h1pool`` (the default): failsoft's own ``H1Pool``, one pool per upstream
  (128 connections, 4 s idle timeout, as failsoft's http backend sets them),
  so that failsoft and this proxy pay for the same HTTP client and the
  difference between them is failsoft's pipeline;
- ``aiohttp``: one pooled aiohttp ClientSession for all upstreams.

It forwards each request (method, path, query, body, content-type) to the
next upstream, round robin, and returns the upstream's status, content-type
and body. No decoding, no validation, no deadlines (a 30 s ceiling for
H1Pool, which needs one), retries or balancing logic: gateway benchmarks
compare failsoft against it.

    python benchmarks/_bare_proxy.py --port 8002 --client h1pool \\
        --upstream http://127.0.0.1:9601 --upstream http://127.0.0.1:9602
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import uvicorn

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]
# (method, base URL, path and query, body, content-type) -> (status, content-type, body)
Forward = Callable[[str, str, str, bytes, str | None], Awaitable[tuple[int, bytes, bytes]]]

H1_TIMEOUT_S = 30.0  # H1Pool needs a deadline; this one never binds on loopback
H1_IDLE_TIMEOUT_S = 4.0  # failsoft.backends.http.IDLE_TIMEOUT_S


async def reply(send: Send, status: int, content_type: bytes, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def aiohttp_forward(pool_size: int) -> Forward:
    import aiohttp

    session: aiohttp.ClientSession | None = None

    def get_session() -> aiohttp.ClientSession:
        # Created inside the running loop, on the first request (lifespan is off).
        nonlocal session
        if session is None:
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=pool_size, limit_per_host=pool_size, keepalive_timeout=30
                ),
                skip_auto_headers=("User-Agent",),
                auto_decompress=False,
            )
        return session

    async def forward(
        method: str, base: str, target: str, body: bytes, content_type: str | None
    ) -> tuple[int, bytes, bytes]:
        headers = {"Content-Type": content_type} if content_type is not None else {}
        try:
            async with get_session().request(
                method, base + target, data=body, headers=headers
            ) as response:
                payload = await response.read()
                kind = response.headers.get("Content-Type", "application/json")
                return response.status, kind.encode("latin-1"), payload
        except (aiohttp.ClientError, TimeoutError) as error:
            return (
                502,
                b"application/json",
                f'{{"error":"upstream: {type(error).__name__}"}}'.encode(),
            )

    return forward


def h1pool_forward(bases: Sequence[str], pool_size: int) -> Forward:
    from failsoft.backends.h1pool import H1Pool, PoolError

    pools = {}
    for base in bases:
        parts = urlsplit(base)
        assert parts.hostname is not None, base
        pools[base] = H1Pool(parts.hostname, parts.port or 80, pool_size, H1_IDLE_TIMEOUT_S)

    async def forward(
        method: str, base: str, target: str, body: bytes, content_type: str | None
    ) -> tuple[int, bytes, bytes]:
        headers = [("Content-Type", content_type)] if content_type is not None else []
        try:
            response = await pools[base].request(method, target, headers, body, H1_TIMEOUT_S)
        except PoolError as error:  # PoolTimeout included
            return (
                502,
                b"application/json",
                f'{{"error":"upstream: {type(error).__name__}"}}'.encode(),
            )
        kind = response.headers.get("content-type", "application/json")
        return response.status, kind.encode("latin-1"), response.body

    return forward


def make_app(upstreams: Sequence[str], pool_size: int, client: str = "h1pool") -> App:
    bases = [u.rstrip("/") for u in upstreams]
    turn = itertools.cycle(bases)
    if client == "h1pool":
        forward = h1pool_forward(bases, pool_size)
    elif client == "aiohttp":
        forward = aiohttp_forward(pool_size)
    else:
        raise ValueError(f"unknown client {client!r}")

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        target = scope["path"]
        if scope["query_string"]:
            target += "?" + scope["query_string"].decode("latin-1")
        content_type = None
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value.decode("latin-1")
        status, kind, body = await forward(
            scope["method"], next(turn), target, b"".join(chunks), content_type
        )
        await reply(send, status, kind, body)

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--upstream", action="append", required=True, help="base URL; repeat for each replica"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8002)
    parser.add_argument("--client", choices=["h1pool", "aiohttp"], default="h1pool")
    parser.add_argument("--pool-size", type=int, default=128, help="as failsoft's http backend")
    args = parser.parse_args()
    uvicorn.run(
        make_app(args.upstream, args.pool_size, args.client),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
