"""Shared pieces for the benchmarks: servers in their own process groups, a
closed-loop load driver and an open-loop (fixed-rate) one.

The closed-loop driver is ``wrk`` when it is on PATH (C, one thread, cheap
enough to leave the CPU to the server) and otherwise a Python asyncio + aiohttp
loop with the same shape: N connections, each sending its next request as soon
as the last answer arrived. Both report requests/s, p50 and p99 and count
non-2xx answers and socket errors, so a fast stream of errors is never mistaken
for speed.

The open-loop driver (``open_loop``) sends at a fixed rate whatever the server
does, and measures each latency from the request's *scheduled* send time, so a
stalled server shows up as latency instead of as fewer samples (no coordinated
omission). It is bounded in requests, in flight and in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from failsoft.drills.load import send_on_schedule

REPO = Path(__file__).resolve().parents[1]
IRIS_ROW = [5.1, 3.5, 1.4, 0.2]  # a setosa (class 0)


def iris_body(row: Sequence[float] = IRIS_ROW) -> bytes:
    """The V2 JSON body for one [1, 4] FP32 iris row."""
    values = ",".join(repr(float(v)) for v in row)
    return (
        f'{{"inputs":[{{"name":"features","datatype":"FP32","shape":[1,4],"data":[{values}]}}]}}'
    ).encode()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def src_env() -> dict[str, str]:
    """The environment with this checkout's ``src`` first on PYTHONPATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO / "src"), env.get("PYTHONPATH", "")) if p
    )
    return env


class ServerProcess:
    """A server started in its own process group (so stop() ends its children too)."""

    def __init__(
        self, name: str, argv: Sequence[str], log_dir: Path, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_dir / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace_s: float = 5.0) -> None:
        if self.process.poll() is not None:
            return
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.process.wait(timeout=wait_s)
                break
            except subprocess.TimeoutExpired:
                continue
        # The leader is gone; make sure nothing it started lingers in the group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)


def post(url: str, body: bytes, timeout_s: float = 5.0) -> tuple[int, bytes]:
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as error:
        return int(error.code), bytes(error.read())


def wait_until_answers(
    server: ServerProcess,
    url: str,
    body: bytes,
    timeout_s: float,
    check: Callable[[bytes], None] | None = None,
) -> None:
    """Poll ``url`` with a real request until it answers 200 (then run ``check``).

    Raises RuntimeError with the server's log if it exits or does not answer in time.
    """
    deadline = time.monotonic() + timeout_s
    last = "no answer yet"
    while True:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"{server.name} exited with code {server.process.returncode} before it "
                f"answered.\ncommand: {' '.join(server.argv)}\n--- log ---\n{server.log_tail()}"
            )
        try:
            status, answer = post(url, body, timeout_s=2.0)
            if status == 200:
                if check is not None:
                    check(answer)
                return
            last = f"HTTP {status}: {answer[:300]!r}"
        except (OSError, urllib.error.URLError) as error:
            last = f"{type(error).__name__}: {error}"
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(
                f"{server.name} did not answer POST {url} within {timeout_s:.0f}s "
                f"(last: {last}).\ncommand: {' '.join(server.argv)}\n"
                f"--- log ---\n{server.log_tail()}"
            )
        time.sleep(0.1)


@dataclass(frozen=True, slots=True)
class LoadResult:
    tool: str
    requests: int
    duration_s: float
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int  # non-2xx answers + socket errors

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 1.0


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _wrk_time_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    if not match:
        raise ValueError(f"cannot read wrk time {text!r}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def parse_wrk(output: str) -> LoadResult:
    """Read ``wrk --latency`` output: Requests/sec, the 50% and 99% lines, errors."""
    percentiles = {
        int(p): _wrk_time_ms(t)
        for p, t in re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", output, re.MULTILINE)
    }
    totals = re.search(r"(\d+) requests in ([\d.]+\w+),", output)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if not (totals and rps and set(percentiles) == {50, 99}):
        raise ValueError(f"cannot read wrk output:\n{output}")
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", output))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors += int(non2xx.group(1)) if non2xx else 0
    return LoadResult(
        "wrk",
        int(totals.group(1)),
        _wrk_time_ms(totals.group(2)) / 1e3,
        float(rps.group(1)),
        percentiles[50],
        percentiles[99],
        errors,
    )


def run_wrk(
    url: str, body: bytes, connections: int, duration_s: float, threads: int = 1
) -> LoadResult:
    script = (
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = [==[{body.decode()}]==]\n"
    )
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(script)
    try:
        argv = [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(duration_s))}s",
            "--latency",
            "-s",
            handle.name,
            url,
        ]
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=duration_s + 60, check=False
        )
    finally:
        os.unlink(handle.name)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    return parse_wrk(done.stdout)


async def _python_load(url: str, body: bytes, connections: int, duration_s: float) -> LoadResult:
    import aiohttp

    latencies: list[float] = []
    errors = 0
    headers = {"content-type": "application/json"}
    connector = aiohttp.TCPConnector(limit=connections, force_close=False)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.perf_counter()
        deadline = start + duration_s

        async def worker() -> None:
            nonlocal errors
            while (sent := time.perf_counter()) < deadline:
                try:
                    async with session.post(url, data=body, headers=headers) as response:
                        await response.read()
                        ok = 200 <= response.status < 300
                except (aiohttp.ClientError, TimeoutError):
                    ok = False
                latencies.append(time.perf_counter() - sent)
                errors += 0 if ok else 1

        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - start
    p50, p99 = (np.percentile(latencies, [50, 99]) * 1e3) if latencies else (np.nan, np.nan)
    return LoadResult(
        "python", len(latencies), elapsed, len(latencies) / elapsed, float(p50), float(p99), errors
    )


