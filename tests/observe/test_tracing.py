"""Traces: the spans of a request, its attempts and fallback tiers, and traceparent on the wire.

Through the real app in-process, with an http backend whose replicas are a
real HTTP server on a loopback port; spans land in the SDK's in-memory
exporter.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from failsoft.backends.http import HttpReplica
from failsoft.call import Call
from failsoft.clock import SystemClock
from failsoft.config import ConfigError, parse_config
from failsoft.observe import tracing
from failsoft.observe.events import EventBus
from failsoft.observe.metrics import Metrics
from failsoft.protocol.types import InferRequest
from failsoft.runtime import Runtime
from failsoft.server.app import FailsoftApp

ANSWER = orjson.dumps(
    {"model_name": "m", "outputs": [{"name": "y", "datatype": "INT64", "shape": [1], "data": [7]}]}
)
BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1.0, 2.0]}]}
CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"


@dataclass
class Upstream:
    """What the loopback replica server saw, and how many calls it fails with a 503."""

    failures: int = 0
    seen: list[tuple[str, str | None]] = field(default_factory=list)  # (path, traceparent)
    handlers: set[asyncio.Task[Any]] = field(default_factory=set)

    async def closed(self) -> None:
        """Until every connection's handler is done (the clients closed theirs first)."""
        await asyncio.wait_for(asyncio.gather(*self.handlers), 5.0)

    async def on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                break
            lines = head.decode("latin-1").split("\r\n")
            headers = {
                name.strip().lower(): value.strip()
                for name, _, value in (line.partition(":") for line in lines[1:] if line)
            }
            await reader.readexactly(int(headers.get("content-length", "0")))
            self.seen.append((lines[0].split(" ")[1], headers.get("traceparent")))
            if self.failures > 0:
                self.failures -= 1
                status, body = b"503 Service Unavailable", b'{"error": "busy"}'
            else:
                status, body = b"200 OK", ANSWER
            writer.write(
                b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
            )
            await writer.drain()
        writer.close()


@contextlib.asynccontextmanager
async def loopback(upstream: Upstream) -> AsyncIterator[int]:
    server = await asyncio.start_server(upstream.on_connection, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()
        await upstream.closed()


def config(port: int, *, enabled: bool = True, fallback: bool = False) -> dict[str, Any]:
    model: dict[str, Any] = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
        "outputs": [{"name": "y", "datatype": "INT64", "shape": [-1]}],
        "versions": {
            "v1": {
                "backend": "http",
                "urls": [f"http://127.0.0.1:{port}/a", f"http://127.0.0.1:{port}/b"],
            }
        },
        "hedge": {"enabled": False},  # one attempt at a time: the spans are in a known order
        "health_check": {"enabled": False},
    }
    if fallback:
        model["fallback"] = [{"static": {"y": 0}}]
        model["retry"] = {"max_attempts": 2}
    return {"models": {"m": model}, "tracing": {"enabled": enabled, "exporter": "none"}}


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    yield exporter
    tracing.configure(tracing.TracingOptions())  # off again for the other tests


@contextlib.asynccontextmanager
async def gateway(
    data: dict[str, Any], exporter: InMemorySpanExporter
) -> AsyncIterator[httpx.AsyncClient]:
    parsed = parse_config(data)
    app = FailsoftApp(Runtime(parsed, EventBus()), parsed.server, Metrics())
    if parsed.tracing.enabled:
        tracing.add_exporter(exporter)
    await app.runtime.start()
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw")
    try:
        yield http
    finally:
        await http.aclose()
        await app.runtime.close()


def by_name(exported: tuple[ReadableSpan, ...]) -> dict[str, list[ReadableSpan]]:
    named: dict[str, list[ReadableSpan]] = {}
    for span in sorted(exported, key=lambda s: s.start_time or 0):
        named.setdefault(span.name, []).append(span)
    return named


def ids(traceparent: str | None) -> tuple[str, str]:
    """(trace id, parent span id) of a W3C traceparent."""
    assert traceparent is not None
    version, trace_id, span_id, flags = traceparent.split("-")
    assert (version, len(trace_id), len(span_id)) == ("00", 32, 16)
    assert int(flags, 16) & 1  # sampled
    return trace_id, span_id


async def test_a_retried_request_has_a_span_per_attempt_with_the_failure_class(
    spans: InMemorySpanExporter,
) -> None:
    upstream = Upstream(failures=1)
    async with loopback(upstream) as port, gateway(config(port), spans) as http:
        answer = await http.post("/v2/models/m/infer", json=BODY)
    assert answer.status_code == 200

    named = by_name(spans.get_finished_spans())
    [request] = named["infer m"]
    first, second = named["attempt"]
    assert request.attributes is not None
    assert request.attributes["failsoft.outcome"] == "ok"
    assert request.attributes["http.response.status_code"] == 200
    for attempt in (first, second):
        assert attempt.parent is not None
        assert request.context is not None
        assert attempt.parent.span_id == request.context.span_id
        assert attempt.context is not None
        assert attempt.context.trace_id == request.context.trace_id
    assert first.attributes is not None
    assert second.attributes is not None
    assert first.attributes["failsoft.attempt.kind"] == "first"
    assert first.attributes["failsoft.outcome"] == "error"
    assert first.attributes["failsoft.failure_class"] == "replica"
    assert second.attributes["failsoft.attempt.kind"] == "retry"
    assert second.attributes["failsoft.outcome"] == "ok"
    assert "failsoft.failure_class" not in second.attributes
    # Another replica took the retry, and the request span names it.
    assert first.attributes["failsoft.replica"] != second.attributes["failsoft.replica"]
    assert (
        request.attributes["failsoft.served_by"] == f"m/v1/{second.attributes['failsoft.replica']}"
    )

    # Each call upstream carried its own attempt's span as the parent.
    assert len(upstream.seen) == 2
    for (_, traceparent), attempt in zip(upstream.seen, (first, second), strict=True):
        assert attempt.context is not None
        assert ids(traceparent) == (
            f"{attempt.context.trace_id:032x}",
            f"{attempt.context.span_id:016x}",
        )


