"""Traces: the spans of a request, its attempts and fallback tiers, and traceparent on the wire.

Through the real app in-process, with an http backend whose replicas are a
real HTTP server on a loopback port; spans land in the SDK's in-memory
exporter.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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
    hold_first: asyncio.Event | None = None  # the first call waits for it (a hung replica)

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
            if self.hold_first is not None and len(self.seen) == 1:
                await self.hold_first.wait()
            if self.failures > 0:
                self.failures -= 1
                status, body = b"503 Service Unavailable", b'{"error": "busy"}'
            else:
                status, body = b"200 OK", ANSWER
            writer.write(
                b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
            )
            try:
                await writer.drain()
            except ConnectionError:  # the caller gave up on this call (a hedge's loser)
                break
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


def config(
    port: int,
    *,
    enabled: bool = True,
    fallback: bool = False,
    ratio: float = 1.0,
    hedge: bool = False,
) -> dict[str, Any]:
    model: dict[str, Any] = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
        "outputs": [{"name": "y", "datatype": "INT64", "shape": [-1]}],
        "versions": {
            "v1": {
                "backend": "http",
                "urls": [f"http://127.0.0.1:{port}/a", f"http://127.0.0.1:{port}/b"],
            }
        },
        # Unless hedging is the point, one attempt at a time: the spans are in a known order.
        "hedge": {"enabled": hedge, "min_delay_ms": 2},
        "health_check": {"enabled": False},
    }
    if fallback:
        model["fallback"] = [{"static": {"y": 0}}]
        model["retry"] = {"max_attempts": 2}
    tracing = {"enabled": enabled, "exporter": "none", "sample_ratio": ratio}
    return {"models": {"m": model}, "tracing": tracing}


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    yield exporter
    tracing.configure(tracing.TracingOptions())  # off again for the other tests


@contextlib.asynccontextmanager
async def gateway(
    data: dict[str, Any], exporter: InMemorySpanExporter, seed: int | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    parsed = parse_config(data)
    app = FailsoftApp(Runtime(parsed, EventBus()), parsed.server, Metrics())
    if parsed.tracing.enabled:
        if seed is not None:  # which new traces are sampled, from a seeded source
            tracing.configure(parsed.tracing, random.Random(seed))
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


def ids(traceparent: str | None, sampled: bool = True) -> tuple[str, str]:
    """(trace id, parent span id) of a W3C traceparent."""
    assert traceparent is not None
    version, trace_id, span_id, flags = traceparent.split("-")
    assert (version, len(trace_id), len(span_id)) == ("00", 32, 16)
    assert bool(int(flags, 16) & 1) is sampled
    assert int(trace_id, 16) != 0
    assert int(span_id, 16) != 0
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


async def test_a_hedged_request_has_the_hedge_span_and_the_losers_is_cancelled(
    spans: InMemorySpanExporter,
) -> None:
    release = asyncio.Event()
    upstream = Upstream(hold_first=release)
    async with loopback(upstream) as port:
        try:
            async with gateway(config(port, hedge=True), spans) as http:
                answer = await http.post("/v2/models/m/infer", json=BODY)
        finally:
            release.set()
    assert answer.status_code == 200

    named = by_name(spans.get_finished_spans())
    [request] = named["infer m"]
    first, hedge = named["attempt"]
    assert first.attributes is not None
    assert hedge.attributes is not None
    assert first.attributes["failsoft.attempt.kind"] == "first"
    assert first.attributes["failsoft.outcome"] == "cancelled"
    assert "failsoft.failure_class" not in first.attributes
    assert hedge.attributes["failsoft.attempt.kind"] == "hedge"
    assert hedge.attributes["failsoft.outcome"] == "ok"
    assert first.attributes["failsoft.replica"] != hedge.attributes["failsoft.replica"]
    assert request.context is not None
    for attempt, (_, traceparent) in zip((first, hedge), upstream.seen, strict=True):
        assert attempt.parent is not None
        assert attempt.parent.span_id == request.context.span_id
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


async def test_a_malformed_traceparent_starts_a_new_trace(spans: InMemorySpanExporter) -> None:
    upstream = Upstream()
    async with loopback(upstream) as port, gateway(config(port), spans) as http:
        for bad in ("garbage", f"00-{'0' * 32}-{CLIENT_SPAN}-01", "x" * 10_000):
            answer = await http.post("/v2/models/m/infer", json=BODY, headers={"traceparent": bad})
            assert answer.status_code == 200
    requests = by_name(spans.get_finished_spans())["infer m"]
    assert len(requests) == 3
    assert all(request.parent is None for request in requests)
    assert len({ids(traceparent)[0] for _, traceparent in upstream.seen}) == 3


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


async def test_a_denied_retry_is_an_event_of_the_request_span(
    spans: InMemorySpanExporter,
) -> None:
    upstream = Upstream(failures=1_000)
    async with loopback(upstream) as port:
        data = config(port, fallback=True)
        data["models"]["m"]["retry"] = {"budget_ratio": 0, "budget_min_per_s": 0}
        async with gateway(data, spans) as http:
            answer = await http.post("/v2/models/m/infer", json=BODY)
    assert answer.status_code == 200
    named = by_name(spans.get_finished_spans())
    [request] = named["infer m"]
    assert len(named["attempt"]) == 1  # the budget allowed no second one
    denied = [event for event in request.events if event.name == "RetryDenied"]
    assert [dict(event.attributes or {}) for event in denied] == [
        {"model": "m", "version": "v1", "reason": "budget"}
    ]


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


async def test_unsampled_requests_make_no_spans_but_pass_on_not_sampled(
    spans: InMemorySpanExporter,
) -> None:
    upstream = Upstream()
    unsampled_client = {"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-00"}
    async with loopback(upstream) as port, gateway(config(port, ratio=0.0), spans) as http:
        assert (await http.post("/v2/models/m/infer", json=BODY)).status_code == 200
        answer = await http.post("/v2/models/m/infer", json=BODY, headers=unsampled_client)
        assert answer.status_code == 200
        malformed = await http.post("/v2/models/m/infer", json=BODY, headers={"traceparent": "x"})
        assert malformed.status_code == 200
    assert spans.get_finished_spans() == ()
    (_, own), (_, continued), (_, other) = upstream.seen
    assert ids(own, sampled=False)[0] != CLIENT_TRACE
    assert ids(continued, sampled=False)[0] == CLIENT_TRACE
    assert ids(other, sampled=False)[0] not in (CLIENT_TRACE, ids(own, sampled=False)[0])


async def test_the_sample_ratio_keeps_a_share_of_new_traces(spans: InMemorySpanExporter) -> None:
    upstream = Upstream()
    requests = 40
    async with loopback(upstream) as port, gateway(config(port, ratio=0.5), spans, 7) as http:
        for _ in range(requests):
            assert (await http.post("/v2/models/m/infer", json=BODY)).status_code == 200
    named = by_name(spans.get_finished_spans())
    kept = len(named["infer m"])
    assert 5 <= kept <= 35  # Binomial(40, 0.5); the seeded source makes it one fixed count
    assert len(named["attempt"]) == kept
    flags = [
        traceparent is not None and bool(int(traceparent[-2:], 16) & 1)
        for _, traceparent in upstream.seen
    ]
    assert sum(flags) == kept
    assert {f"{s.context.trace_id:032x}" for s in named["infer m"] if s.context} == {
        ids(traceparent)[0]
        for (_, traceparent), sampled in zip(upstream.seen, flags, strict=True)
        if sampled
    }


class Receiver:
    """A real OTLP/HTTP traces endpoint on loopback, in a thread; keeps the spans it got."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, Any]] = []  # (service.name, protobuf Span)
        self.changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.take(body)
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1/traces"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def take(self, body: bytes) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        export = ExportTraceServiceRequest()
        export.ParseFromString(body)
        with self.changed:
            for resource in export.resource_spans:
                attributes = {a.key: a.value.string_value for a in resource.resource.attributes}
                for scope in resource.scope_spans:
                    self.spans.extend((attributes["service.name"], s) for s in scope.spans)
            self.changed.notify_all()

    def wait_for(self, service: str, timeout: float) -> list[Any]:
        """The spans of ``service``, once there are some (bounded by ``timeout``)."""
        with self.changed:
            self.changed.wait_for(lambda: any(n == service for n, _ in self.spans), timeout)
            return [span for name, span in self.spans if name == service]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def test_spans_are_exported_over_otlp_http() -> None:
    """A real OTLP/HTTP receiver on loopback gets the spans, as protobuf, when tracing stops."""
    receiver = Receiver()
    try:
        options = tracing.TracingOptions(enabled=True, endpoint=receiver.url, service_name="gw")
        tracing.configure(options)

        async def answer() -> int:
            return 7

        assert asyncio.run(tracing.request(answer(), [], "m")) == 7
        tracing.configure(tracing.TracingOptions())  # flushes the batch, on a thread
        [span] = receiver.wait_for("gw", 10.0)
        assert tracing.wait_closed(10.0)
    finally:
        receiver.close()
    assert span.name == "infer m"


