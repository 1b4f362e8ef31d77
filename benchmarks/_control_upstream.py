"""A controllable V2 upstream for benchmarks/recovery.py: one replica per process.

A plain ASGI callable (no framework) on uvicorn with uvloop and httptools,
serving an iris-like model ``iris`` the way the demo declares it (input
``features`` FP32 [-1, 4]; outputs ``label`` INT64 [-1] and ``probabilities``
FP32 [-1, 3]) with one fixed answer for one row: label 0 (setosa), which is
also what the demo's golden health check expects. Routes:

- ``POST /v2/models/iris/infer``: the fixed answer (any body, which is read
  and discarded);
- ``GET /v2/models/iris/ready``, ``/v2/health/ready``, ``/v2/health/live``: 200;
- anything else: 404.

The control switch is a file: while ``--fail-file`` exists, every route
answers 500 (a replica that is up but broken, readiness included). One file
switches all the replicas that share it at the same instant, so a benchmark
can break and heal them together; the check is one ``stat`` per request.
A crash is the benchmark's to cause: SIGKILL the process, start it again.

    python benchmarks/_control_upstream.py --port 9601 --fail-file /tmp/fail --name r0
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import uvicorn

MODEL = "iris"
INFER_PATH = f"/v2/models/{MODEL}/infer"
READY_PATHS = (f"/v2/models/{MODEL}/ready", "/v2/health/ready", "/v2/health/live")
ANSWER = (
    b'{"model_name":"iris","model_version":"v1","outputs":['
    b'{"name":"label","datatype":"INT64","shape":[1],"data":[0]},'
    b'{"name":"probabilities","datatype":"FP32","shape":[1,3],"data":[0.9,0.05,0.05]}]}'
)
REQUEST = (
    b'{"inputs":[{"name":"features","datatype":"FP32","shape":[1,4],"data":[5.1,3.5,1.4,0.2]}]}'
)
EXPECTED_LABEL = [0]
FAILED = b'{"error":"injected failure: the replica is broken"}'

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def make_app(name: str, fail_file: str) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    replica = name.encode()

    async def reply(send: Send, status: int, body: bytes) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"upstream-replica", replica),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        more = True
        while more:  # read and discard the body
            more = bool((await receive()).get("more_body", False))
        # One stat() of a local file, about a microsecond: not worth a thread.
        if os.path.exists(fail_file):  # noqa: ASYNC240
            await reply(send, 500, FAILED)
            return
        path, method = scope["path"], scope["method"]
        if path == INFER_PATH and method == "POST":
            await reply(send, 200, ANSWER)
        elif path in READY_PATHS and method in ("GET", "HEAD"):
            await reply(send, 200, b"")
        else:
            await reply(send, 404, b'{"error":"not found"}')

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--fail-file", required=True, help="answer 500 while this file exists")
    parser.add_argument("--name", default="r0", help="sent back in the Upstream-Replica header")
    args = parser.parse_args()
    uvicorn.run(
        make_app(args.name, args.fail_file),
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
