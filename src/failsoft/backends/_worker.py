"""Entry point of a worker process started by the process backend.

Reads its model and server configuration (JSON) from stdin, serves it over
V2 on the listening (unix) socket inherited as ``--fd``, and dies with its
parent.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import sys
import threading
import time

import orjson


def _die_with_parent(parent_pid: int) -> None:
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)

    def watch() -> None:  # fallback where prctl is missing
        while True:
            time.sleep(1.0)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def main() -> None:
    parser = argparse.ArgumentParser(description="failsoft worker (started by the gateway)")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--parent", type=int, required=True)
    args = parser.parse_args()
    _die_with_parent(args.parent)

    from failsoft.config import Config
    from failsoft.server.serve import serve_on_socket

    spec = orjson.loads(sys.stdin.buffer.read())
    config = Config.model_validate(
        {
            "server": spec["server"],
            "models": {spec["model"]: spec["config"]},
            "tracing": spec.get("tracing", {}),  # the gateway's, so its traces go on in here
        }
    )
    serve_on_socket(config, fd=args.fd, role="worker")


if __name__ == "__main__":
    main()
