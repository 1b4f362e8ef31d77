"""The baseline proxy: the least a Python HTTP proxy in front of V2 servers can do.

A plain ASGI callable (no framework) on uvicorn with uvloop and httptools,
and one pooled aiohttp ClientSession. It forwards each request (method, path,
query, body, content-type) to the next upstream, round robin, and returns the
upstream's status, content-type and body. No decoding, no validation, no
deadlines, retries or balancing logic: gateway benchmarks compare failsoft
against it.

    python benchmarks/_bare_proxy.py --port 8002 \\
        --upstream http://127.0.0.1:9601 --upstream http://127.0.0.1:9602
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

import aiohttp
import uvicorn

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def make_app(
    upstreams: Sequence[str], pool_size: int
) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    bases = [u.rstrip("/") for u in upstreams]
    turn = itertools.cycle(bases)
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

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        url = next(turn) + scope["path"]
        if scope["query_string"]:
            url += "?" + scope["query_string"].decode("latin-1")
        headers = {}
        for name, value in scope["headers"]:
            if name == b"content-type":
                headers["Content-Type"] = value.decode("latin-1")
        try:
            async with get_session().request(
                scope["method"], url, data=b"".join(chunks), headers=headers
            ) as response:
                body = await response.read()
                status = response.status
                content_type = response.headers.get("Content-Type", "application/json")
        except (aiohttp.ClientError, TimeoutError) as error:
            message_text = f'{{"error":"upstream: {type(error).__name__}"}}'
            await reply(send, 502, b"application/json", message_text.encode())
            return
        await reply(send, status, content_type.encode("latin-1"), body)

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--upstream", action="append", required=True, help="base URL; repeat for each replica"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8002)
    parser.add_argument("--pool-size", type=int, default=128, help="as failsoft's http backend")
    args = parser.parse_args()
    uvicorn.run(
        make_app(args.upstream, args.pool_size),
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
