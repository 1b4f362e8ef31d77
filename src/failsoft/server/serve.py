"""Running the app on uvicorn (uvloop + httptools) on a socket we bind ourselves.

Binding first means ``--port 0`` works: the real port is known, and logged,
before the server starts.
"""

from __future__ import annotations

import logging
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import uvicorn

from failsoft.config import Config, ConfigError
from failsoft.control.instances import advertised
from failsoft.control.plane import ControlPlane, open_plane
from failsoft.control.revisions import BootReport
from failsoft.data.profiles import ProfileError
from failsoft.errors import FailsoftError
from failsoft.observe.events import EventBus
from failsoft.observe.logging import setup_logging
from failsoft.observe.metrics import Metrics
from failsoft.runtime import Runtime
from failsoft.server.app import FailsoftApp
from failsoft.server.h1 import H1Limits, protocol_class
from failsoft.server.heap import freeze_startup_heap, thaw_heap
from failsoft.store import StoreError

log = logging.getLogger("failsoft.server")


class _DrainingServer(uvicorn.Server):
    """On SIGTERM/SIGINT: readiness turns false and new work gets 503 at once,
    while uvicorn stops accepting connections and lets in-flight requests
    finish (up to ``server.drain_s``); then the runtime drains its workers."""

    def __init__(self, config: uvicorn.Config, app: FailsoftApp) -> None:
        super().__init__(config)
        self._app = app

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self._app.draining:
            log.info("draining", extra={"signal": signal.Signals(sig).name})
        self._app.draining = True
        super().handle_exit(sig, frame)


def build_app(
    config: Config,
    on_ready: Callable[[], None] | None = None,
    *,
    bus: EventBus | None = None,
    control: ControlPlane | None = None,
    boot: BootReport | None = None,
) -> FailsoftApp:
    runtime = Runtime(config, bus or EventBus())
    try:
        return FailsoftApp(runtime, config.server, Metrics(), on_ready, control=control, boot=boot)
    except ProfileError as error:  # a drift profile that does not fit its model
        raise SystemExit(f"failsoft: {error}") from None


@dataclass(frozen=True)
class StoreChoice:
    """Serve through the control store in ``data_dir``."""

    data_dir: Path
    apply_file: bool = False  # the file becomes a new revision even when the store has one
    # What this run changes in whatever configuration it serves (serve --chaos), unstored.
    overrides: Callable[[Config], Config] | None = None


def open_control(
    config: Config, choice: StoreChoice, bus: EventBus
) -> tuple[ControlPlane, BootReport, Config, list[FailsoftApp]]:
    """The control plane, what it says to serve, that configuration ready to run, and a
    holder for the app (the plane applies later revisions through it)."""
    holder: list[FailsoftApp] = []

    override = choice.overrides or (lambda served: served)

    async def apply(new: Config, revision: int) -> None:
        await holder[0].apply_config(override(new), revision)

    try:
        plane, boot = open_plane(
            config, choice.data_dir, apply_file=choice.apply_file, apply=apply, bus=bus
        )
    except StoreError as error:
        raise SystemExit(f"failsoft: {error.message}") from None
    except ConfigError as error:
        raise SystemExit(f"failsoft: {error}") from None
    if boot.note:
        log.warning("configuration", extra={"note": boot.note})
        print(f"failsoft: {boot.note}", file=sys.stderr)
    try:
        runnable = override(plane.revisions.resolve(boot.config))
    except FailsoftError as error:
        plane.store.close()
        raise SystemExit(
            f"failsoft: revision {boot.revision} cannot start: {error.message}"
        ) from None
    return plane, boot, runnable, holder


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise SystemExit(f"failsoft: cannot listen on {host}:{port}: {error.strerror}") from None
    sock.listen(2048)
    return sock


def serve_on_socket(
    config: Config,
    *,
    fd: int | None = None,
    sock: socket.socket | None = None,
    role: str = "gateway",
    on_ready: Callable[[str], None] | None = None,
    store: StoreChoice | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM; exits with status 1 if the models fail to load."""
    setup_logging(config.server.log_level)
    try:
        config.server.resolved_admin_token()
    except ConfigError as error:
        raise SystemExit(f"failsoft: {error}") from None
    if sock is None:
        if fd is None:
            raise ValueError("serve_on_socket needs a socket or a file descriptor")
        sock = socket.socket(fileno=fd)
    if sock.family == socket.AF_UNIX:  # a worker's private socket
        url = f"unix:{sock.getsockname()}"
    else:
        host, port = sock.getsockname()[:2]
        url = f"http://{host}:{port}"

    def ready() -> None:
        if config.chaos.enabled and role == "gateway":
            log.warning(
                "chaos is enabled: faults may be injected through /admin/faults",
                extra={"max_duration_s": config.chaos.max_duration_s},
            )
        freeze_startup_heap()  # a process of its own: its start-up heap, frozen once
        log.info("ready", extra={"url": url, "role": role})
        if on_ready is not None:
            on_ready(url)

    bus = EventBus()
    if store is not None and role == "gateway":
        plane, boot, config, holder = open_control(config, store, bus)
        plane.address = advertised(url)  # its row in `failsoft instances`
        app = build_app(config, ready, bus=bus, control=plane, boot=boot)
        holder.append(app)
    else:
        app = build_app(config, ready, bus=bus)
    server_config = config.server
    limits = H1Limits(
        max_connections=server_config.max_connections,
        header_timeout_s=server_config.header_timeout_s,
        keep_alive_s=server_config.keep_alive_s,
        max_header_bytes=server_config.max_header_bytes,
    )
    uvicorn_config = uvicorn.Config(
        app,
        loop="uvloop",
        # The connection cap, header and keep-alive deadlines live in the
        # protocol; uvicorn's limit_concurrency would count idle connections.
        http=protocol_class(limits),
        ws="none",
        lifespan="on",
        access_log=False,
        log_config=None,
        server_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=max(1, round(config.server.drain_s)),
        backlog=2048,
    )
    server = _DrainingServer(uvicorn_config, app)
    # uvicorn drains on SIGINT/SIGTERM, then re-raises the signal to the handler
    # that was installed before it; a no-op one lets a clean drain exit 0.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: None)
    log.info("listening", extra={"url": url, "role": role})
    server.run(sockets=[sock])
    thaw_heap()
    if not server.started:
        sys.exit(1)


def serve(
    config: Config,
    host: str | None = None,
    port: int | None = None,
    on_ready: Callable[[str], None] | None = None,
    store: StoreChoice | None = None,
) -> None:
    sock = bind(host or config.server.host, config.server.port if port is None else port)
    serve_on_socket(config, sock=sock, on_ready=on_ready, store=store)
