"""Fast fixed-answer V2 upstreams for the gateway benchmarks.

The upstream is nginx when it is on PATH: one process (``daemon off``,
``master_process off``, one worker) with one server block per replica port,
each answering ``POST /v2/models/demo/infer`` with a fixed V2 answer from
``return 200`` (nginx reads and discards the request body before it answers,
so keep-alive connections stay usable) and the V2 readiness routes with 200.
Everything nginx writes (pid, error log, temp paths) stays in the given
directory.

Without nginx, this file is itself the fallback: the same routes as a plain
ASGI callable on uvicorn (uvloop + httptools), one server per port in one
process, in the style of ``_bare_server.py`` (which serves only the iris model,
so it cannot stand in for ``demo``). It is much slower than nginx, and the
benchmark labels it as such.

    python benchmarks/_upstreams.py --ports 9601,9602,9603
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
MODEL = "demo"
INFER_PATH = f"/v2/models/{MODEL}/infer"
READY_PATHS = (f"/v2/models/{MODEL}/ready", "/v2/health/ready", "/v2/health/live")
ANSWER = (
    b'{"model_name":"demo","model_version":"v1","outputs":'
    b'[{"name":"label","datatype":"INT64","shape":[1],"data":[1]}]}'
)
REQUEST = b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1,4],"data":[1,2,3,4]}]}'
EXPECTED_LABEL = [1]


def have_nginx() -> bool:
    return shutil.which("nginx") is not None


def nginx_config(ports: Sequence[int], work_dir: Path) -> str:
    """An nginx config serving the fixed answer on every port, all state in ``work_dir``."""
    temp_paths = "\n".join(
        f"    {kind}_temp_path {work_dir / (kind + '_temp')};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    ready_locations = "\n".join(
        f"        location = {path} {{ return 200; }}" for path in READY_PATHS
    )
    servers = "\n".join(
        f"""    server {{
        listen {HOST}:{port};
        add_header Upstream-Replica r{index} always;
        location = {INFER_PATH} {{
            if ($request_method != POST) {{ return 405; }}
            default_type application/json;
            return 200 '{ANSWER.decode()}';
        }}
{ready_locations}
        location / {{ return 404; }}
    }}"""
        for index, port in enumerate(ports)
    )
    return f"""daemon off;
master_process off;
worker_processes 1;
pid {work_dir / "nginx.pid"};
error_log {work_dir / "nginx-error.log"} warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    server_tokens off;
    keepalive_timeout 75s;
    keepalive_requests 1000000;
    client_body_buffer_size 64k;
{temp_paths}
{servers}
}}
"""


def nginx_argv(ports: Sequence[int], work_dir: Path) -> list[str]:
    """Write the config into ``work_dir`` and return the command that runs nginx on it."""
    config_path = work_dir / "nginx.conf"
    config_path.write_text(nginx_config(ports, work_dir))
    # -p: prefix for relative paths; -e: the error log before the config is read
    # (otherwise nginx first tries the distribution's /var/log/nginx/error.log).
    return [
        "nginx",
        "-p",
        str(work_dir),
        "-e",
        str(work_dir / "nginx-error.log"),
        "-c",
        str(config_path),
    ]


def stub_argv(ports: Sequence[int]) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--ports", ",".join(map(str, ports))]


def upstream_argv(ports: Sequence[int], work_dir: Path) -> tuple[str, list[str]]:
    """(label, command) for the fastest upstream available: nginx, else the ASGI stub."""
    if have_nginx():
        return "nginx", nginx_argv(ports, work_dir)
    return "python stub, no nginx: much slower", stub_argv(ports)


# --- the fallback: a plain ASGI stub -------------------------------------------------

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def make_stub_app(replica: str) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    async def reply(send: Send, status: int, body: bytes) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"upstream-replica", replica.encode()),
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
        path, method = scope["path"], scope["method"]
        if path == INFER_PATH and method == "POST":
            await reply(send, 200, ANSWER)
        elif path in READY_PATHS and method in ("GET", "HEAD"):
            await reply(send, 200, b"")
        else:
            await reply(send, 404, b'{"error":"not found"}')

    return app


async def serve_stub(ports: Sequence[int]) -> None:
    import uvicorn

    servers = [
        uvicorn.Server(
            uvicorn.Config(
                make_stub_app(f"r{index}"),
                host=HOST,
                port=port,
                loop="none",
                http="httptools",
                lifespan="off",
                access_log=False,
                log_level="warning",
            )
        )
        for index, port in enumerate(ports)
    ]
    await asyncio.gather(*(server.serve() for server in servers))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ports", required=True, help="comma-separated loopback ports")
    args = parser.parse_args()
    ports = [int(p) for p in args.ports.split(",")]
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve_stub(ports))
    else:
        uvloop.run(serve_stub(ports))


if __name__ == "__main__":
    main()
