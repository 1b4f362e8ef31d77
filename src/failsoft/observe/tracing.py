"""OpenTelemetry traces: a span per request, per attempt and per fallback tier.

Tracing is optional twice over: the ``tracing:`` section is off by default,
and the OpenTelemetry packages are an extra (``pip install 'failsoft[otel]'``).
While it is off every hook below is one test of a module global, so the
request path pays nothing measurable for it (benchmarks/serve.py).

The spans nest through the OpenTelemetry context (a contextvar): the request
span is current while the request runs, each attempt span while its attempt
runs (a hedged attempt's task copies the context it was spawned in), so an
attempt span is the request span's child and a fallback tier's nested
attempts are the tier span's children. What a request's span says about its
outcome (status, failure class, served by, fallback tier) comes from the
events the pipeline already emits (``observe``), emitted synchronously in the
request's own context; only the attempt and tier spans need a hook, because
no event marks where an attempt or a tier begins and ends.

A client's W3C ``traceparent`` is continued, and the current span's
``traceparent`` goes to every http upstream and worker (``traceparent()``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import random
import threading
from collections.abc import Coroutine, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import orjson
from pydantic import Field, field_validator, model_validator

from failsoft._options import StrictModel
from failsoft.errors import FailsoftError
from failsoft.observe.events import Event, EventBus, RequestFinished

try:  # the optional extra
    from opentelemetry import trace
    from opentelemetry.trace import (
        NonRecordingSpan,
        SpanContext,
        SpanKind,
        Status,
        StatusCode,
        TraceFlags,
    )
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    AVAILABLE = True
except ImportError:  # pragma: no cover - exercised where the extra is not installed
    AVAILABLE = False

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, Tracer

log = logging.getLogger("failsoft.tracing")

T = TypeVar("T")
Headers = Sequence[tuple[bytes, bytes]]

_MISSING = "the OpenTelemetry packages are not installed: pip install 'failsoft[otel]'"


class TracingOptions(StrictModel):
    enabled: bool = Field(default=False, description="make spans and export them")
    exporter: Literal["otlp", "none"] = Field(
        default="otlp",
        description="otlp: OTLP over HTTP to `endpoint`; none: spans are made (and traceparent "
        "propagated) but not exported",
    )
    endpoint: str | None = Field(
        default=None,
        description="OTLP/HTTP traces URL, e.g. http://127.0.0.1:4318/v1/traces; default: "
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or http://localhost:4318/v1/traces",
    )
    sample_ratio: float = Field(
        default=1.0,
        description="share of new traces recorded, 0..1; a client's sampled flag is followed",
    )
    service_name: str = Field(default="failsoft", min_length=1, max_length=200)

    @field_validator("sample_ratio")
    @classmethod
    def _a_share(cls, value: float) -> float:
        if not 0.0 <= value <= 1.0:  # also refuses NaN
            raise ValueError(f"sample_ratio is a share of requests, from 0 to 1 (got {value})")
        return value

    @field_validator("endpoint")
    @classmethod
    def _an_http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"endpoint must be an http:// or https:// URL (got {value!r})")
        return value

    @model_validator(mode="after")
    def _installed(self) -> TracingOptions:
        if self.enabled and not AVAILABLE:
            raise ValueError(f"tracing is enabled but {_MISSING}")
        return self


# The process's tracer while tracing is on; None while it is off (the fast test).
_tracer: Tracer | None = None
_provider: TracerProvider | None = None
_options: TracingOptions | None = None
_ratio = 1.0
_rng = random.Random()
_closing: threading.Thread | None = None  # the last old provider's shutdown
_FallbackUsed: type[Event] | None = None  # imported late: the pipeline imports this module


def enabled() -> bool:
    return _tracer is not None


def configure(options: TracingOptions, rng: random.Random | None = None) -> None:
    """Turn tracing on, off or to other options; ``rng`` decides which new traces are kept.

    The old provider is flushed and shut down on a thread of its own: an
    exporter whose collector is away may take seconds to give up, and this
    runs on the event loop when a new configuration is applied.
    """
    global _tracer, _provider, _options, _ratio, _rng, _closing
    if options == _options and rng is None:
        return
    old = _provider
    _tracer = _provider = None
    _options = options
    if old is not None:
        _closing = threading.Thread(
            target=old.shutdown, name="failsoft-tracing-shutdown", daemon=True
        )
        _closing.start()
    if not options.enabled:
        return
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased

    # New traces are sampled here (``_request``), before any span is made: the
    # SDK's own sampler still builds a span context and runs its hooks for a
    # span it then drops, which costs most of what a recorded span does.
    provider = TracerProvider(
        resource=Resource.create({"service.name": options.service_name}),
        sampler=ParentBased(ALWAYS_ON),
    )
    if options.exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        # Batched on a thread with a bounded queue: the request path never waits on export.
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=options.endpoint)))
    _ratio = options.sample_ratio
    _rng = rng or random.Random()
    _provider = provider
    _tracer = provider.get_tracer("failsoft")
    log.info("tracing on", extra={"exporter": options.exporter, "ratio": options.sample_ratio})


def wait_closed(timeout: float) -> bool:
    """Until the last replaced provider has flushed and shut down; False on timeout."""
    closing = _closing
    if closing is not None:
        closing.join(timeout)
        return not closing.is_alive()
    return True


def for_worker(spec: bytes) -> bytes:
    """A worker's spec (JSON) with the tracing in force now, so the worker's spans
    continue the gateway's traces (as ``<service_name>-worker``)."""
    options = _options
    if options is None or not options.enabled:
        return spec
    worker = options.model_copy(update={"service_name": f"{options.service_name[:193]}-worker"})
    data = orjson.loads(spec)
    data["tracing"] = worker.model_dump(mode="json")
    return orjson.dumps(data)


