"""The data plane: a plain ASGI app speaking V2 and KServe V1 REST.

No web framework: routing is a split of the path, which keeps the hot path
short (see benchmarks/serve.py). Every error leaves as JSON ``{"error": ...}``
with the status its exception carries. A 500 or 502 names only what failed
and the request id: its own message may hold a model's exception text or a
path, which stays in the log. Anything unexpected becomes such a 500 too.

An inference request goes: tenant and priority → request quota → body read
(bounded) and decoded (large JSON off the event loop) → input contract →
row quota → the model's limiter → the model. Each check is as early as it can
be, so a request that will be refused costs as little as possible.

With ``server.require_keys``, every route that names a model (inference,
metadata, model readiness, the index) needs a tenant key, and ``/metrics``
needs the admin token; health checks and server metadata stay open, and
errors never list the models a caller has not named.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import os
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from failsoft import __version__
from failsoft.call import Call
from failsoft.config import Config, ServerConfig
from failsoft.control.flag_service import FlagService
from failsoft.control.flags import NO_SWITCHES, Context, Switches
from failsoft.control.operate import Operate
from failsoft.control.plane import ControlPlane
from failsoft.control.quota_leases import open_quota_leases
from failsoft.control.revisions import BootReport
from failsoft.control.rollout_controller import RolloutController
from failsoft.control.runbook_actions import GatewayActions
from failsoft.control.runbooks import Runbooks
from failsoft.control.tenants import BucketFactory, Tenants
from failsoft.data.drift_service import DriftService
from failsoft.data.input_checks import HEADER as DATA_WARNING
from failsoft.data.input_checks import DataVerdict, DataViolation
from failsoft.data.schema import version_inputs
from failsoft.errors import (
    BadRequest,
    FailsoftError,
    MethodNotAllowed,
    NotFound,
    NotReady,
    Overloaded,
    QuotaExceeded,
    Shed,
)
from failsoft.jobs.service import Jobs, Reply
from failsoft.observe import tracing
from failsoft.observe.depmap import runtime_map
from failsoft.observe.eventlog import LOGGED, log_event
from failsoft.observe.events import ConfigApplied, RequestFinished, VersionAnswered
from failsoft.observe.folded import FoldedLog
from failsoft.observe.logging import request_id_var
from failsoft.observe.metrics import CONTENT_TYPE, Metrics
from failsoft.observe.recent import FOLDED, KEPT, RecentEvents
from failsoft.pipeline.version import VersionPipeline
from failsoft.protocol import v1, v2
from failsoft.protocol.types import InferRequest, InferResponse
from failsoft.routing.split import Split
from failsoft.runtime import ModelRuntime, Runtime, Served
from failsoft.server.admin import AdminRoutes
from failsoft.server.admission import Admission
from failsoft.server.decoding import Decoder, decode
from failsoft.server.http import (
    Headers,
    Receive,
    Scope,
    Send,
    json_body,
    read_body,
    send_response,
)
from failsoft.server.ofrep import Ofrep
from failsoft.server.predictions import FEEDBACK_BODY_LIMIT, open_predictions
from failsoft.server.status_page import StatusPage
from failsoft.server.ui.console import Console, UiRequest
from failsoft.server.ui.sessions import Sessions

log = logging.getLogger("failsoft.server")
access_log = logging.getLogger("failsoft.access")

TIMEOUT_HEADER = b"failsoft-timeout-ms"
OK_EMPTY = b"{}"


@dataclass(slots=True)
class Incoming:
    """What the handlers need from one HTTP request."""

    method: str
    parts: list[str]
    request_id: str
    content_length: int | None
    header_length: int | None
    timeout_ms: int | None
    authorization: str | None
    priority: str | None
    receive: Receive
    query: bytes = b""
    key: str | None = None  # Failsoft-Key: what keeps a user on one side of a rollout
    headers: list[tuple[bytes, bytes]] | None = None  # all of them, for targeted switches


@dataclass(slots=True)
class Answer:
    status: int
    body: bytes
    headers: Headers
    content_type: bytes = b"application/json"


Routed = Answer | Coroutine[Any, Any, Answer]


@dataclass(slots=True)
class Route:
    """Where one inference request goes, and what switches apply to it."""

    pipeline: VersionPipeline
    switches: Switches
    split: Split | None
    key: str  # the stickiness key: Failsoft-Key, else the request id
    tenant: str | None


class RequestIds:
    """Unique 32-hex-digit request ids: a random per-process prefix and a counter.

    uuid4 reads the OS random source per call, which under load costs more
    than the rest of the request routing.
    """

    def __init__(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._counter = itertools.count(1)

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._counter):016x}"


def _int_header(name: str, raw: bytes) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"header {name} must be a whole number, got {raw[:40]!r}") from None
    if value < 0:
        raise BadRequest(f"header {name} must not be negative")
    return value


class FailsoftApp:
    def __init__(
        self,
        runtime: Runtime,
        server: ServerConfig,
        metrics: Metrics,
        on_ready: Callable[[], None] | None = None,
        *,
        control: ControlPlane | None = None,
        boot: BootReport | None = None,
        wall: Callable[[], float] = time.time,  # SLOs' and incidents' clock (tests inject)
    ) -> None:
        self.runtime = runtime
        self.control = control
        self._boot = boot
        self.revision = boot.revision if boot is not None else 0
        self._on_ready = on_ready
        self.server = server
        self.metrics = metrics
        self._new_request_id = RequestIds()
        self.quotas = open_quota_leases(
            runtime.config.quotas, runtime.clock, metrics.quota_mode.set
        )  # shared through Redis, when configured
        self.admission = Admission(
            Tenants(
                runtime.config.tenants, server.require_keys, runtime.clock, buckets=self._buckets
            )
        )
        self.recent = RecentEvents()
        self.drift = DriftService(runtime.bus, runtime.clock)
        self.drift.configure(runtime.config.models, strict=True)
        metrics.registry.register(self.drift)
        self.decoder = Decoder()
        self._failures = FoldedLog(log, "inference failed")
        self.admin = AdminRoutes(
            runtime,
            server.resolved_admin_token(),
            self.admission.tenants.snapshot,
            self.recent,
            control,
            self.drift,
        )
        scorecards = os.environ.get("FAILSOFT_UI_SCORECARDS")
        self.console = Console(
            self.admin,
            Sessions(runtime.clock.now),
            control,
            Path(scorecards) if scorecards else None,
        )
        if control is not None:  # the flags in force, before the first request
            control.flags = FlagService(control.store, runtime, control.data_dir)
            note = control.flags.boot()
            if note:
                log.warning("flags", extra={"note": note})
            control.rollouts = RolloutController(control.store, runtime, control.revisions)
            note = control.rollouts.boot()  # a restart resumes each rollout at its step
            if note:
                log.warning("rollouts", extra={"note": note})
        self.ofrep = Ofrep(
            lambda: control.flags if control is not None else None,
            lambda: self.admission.tenants,
            time.time,
        )
        # SLOs and incidents (control/operate.py): loaded before the first request.
        self.operate = Operate(
            runtime.config,
            runtime.bus,
            runtime.clock,
            control.store if control else None,
            wall=wall,
        )
        note = self.operate.boot()
        if note:
            log.warning("SLOs and incidents", extra={"note": note})
        self.admin.operate = self.operate
        self.runbooks = Runbooks(  # control/runbooks.py: incident or event -> steps
            runtime.config.runbooks,
            self.operate.incidents,
            runtime.bus,
            runtime.clock,
            self.operate.wall,
            GatewayActions(control, runtime),
        )
        self.operate.runbooks = self.runbooks
        self.status_page = StatusPage(self.operate.wall)
        metrics.registry.register(self.operate)
        self.draining = False  # set on SIGTERM: not ready, no new work
        self.jobs = Jobs(self, runtime.config.jobs, control.data_dir if control else None)
        self.predictions = open_predictions(runtime.config, control, metrics, runtime.bus)
        runtime.bus.subscribe(metrics.observe)
        runtime.bus.subscribe(log_event, LOGGED)
        runtime.bus.subscribe(self.recent.observe, (*KEPT, *FOLDED))
        tracing.configure(runtime.config.tracing)
        tracing.subscribe(runtime.bus)

    @property
    def _buckets(self) -> BucketFactory | None:
        return self.quotas.bucket if self.quotas is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.runtime.start()
                    await self.jobs.start()
                except Exception as error:
                    log.error("start-up failed", extra={"error": str(error)})
                    await send({"type": "lifespan.startup.failed", "message": str(error)})
                    return
                if self.quotas is not None:
                    self.quotas.start()
                if self.control is not None and self._boot is not None:
                    await self.control.revisions.started(
                        self._boot, self._boot.config, actor="config-file"
                    )
                    self.control.start()
                    await self.control.joined()
                self.drift.start()
                if self.predictions is not None:
                    self.predictions.log.start()
                self.operate.start()
                await self.runbooks.start()  # re-arms approvals a restart found pending
                await send({"type": "lifespan.startup.complete"})
                if self._on_ready is not None:
                    self._on_ready()
            elif message["type"] == "lifespan.shutdown":
                await self.jobs.close()
                if self.quotas is not None:
                    await self.quotas.close()
                self.decoder.close()
                await self.drift.close()
                # Both end with a last store call under a deadline: wait for them together.
                closing = [self.operate.close(), self.runbooks.close()]
                if self.control is not None:
                    closing.append(self.control.close())
                await asyncio.gather(*closing)
                await self.runtime.close()
                if self.predictions is not None:  # every accepted prediction, on disk
                    await self.predictions.log.stop()
                    await asyncio.to_thread(self.predictions.close)
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def apply_config(self, config: Config, revision: int) -> None:
        """Serve ``config`` from now on (the reconciler's last step); ApplyFailed if it cannot."""
        await self.runtime.apply(
            config, drain_s=config.server.drain_s, keep_warm_s=config.store.keep_warm_s
        )
        self.server = config.server
        tracing.configure(config.tracing)
        self.drift.configure(config.models, strict=False)
        tenants = self.admission.tenants
        self.admission.tenants = Tenants(
            config.tenants,
            config.server.require_keys,
            self.runtime.clock,
            previous=tenants,
            buckets=self._buckets,
        )
        self.admin.token = config.server.resolved_admin_token()
        if self.predictions is not None:  # the rest of predictions: needs a restart
            self.predictions.log.set_sample_rate(config.predictions.sample_rate)
        if self.control is not None and self.control.flags is not None:
            self.control.flags.reapply()  # switches of models this change added
        self.revision = revision
        self.operate.reconfigure(config)
        self.runtime.bus.emit(ConfigApplied(revision))
        log.info("revision applied", extra={"revision": revision})

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        request_id = None
        content_length = header_length = timeout_ms = None
        authorization = priority = sticky = None
        try:
            for key, value in scope["headers"]:
                if key == b"x-request-id":
                    request_id = value[:128].decode("latin-1")
                elif key == b"content-length":
                    content_length = _int_header("content-length", value)
                elif key == b"inference-header-content-length":
                    header_length = _int_header("Inference-Header-Content-Length", value)
                elif key == TIMEOUT_HEADER:
                    timeout_ms = _int_header("Failsoft-Timeout-Ms", value)
                elif key == b"authorization":
                    authorization = value.decode("latin-1")
                elif key == b"failsoft-priority":
                    priority = value[:32].decode("latin-1")
                elif key == b"failsoft-key":
                    sticky = value[:256].decode("latin-1")
        except BadRequest as error:
            request_id = request_id or self._new_request_id()
            await self._send_error(send, error, request_id)
            return
        request_id = request_id or self._new_request_id()
        token = request_id_var.set(request_id)
        incoming = Incoming(
            scope["method"],
            scope["path"].strip("/").split("/"),
            request_id,
            content_length,
            header_length,
            timeout_ms,
            authorization,
            priority,
            receive,
            scope.get("query_string", b""),
            sticky,
            scope["headers"],
        )
        try:
            routed = self._route(incoming)
            answer = routed if type(routed) is Answer else await routed  # type: ignore[misc]
        except FailsoftError as error:
            answer = self._error_answer(error, request_id)
        except Exception:
            log.exception("unexpected error")
            answer = Answer(
                500, json_body({"error": f"internal error (request id {request_id})"}), []
            )
        finally:
            request_id_var.reset(token)
        answer.headers.append((b"x-request-id", request_id.encode("latin-1")))
        await send_response(send, answer.status, answer.body, answer.headers, answer.content_type)
        if self.server.access_log:
            access_log.info(
                "request",
                extra={
                    "request_id": request_id,
                    "method": incoming.method,
                    "path": scope["path"],
                    "status": answer.status,
                    "ms": round((time.perf_counter() - started) * 1000, 3),
                },
            )

    def _error_answer(self, error: FailsoftError, request_id: str) -> Answer:
        headers: Headers = []
        if isinstance(error, MethodNotAllowed):
            headers.append((b"allow", error.allow.encode()))
        elif isinstance(error, Overloaded | QuotaExceeded):
            seconds = max(1, math.ceil(min(error.retry_after_s, 3600)))
            headers.append((b"retry-after", str(seconds).encode()))
        elif error.status == 503:
            headers.append((b"retry-after", b"1"))
        if isinstance(error, DataViolation):  # names the tensor, row and column of each
            return Answer(error.status, json_body(error.body()), headers)
        message = error.message
        if error.status == 500:
            message = f"the model failed on this request (request id {request_id})"
        elif error.status == 502:
            message = f"a replica failed on this request (request id {request_id})"
        return Answer(error.status, json_body({"error": message}), headers)

    async def _send_error(self, send: Send, error: FailsoftError, request_id: str) -> None:
        answer = self._error_answer(error, request_id)
        answer.headers.append((b"x-request-id", request_id.encode("latin-1")))
        await send_response(send, answer.status, answer.body, answer.headers)

    def _route(self, req: Incoming) -> Routed:
        """The answer, or the coroutine that will give it (no coroutine for a plain route)."""
        parts = req.parts
        head = parts[0]
        if head == "v2":
            return self._route_v2(req, parts)
        if head == "v1" and len(parts) == 3 and parts[1] == "models":
            name, _, verb = parts[2].partition(":")
            if verb == "predict":
                _expect(req, "POST")
                return tracing.request(
                    self._infer(req, name, None, v1_codec=True), req.headers, name
                )
            if verb:
                raise NotFound(f"unknown V1 verb {verb!r} (use :predict)")
            _expect(req, "GET")
            self._guard(req)
            model = self.runtime.model(name)
            return Answer(200, json_body({"name": name, "ready": model.ready}), [])
        if head == "metrics" and len(parts) == 1:
            _expect(req, "GET")
            if self.admission.tenants.require_keys:
                return self._guarded_metrics(req)
            return Answer(200, self.metrics.render(), [], CONTENT_TYPE.encode())
        if head == "admin":
            if parts[1:2] in (["predictions"], ["accuracy"]):
                return self._predictions_admin(req, parts[1:])
            return self._admin(req, parts[1:])
        if head == "ofrep":
            return self._ofrep(req, parts[1:])
        if head == "ui":
            return self._ui(req, parts[1:])
        if head == "status" and len(parts) == 1:  # the public status page: no token
            _expect(req, "GET")
            models = runtime_map(self.runtime, self.admin.status())["models"]
            page = self.status_page.render(models, list(self.operate.incidents.incidents.values()))
            return Answer(200, page, [], b"text/html; charset=utf-8")
        if head == "" and len(parts) == 1:
            _expect(req, "GET")
            self._guard(req)
            return Answer(200, json_body(self._index()), [])
        raise NotFound(f"no route for /{'/'.join(parts)}")

    async def _guarded_metrics(self, req: Incoming) -> Answer:
        (await self.admin.authenticate(req.authorization)).require("read")
        return Answer(200, self.metrics.render(), [], CONTENT_TYPE.encode())

    async def _admin(self, req: Incoming, parts: list[str]) -> Answer:
        query = {key: values[-1] for key, values in parse_qs(req.query.decode("latin-1")).items()}
        answered = await self.admin.handle(
            req.method,
            parts,
            req.authorization,
            lambda limit: read_body(req.receive, limit, req.content_length),
            query,
        )
        if isinstance(answered, tuple):
            return Answer(answered[0], answered[1], [])
        return Answer(answered.status, answered.body, [], answered.content_type)

    async def _predictions_admin(self, req: Incoming, parts: list[str]) -> Answer:
        (await self.admin.authenticate(req.authorization)).require("read")
        if self.predictions is None:
            raise NotFound("the prediction log is off (set predictions.enabled)")
        query = {key: values[-1] for key, values in parse_qs(req.query.decode("latin-1")).items()}
        status, body = await self.predictions.admin(req.method, parts, query)
        return Answer(status, body, [])

    async def _feedback(self, req: Incoming, model_name: str) -> Answer:
        tenant = self.admission.tenants.authenticate(req.authorization)
        self.runtime.model(model_name)
        if self.predictions is None:
            raise NotFound("the prediction log is off (set predictions.enabled)")
        body = await read_body(req.receive, FEEDBACK_BODY_LIMIT, req.content_length)
        name = tenant.name if tenant is not None else None
        return Answer(200, await self.predictions.feedback(model_name, name, body), [])

    async def _ui(self, req: Incoming, parts: list[str]) -> Answer:
        query = {key: values[-1] for key, values in parse_qs(req.query.decode("latin-1")).items()}
        page = await self.console.handle(
            UiRequest(
                req.method,
                parts,
                query,
                req.headers or [],
                lambda limit: read_body(req.receive, limit, req.content_length),
            )
        )
        return Answer(page.status, page.body, page.headers, page.content_type)

    async def _ofrep(self, req: Incoming, parts: list[str]) -> Answer:
        reply = await self.ofrep.handle(
            req.method,
            parts,
            req.authorization,
            req.headers or (),
            lambda limit: read_body(req.receive, limit, req.content_length),
        )
        return Answer(reply.status, reply.body, list(reply.headers))

    def _route_v2(self, req: Incoming, parts: list[str]) -> Routed:
        n = len(parts)
        if n == 1:
            _expect(req, "GET")
            return Answer(200, json_body(v2.server_metadata(__version__)), [])
        if parts[1] == "health" and n == 3 and parts[2] in ("live", "ready"):
            _expect(req, "GET")
            if parts[2] == "live":
                return Answer(200, json_body({"live": True}), [])
            if self.draining:
                raise NotReady("not ready: shutting down")
            if not self.runtime.ready:
                raise NotReady("not ready: a model's default version has no available replica")
            return Answer(200, json_body({"ready": True}), [])
        if parts[1] == "jobs" and n >= 3:
            return self._jobs_reply(self.jobs.route(req, parts[2:]))
        if parts[1] != "models" or n < 3:
            raise NotFound(f"no route for /{'/'.join(parts)}")
        model_name = parts[2]
        version_name: str | None = None
        rest = parts[3:]
        if rest[:1] == ["versions"]:
            if len(rest) < 2:
                raise NotFound("a version name is missing after /versions")
            version_name = rest[1]
            rest = rest[2:]
        if not rest:
            _expect(req, "GET")
            self._guard(req)
            return Answer(200, json_body(self._metadata(model_name, version_name)), [])
        if rest == ["infer"]:
            _expect(req, "POST")
            if self.jobs.wants(req.headers):  # Prefer: respond-async
                return self._jobs_reply(self.jobs.submit(req, model_name, version_name))
            infer = self._infer(req, model_name, version_name, v1_codec=False)
            return tracing.request(infer, req.headers, model_name)
        if rest == ["feedback"] and version_name is None:
            _expect(req, "POST")
            return self._feedback(req, model_name)
        if rest == ["ready"]:
            _expect(req, "GET")
            self._guard(req)
            model = self.runtime.model(model_name)
            if not model.version(version_name).ready:
                raise NotReady(f"model {model_name!r} is not ready")
            return Answer(200, json_body({"name": model_name, "ready": True}), [])
        raise NotFound(f"no route for /{'/'.join(parts)}")

    @staticmethod
    async def _jobs_reply(reply: Coroutine[Any, Any, Reply]) -> Answer:
        done = await reply
        return Answer(done.status, done.body, done.headers, done.content_type)

    def _guard(self, req: Incoming) -> None:
        """With require_keys, a route that names models needs a tenant key (401)."""
        if self.admission.tenants.require_keys:
            self.admission.tenants.authenticate(req.authorization)

    def _metadata(self, model_name: str, version_name: str | None) -> dict[str, object]:
        model = self.runtime.model(model_name)
        versions = [model.version(version_name).version] if version_name else list(model.versions)
        inputs = version_inputs(model.config, versions[0]) if version_name else model.config.inputs
        return v2.model_metadata(
            model_name, versions, model.config.platform, inputs, model.config.outputs
        )

    def _index(self) -> dict[str, object]:
        return {
            "name": "failsoft",
            "version": __version__,
            "models": {
                name: {
                    "versions": list(model.versions),
                    "default_version": model.config.default,
                    "ready": model.ready,
                }
                for name, model in self.runtime.models.items()
            },
        }

    async def _infer(
        self, req: Incoming, model_name: str, version_name: str | None, *, v1_codec: bool
    ) -> Answer:
        started = time.perf_counter()
        tenant, priority = self.admission.identify(req.authorization, req.priority)
        runtime = self.runtime
        model = runtime.model(model_name)
        route = self._route_to(req, model, version_name, tenant.name if tenant else None)
        pipeline = route.pipeline
        version = pipeline.version
        clock = self.runtime.clock
        # The deadline counts from arrival: time spent waiting for admission is spent.
        timeout_s, client_limited = self._timeout(model, req.timeout_ms)
        call = Call(
            req.request_id,
            model_name,
            version,
            clock.now() + timeout_s,
            self.runtime.bus,
            clock,
            client_limited,
        )
        status = 500
        failure = None
        served: Served | None = None
        request: InferRequest | None = None
        try:
            if self.draining:
                raise Overloaded("shutting down: send this request to another instance")
            self.admission.admit_request(tenant)
            body = await read_body(req.receive, self.server.max_body_bytes, req.content_length)
            header_length = req.header_length
            inputs = version_inputs(model.config, version) if v1_codec else None
            if self.decoder.inline(body, header_length):
                request = decode(body, header_length, inputs)
            else:
                request = await self.decoder.decode_elsewhere(body, header_length, inputs)
            if request.outputs is None and not v1_codec:
                # Forwarded unchanged to remote replicas. With an output subset it is not:
                # a replica is always asked for every output, which the contract checks.
                request.raw = body
                request.raw_header_length = header_length
            self.admission.admit_rows(tenant, model.contracts[version].check_request(request))
            checks = model.checks[version]
            verdict = checks.judge(request) if checks else None  # 422 under reject
            admission, limiter = self.admission, model.limiter
            held = admission.hold(tenant, priority, limiter, call)
            try:
                if held is None:
                    held = await admission.wait(tenant, priority, limiter, call)
            except Shed as shed:
                if not model.fallback:
                    raise
                answer, served = await self._serve(
                    model, route, request, v1_codec, call, shed=shed, verdict=verdict
                )
            else:
                try:
                    answer, served = await self._serve(
                        model, route, request, v1_codec, call, verdict=verdict
                    )
                finally:
                    held.release()
            status = 200
            return answer
        except FailsoftError as error:
            status = error.status
            failure = error.failure_class
            if status >= 500 or status == 422:
                self._failures.note(
                    model_name, f"{status} {failure.value}", error.message, req.request_id
                )
            if self.predictions is not None:
                tenant_name = tenant.name if tenant else None
                config = runtime.config
                self.predictions.failed(
                    call, tenant_name, error, self.revision, request, config, time.time()
                )
            raise
        finally:
            self.runtime.bus.emit(
                RequestFinished(
                    model_name,
                    version,
                    status,
                    failure,
                    time.perf_counter() - started,
                    served.served_by if served is not None else "",
                    served is not None and served.degraded,
                    tenant.name if tenant else None,
                )
            )

    async def _serve(
        self,
        model: ModelRuntime,
        route: Route,
        request: InferRequest,
        v1_codec: bool,
        call: Call,
        shed: Overloaded | None = None,
        verdict: DataVerdict | None = None,
    ) -> tuple[Answer, Served]:
        if shed is not None:
            served = await model.shed(request, call, shed)
        elif verdict is not None and verdict.policy == "degrade":
            version = route.pipeline.version
            served = await model.degrade(request, call, version, verdict.violation, route.switches)
        else:
            served = await model.serve(request, call, route.pipeline, route.switches)
            if route.split is not None and not served.degraded:
                self._rollout_observes(model, route, request, served)
            outputs = None if served.degraded else served.outputs  # a fallback's are not its
            self.drift.offer(model.name, served.version, request.inputs, outputs)
        if self.predictions is not None:
            config = self.runtime.config
            self.predictions.served(
                call, route.tenant, served, self.revision, request, config, time.time(), verdict
            )
        parameters: dict[str, object] = {
            "failsoft_served_by": served.served_by,
            "failsoft_degraded": served.degraded,
        }
        revision = self.revision
        if revision:
            parameters["failsoft_revision"] = revision
        response = InferResponse(model.name, served.version, served.outputs, request.id, parameters)
        answer = self._encode(response, request, v1_codec)
        headers = answer.headers
        headers.append((b"failsoft-served-by", served.served_by.encode()))
        headers.append((b"failsoft-degraded", b"true" if served.degraded else b"false"))
        if revision:
            headers.append((b"failsoft-revision", str(revision).encode()))
        if verdict is not None:
            headers.append((DATA_WARNING, verdict.violation.header()))
        return answer, served

    def _route_to(
        self, req: Incoming, model: ModelRuntime, version_name: str | None, tenant: str | None
    ) -> Route:
        """The version that answers (a rollout's split decides for the default one), and
        the switches an operator set for the model, evaluated for this request."""
        runtime = self.runtime
        sticky = req.key or req.request_id
        split = runtime.splits.get(model.name) if version_name is None else None
        if split is not None:
            pipeline = model.version(split.choose(sticky, tenant))
        else:
            pipeline = model.version(version_name)
        switches = runtime.switches.get(model.name, NO_SWITCHES)
        if switches.targeted:
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in req.headers or ()}
            context = Context(sticky, tenant, headers)
            switches = switches.for_request(context, time.time(), model.name)
        return Route(pipeline, switches, split, sticky, tenant)

    def _rollout_observes(
        self, model: ModelRuntime, route: Route, request: InferRequest, served: Served
    ) -> None:
        """What a rollout's analysis needs of an answer: its outputs, and a shadow copy."""
        split = route.split
        assert split is not None
        self.runtime.bus.emit(VersionAnswered(model.name, served.version, served.outputs))
        if (
            served.version == split.stable
            and "shadowing" not in route.switches.features_off
            and (route.switches.quiet or split.candidate not in model._blocked(route.switches))
            and split.mirror(route.key, route.tenant)
        ):
            limiter = model.limiter
            self.runtime.mirror(model.name).send(
                request,
                served.outputs,
                split.stable,
                model.version(split.candidate),
                model.config.timeout_ms / 1000.0,
                lambda: limiter.in_flight >= limiter.limit,
            )

    @staticmethod
    def _timeout(model: ModelRuntime, requested_ms: int | None) -> tuple[float, bool]:
        """The request's deadline in seconds, and whether the client made it shorter."""
        own_ms = model.config.timeout_ms
        if requested_ms is None or requested_ms <= 0:
            return own_ms / 1000.0, False
        chosen_ms = min(requested_ms, model.config.timeout_cap_ms)
        return chosen_ms / 1000.0, chosen_ms < own_ms

    @staticmethod
    def _encode(response: InferResponse, request: InferRequest, v1_codec: bool) -> Answer:
        if v1_codec:
            return Answer(200, v1.encode_predict_response(response), [])
        body, header_length = v2.encode_infer_response(response, request)
        headers: Headers = []
        if header_length is not None:
            headers.append((b"inference-header-content-length", str(header_length).encode()))
            return Answer(200, body, headers, b"application/octet-stream")
        return Answer(200, body, headers)


def _expect(req: Incoming, method: str) -> None:
    if req.method != method and not (method == "GET" and req.method == "HEAD"):
        raise MethodNotAllowed(f"{req.method} is not allowed here; use {method}", method)
