"""The HTTP/1.1 front door: uvicorn's httptools protocol, hardened against hostile clients.

What it adds to ``HttpToolsProtocol``:

- a header deadline: a request's head (request line and headers) must be
  complete ``header_timeout_s`` after the connection opens, or after the
  first byte of each later request; else the connection is closed;
- an idle deadline: a keep-alive connection with no byte of a new request
  ``keep_alive_s`` after the last response ends is closed;
- a head size limit: a head over ``max_header_bytes`` gets 431 and the
  connection closes, before httptools buffers much more than the limit;
- a connection cap that hostile clients cannot fill: a connection beyond
  ``max_connections`` closes the connection that has waited longest without a
  request in progress (idle, or still sending its head); only when every
  connection has a request in progress do new requests get 503.

One timer per connection serves both deadlines. It is re-armed lazily: state
changes only move the deadline later, so a request costs a clock read and a
few attribute writes, not a timer of its own (uvicorn armed and cancelled one
per request for its keep-alive timeout).

Each response's head leaves together with its first body chunk, in one write
(uvicorn writes them apart: two system calls for every small answer).
"""

from __future__ import annotations

import asyncio
import http
import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import httptools
import orjson
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

__all__ = ["H1Limits", "HardenedH1", "protocol_class"]

log = logging.getLogger("failsoft.server")

# After a refusal the connection half-closes and reads (and drops) what the
# client is still sending for up to this long, so the client reads the answer
# instead of a reset.
_LINGER_S = 1.0
_LINGER_BYTES = 1 << 20
# libuv timers have millisecond resolution; a timer may fire this much early.
_TIMER_SLACK_S = 0.002


@dataclass(frozen=True, slots=True)
class H1Limits:
    max_connections: int
    header_timeout_s: float
    keep_alive_s: float
    max_header_bytes: int


class _Refused(Exception):
    """Raised inside a parser callback to stop parsing a request that is refused."""


def _refusal(status: int, message: str, extra: bytes = b"") -> bytes:
    body = orjson.dumps({"error": message})
    return (
        f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n".encode()
        + b"content-type: application/json\r\n"
        + f"content-length: {len(body)}\r\n".encode()
        + extra
        + b"connection: close\r\n\r\n"
        + body
    )


def protocol_class(limits: H1Limits) -> type[HardenedH1]:
    """A protocol class for one server: bound to ``limits`` and its own waiting list."""

    class Bound(HardenedH1):
        pass

    Bound.limits = limits
    Bound.waiting = {}
    Bound.too_large = _refusal(
        431, f"request headers are over the {limits.max_header_bytes}-byte limit"
    )
    return Bound


class _HeldWrites:
    """Stands in for the transport while uvicorn writes a response head: keeps the bytes."""

    __slots__ = ("data",)

    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data


class _PrefixedWrites:
    """Stands in for the transport for a response's first body message: the held head
    goes out with the first write, or on its own before a close or when nothing is written."""

    __slots__ = ("_head", "_transport")

    def __init__(self, transport: asyncio.Transport, head: bytes) -> None:
        self._transport = transport
        self._head = head

    def write(self, data: bytes) -> None:
        self._transport.write(self.flush() + data)

    def close(self) -> None:
        self._transport.write(self.flush())
        self._transport.close()

    def flush(self) -> bytes:
        head, self._head = self._head, b""
        return head


class _OneWriteCycle(RequestResponseCycle):
    """uvicorn's request-response cycle, sending a response's head with its body."""

    held: bytes | None = None

    async def send(self, message: Any) -> None:
        if message["type"] == "http.response.start" and not self.response_started:
            transport, holder = self.transport, _HeldWrites()
            self.transport = holder  # type: ignore[assignment]
            try:
                await RequestResponseCycle.send(self, message)
            finally:
                self.transport = transport
            self.held = holder.data
            return
        head = self.held
        if head is None:
            await RequestResponseCycle.send(self, message)
            return
        self.held = None
        transport, prefixed = self.transport, _PrefixedWrites(self.transport, head)
        self.transport = prefixed  # type: ignore[assignment]
        try:
            await RequestResponseCycle.send(self, message)
        finally:
            self.transport = transport
        rest = prefixed.flush()  # nothing was written (a HEAD answer): the head alone
        if rest and not transport.is_closing():
            transport.write(rest)