def add_exporter(exporter: SpanExporter) -> None:
    """Also send every finished span to ``exporter``, synchronously (tests, debugging)."""
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    if _provider is None:
        raise RuntimeError("tracing is off: configure it first")
    _provider.add_span_processor(SimpleSpanProcessor(exporter))


def subscribe(bus: EventBus) -> None:
    """Let the request span take its outcome from the events of its request, and
    the decisions taken on the way become events of the span they happened in."""
    from failsoft.pipeline.breaker import BreakerTransition
    from failsoft.pipeline.fallback import FallbackTierFailed, FallbackUsed
    from failsoft.pipeline.limiter import RequestShed
    from failsoft.pipeline.throttle import ThrottledLocally
    from failsoft.pipeline.version import PanicChanged, PoisonDetected, RetryDenied
    from failsoft.routing.ejection import ReplicaEjected

    global _FallbackUsed
    _FallbackUsed = FallbackUsed
    decisions = (
        RetryDenied,
        PoisonDetected,
        PanicChanged,
        BreakerTransition,
        ReplicaEjected,
        ThrottledLocally,
        RequestShed,
        FallbackTierFailed,
    )
    bus.subscribe(observe, (RequestFinished, FallbackUsed, *decisions))


def observe(event: Event) -> None:
    """Runs in the emitting request's context, so the current span is that request's."""
    if _tracer is None:
        return
    span = trace.get_current_span()
    if not span.is_recording():
        return
    if isinstance(event, RequestFinished):
        span.set_attribute("failsoft.version", event.version)
        span.set_attribute("http.response.status_code", event.status)
        if event.replica:
            span.set_attribute("failsoft.served_by", event.replica)
        if event.failure_class is not None:
            span.set_attribute("failsoft.failure_class", event.failure_class.value)
        span.set_attribute("failsoft.outcome", "ok" if event.status < 400 else "error")
        if event.status >= 500:
            span.set_status(Status(StatusCode.ERROR))
    elif type(event) is _FallbackUsed:  # the request was answered, degraded, by a fallback
        span.set_attribute("failsoft.degraded", True)
        span.set_attribute("failsoft.fallback.tier", getattr(event, "tier", ""))
    else:  # a decision taken while this span was current: retry denied, breaker opened...
        span.add_event(type(event).__name__, _attributes(event))


def _attributes(event: Event) -> dict[str, str | int | float | bool]:
    values = ((f.name, getattr(event, f.name)) for f in dataclasses.fields(event))  # type: ignore[arg-type]
    return {
        name: value.value if isinstance(value, enum.Enum) else value
        for name, value in values
        if isinstance(value, str | int | float | bool | enum.Enum)
    }


