"""The hardened HTTP/1.1 protocol on a real uvicorn server (in a thread) and real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
import uvloop

from failsoft.server.h1 import H1Limits, protocol_class
from tests._raw_http import (
    Address,
    connect,
    get,
    get_request,
    is_closed,
    read_response,
    seconds_until_closed,
)

LIMITS = H1Limits(max_connections=2, header_timeout_s=30, keep_alive_s=30, max_header_bytes=4096)


class App:
    """``/`` answers at once; ``/hold`` answers when the test releases it."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.held = 0
        self._release: asyncio.Event | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        if scope["path"] == "/hold":
            if self._release is None:
                self._release = asyncio.Event()
            self.held += 1
            await self._release.wait()
        body = b"ok"
        headers = [(b"content-type", b"text/plain"), (b"content-length", b"2")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def release(self) -> None:
        assert self.loop is not None
        self.loop.call_soon_threadsafe(lambda: self._release and self._release.set())


def wait_until(condition: Any, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.005)


@contextlib.contextmanager
def serving(limits: H1Limits = LIMITS) -> Iterator[tuple[Address, App]]:
    app = App()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    config = uvicorn.Config(
        app, http=protocol_class(limits), ws="none", lifespan="off", log_config=None
    )
    server = uvicorn.Server(config)

    async def main() -> None:
        app.loop = asyncio.get_running_loop()
        await server.serve(sockets=[listener])

    thread = threading.Thread(target=uvloop.run, args=(main(),), daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started)
        yield listener.getsockname(), app
    finally:
        server.should_exit = True
        thread.join(10)
        listener.close()


def test_requests_and_pipelined_requests_are_served() -> None:
    with serving() as (address, _), connect(address) as sock:
        assert get(sock, "/")[0] == 200
        sock.sendall(get_request("/") * 3)
        assert [read_response(sock)[0] for _ in range(3)] == [200, 200, 200]


@pytest.mark.parametrize("pieces", [1, 50])
def test_a_head_over_the_limit_gets_431_then_the_connection_closes(pieces: int) -> None:
    request = get_request("/", b"x-big: " + b"a" * 5000 + b"\r\n")
    step = -(-len(request) // pieces)
    with serving() as (address, _), connect(address) as sock:
        for start in range(0, len(request), step):
            sock.sendall(request[start : start + step])
        status, headers, body = read_response(sock)
        assert status == 431
        assert headers["content-type"] == "application/json"
        assert headers["connection"] == "close"
        assert json.loads(body) == {"error": "request headers are over the 4096-byte limit"}
        assert seconds_until_closed(sock, 5) < 5


def test_a_head_under_the_limit_is_served_on_a_busy_keep_alive_connection() -> None:
    with serving() as (address, _), connect(address) as sock:
        for _ in range(3):
            assert get(sock, "/")[0] == 200
        sock.sendall(get_request("/", b"x-big: " + b"a" * 3500 + b"\r\n"))
        assert read_response(sock)[0] == 200


def test_a_client_still_sending_a_huge_head_reads_the_431() -> None:
    with serving() as (address, _), connect(address) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nx-big: " + b"a" * 300_000)
        assert read_response(sock)[0] == 431


def test_a_new_connection_beyond_the_cap_closes_the_longest_waiting_one() -> None:
    with serving() as (address, _):
        silent = connect(address)
        idle = connect(address)
        assert get(idle, "/")[0] == 200  # opened after `silent`, and waiting since its answer
        with connect(address) as third:
            assert get(third, "/")[0] == 200
            assert seconds_until_closed(silent, 5) < 5
            assert not is_closed(idle)
            with connect(address) as fourth:
                assert get(fourth, "/")[0] == 200
                assert seconds_until_closed(idle, 5) < 5
        silent.close()
        idle.close()


def test_requests_beyond_the_cap_of_requests_in_progress_get_503() -> None:
    with serving() as (address, app):
        holders = [connect(address) for _ in range(2)]
        for sock in holders:
            sock.sendall(get_request("/hold"))
        wait_until(lambda: app.held == 2)
        with connect(address) as late:
            status, headers, body = get(late, "/")
            assert status == 503
            assert headers["retry-after"] == "1"
            assert json.loads(body) == {"error": "the server is at its connection limit"}
        app.release()
        for sock in holders:
            assert read_response(sock)[0] == 200
            sock.close()


def test_a_slow_head_and_an_idle_connection_are_closed_on_time() -> None:
    limits = H1Limits(
        max_connections=16, header_timeout_s=0.3, keep_alive_s=0.6, max_header_bytes=4096
    )
    with serving(limits) as (address, _):
        with connect(address) as sock:
            assert get(sock, "/")[0] == 200
            # Idle longer than the head deadline, which runs from the head's first byte.
            time.sleep(0.4)
            sock.sendall(b"GET / HTTP/1.1\r\n")
            assert 0.25 < seconds_until_closed(sock, 5) < 1.5
        with connect(address) as sock:
            assert get(sock, "/")[0] == 200
            assert 0.5 < seconds_until_closed(sock, 5) < 2.0
