"""The HTTP/1.1 pool against real loopback servers that write canned responses.

Each test starts an ``asyncio.start_server`` on an ephemeral port whose
handler plays one upstream behaviour (answer, hold, close, misbehave); the
tests sequence with events, never by sleeping. The same scenarios run once
more on uvloop at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
import uvloop

from failsoft.backends.h1pool import (
    MAX_RESPONSE_BYTES,
    H1Pool,
    H1Response,
    PoolError,
    PoolTimeout,
)

HOST = "127.0.0.1"
BODY = b'{"ok":true}'
WAIT_S = 5.0  # an upper bound for anything that should happen at once


def response(body: bytes = BODY, *headers: str, status: str = "200 OK") -> bytes:
    head = "".join(f"{header}\r\n" for header in headers)
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{head}\r\n"
    ).encode() + body


OK = response()


@dataclass
class Peer:
    """The server's side of one connection."""

    index: int  # 0 for the first connection the server accepted, 1 for the next, ...
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    upstream: Upstream

    async def read_request(self) -> bytes | None:
        """The next whole request (head and body), or None when the client closed."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        request = head + await self.reader.readexactly(length)
        self.upstream.requests.append(request)
        return request

    async def reply(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def until_client_closes(self) -> None:
        with contextlib.suppress(ConnectionError):
            while await self.reader.read(65536):
                pass


Handler = Callable[[Peer], Awaitable[None]]


@dataclass
class Upstream:
    handler: Handler
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        peer = Peer(self.connections, reader, writer, self)
        self.connections += 1
        try:
            await self.handler(peer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def running(
    handler: Handler, max_connections: int = 128, idle_timeout_s: float = 30.0
) -> AsyncIterator[tuple[Upstream, H1Pool]]:
    upstream = Upstream(handler)
    server = await asyncio.start_server(upstream.on_connection, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    pool = H1Pool(HOST, port, max_connections=max_connections, idle_timeout_s=idle_timeout_s)
    try:
        yield upstream, pool
    finally:
        await pool.close()
        server.close()
        for task in upstream.tasks:
            task.cancel()
        await asyncio.gather(*upstream.tasks, return_exceptions=True)
        await server.wait_closed()


async def post(pool: H1Pool, body: bytes = b"abc", timeout_s: float = WAIT_S) -> H1Response:
    return await pool.request(
        "POST", "/v2/models/m/infer", [("X-Request-Id", "r1")], body, timeout_s
    )


async def until(event: asyncio.Event) -> None:
    async with asyncio.timeout(WAIT_S):
        await event.wait()


async def answer_all(peer: Peer) -> None:
    while await peer.read_request() is not None:
        await peer.reply(OK)


# --- responses --------------------------------------------------------------------------


async def test_content_length_response_and_the_request_on_the_wire() -> None:
    async def handler(peer: Peer) -> None:
        while await peer.read_request() is not None:
            await peer.reply(response(BODY, "X-Thing: a", "x-thing: b"))

    async with running(handler) as (upstream, pool):
        answer = await post(pool, b"abc")
        assert answer == H1Response(
            200,
            {"content-type": "application/json", "content-length": "11", "x-thing": "a, b"},
            BODY,
        )
    assert upstream.requests == [
        f"POST /v2/models/m/infer HTTP/1.1\r\nHost: {HOST}:{pool.port}\r\n"
        "Content-Length: 3\r\nX-Request-Id: r1\r\n\r\nabc".encode()
    ]


async def test_chunked_response_split_across_writes() -> None:
    async def handler(peer: Peer) -> None:
        while await peer.read_request() is not None:
            await peer.reply(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for piece in (b"5\r\nhel", b"lo\r\n", b"6\r\n world\r\n", b"0\r\n\r\n"):
                await peer.reply(piece)

    async with running(handler) as (upstream, pool):
        first = await post(pool)
        second = await post(pool)
    assert first.body == second.body == b"hello world"
    assert first.headers["transfer-encoding"] == "chunked"
    assert upstream.connections == 1


async def test_body_framed_by_the_end_of_the_stream() -> None:
    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.reply(b"HTTP/1.1 200 OK\r\n\r\nuntil the end")

    async with running(handler) as (_, pool):
        assert (await post(pool)).body == b"until the end"


async def test_interim_response_is_skipped() -> None:
    async def handler(peer: Peer) -> None:
        while await peer.read_request() is not None:
            await peer.reply(b"HTTP/1.1 100 Continue\r\n\r\n" + OK)

    async with running(handler) as (upstream, pool):
        assert (await post(pool)).status == 200
        assert (await post(pool)).status == 200
    assert upstream.connections == 1


# --- keep-alive ---------------------------------------------------------------------------


async def test_sequential_requests_reuse_one_connection() -> None:
    async with running(answer_all) as (upstream, pool):
        for _ in range(10):
            assert (await post(pool)).body == BODY
    assert upstream.connections == 1
    assert len(upstream.requests) == 10


async def test_connection_close_is_honoured() -> None:
    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.reply(response(BODY, "Connection: close"))

    async with running(handler) as (upstream, pool):
        for _ in range(3):
            assert (await post(pool)).body == BODY
    assert upstream.connections == 3


async def test_http_1_0_response_is_not_reused() -> None:
    async def handler(peer: Peer) -> None:
        while await peer.read_request() is not None:  # keeps the connection open
            await peer.reply(OK.replace(b"HTTP/1.1", b"HTTP/1.0", 1))

    async with running(handler) as (upstream, pool):
        await post(pool)
        await post(pool)
    assert upstream.connections == 2


async def test_unsolicited_bytes_after_a_response_retire_the_connection() -> None:
    async def handler(peer: Peer) -> None:
        while await peer.read_request() is not None:
            await peer.reply(OK + OK)

    async with running(handler) as (upstream, pool):
        assert (await post(pool)).body == BODY
        assert (await post(pool)).body == BODY
    assert upstream.connections == 2


async def test_server_closing_an_idle_connection_then_the_next_request_succeeds() -> None:
    closed = asyncio.Event()

    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.reply(OK)  # keep-alive, then the server's idle timeout closes it
        peer.writer.close()
        await peer.writer.wait_closed()
        closed.set()

    async with running(handler) as (upstream, pool):
        await post(pool)
        await until(closed)
        assert (await post(pool)).body == BODY
    assert upstream.connections == 2


async def test_reused_connection_closed_as_we_send_is_retried_once_on_a_new_one() -> None:
    async def handler(peer: Peer) -> None:
        if peer.index == 0:
            await peer.read_request()
            await peer.reply(OK)
            await peer.read_request()  # then close without a byte of answer
            return
        await answer_all(peer)

    async with running(handler) as (upstream, pool):
        await post(pool, b"one")
        assert (await post(pool, b"two")).body == BODY
    assert upstream.connections == 2
    assert [request[-3:] for request in upstream.requests] == [b"one", b"two", b"two"]


async def test_408_on_a_reused_connection_is_retried_once_on_a_new_one() -> None:
    async def handler(peer: Peer) -> None:
        if peer.index == 0:
            await peer.read_request()
            await peer.reply(OK)
            await peer.read_request()
            await peer.reply(response(b"", "Connection: close", status="408 Request Timeout"))
            return
        await answer_all(peer)

    async with running(handler) as (upstream, pool):
        await post(pool)
        assert (await post(pool)).status == 200
    assert upstream.connections == 2


async def test_408_on_a_new_connection_is_the_answer() -> None:
    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.reply(response(b"", "Connection: close", status="408 Request Timeout"))

    async with running(handler) as (upstream, pool):
        assert (await post(pool)).status == 408
    assert upstream.connections == 1


async def test_the_retry_happens_only_once() -> None:
    async def handler(peer: Peer) -> None:
        if peer.index == 0:
            await peer.read_request()
            await peer.reply(OK)
        await peer.read_request()  # every later request: closed without an answer

    async with running(handler) as (upstream, pool):
        await post(pool)
        with pytest.raises(PoolError) as failure:
            await post(pool)
    assert type(failure.value) is PoolError
    assert upstream.connections == 2


async def test_new_connection_closed_before_an_answer_is_not_retried() -> None:
    async def handler(peer: Peer) -> None:
        await peer.read_request()

    async with running(handler) as (upstream, pool):
        with pytest.raises(PoolError, match="closed the connection"):
            await post(pool)
    assert upstream.connections == 1


async def test_idle_timeout_closes_idle_connections() -> None:
    closed = asyncio.Event()

    async def handler(peer: Peer) -> None:
        await answer_all(peer)
        closed.set()

    async with running(handler, idle_timeout_s=0.05) as (upstream, pool):
        await post(pool)
        await until(closed)  # the pool closed it: no request was pending
        await post(pool)
    assert upstream.connections == 2


async def test_a_unix_socket_origin() -> None:
    upstream = Upstream(answer_all)
    with tempfile.TemporaryDirectory() as directory:
        path = f"{directory}/upstream.sock"
        server = await asyncio.start_unix_server(upstream.on_connection, path)
        pool = H1Pool("localhost", 80, unix_path=path)
        try:
            assert (await post(pool)).body == BODY
            assert (await post(pool)).body == BODY
        finally:
            await pool.close()
            server.close()
            await server.wait_closed()
    assert pool.origin == f"unix:{path}"
    assert upstream.connections == 1  # kept alive and reused, as over TCP
    head = b"POST /v2/models/m/infer HTTP/1.1\r\nHost: localhost:80\r\n"
    assert upstream.requests[0].startswith(head)


async def test_a_unix_socket_nobody_listens_on_is_refused_at_once() -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = f"{directory}/gone.sock"
        with socket.socket(socket.AF_UNIX) as dead:
            dead.bind(path)  # the file stays, but nothing listens: as after a crash
        for missing_or_dead in (path, f"{directory}/missing.sock"):
            pool = H1Pool("localhost", 80, unix_path=missing_or_dead)
            with pytest.raises(PoolError, match="cannot connect") as failure:
                await post(pool)
            assert not isinstance(failure.value, PoolTimeout)
            await pool.close()


# --- failures -----------------------------------------------------------------------------


async def test_connection_refused_is_a_pool_error() -> None:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port = probe.getsockname()[1]
    pool = H1Pool(HOST, port)  # nothing listens there any more
    with pytest.raises(PoolError, match="cannot connect") as failure:
        await post(pool)
    assert not isinstance(failure.value, PoolTimeout)
    await pool.close()


async def test_timeout_raises_pool_timeout_and_the_connection_is_not_reused() -> None:
    first_closed = asyncio.Event()

    async def handler(peer: Peer) -> None:
        if peer.index == 0:
            await peer.read_request()  # and never answer
            await peer.until_client_closes()
            first_closed.set()
            return
        await answer_all(peer)

    async with running(handler) as (upstream, pool):
        with pytest.raises(PoolTimeout):
            await post(pool, timeout_s=0.05)
        await until(first_closed)
        assert (await post(pool)).body == BODY
    assert upstream.connections == 2


async def test_malformed_response_is_a_pool_error_and_the_connection_is_dropped() -> None:
    async def handler(peer: Peer) -> None:
        if peer.index == 0:
            await peer.read_request()
            await peer.reply(b"HTTP/1.1 OK fine\r\nContent-Length: 2\r\n\r\nhi")
            await peer.until_client_closes()
            return
        await answer_all(peer)

    async with running(handler) as (upstream, pool):
        with pytest.raises(PoolError, match="malformed"):
            await post(pool)
        assert (await post(pool)).body == BODY
    assert upstream.connections == 2


async def test_declared_oversize_body_is_refused_before_it_is_read() -> None:
    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.reply(
            f"HTTP/1.1 200 OK\r\nContent-Length: {MAX_RESPONSE_BYTES + 1}\r\n\r\n".encode()
        )
        await peer.until_client_closes()

    async with running(handler) as (_, pool):
        with pytest.raises(PoolError, match="over 64 MiB"):
            await post(pool)


async def test_chunked_oversize_body_is_refused() -> None:
    chunk = b"x" * (1024 * 1024)
    framed = b"%x\r\n%s\r\n" % (len(chunk), chunk)

    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.reply(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(MAX_RESPONSE_BYTES // len(chunk) + 8):  # until the client hangs up
            await peer.reply(framed)

    async with running(handler) as (_, pool):
        with pytest.raises(PoolError, match="over 64 MiB"):
            await post(pool)


async def test_the_body_limit_is_the_pools_own() -> None:
    body = b"y" * 3000

    async def handler(peer: Peer) -> None:
        while True:
            await peer.read_request()
            await peer.reply(b"HTTP/1.1 200 OK\r\nContent-Length: 3000\r\n\r\n" + body)

    async with running(handler) as (_, pool):
        port = pool.port
        small = H1Pool(HOST, port, max_response_bytes=2048)
        large = H1Pool(HOST, port, max_response_bytes=MAX_RESPONSE_BYTES * 4)
        try:
            with pytest.raises(PoolError, match="over 2048 bytes"):
                await post(small)
            assert (await post(large)).body == body
        finally:
            await small.close()
            await large.close()


async def test_endless_response_head_is_refused() -> None:
    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.reply(b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (100 * 1024))
        await peer.until_client_closes()

    async with running(handler) as (_, pool):
        with pytest.raises(PoolError, match="head over 64 KiB"):
            await post(pool)


async def test_bytes_sent_to_an_idle_connection_drop_it() -> None:
    idle = asyncio.Event()
    closed = asyncio.Event()

    async def handler(peer: Peer) -> None:
        if peer.index == 0:
            await peer.read_request()
            await peer.reply(OK)
            await idle.wait()
            await peer.reply(b"HTTP/1.1 200 OK\r\n")  # nobody asked
            await peer.until_client_closes()
            closed.set()
            return
        await answer_all(peer)

    async with running(handler) as (upstream, pool):
        await post(pool)
        idle.set()
        await until(closed)
        assert (await post(pool)).body == BODY
    assert upstream.connections == 2


async def test_unsafe_requests_are_refused_before_sending() -> None:
    pool = H1Pool(HOST, 9)
    with pytest.raises(ValueError, match="CR or LF"):
        await pool.request("POST", "/", [("X-Id", "a\r\nX-Evil: 1")], b"", 1.0)
    with pytest.raises(ValueError, match="CR or LF"):
        await pool.request("GET", "/ HTTP/1.1\r\nX-Evil: 1\r\n", [], b"", 1.0)
    with pytest.raises(ValueError, match="Content-Length"):
        await pool.request("POST", "/", [("Content-Length", "0")], b"", 1.0)
    with pytest.raises(ValueError, match="HEAD"):
        await pool.request("HEAD", "/", [], b"", 1.0)
    with pytest.raises(PoolTimeout, match="no time left"):
        await pool.request("POST", "/", [], b"", 0.0)
    await pool.close()


def test_pool_options_are_validated() -> None:
    with pytest.raises(ValueError, match="max_connections"):
        H1Pool(HOST, 80, max_connections=0)
    with pytest.raises(ValueError, match="idle_timeout_s"):
        H1Pool(HOST, 80, idle_timeout_s=0)


# --- slots: bounds, cancellation, close ---------------------------------------------------


async def test_max_connections_is_respected() -> None:
    held = 0
    all_held = asyncio.Event()
    release = asyncio.Event()

    async def handler(peer: Peer) -> None:
        nonlocal held
        while await peer.read_request() is not None:
            held += 1
            if held == 2:
                all_held.set()
            await release.wait()
            await peer.reply(OK)

    async with running(handler, max_connections=2) as (upstream, pool):
        requests = [asyncio.create_task(post(pool)) for _ in range(3)]
        await until(all_held)
        assert upstream.connections == 2
        release.set()
        answers = await asyncio.gather(*requests)
    assert [answer.body for answer in answers] == [BODY] * 3
    assert upstream.connections == 2


async def test_waiting_for_a_free_connection_is_bounded_by_the_timeout() -> None:
    got = asyncio.Event()

    async def handler(peer: Peer) -> None:
        await peer.read_request()
        got.set()
        await peer.until_client_closes()

    async with running(handler, max_connections=1) as (upstream, pool):
        holder = asyncio.create_task(post(pool))
        await until(got)
        with pytest.raises(PoolTimeout, match="became free"):
            await post(pool, timeout_s=0.05)
        holder.cancel()
        with pytest.raises(asyncio.CancelledError):
            await holder
    assert upstream.connections == 1


async def test_cancelling_a_request_closes_its_connection_and_frees_the_slot() -> None:
    got = asyncio.Event()
    first_closed = asyncio.Event()

    async def handler(peer: Peer) -> None:
        if peer.index == 0:
            await peer.read_request()
            got.set()
            await peer.until_client_closes()
            first_closed.set()
            return
        await answer_all(peer)

    async with running(handler, max_connections=1) as (upstream, pool):
        loser = asyncio.create_task(post(pool))
        await until(got)
        loser.cancel()
        with pytest.raises(asyncio.CancelledError):
            await loser
        await until(first_closed)
        assert (await post(pool, timeout_s=1.0)).body == BODY
    assert upstream.connections == 2


async def test_cancelling_a_waiting_request_leaks_no_slot() -> None:
    got = asyncio.Event()
    release = asyncio.Event()

    async def handler(peer: Peer) -> None:
        while await peer.read_request() is not None:
            got.set()
            await release.wait()
            await peer.reply(OK)

    async with running(handler, max_connections=1) as (upstream, pool):
        holder = asyncio.create_task(post(pool))
        await until(got)
        waiting = asyncio.create_task(post(pool))
        await asyncio.sleep(0)  # one loop turn: it runs until it queues for the connection
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        release.set()
        assert (await holder).body == BODY
        assert (await post(pool, timeout_s=1.0)).body == BODY
    assert upstream.connections == 1


async def test_close_fails_pending_waiting_and_later_requests() -> None:
    got = asyncio.Event()

    async def handler(peer: Peer) -> None:
        await peer.read_request()
        got.set()
        await peer.until_client_closes()

    async with running(handler, max_connections=1) as (_, pool):
        pending = asyncio.create_task(post(pool))
        await until(got)
        waiting = asyncio.create_task(post(pool))
        await asyncio.sleep(0)  # one loop turn: it runs until it queues for the connection
        await pool.close()
        for task in (pending, waiting):
            with pytest.raises(PoolError, match="closed"):
                await task
        with pytest.raises(PoolError, match="closed"):
            await post(pool)


async def test_a_freed_slot_goes_to_a_waiter_and_the_retry_waits_its_turn() -> None:
    """B's reused connection dies unanswered while C waits for the only slot.

    C gets the freed slot and connects; B's fresh retry waits, is handed C's
    connection when C is done, replaces it with a new one and succeeds.
    """
    got_b = asyncio.Event()
    close_now = asyncio.Event()

    async def handler(peer: Peer) -> None:
        if peer.index == 0:
            await peer.read_request()
            await peer.reply(OK)
            await peer.read_request()
            got_b.set()
            await close_now.wait()  # then close without answering B
            return
        await answer_all(peer)

    async with running(handler, max_connections=1) as (upstream, pool):
        await post(pool, b"aaa")
        b = asyncio.create_task(post(pool, b"bbb"))
        await until(got_b)
        c = asyncio.create_task(post(pool, b"ccc"))
        await asyncio.sleep(0)  # one loop turn: it runs until it queues for the connection
        close_now.set()
        assert (await b).body == (await c).body == BODY
    assert upstream.connections == 3
    assert [request[-3:] for request in upstream.requests] == [b"aaa", b"bbb", b"ccc", b"bbb"]


async def test_connect_timeout_frees_the_slot() -> None:
    async with running(answer_all, max_connections=1) as (_, pool):
        with pytest.raises(PoolTimeout):
            await post(pool, timeout_s=1e-9)
        assert (await post(pool, timeout_s=1.0)).body == BODY
        assert slots_in_use(pool) == 1


# --- rare interleavings, set up through the pool's private seams --------------------------


def slots_in_use(pool: H1Pool) -> int:
    return pool._size


async def test_expired_idle_connection_is_closed_instead_of_used() -> None:
    async with running(answer_all) as (upstream, pool):
        await post(pool)
        pool._idle[-1].idle_since -= 60.0  # as if idle for a minute, before the sweeper ran
        await post(pool)
        assert slots_in_use(pool) == 1
    assert upstream.connections == 2


async def test_send_on_a_connection_already_closing_is_retried_on_a_new_one() -> None:
    async with running(answer_all) as (upstream, pool):
        await post(pool)
        transport = pool._idle[-1]._transport
        assert transport is not None
        transport.close()  # as after an EOF whose connection_lost has not run yet
        assert (await post(pool)).body == BODY
        assert slots_in_use(pool) == 1
    assert upstream.connections == 2


async def test_fresh_connection_at_the_limit_replaces_an_idle_one() -> None:
    async with running(answer_all, max_connections=1) as (upstream, pool):
        await post(pool)
        loop = asyncio.get_running_loop()
        conn = await pool._acquire(loop, loop.time() + WAIT_S, fresh=True)
        assert not pool._idle
        pool._release(conn)
        assert (await post(pool)).body == BODY
        assert slots_in_use(pool) == 1
    assert upstream.connections == 2


async def test_cancelled_waiter_gives_back_a_slot_it_was_just_handed() -> None:
    got = asyncio.Event()

    async def handler(peer: Peer) -> None:
        if peer.index == 0:
            await peer.read_request()
            got.set()
            await peer.until_client_closes()
            return
        await answer_all(peer)

    async with running(handler, max_connections=1) as (upstream, pool):
        holder = asyncio.create_task(post(pool))
        await until(got)
        waiting = asyncio.create_task(post(pool))
        await asyncio.sleep(0)  # one loop turn: it runs until it queues for the connection
        (conn,) = pool._conns
        conn.close()  # frees the slot: handed to the waiter at once ...
        waiting.cancel()  # ... which is cancelled before it could use it
        with pytest.raises(PoolError):
            await holder
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert slots_in_use(pool) == 0
        assert (await post(pool, timeout_s=1.0)).body == BODY
    assert upstream.connections == 2


# --- the same on uvloop -------------------------------------------------------------------

UVLOOP_SCENARIOS = [
    test_content_length_response_and_the_request_on_the_wire,
    test_chunked_response_split_across_writes,
    test_sequential_requests_reuse_one_connection,
    test_connection_close_is_honoured,
    test_server_closing_an_idle_connection_then_the_next_request_succeeds,
    test_reused_connection_closed_as_we_send_is_retried_once_on_a_new_one,
    test_connection_refused_is_a_pool_error,
    test_a_unix_socket_origin,
    test_a_unix_socket_nobody_listens_on_is_refused_at_once,
    test_timeout_raises_pool_timeout_and_the_connection_is_not_reused,
    test_malformed_response_is_a_pool_error_and_the_connection_is_dropped,
    test_max_connections_is_respected,
    test_cancelling_a_request_closes_its_connection_and_frees_the_slot,
]


@pytest.mark.parametrize("scenario", UVLOOP_SCENARIOS, ids=lambda s: s.__name__[5:])
def test_on_uvloop(scenario: Callable[[], Awaitable[None]]) -> None:
    async def run() -> None:
        await scenario()

    uvloop.run(run())
