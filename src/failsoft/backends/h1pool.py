"""A small, fast HTTP/1.1 client pool for one loopback origin, on asyncio protocols.

The http backend sends small V2 requests to upstreams on loopback, where the
general-purpose client (aiohttp) costs more CPU than the request itself. This
pool does only what that path needs: keep-alive connections to one ``http``
origin (over TCP, or over a unix socket for the process backend's workers),
one request at a time per connection (no pipelining), responses framed by
Content-Length, chunked encoding or end-of-stream.

Design
------
- A connection is an ``asyncio.Protocol`` feeding an ``httptools``
  (llhttp) response parser; the parser's callbacks collect status, headers
  (lower-cased names) and body and resolve one future per request. The hot
  path is one ``transport.write`` (head and body together), the parser
  callbacks, one future and one ``loop.call_at`` timer; it works the same on
  uvloop and on the standard loop.
- Idle connections are a LIFO stack (the most recently used first: warm, and
  the least likely to have been closed by the server). A request takes the top
  one; when none is idle it opens a new one if fewer than ``max_connections``
  exist, otherwise it waits, bounded by its own deadline, for one to be
  released. A released connection goes straight to the oldest waiter.
- Every slot is accounted once: a connection frees its slot exactly when it
  closes, for whatever reason (server close, error, timeout, cancellation,
  idle expiry), and the freed slot goes to a waiter, which then connects.
- Bounds: ``max_connections`` connections; waiters by their deadlines; a
  response head of at most 64 KiB and a body of at most ``max_response_bytes``
  (64 MiB unless the pool is made with another limit).
- A connection is reused only after a complete response that allows it
  (HTTP/1.1, no ``Connection: close``, nothing unsolicited after it). A
  connection that saw a timeout, an error, a malformed response or a
  cancelled request is closed, never reused: its state is unknown.

The single retry, and why it is safe
------------------------------------
A keep-alive connection can be closed by the server (its idle timeout) at the
moment we send a request on it; the request then fails with no response byte
at all (or, from some servers, with a 408 written just before they closed).
That one case, on a *reused* connection, is retried once on a freshly opened
connection, within the same deadline. It is safe here because:

- the requests this pool carries are model inferences: they change no state
  on the server, so even if the server had started computing the answer
  before it closed, running it again is harmless (RFC 9110 section 9.2.2 lets
  clients retry such requests automatically);
- it happens only when not a single response byte arrived (or the response
  is a 408, which says the request was not taken), so no partial or duplicate
  response can reach the caller;
- it happens at most once, on a new connection (which cannot be stale), and
  within the caller's deadline, so it cannot become a retry storm; a new
  connection that fails the same way is a real upstream failure and is
  reported. A request that itself kills the server is thus sent at most
  twice.

Do not use this pool for requests that must not run twice.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
from collections.abc import Sequence
from typing import NamedTuple, cast

import httptools

__all__ = [
    "MAX_HEAD_BYTES",
    "MAX_RESPONSE_BYTES",
    "H1Pool",
    "H1Response",
    "PoolError",
    "PoolTimeout",
]

MAX_RESPONSE_BYTES = 64 * 1024 * 1024
"""The largest response body accepted by default; a larger one is refused with PoolError."""
MAX_HEAD_BYTES = 64 * 1024
"""A response whose head (status line, headers) has not ended after this many bytes is refused."""

# Set by the pool; a caller passing them could desynchronise the connection.
_FRAMING_HEADERS = frozenset({"host", "content-length", "transfer-encoding"})


class H1Response(NamedTuple):
    """A whole response; header names lower-cased, repeated headers joined with ", "."""

    status: int
    headers: dict[str, str]
    body: bytes


class PoolError(Exception):
    """The exchange failed: refused, reset or closed mid-response, malformed, too large."""


class PoolTimeout(PoolError):
    """No complete response within the request's timeout."""


class _StaleConnection(PoolError):
    """A reused connection closed before any response byte (or with a 408): retried once."""


