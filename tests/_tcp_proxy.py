"""A TCP proxy a test controls: forward to a server, then cut it off and bring it back.

It runs its own event loop on a thread, so it keeps forwarding whatever the
test's own loop (or a blocking call in the test) is doing. ``cut()`` closes
the listening socket (new connections are refused) and resets every open
connection; ``restore()`` listens again on the same port. It is how a test
makes the control store unreachable without touching the database server::

    with TcpProxy("127.0.0.1", 5432) as proxy:
        url = f"postgresql+psycopg://postgres@127.0.0.1:{proxy.port}/test"
        ...
        proxy.cut()       # the store is down: connects refused, sessions reset
        proxy.restore()   # and back
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
CHUNK = 1 << 16


class TcpProxy:
    def __init__(self, target_host: str, target_port: int, host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.host = host
        self.port = 0
        self.connections = 0  # accepted while up, in all
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.Transport] = set()
        self.hanging = False

    # -- the test's side (any thread but the proxy's) ---------------------------

    def start(self) -> TcpProxy:
        self._thread.start()
        self._call(self._listen())
        return self

    @property
    def up(self) -> bool:
        return self._server is not None

    def cut(self, *, hang: bool = False) -> None:
        """Refuse new connections and reset the open ones (RST, not a polite FIN); with
        ``hang``, accept and keep every connection but let no byte through."""
        self._call(self._hang() if hang else self._cut())

    def restore(self) -> None:
        """Forward again, on the same port (connections that hung are reset)."""
        self._call(self._restore())

    def close(self) -> None:
        if self._thread.is_alive():
            self._call(self._cut())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
        self._loop.close()

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)

    # -- the proxy's loop ---------------------------------------------------------

    async def _listen(self) -> None:
        if self._server is not None:
            return
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        self._server = await asyncio.start_server(self._serve, sock=sock)

    async def _hang(self) -> None:
        await self._listen()
        self.hanging = True

    async def _restore(self) -> None:
        if self.hanging:
            self.hanging = False
            self._reset_all()
        await self._listen()

    def _reset_all(self) -> None:
        for transport in list(self._open):
            _reset(transport)
        self._open.clear()

    async def _cut(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()
        self.hanging = False
        self._reset_all()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        client = client_w.transport
        if self._server is None:  # accepted just as the cut came
            _reset(client)  # type: ignore[arg-type]
            return
        self.connections += 1
        if self.hanging:  # swallow what comes, answer nothing, until reset
            self._open.add(client)  # type: ignore[arg-type]
            await _pump(client_r, None, lambda: True)
            return
        try:
            server_r, server_w = await asyncio.open_connection(*self.target)
        except OSError:
            _reset(client)  # type: ignore[arg-type]
            return
        pair = (client, server_w.transport)
        self._open.update(pair)  # type: ignore[arg-type]

        def hanging() -> bool:
            return self.hanging

        try:
            await asyncio.gather(
                _pump(client_r, server_w, hanging), _pump(server_r, client_w, hanging)
            )
        finally:
            for transport in pair:
                self._open.discard(transport)  # type: ignore[arg-type]
                transport.close()


async def _pump(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter | None,
    hanging: Callable[[], bool],
) -> None:
    """Copy until end of file; while ``hanging()``, what is read goes nowhere."""
    with contextlib.suppress(OSError, ConnectionError):
        while data := await reader.read(CHUNK):
            if writer is None or hanging():
                continue
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(OSError, ConnectionError):
        if writer is not None and writer.can_write_eof():
            writer.write_eof()


def _reset(transport: asyncio.Transport) -> None:
    """Close with SO_LINGER 0: the peer sees a reset, as when a host drops off."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
