"""Start `failsoft serve` as a real process and follow its JSON logs.

Used by drills whose target is a configuration, and by the integration tests.
The server runs in its own session (so stopping it stops its workers too) on
an ephemeral port; its URL comes from its first "ready" log line.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

LogLine = dict[str, Any]


MAX_KEPT_LINES = 2000


class ServerFailed(RuntimeError):
    """The server exited, or no expected log line came in time; carries its last logs."""


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
        self._lines: queue.Queue[LogLine] = queue.Queue(maxsize=MAX_KEPT_LINES)
        self.logs: deque[LogLine] = deque(maxlen=MAX_KEPT_LINES)
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
            self._put(line)
        self._put({"msg": "<exited>"})

    def _put(self, line: LogLine) -> None:
        while True:  # bounded: when nobody waits for lines, the oldest unread one goes
            try:
                self._lines.put_nowait(line)
                return
            except queue.Full:
                with contextlib.suppress(queue.Empty):
                    self.logs.append(self._lines.get_nowait())

    def wait_for(self, predicate: Callable[[LogLine], bool], timeout: float) -> LogLine:
        """Block until a log line matches; fail with the logs seen if the process exits first."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ServerFailed(
                    f"no matching log line within {timeout:g}s; last logs: {self.tail()}"
                )
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                continue
            self.logs.append(line)
            if line.get("msg") == "<exited>":
                raise ServerFailed(f"the server exited; last logs: {self.tail()}")
            if predicate(line):
                return line

    def tail(self, count: int = 20) -> list[LogLine]:
        return list(self.logs)[-count:]

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