async def test_a_clients_traceparent_is_continued_to_the_upstream(
    spans: InMemorySpanExporter,
) -> None:
    upstream = Upstream()
    incoming = {"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"}
    async with loopback(upstream) as port, gateway(config(port), spans) as http:
        answer = await http.post("/v2/models/m/infer", json=BODY, headers=incoming)
    assert answer.status_code == 200

    named = by_name(spans.get_finished_spans())
    [request] = named["infer m"]
    assert request.context is not None
    assert request.parent is not None
    assert f"{request.context.trace_id:032x}" == CLIENT_TRACE
    assert f"{request.parent.span_id:016x}" == CLIENT_SPAN
    [(_, traceparent)] = upstream.seen
    assert ids(traceparent)[0] == CLIENT_TRACE


async def test_a_fallback_answer_has_the_tier_span(spans: InMemorySpanExporter) -> None:
    upstream = Upstream(failures=1_000)
    async with loopback(upstream) as port, gateway(config(port, fallback=True), spans) as http:
        answer = await http.post("/v2/models/m/infer", json=BODY)
    assert answer.status_code == 200
    assert answer.headers["failsoft-degraded"] == "true"

    named = by_name(spans.get_finished_spans())
    [request] = named["infer m"]
    [tier] = named["fallback static"]
    assert request.context is not None
    assert tier.parent is not None
    assert tier.parent.span_id == request.context.span_id
    assert tier.attributes is not None
    assert request.attributes is not None
    assert tier.attributes["failsoft.outcome"] == "ok"
    assert tier.attributes["failsoft.fallback.tier"] == "static"
    assert request.attributes["failsoft.degraded"] is True
    assert request.attributes["failsoft.fallback.tier"] == "static"
    attempts = named["attempt"]
    assert len(attempts) == 2
    assert all(
        a.attributes is not None and a.attributes["failsoft.failure_class"] == "replica"
        for a in attempts
    )


async def test_off_means_no_spans_and_no_traceparent(spans: InMemorySpanExporter) -> None:
    upstream = Upstream()
    incoming = {"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"}
    async with loopback(upstream) as port, gateway(config(port, enabled=False), spans) as http:
        answer = await http.post("/v2/models/m/infer", json=BODY, headers=incoming)
    assert answer.status_code == 200
    assert not tracing.enabled()
    assert spans.get_finished_spans() == ()
    assert upstream.seen == [("/a/v2/models/m/infer", None)] or upstream.seen == [
        ("/b/v2/models/m/infer", None)
    ]


async def test_a_worker_on_a_unix_socket_gets_the_traceparent(
    spans: InMemorySpanExporter,
) -> None:
    """Process workers are HttpReplicas on unix sockets: the same header reaches them."""
    tracing.configure(tracing.TracingOptions(enabled=True, exporter="none"))
    tracing.add_exporter(spans)
    upstream = Upstream()
    request = InferRequest({"x": np.array([[1.0, 2.0]], dtype=np.float32)})
    call = Call("req-1", "m", "v1", time.monotonic() + 5.0, EventBus(), SystemClock())
    with tempfile.TemporaryDirectory() as directory:
        path = f"{directory}/worker.sock"
        server = await asyncio.start_unix_server(upstream.on_connection, path)
        replica = HttpReplica("w0", f"unix:{path}", 4, "m", None)
        try:
            work = replica.infer(request, call)
            outputs = await tracing.attempt(work, "m", "v1", "w0", "first")
        finally:
            await replica.close()
            server.close()
            await server.wait_closed()
            await upstream.closed()
    assert outputs["y"].tolist() == [7]
    [attempt] = spans.get_finished_spans()
    [(_, traceparent)] = upstream.seen
    assert attempt.context is not None
    assert ids(traceparent) == (
        f"{attempt.context.trace_id:032x}",
        f"{attempt.context.span_id:016x}",
    )


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"sample_ratio": 1.5}, "tracing.sample_ratio: sample_ratio is a share of requests"),
        ({"sample_ratio": -0.1}, "tracing.sample_ratio: sample_ratio is a share of requests"),
        ({"endpoint": "localhost:4318"}, "tracing.endpoint: endpoint must be an http"),
        ({"exporter": "zipkin"}, "tracing.exporter:"),
    ],
)
def test_bad_tracing_options_name_the_field(section: dict[str, Any], message: str) -> None:
    data = config(1)
    data["tracing"] = section
    with pytest.raises(ConfigError) as raised:
        parse_config(data)
    assert any(problem.startswith(message) for problem in raised.value.problems), raised.value


def test_tracing_is_off_by_default() -> None:
    data = config(1)
    del data["tracing"]
    assert parse_config(data).tracing.enabled is False