class HardenedH1(HttpToolsProtocol):
    limits: ClassVar[H1Limits]
    # Open connections with no request in progress, the longest waiting first.
    waiting: ClassVar[dict[HardenedH1, None]]
    too_large: ClassVar[bytes]
    unavailable: ClassVar[bytes] = _refusal(
        503, "the server is at its connection limit", b"retry-after: 1\r\n"
    )

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.ws_protocol_class = None  # plain HTTP only: no WebSocket upgrades
        self._in_head = True  # a request's head has begun (or may: a fresh connection)
        self._since = 0.0  # when the connection opened, the head began or the last response ended
        # Bytes received since the head began: an upper bound on its size
        # (``_span``), which counts the whole chunk it began in (``_lead``).
        self._span = 0
        self._lead = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._lingering = -1  # bytes dropped after a refusal; -1 until one

    # Connection life

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        waiting = self.waiting
        if len(self.connections) > self.limits.max_connections:
            self._evict_one()
        waiting[self] = None
        self._since = self.loop.time()
        self._arm(self._since + self.limits.header_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self.waiting.pop(self, None)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().connection_lost(exc)

    def _evict_one(self) -> None:
        waiting = self.waiting
        while waiting:
            victim = next(iter(waiting))
            del waiting[victim]
            if not victim.transport.is_closing():
                victim.transport.close()
                return

    def _close(self) -> None:
        self.waiting.pop(self, None)
        self.transport.close()

    def _request_in_progress(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    # Deadlines

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_at(when, self._on_timer)
        self._timer_at = when

    def _on_timer(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if self._lingering >= 0:
            self._close()
            return
        if self._request_in_progress():
            return  # re-armed when its response ends
        limits = self.limits
        deadline = self._since + (limits.header_timeout_s if self._in_head else limits.keep_alive_s)
        if self.loop.time() + _TIMER_SLACK_S >= deadline:
            self._close()
        else:
            self._arm(deadline)

    # Parsing

    def data_received(self, data: bytes) -> None:
        if self._lingering >= 0:
            self._lingering += len(data)
            if self._lingering > _LINGER_BYTES:
                self._close()
            return
        if self._in_head:
            self._span += len(data)
        else:
            self._span = self._lead = len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self._lingering < 0 and not self.transport.is_closing():
                message = "Invalid HTTP request received."  # as uvicorn says it
                self.logger.warning(message)
                self.send_400_response(message)
            return
        except httptools.HttpParserUpgrade:
            return  # the request was served as plain HTTP; nothing is upgraded
        limit = self.limits.max_header_bytes
        # A head still incomplete past the limit: refuse it now, before httptools
        # buffers more (``_span - _lead`` counts only bytes of the head).
        if (
            self._in_head
            and self._span > limit
            and (self._span - self._lead > limit or self._head_size() > limit)
        ):
            self._refuse(self.too_large)

    def _head_size(self) -> int:
        """The size of the head parsed so far (a little under its size on the wire)."""
        return len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)

    # The per-request callbacks call the base class explicitly: cheaper than super().

    def on_message_begin(self) -> None:
        HttpToolsProtocol.on_message_begin(self)
        if not self._in_head:
            self._in_head = True
            self._since = self.loop.time()

    def on_headers_complete(self) -> None:
        self._in_head = False
        limit = self.limits.max_header_bytes
        if self._span > limit and self._head_size() > limit:
            self._refuse(self.too_large)
            raise _Refused
        waiting = self.waiting
        waiting.pop(self, None)
        if len(self.connections) - len(waiting) > self.limits.max_connections:
            log.warning("connection limit reached: every connection has a request in progress")
            self._refuse(self.unavailable)
            raise _Refused
        HttpToolsProtocol.on_headers_complete(self)
        cycle = self.cycle
        if cycle is not None and type(cycle) is RequestResponseCycle:
            # Its task has not run yet: it looks up send() on the new class.
            cycle.__class__ = _OneWriteCycle

    def on_response_complete(self) -> None:
        # Replaces uvicorn's, which armed a keep-alive timer for every response.
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
            return
        self.waiting[self] = None
        limits = self.limits
        if self._in_head:  # the next request's head began while this one was served
            when = self._since + limits.header_timeout_s
        else:
            self._since = self.loop.time()
            # The earlier of the two deadlines: a head beginning later only moves it later.
            when = self._since + min(limits.keep_alive_s, limits.header_timeout_s)
        if self._timer is None or self._timer_at > when:
            self._arm(when)

    # Refusing

    def _refuse(self, response: bytes) -> None:
        """Answer ``response`` (unless a response is under way), then close gently."""
        if self._request_in_progress():
            self._close()
            return
        self.waiting[self] = None  # no request in progress: it may be evicted
        self.transport.write(response)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.flow.resume_reading()
        self._lingering = 0
        self._arm(self.loop.time() + _LINGER_S)
