"""The process backend: supervised worker processes, each a replica.

Each worker is a small failsoft serving one model version over V2 on a
private unix socket (see ``_spawn``), so the gateway reaches it through the
same ``HttpReplica`` code path as any remote server: one path for balancing,
breakers and ejection, and crash isolation for free. A worker takes the
gateway's server limits (body size, connections) and log level.

The supervisor restarts a worker that exits, with exponential backoff and
full jitter (reset once a worker has stayed up for a while), and kills and
replaces a worker that stops answering health probes (a hang). On close it
sends SIGTERM so workers drain, and SIGKILL after the drain timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import shutil
import signal
import tempfile
import time

import orjson

from failsoft.backends._spawn import spawn_worker
from failsoft.backends.http import HttpReplica
from failsoft.call import Call
from failsoft.config import ModelConfig, ProcessBackend, ServerConfig
from failsoft.errors import BackendLoadError, NotReady
from failsoft.observe import tracing
from failsoft.observe.events import EventBus, ReplicaStateChanged, WorkerRestarted
from failsoft.protocol.types import InferRequest, Tensors
from failsoft.waiting import wait_at_most

log = logging.getLogger("failsoft.backends.process")

STABLE_AFTER_S = 30.0  # a worker up this long resets its restart backoff
WORKER_POOL_SIZE = 128  # connections from the gateway to one worker
MAX_BODY_BYTES = 1 << 30  # ServerConfig's own bound on max_body_bytes


def worker_server(server: ServerConfig) -> dict[str, object]:
    """The server settings a worker takes from the gateway's (no keys, no admin token)."""
    return {
        # Twice the gateway's limit: a body the gateway re-encodes (a V1 request sent
        # on as V2 JSON, "1" written as "1.0") may grow, up to about double.
        "max_body_bytes": min(2 * server.max_body_bytes, MAX_BODY_BYTES),
        "max_connections": server.max_connections,
        "log_level": server.log_level,
    }


def worker_spec(
    model: str,
    version: str,
    model_config: ModelConfig,
    backend: ProcessBackend,
    server: ServerConfig | None = None,
) -> bytes:
    """What a worker serves: this model with one in-process version, and its server settings."""
    spec = model_config.model_dump(mode="json")
    spec["versions"] = {version: backend.worker.model_dump(mode="json")}
    spec["default_version"] = version
    # Resilience is the gateway's job: a worker serves its one model plainly.
    off = {"enabled": False}
    spec.update(retry=off, hedge=off, breaker=off, ejection=off, health_check=off, fallback=[])
    spec["attribution"] = off  # the gateway judges whose fault a model error is
    spec["cache"] = off
    # The gateway judges the feature constraints (and acts on them) before any call.
    spec["input_policy"] = "reject"
    for tensor in spec["inputs"]:
        tensor.pop("columns", None)
        tensor.pop("features", None)
    return orjson.dumps(
        {"model": model, "config": spec, "server": worker_server(server or ServerConfig())}
    )