def worker_answer(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"y": np.full(len(inputs["x"]), 7, dtype=np.int64)}


async def test_a_process_worker_continues_the_trace(spans: InMemorySpanExporter) -> None:
    """The worker gets the gateway's tracing and the attempt's traceparent: its request
    span is the child of the gateway's attempt span (exported by the worker over OTLP)."""
    receiver = Receiver()
    data = config(1)
    data["models"]["m"]["versions"]["v1"] = {
        "backend": "process",
        "replicas": 1,
        "worker": {"backend": "python", "function": "tests.observe.test_tracing:worker_answer"},
    }
    data["tracing"] = {"enabled": True, "endpoint": receiver.url}
    try:
        async with gateway(data, spans) as http:
            answer = await http.post("/v2/models/m/infer", json=BODY)
        # Closing the gateway stopped its worker, which flushed its spans on the way out.
        worker_spans = receiver.wait_for("failsoft-worker", 20.0)
    finally:
        tracing.configure(tracing.TracingOptions())  # the gateway's own batch, while it listens
        assert tracing.wait_closed(10.0)
        receiver.close()
    assert answer.status_code == 200
    [attempt] = by_name(spans.get_finished_spans())["attempt"]
    [served] = [span for span in worker_spans if span.name == "infer m"]
    assert attempt.context is not None
    assert served.trace_id.hex() == f"{attempt.context.trace_id:032x}"
    assert served.parent_span_id.hex() == f"{attempt.context.span_id:016x}"


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


def test_enabled_without_the_packages_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracing, "AVAILABLE", False)  # as where the otel extra is not installed
    data = config(1)
    with pytest.raises(ConfigError) as raised:
        parse_config(data)
    assert raised.value.problems == [
        "tracing: tracing is enabled but the OpenTelemetry packages are not installed: "
        "pip install 'failsoft[otel]'"
    ]
    data["tracing"] = {"enabled": False}
    assert parse_config(data).tracing.enabled is False
