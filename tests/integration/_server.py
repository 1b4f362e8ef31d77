"""Start `failsoft serve` as a real process and follow its JSON logs."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

LogLine = dict[str, Any]


class ServerProcess:
    """A `failsoft serve` child on an ephemeral port; always stopped by `stop()`."""

    def __init__(self, config: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        self.config = config
        self._args = [
            sys.executable,
            "-m",
            "failsoft",
            "serve",
            "--config",
            str(config),
            "--port",
            "0",
            *extra,
        ]
        self._env = {**os.environ, **(env or {})}
        self._lines: queue.Queue[LogLine] = queue.Queue()
        self.logs: list[LogLine] = []
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self, timeout: float = 60.0) -> ServerProcess:
        self.process = subprocess.Popen(
            self._args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=self._env,
            start_new_session=True,
        )
        threading.Thread(target=self._read, daemon=True).start()
        ready = self.wait_for(
            lambda line: line.get("msg") == "ready" and line.get("role") == "gateway", timeout
        )
        self.url = ready["url"]
        return self

    def _read(self) -> None:
        assert self.process is not None
        assert self.process.stderr is not None
        for raw in self.process.stderr:
            try:
                line = json.loads(raw)
            except ValueError:
                line = {"msg": raw.decode(errors="replace").rstrip()}
            self._lines.put(line)
        self._lines.put({"msg": "<exited>"})

    def wait_for(self, predicate: Callable[[LogLine], bool], timeout: float) -> LogLine:
        """Block until a log line matches; fail with the logs seen if the process exits first."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"no matching log line within {timeout}s; saw {self.logs[-20:]}"
                )
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                continue
            self.logs.append(line)
            if line.get("msg") == "<exited>":
                raise AssertionError(f"server exited; last logs: {self.logs[-20:]}")
            if predicate(line):
                return line

    def stop(self, timeout: float = 15.0) -> int:
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