class WorkerReplica:
    def __init__(
        self,
        name: str,
        model: str,
        version: str,
        spec: bytes,
        config: ProcessBackend,
        bus: EventBus,
        rng: random.Random | None = None,
        parked: bool = False,
    ) -> None:
        self.name = name
        self._model = model
        self._version = version
        self._spec = spec
        self._config = config
        self._bus = bus
        self._rng = rng or random.Random()
        self._http = HttpReplica(name, "http://127.0.0.1:0", WORKER_POOL_SIZE, model, version)
        self._process: asyncio.subprocess.Process | None = None
        self._directory: str | None = None  # private (0700), holds the worker's socket
        self._socket_path: str | None = None
        self._spawns = 0
        self._ready = False
        self._closing = False
        self._restarts = 0
        self._consecutive_failures = 0
        self._restart_reason: str | None = None  # an asked-for restart under way
        self._tasks: list[asyncio.Task[None]] = []
        # A parked worker is a slot the autoscaler may fill (``launch``): no process, never
        # available, so the pipeline and its prober pass it by.
        self.parked = parked

    @property
    def available(self) -> bool:
        return self._ready and not self._closing

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def base_url(self) -> str:
        return self._http.base_url

    @property
    def restarts(self) -> int:
        return self._restarts

    def kill(self) -> int | None:
        """SIGKILL the worker now, as a crash would (chaos); the supervisor restarts it."""
        process = self._process
        if process is None or process.returncode is not None:
            return None
        process.kill()
        return process.pid

    @property
    def restarting(self) -> bool:
        return self._restart_reason is not None

    @property
    def startup_bound_s(self) -> float:
        """The longest a restart may take: its drain, its start, and a little slack."""
        return self._config.drain_timeout_s + self._config.startup_timeout_s + 1.0

    async def restart(self, reason: str) -> bool:
        """Replace the worker on purpose: out of rotation, its calls drain, a new one starts.

        False when there is no running worker to replace (parked, closing, already
        restarting, or exited and about to be restarted by the supervisor anyway).
        """
        process = self._process
        if self.parked or self._closing or self.restarting:
            return False
        if process is None or process.returncode is not None:
            return False
        self._restart_reason = reason
        self._set_ready(False, f"restarting ({reason})")
        await self._stop_process(self._config.drain_timeout_s)
        return True

    async def start(self) -> None:
        if self.parked:
            return
        await self._spawn()
        self._tasks = [
            asyncio.create_task(self._supervise(), name=f"supervise-{self.name}"),
            asyncio.create_task(self._probe(), name=f"probe-{self.name}"),
        ]

    async def infer(self, request: InferRequest, call: Call) -> Tensors:
        if not self.available:
            raise NotReady(f"worker {self.name} is restarting")
        return await self._http.infer(request, call)

    async def health(self) -> bool:
        return self.available and await self._http.health()

    async def close(self) -> None:
        self._closing = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._stop_process(self._config.drain_timeout_s)
        await self._http.close()
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)

    async def launch(self) -> None:
        """Start this parked worker (scale-out); raises BackendLoadError if it cannot start."""
        self.parked = False
        self._closing = False
        try:
            await self.start()
        except BaseException:
            await self.park()
            raise

    async def park(self) -> None:
        """Stop the worker, draining its calls, and keep the slot for a later ``launch``."""
        self._set_ready(False, "scaled in")
        await self.close()
        self.parked = True
        self._directory = None  # close removed it
        self._socket_path = None
        self._tasks = []
        self._process = None

    async def _spawn(self) -> None:
        if self._directory is None:
            self._directory = tempfile.mkdtemp(prefix="failsoft-")  # mode 0700
        # A new path per process: base_url changes, so the pool to the dead one is dropped.
        self._spawns += 1
        path = os.path.join(self._directory, f"{self._spawns}.sock")
        try:
            self._process = await spawn_worker(path, self.name)
        except OSError as error:
            raise BackendLoadError(f"worker {self.name} could not be started: {error}") from None
        if self._socket_path is not None:  # its process has exited
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._socket_path)
        self._socket_path = path
        assert self._process.stdin is not None
        self._process.stdin.write(tracing.for_worker(self._spec))
        self._process.stdin.write_eof()
        self._http.base_url = f"unix:{path}"
        await self._wait_ready()

    async def _wait_ready(self) -> None:
        process = self._process
        assert process is not None
        started = time.monotonic()
        delay = 0.02
        while time.monotonic() - started < self._config.startup_timeout_s:
            if process.returncode is not None:
                raise BackendLoadError(
                    f"worker {self.name} exited with code {process.returncode} while starting"
                )
            if await self._http.health():
                self._set_ready(True, "started")
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)
        await self._stop_process(0)
        raise BackendLoadError(
            f"worker {self.name} was not ready within {self._config.startup_timeout_s:g}s"
        )

    async def _supervise(self) -> None:
        backoff = self._config.restart_backoff_s
        while not self._closing:
            process = self._process
            assert process is not None
            started = time.monotonic()
            exit_code = await process.wait()
            if self._closing:
                return
            self._set_ready(False, f"exited with code {exit_code}")
            asked = self._restart_reason
            if time.monotonic() - started > STABLE_AFTER_S or asked:
                backoff = self._config.restart_backoff_s
            if not asked:  # a crash: back off (an asked-for restart starts at once)
                # Full jitter: many workers crashing together do not restart in lockstep.
                await asyncio.sleep(self._rng.uniform(0, backoff))
                backoff = min(backoff * 2, self._config.restart_backoff_max_s)
            old_pid = process.pid
            try:
                await self._spawn()
            except BackendLoadError as error:
                log.error(
                    "worker restart failed", extra={"replica": self.name, "error": str(error)}
                )
                self._restart_reason = None  # tried: from here on a crash like any other
                continue
            self._restart_reason = None
            self._restarts += 1
            why = f"restarted: {asked}" if asked else "exited"
            self._bus.emit(
                WorkerRestarted(self._model, self._version, self.name, old_pid, exit_code, why)
            )
            log.warning(
                "worker restarted",
                extra={
                    "replica": self.name,
                    "old_pid": old_pid,
                    "pid": self.pid,
                    "exit_code": exit_code,
                },
            )

    async def _probe(self) -> None:
        """Kill a worker that stops answering; _supervise then replaces it."""
        while not self._closing:
            await asyncio.sleep(self._config.probe_interval_s)
            process = self._process
            if not self._ready or process is None or process.returncode is not None:
                continue
            if await self._probe_once():
                self._consecutive_failures = 0
                continue
            self._consecutive_failures += 1
            if self._consecutive_failures >= self._config.probe_failures:
                log.error(
                    "worker not answering, killing it",
                    extra={"replica": self.name, "pid": process.pid},
                )
                self._consecutive_failures = 0
                self._set_ready(False, "hung")
                with contextlib.suppress(ProcessLookupError):
                    process.kill()

    async def _probe_once(self) -> bool:
        try:
            return await wait_at_most(self._http.health(), self._config.probe_timeout_s)
        except TimeoutError:
            return False

    async def _stop_process(self, grace_s: float) -> None:
        process = self._process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await wait_at_most(process.wait(), grace_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()

    def _set_ready(self, ready: bool, reason: str) -> None:
        if ready != self._ready:
            self._ready = ready
            self._bus.emit(
                ReplicaStateChanged(self._model, self._version, self.name, ready, reason)
            )