class H1Pool:
    """Keep-alive connections to one origin (scheme http only), bounded.

    Bound to the event loop of its first request. ``idle_timeout_s`` closes
    connections idle for longer; keep it below the upstream's own keep-alive
    timeout (uvicorn's default is 5 s) so the server rarely closes first.
    With ``unix_path`` the pool connects to that unix socket instead of
    ``host``:``port``, which then only name the origin in the Host header.
    ``max_response_bytes`` bounds a response body (a larger one fails with
    PoolError); the admin client raises it to download backups.
    """

    def __init__(
        self,
        host: str,
        port: int,
        max_connections: int = 128,
        idle_timeout_s: float = 30.0,
        *,
        unix_path: str | None = None,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        if idle_timeout_s <= 0:
            raise ValueError("idle_timeout_s must be positive")
        self.host = host
        self.port = port
        self.unix_path = unix_path
        self.max_response_bytes = max_response_bytes
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.origin = f"unix:{unix_path}" if unix_path is not None else authority
        self._host_line = f"Host: {authority}\r\n"
        self._max = max_connections
        self._idle_timeout = idle_timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._size = 0  # slots in use: open connections plus connections being opened
        self._idle: list[_Connection] = []  # a stack: oldest first, most recent last
        self._conns: set[_Connection] = set()
        self._waiters: collections.deque[asyncio.Future[_Connection | None]] = collections.deque()
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False

    async def request(
        self,
        method: str,
        path: str,
        headers: Sequence[tuple[str, str]],
        body: bytes,
        timeout_s: float,
    ) -> H1Response:
        """Send one request and return the whole response, within ``timeout_s``.

        Raises PoolTimeout when the deadline passes (waiting for a connection,
        connecting or waiting for the response), PoolError for any other
        failure, ValueError for a request this pool will not send (HEAD, CR or
        LF in a field, Host/Content-Length/Transfer-Encoding among ``headers``).
        """
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        if self._closed:
            raise PoolError(f"the pool for {self.origin} is closed")
        if timeout_s <= 0:
            raise PoolTimeout(f"no time left for a request to {self.origin}")
        data = self._encode(method, path, headers, body)
        now = loop.time()
        deadline = now + timeout_s
        conn = self._take_idle(now)
        if conn is None:
            conn = await self._acquire(loop, deadline, fresh=False)
        try:
            return await self._exchange(conn, data, deadline)
        except _StaleConnection:
            pass
        # The server closed a reused connection before answering: retry once on a
        # new connection (the module docstring explains why this is safe).
        conn = await self._acquire(loop, deadline, fresh=True)
        return await self._exchange(conn, data, deadline)

    async def close(self) -> None:
        """Close every connection; pending and later requests fail with PoolError."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(PoolError(f"the pool for {self.origin} was closed"))
        for conn in list(self._conns):
            conn.close()
        if self._loop is not None:
            await asyncio.sleep(0)  # let the transports finish closing

    # --- one exchange -----------------------------------------------------------------

    def _encode(
        self, method: str, path: str, headers: Sequence[tuple[str, str]], body: bytes
    ) -> bytes:
        if method == "HEAD":
            raise ValueError("HEAD is not supported: its response cannot be framed by httptools")
        lines = [f"{method} {path} HTTP/1.1\r\n{self._host_line}Content-Length: {len(body)}\r\n"]
        for name, value in headers:
            if name.lower() in _FRAMING_HEADERS:
                raise ValueError(f"the pool sets the {name} header itself")
            lines.append(f"{name}: {value}\r\n")
        lines.append("\r\n")
        head = "".join(lines)
        line_ends = len(lines) + 2  # the first item holds three lines
        if head.count("\n") != line_ends or head.count("\r") != line_ends:
            raise ValueError("CR or LF in the method, the path or a header")
        return head.encode("latin-1") + body

    async def _exchange(self, conn: _Connection, data: bytes, deadline: float) -> H1Response:
        waiter = conn.send(data, deadline)
        try:
            response = await waiter
        except BaseException:
            conn.close()  # timed out, failed or cancelled: the connection's state is unknown
            raise
        if conn.reusable:
            self._release(conn)
        else:
            conn.close(graceful=True)
        return response

    # --- slots and idle connections -------------------------------------------------

    def _take_idle(self, now: float) -> _Connection | None:
        idle = self._idle
        while idle:
            conn = idle.pop()
            if now - conn.idle_since < self._idle_timeout:
                return conn
            conn.close()  # the most recent one is too old, so are the ones below it
        return None

    async def _acquire(
        self, loop: asyncio.AbstractEventLoop, deadline: float, fresh: bool
    ) -> _Connection:
        """A connection: a new one if a slot is free, else one released by another request.

        ``fresh`` asks for a newly opened connection (the retry): idle or handed
        over connections are closed and their slot is used to connect.
        """
        if self._size < self._max:
            self._size += 1
            return await self._connect(loop, deadline)
        if fresh and self._idle:
            self._retire(self._idle.pop(0))
            return await self._connect(loop, deadline)
        conn = await self._wait_for_slot(loop, deadline)
        if conn is None:
            return await self._connect(loop, deadline)
        if fresh:
            self._retire(conn)
            return await self._connect(loop, deadline)
        return conn

    async def _connect(self, loop: asyncio.AbstractEventLoop, deadline: float) -> _Connection:
        """Open a connection in a slot already counted in ``_size``."""
        made: list[_Connection] = []

        def new_connection() -> _Connection:
            made.append(_Connection(self, loop))
            return made[-1]

        try:
            async with asyncio.timeout_at(deadline):
                if self.unix_path is not None:
                    _, conn = await loop.create_unix_connection(new_connection, self.unix_path)
                else:
                    _, conn = await loop.create_connection(new_connection, self.host, self.port)
        except BaseException as error:
            for orphan in made:  # connected just as the deadline or a cancellation hit
                self._retire(orphan)
            self._free_slot()
            if isinstance(error, TimeoutError):  # before OSError: TimeoutError is one
                raise PoolTimeout(f"could not connect to {self.origin} in time") from None
            if isinstance(error, OSError):
                raise PoolError(f"cannot connect to {self.origin}: {error}") from None
            raise
        if self._closed:
            conn.close()
            raise PoolError(f"the pool for {self.origin} was closed")
        if not conn.closed:
            self._conns.add(conn)
        return conn

    async def _wait_for_slot(
        self, loop: asyncio.AbstractEventLoop, deadline: float
    ) -> _Connection | None:
        """Wait for a released connection, or None: a freed slot, already counted for us."""
        waiter: asyncio.Future[_Connection | None] = loop.create_future()
        timer = loop.call_at(deadline, _expire, waiter, self.origin)
        self._waiters.append(waiter)
        try:
            return await waiter
        except BaseException:
            self._abandon(waiter)
            raise
        finally:
            timer.cancel()

    def _abandon(self, waiter: asyncio.Future[_Connection | None]) -> None:
        """A waiter gave up: give back what it may have been handed in the meantime."""
        if not waiter.done() or waiter.cancelled() or waiter.exception() is not None:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)
            return
        conn = waiter.result()
        if conn is None:
            self._free_slot()
        else:
            self._release(conn)

    def _release(self, conn: _Connection) -> None:
        """A connection after a complete response: to the oldest waiter, else on the stack."""
        conn.reused = True
        if self._closed:
            conn.close()
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        conn.idle_since = conn.loop.time()
        self._idle.append(conn)
        if self._sweeper is None:
            self._schedule_sweep(conn.loop)

    def _free_slot(self) -> None:
        self._size -= 1
        if self._closed:
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._size += 1
                waiter.set_result(None)
                return

    def _forget(self, conn: _Connection) -> None:
        """Called once by every connection when it closes."""
        self._conns.discard(conn)
        if not conn.counted:
            return
        conn.counted = False
        if conn in self._idle:
            self._idle.remove(conn)
        self._free_slot()

    def _retire(self, conn: _Connection) -> None:
        """Close ``conn`` but keep its slot for the caller's new connection."""
        conn.counted = False
        conn.close(graceful=True)

    def _schedule_sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._idle:
            when = self._idle[0].idle_since + self._idle_timeout
            self._sweeper = loop.call_at(when, self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        """Close the connections idle for longer than the idle timeout (oldest first)."""
        self._sweeper = None
        cutoff = loop.time() - self._idle_timeout
        while self._idle and self._idle[0].idle_since <= cutoff:
            self._idle.pop(0).close(graceful=True)
        self._schedule_sweep(loop)


def _expire(waiter: asyncio.Future[_Connection | None], origin: str) -> None:
    if not waiter.done():
        waiter.set_exception(PoolTimeout(f"no connection to {origin} became free in time"))


class _Connection(asyncio.Protocol):
    """One keep-alive connection; the httptools parser calls its ``on_*`` methods."""

    __slots__ = (
        "_body_size",
        "_chunks",
        "_got_bytes",
        "_head_size",
        "_headers",
        "_headers_done",
        "_keep_alive",
        "_parser",
        "_pool",
        "_status",
        "_timer",
        "_transport",
        "_waiter",
        "closed",
        "counted",
        "idle_since",
        "loop",
        "reused",
    )

    def __init__(self, pool: H1Pool, loop: asyncio.AbstractEventLoop) -> None:
        self._pool = pool
        self.loop = loop
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[H1Response] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._status = 0
        self._headers: dict[str, str] = {}
        self._chunks: list[bytes] = []
        self._body_size = 0
        self._head_size = 0
        self._headers_done = False
        self._keep_alive = False
        self._got_bytes = False
        self.closed = False
        self.counted = True  # holds a pool slot, freed once when it closes
        self.reused = False  # has completed a response before the current request
        self.idle_since = 0.0

    @property
    def reusable(self) -> bool:
        return self._keep_alive and not self.closed

    def send(self, data: bytes, deadline: float) -> asyncio.Future[H1Response]:
        """Write the request; the future resolves with the response or fails."""
        waiter: asyncio.Future[H1Response] = self.loop.create_future()
        self._got_bytes = False
        self._keep_alive = False
        self._headers_done = False
        transport = self._transport
        if self.closed or transport is None or transport.is_closing():
            waiter.set_exception(self._lost_error(None))
            self.close()
            return waiter
        self._waiter = waiter
        self._timer = self.loop.call_at(deadline, self._on_timeout)
        transport.write(data)
        return waiter

    def close(self, graceful: bool = False) -> None:
        self._shutdown(PoolError(f"the connection to {self._pool.origin} was closed"), graceful)

    # --- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.closed:  # given up on while connecting
            transport.close()
            return
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:  # bytes nobody asked for: the connection is out of step
            self.close()
            return
        self._got_bytes = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as error:
            reason = error.__context__
            self._shutdown(reason if isinstance(reason, PoolError) else self._malformed(error))
            return
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as error:
            self._shutdown(self._malformed(error))
            return
        if not self._headers_done and self._waiter is not None:
            self._head_size += len(data)
            if self._head_size > MAX_HEAD_BYTES:
                self._shutdown(PoolError(f"{self._pool.origin} sent a response head over 64 KiB"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self.closed:
            return
        if exc is None and self._waiter is not None and self._ends_at_eof():
            self._complete()  # a response framed by the end of the stream
        self._shutdown(self._lost_error(exc) if self._waiter is not None else None)

    # --- httptools callbacks ------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._waiter is None:  # more bytes after the response we asked for
            raise PoolError(f"{self._pool.origin} sent data after the response")
        self._status = 0
        self._headers = {}
        self._chunks.clear()
        self._body_size = 0
        self._head_size = 0
        self._headers_done = False

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.lower().decode("latin-1")
        headers = self._headers
        if key in headers:
            headers[key] = f"{headers[key]}, {value.decode('latin-1')}"
        else:
            headers[key] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        parser = self._parser
        self._status = parser.get_status_code()
        self._headers_done = True
        self._keep_alive = parser.should_keep_alive() and parser.get_http_version() == "1.1"
        length = self._headers.get("content-length")
        if length is not None and int(length) > self._pool.max_response_bytes:
            raise self._too_large()

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self._pool.max_response_bytes:
            raise self._too_large()
        self._chunks.append(body)

    def on_message_complete(self) -> None:
        if 100 <= self._status < 200:
            return  # an interim response (100 Continue, 103 Early Hints): the real one follows
        if self._status == 408 and self.reused:
            # The server timed the idle connection out as we sent: it did not take the request.
            raise _StaleConnection(f"{self._pool.origin} timed out a reused connection (408)")
        self._complete()

    # --- helpers ------------------------------------------------------------------------

    def _complete(self) -> None:
        waiter, self._waiter = self._waiter, None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if waiter is not None and not waiter.done():
            waiter.set_result(H1Response(self._status, self._headers, b"".join(self._chunks)))

    def _shutdown(self, error: PoolError | None, graceful: bool = False) -> None:
        """Close once: fail the pending request with ``error``, free the pool slot."""
        if self.closed:
            return
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error or PoolError(f"{self._pool.origin}: connection closed"))
        transport = self._transport
        if transport is not None:
            if graceful:
                transport.close()
            else:
                transport.abort()
        self._pool._forget(self)

    def _on_timeout(self) -> None:
        self._timer = None
        self._shutdown(PoolTimeout(f"no complete response from {self._pool.origin} in time"))

    def _ends_at_eof(self) -> bool:
        """Whether the response in progress has no length, so the end of stream ends it."""
        if not self._headers_done or self._status in (204, 304) or self._status < 200:
            return False
        headers = self._headers
        return (
            "content-length" not in headers
            and "chunked" not in headers.get("transfer-encoding", "").lower()
        )

    def _lost_error(self, exc: Exception | None) -> PoolError:
        if self.reused and not self._got_bytes:
            return _StaleConnection(f"{self._pool.origin} closed a reused connection")
        how = "closed the connection" if exc is None else f"reset the connection ({exc})"
        return PoolError(f"{self._pool.origin} {how} before the response was complete")

    def _malformed(self, error: Exception) -> PoolError:
        return PoolError(f"malformed response from {self._pool.origin}: {error!r}")

    def _too_large(self) -> PoolError:
        limit = self._pool.max_response_bytes
        whole_mib = limit >= 1 << 20 and not limit % (1 << 20)
        shown = f"{limit >> 20} MiB" if whole_mib else f"{limit} bytes"
        return PoolError(f"{self._pool.origin} sent a response body over {shown}")
