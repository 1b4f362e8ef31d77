"""HttpReplica: who a remote's answer is charged to, and replicas on unix sockets."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections.abc import AsyncIterator

import numpy as np
import orjson
import pytest

from failsoft.backends.http import HttpReplica, _status_error
from failsoft.call import Call
from failsoft.clock import SystemClock
from failsoft.errors import (
    BadRequest,
    FailsoftError,
    FailureClass,
    ModelError,
    NotFound,
    PayloadTooLarge,
    UpstreamError,
)
from failsoft.observe.events import EventBus
from failsoft.protocol.types import InferRequest

ANSWER = orjson.dumps(
    {"model_name": "m", "outputs": [{"name": "y", "datatype": "INT64", "shape": [1], "data": [7]}]}
)


@pytest.mark.parametrize(
    ("status", "kind", "failure_class"),
    [
        (400, BadRequest, FailureClass.DATA),
        (404, NotFound, FailureClass.CLIENT),
        (413, PayloadTooLarge, FailureClass.CLIENT),
        # A 500 may be the input's fault: attribution decides (a ModelError is a suspect).
        (500, ModelError, FailureClass.REPLICA),
        (503, UpstreamError, FailureClass.REPLICA),
    ],
)
def test_an_upstream_status_is_charged_to_who_caused_it(
    status: int, kind: type[FailsoftError], failure_class: FailureClass
) -> None:
    error = _status_error("r0", status, b'{"error": "said the upstream"}')
    assert type(error) is kind
    assert error.failure_class is failure_class
    assert error.status == (status if status < 500 else kind.status)
    assert "said the upstream" in error.message


def test_only_an_upstream_429_or_503_is_a_refusal() -> None:
    refusals = {status: _status_error("r0", status, b"{}") for status in (429, 502, 503, 504)}
    assert [s for s, e in refusals.items() if isinstance(e, UpstreamError) and e.refused] == [
        429,
        503,
    ]


def test_only_http_and_unix_urls_are_accepted() -> None:
    with pytest.raises(ValueError, match="only http:// and unix:/"):
        HttpReplica("r0", "https://example.com", 4, "m", None)
    with pytest.raises(ValueError, match="only http:// and unix:/"):
        HttpReplica("r0", "unix:relative.sock", 4, "m", None)


@contextlib.asynccontextmanager
async def upstream(status: bytes, body: bytes) -> AsyncIterator[str]:
    """A unix-socket upstream answering every request with one canned response."""

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                break
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            await reader.readexactly(length)
            writer.write(
                b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
            )
            await writer.drain()
        writer.close()

    with tempfile.TemporaryDirectory() as directory:
        path = f"{directory}/worker.sock"
        server = await asyncio.start_unix_server(on_connection, path)
        try:
            yield path
        finally:
            server.close()
            await server.wait_closed()


def call() -> Call:
    return Call("req-1", "m", "v1", time.monotonic() + 5.0, EventBus(), SystemClock())


async def test_a_replica_on_a_unix_socket() -> None:
    request = InferRequest({"x": np.array([[1.0, 2.0]], dtype=np.float32)})
    async with upstream(b"200 OK", ANSWER) as path:
        replica = HttpReplica("w0", f"unix:{path}", 4, "m", None)
        try:
            assert replica.base_url == f"unix:{path}"
            outputs = await replica.infer(request, call())
            assert outputs["y"].tolist() == [7]
            assert await replica.health()
        finally:
            await replica.close()


async def test_a_413_from_a_replica_is_the_requests_fault() -> None:
    request = InferRequest({"x": np.array([[1.0, 2.0]], dtype=np.float32)})
    async with upstream(b"413 Payload Too Large", b'{"error": "body over 8388608"}') as path:
        replica = HttpReplica("w0", f"unix:{path}", 4, "m", None)
        try:
            with pytest.raises(PayloadTooLarge, match="body over 8388608"):
                await replica.infer(request, call())
        finally:
            await replica.close()