def run_python_load(url: str, body: bytes, connections: int, duration_s: float) -> LoadResult:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(_python_load(url, body, connections, duration_s))
    return uvloop.run(_python_load(url, body, connections, duration_s))


def drive(
    url: str, body: bytes, *, connections: int, duration_s: float, tool: str = "auto"
) -> LoadResult:
    """Closed-loop load on ``url``: ``tool`` is ``wrk``, ``python`` or ``auto``."""
    if tool == "auto":
        tool = "wrk" if have_wrk() else "python"
    if tool == "wrk":
        return run_wrk(url, body, connections, duration_s)
    return run_python_load(url, body, connections, duration_s)


# --- open loop: a fixed send rate, latency from the schedule ---------------------------

MAX_OPEN_LOOP_REQUESTS = 1_000_000


@dataclass(frozen=True, slots=True)
class OpenLoopResult:
    rate: float  # requested sends per second
    duration_s: float  # length of the send schedule
    scheduled: int
    ok: int  # 2xx answers
    errors: int  # non-2xx, socket errors, timeouts, dropped (too many in flight), unfinished
    p50_ms: float  # latencies of the 2xx answers, from the scheduled send time
    p90_ms: float
    p99_ms: float
    max_ms: float
    send_lag_p50_ms: float  # how late the driver itself sent (negative: early); in the latencies
    send_lag_p99_ms: float

    @property
    def error_rate(self) -> float:
        return self.errors / self.scheduled if self.scheduled else 1.0


async def _open_loop(
    url: str,
    body: bytes,
    rate: float,
    duration_s: float,
    timeout_s: float,
    max_in_flight: int,
    connections: int,
) -> OpenLoopResult:
    import aiohttp

    count = max(1, round(rate * duration_s))
    interval = 1.0 / rate
    latencies = np.full(count, np.nan)
    lags = np.zeros(count)
    headers = {"content-type": "application/json"}
    errors = 0
    in_flight = 0
    clock = time.perf_counter
    connector = aiohttp.TCPConnector(limit=connections, limit_per_host=connections)
    timeout = aiohttp.ClientTimeout(total=timeout_s)

    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, skip_auto_headers=("User-Agent",)
    ) as session:

        async def one(index: int, origin: float) -> None:
            nonlocal errors, in_flight
            try:
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    ok = 200 <= response.status < 300
            except (aiohttp.ClientError, TimeoutError):
                ok = False
            finally:
                in_flight -= 1
            if ok:
                latencies[index] = clock() - origin
            else:
                errors += 1

        def launch(index: int, origin: float) -> Coroutine[Any, Any, None] | None:
            nonlocal errors, in_flight
            if in_flight >= max_in_flight:
                errors += 1  # the server is this far behind: count it, do not queue more
                return None
            in_flight += 1
            return one(index, origin)

        offsets = [index * interval for index in range(count)]
        errors += await send_on_schedule(
            offsets, clock() + 0.01, clock, lags, launch, timeout_s + 1.0
        )

    answered = latencies[~np.isnan(latencies)] * 1e3
    if answered.size:
        p50, p90, p99, top = np.percentile(answered, [50, 90, 99, 100])
    else:
        p50 = p90 = p99 = top = math.nan
    lag50, lag99 = np.percentile(lags * 1e3, [50, 99])
    return OpenLoopResult(
        rate,
        duration_s,
        count,
        int(answered.size),
        errors,
        float(p50),
        float(p90),
        float(p99),
        float(top),
        float(lag50),
        float(lag99),
    )


def open_loop(
    url: str,
    body: bytes,
    *,
    rate: float,
    duration_s: float,
    timeout_s: float = 5.0,
    max_in_flight: int = 1000,
    connections: int = 64,
) -> OpenLoopResult:
    """POST ``body`` to ``url`` ``rate`` times a second for ``duration_s``, answers or not.

    Latency counts from each request's scheduled send time. At most
    ``max_in_flight`` requests are outstanding (past that a scheduled request
    is counted as an error, not queued), each gets ``timeout_s``, and the run
    ends at most ``timeout_s + 1`` s after the last send. Runs on uvloop when
    installed, with the garbage collector paused so its own pauses do not
    show up as server latency.
    """
    if rate <= 0 or duration_s <= 0:
        raise ValueError("rate and duration_s must be positive")
    if rate * duration_s > MAX_OPEN_LOOP_REQUESTS:
        raise ValueError(
            f"{rate:g} req/s for {duration_s:g}s is over {MAX_OPEN_LOOP_REQUESTS} requests"
        )
    return run_async(_open_loop(url, body, rate, duration_s, timeout_s, max_in_flight, connections))


def run_async(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Run on uvloop when installed, with the collector paused (its pauses are not the server's)."""
    run = asyncio.run
    with contextlib.suppress(ImportError):
        import uvloop

        run = uvloop.run
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        return run(coroutine)
    finally:
        if was_enabled:
            gc.enable()