# -- the hooks the request path calls ------------------------------------------


def request(
    work: Coroutine[Any, Any, T], headers: Headers | None, model: str
) -> Coroutine[Any, Any, T]:
    """``work`` inside a request span, continuing the client's trace; ``work`` when off."""
    if _tracer is None:
        return work
    return _request(_tracer, work, headers or (), model)


async def _request(tracer: Tracer, work: Coroutine[Any, Any, T], headers: Headers, model: str) -> T:
    carrier = {}
    for key, value in headers:
        if key == b"traceparent" or key == b"tracestate":
            carrier[key.decode()] = value[:512].decode("latin-1")
    # A client's trace: its sampled flag decides (ParentBased). A new trace
    # (no header, or one that does not parse) is sampled here.
    parent = _PROPAGATOR.extract(carrier) if carrier else None
    if parent is None or not trace.get_current_span(parent).get_span_context().is_valid:
        parent = None
        if _rng.random() >= _ratio:
            # Not sampled: no span, but an unsampled trace context all the same, so
            # the upstreams hear "not sampled" instead of starting traces of their own.
            unsampled = SpanContext(
                _rng.getrandbits(128) or 1, _rng.getrandbits(64) or 1, False, TraceFlags(0)
            )
            with trace.use_span(NonRecordingSpan(unsampled)):
                return await work
    with tracer.start_as_current_span(
        f"infer {model}",
        context=parent,
        kind=SpanKind.SERVER,
        attributes={"failsoft.model": model},
        record_exception=False,
        set_status_on_exception=False,
    ):
        return await work


def _dropped() -> bool:
    """No span for this attempt or tier: its trace is not sampled."""
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        return not context.trace_flags.sampled
    return _rng.random() >= _ratio  # outside any request (a job, a test): a trace of its own


def attempt(
    work: Coroutine[Any, Any, T], model: str, version: str, replica: str, kind: str
) -> Coroutine[Any, Any, T]:
    """One attempt on a replica (``kind``: first, retry, hedge or panic) inside its span."""
    if _tracer is None or _dropped():
        return work
    attributes = {
        "failsoft.model": model,
        "failsoft.version": version,
        "failsoft.replica": replica,
        "failsoft.attempt.kind": kind,
    }
    return _traced(_tracer, work, "attempt", SpanKind.CLIENT, attributes)


def tier(work: Coroutine[Any, Any, T], model: str, name: str) -> Coroutine[Any, Any, T]:
    """One fallback tier's try inside its span; an answer of None is outcome ``skipped``."""
    if _tracer is None or _dropped():
        return work
    attributes = {"failsoft.model": model, "failsoft.fallback.tier": name}
    return _traced(_tracer, work, f"fallback {name}", SpanKind.INTERNAL, attributes)


async def _traced(
    tracer: Tracer,
    work: Coroutine[Any, Any, T],
    name: str,
    kind: SpanKind,
    attributes: dict[str, str],
) -> T:
    with tracer.start_as_current_span(
        name,
        kind=kind,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            result = await work
        except FailsoftError as error:
            _failed(span, error)
            raise
        except BaseException as error:
            # A hedge's losing attempt is cancelled: not a failure of its replica.
            cancelled = isinstance(error, asyncio.CancelledError)
            span.set_attribute("failsoft.outcome", "cancelled" if cancelled else "error")
            if not cancelled:
                span.set_status(Status(StatusCode.ERROR, type(error).__name__))
            raise
        span.set_attribute("failsoft.outcome", "ok" if result is not None else "skipped")
        return result


def _failed(span: Span, error: FailsoftError) -> None:
    span.set_attribute("failsoft.outcome", "error")
    span.set_attribute("failsoft.failure_class", error.failure_class.value)
    span.set_attribute("failsoft.error", type(error).__name__)
    span.set_status(Status(StatusCode.ERROR, error.message[:200]))


def traceparent() -> str | None:
    """The W3C traceparent of the current span, for an upstream call; None when off."""
    if _tracer is None:
        return None
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


if AVAILABLE:
    _PROPAGATOR = TraceContextTextMapPropagator()
