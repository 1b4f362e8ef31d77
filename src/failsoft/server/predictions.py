"""The prediction log and ground truth, as the gateway serves them.

- the request path's two hooks (``served``, ``failed``): one append each;
- ``POST /v2/models/{m}/feedback``: true labels by request id (one, or a bulk
  ``{"feedback": [...]}``), answered with what was joined, unknown, duplicate
  or invalid — never an error for an id it does not know;
- ``GET /admin/predictions/{request_id}``: one answer's lineage (the log
  record, and the audit entries of its revision and artifact);
- ``GET /admin/accuracy[?model=M]``: accuracy per version, segment, window;
- the metrics of both, on /metrics.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from failsoft.call import Call
from failsoft.config import Config
from failsoft.control.plane import ControlPlane
from failsoft.control.storecall import store_call
from failsoft.data.feedback import AccuracyBoard, FeedbackResult, parse_feedback
from failsoft.data.prediction_log import PredictionLog, find_records
from failsoft.data.prediction_record import flat, pending
from failsoft.errors import BadRequest, FailsoftError, NotFound
from failsoft.observe.events import EventBus
from failsoft.observe.metrics import Metrics
from failsoft.protocol.types import InferRequest
from failsoft.runtime import Served
from failsoft.server.http import json_body
from failsoft.store import StoreError

__all__ = ["PredictionService", "open_predictions"]

log = logging.getLogger("failsoft.predictions")

FEEDBACK_BODY_LIMIT = 16 * 1024 * 1024
TRACE_MAX_BYTES = 1 << 30  # log bytes `trace` reads looking for one request id
RECORD_FIELDS = (
    "request_id",
    "time",
    "tenant",
    "model",
    "version",
    "version_requested",
    "status",
    "served_by",
    "replica",
    "attempts",
    "fallback_tier",
    "degraded",
    "revision",
    "artifact_sha256",
    "artifact_model",
    "input_digest",
    "checks",
    "failure_class",
    "error",
)


def open_predictions(
    config: Config, control: ControlPlane | None, metrics: Metrics, bus: EventBus
) -> PredictionService | None:
    """The service when ``predictions.enabled``, else None (no cost on the request path)."""
    options = config.predictions
    if not options.enabled:
        return None
    base = control.data_dir if control is not None else None
    directory = options.directory
    if directory is None:
        if base is None:
            log.warning(
                "predictions.enabled but no folder: set predictions.directory or serve with a "
                "control store (--data-dir); the prediction log is off"
            )
            return None
        directory = Path(base) / "predictions"
    elif not directory.is_absolute() and base is not None:
        directory = Path(base) / directory
    service = PredictionService(PredictionLog(options, directory), control, bus)
    service.log.subscribe_to(bus)
    metrics.registry.register(service)
    return service


class PredictionService:
    def __init__(
        self,
        prediction_log: PredictionLog,
        control: ControlPlane | None,
        bus: EventBus | None = None,
    ) -> None:
        self.log = prediction_log
        self.board = AccuracyBoard(
            prediction_log.options.feedback, bus.emit if bus is not None else None
        )
        prediction_log.add_consumer(self.board.add_predicted)
        self._control = control

    # -- the request path --------------------------------------------------------------

    def served(
        self,
        call: Call,
        tenant: str | None,
        served: Served,
        revision: int,
        request: InferRequest,
        config: Config,
        wall: float,
        verdict: object = None,
    ) -> None:
        self.log.record(
            (
                wall,
                call.request_id,
                tenant,
                call.model,
                call.version,
                200,
                revision,
                self.log.config_key(config),
                served.version,
                served.served_by,
                served.degraded,
                flat(request.inputs),
                flat(served.outputs),
                None,
                None,
                None,
                verdict,
            )
        )

    def failed(
        self,
        call: Call,
        tenant: str | None,
        error: FailsoftError,
        revision: int,
        request: InferRequest | None,
        config: Config,
        wall: float,
    ) -> None:
        self.log.record(
            pending(
                wall,
                call.request_id,
                tenant,
                call.model,
                call.version,
                error.status,
                revision,
                self.log.config_key(config),
                inputs=request.inputs if request is not None else None,
                failure=error.failure_class.value,
                error=error.message[:500],
            )
        )

    def close(self) -> None:
        self.log.close()

    # -- feedback ----------------------------------------------------------------------

    async def feedback(self, model: str, tenant: str | None, body: bytes) -> bytes:
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as error:
            raise BadRequest(f"the feedback body is not JSON: {error}") from None
        result = FeedbackResult()
        try:
            items = parse_feedback(data, result)
        except ValueError as error:
            raise BadRequest(str(error)) from None
        await asyncio.to_thread(self.board.prepare)
        missing = self.board.missing(model, items)
        from_disk: dict[str, dict[str, Any]] = {}
        if missing:
            from_disk = await asyncio.to_thread(self._look_up, missing)
        self.board.judge(model, tenant, items, result, from_disk)
        return json_body({"model": model, **result.counts, "problems": result.problems})

    def _look_up(self, request_ids: set[str]) -> dict[str, dict[str, Any]]:
        found = self.log.pending_records(request_ids)
        rest = request_ids - set(found)
        if rest:
            on_disk, _ = find_records(
                self.log.directory, rest, self.log.options.feedback.lookup_max_bytes
            )
            found.update(on_disk)
        return found

    # -- admin -------------------------------------------------------------------------

    async def trace(self, request_id: str) -> dict[str, Any]:
        if not 0 < len(request_id) <= 128:
            raise BadRequest("a request id has 1 to 128 characters")
        record = await asyncio.to_thread(self._find_one, request_id)
        if record is None:
            raise NotFound(
                f"no prediction with request id {request_id!r} in the log (not sampled, "
                "removed by retention, or never made)"
            )
        audit: list[dict[str, Any]] = []
        audit_note = None
        if self._control is None:
            audit_note = "no control store: no audit log"
        else:
            from failsoft.store.lineage import lineage_entries

            store = self._control.store
            try:
                audit = await store_call(
                    store,
                    lineage_entries,
                    store,
                    record.get("revision"),
                    record.get("artifact_sha256"),
                )
            except StoreError as error:
                audit_note = f"the control store is unreachable: {error.message}"
        shown = {**dict.fromkeys(RECORD_FIELDS), **record}  # fields left out are null
        return {"prediction": shown, "audit": audit, "audit_note": audit_note}

    def _find_one(self, request_id: str) -> dict[str, Any] | None:
        pending = self.log.pending_records({request_id})
        if pending:
            return pending[request_id]
        found, _ = find_records(self.log.directory, {request_id}, TRACE_MAX_BYTES)
        return found.get(request_id)

    def accuracy(self, model: str | None) -> dict[str, Any]:
        return self.board.report(model)

    def status(self) -> dict[str, Any]:
        return {"directory": str(self.log.directory), **self.log.stats()}

    # -- metrics -----------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        stats = self.log.stats()
        counters = {
            "accepted": "Predictions accepted into the log's buffer.",
            "written": "Prediction records written to the log files.",
            "dropped": "Predictions not logged because the buffer was full.",
            "skipped": "Predictions not logged by sampling.",
            "write_errors": "Failed writes of the prediction log (retried).",
            "removed_segments": "Log segments removed by retention.",
        }
        for key, text in counters.items():
            family = CounterMetricFamily(f"failsoft_prediction_log_{key}", text)
            family.add_metric([], stats[key])
            yield family
        pending = GaugeMetricFamily(
            "failsoft_prediction_log_pending",
            "Predictions accepted and not yet written: what a crash now would lose.",
        )
        pending.add_metric([], stats["pending"])
        yield pending
        lost = GaugeMetricFamily(
            "failsoft_prediction_log_lost_at_crash",
            "Records the previous run had pending at its last flush when it did not stop "
            "cleanly (0 after a clean stop).",
        )
        lost.add_metric([], stats["lost_at_crash"])
        yield lost
        outcomes = CounterMetricFamily(
            "failsoft_feedback",
            "Feedback items by outcome (joined, unknown, duplicate, invalid).",
            labels=["model", "outcome"],
        )
        for (model, outcome), count in list(self.board.outcomes.items()):
            outcomes.add_metric([model, outcome], count)
        yield outcomes
        yield from self._accuracy_families()

    def _accuracy_families(self) -> Iterator[Metric]:
        accuracy = GaugeMetricFamily(
            "failsoft_accuracy",
            "Share of labelled rows predicted right (classification), by segment.",
            labels=["model", "version", "segment"],
        )
        error = GaugeMetricFamily(
            "failsoft_mean_absolute_error",
            "Mean absolute error of labelled rows (regression), by segment.",
            labels=["model", "version", "segment"],
        )
        labelled = CounterMetricFamily(
            "failsoft_labelled_rows",
            "Rows judged against feedback, by segment.",
            labels=["model", "version", "segment"],
        )
        for name, model in self.board.report()["models"].items():
            for version, found in model["versions"].items():
                for segment, stat in found["segments"].items():
                    labels = [name, version, segment]
                    labelled.add_metric(labels, stat["count"])
                    if "accuracy" in stat and stat["accuracy"] is not None:
                        accuracy.add_metric(labels, stat["accuracy"])
                    elif "mae" in stat:
                        error.add_metric(labels, stat["mae"])
        yield accuracy
        yield error
        yield labelled

    # -- routing -----------------------------------------------------------------------

    async def admin(
        self, method: str, parts: list[str], query: dict[str, str]
    ) -> tuple[int, bytes]:
        """``parts`` after /admin: ["predictions", ID], ["predictions"], ["accuracy"]."""
        if method not in ("GET", "HEAD"):
            from failsoft.errors import MethodNotAllowed

            raise MethodNotAllowed(f"{method} is not allowed here; use GET", "GET")
        if parts == ["accuracy"]:
            return 200, json_body(self.accuracy(query.get("model") or None))
        if parts == ["predictions"]:
            return 200, json_body(self.status())
        if len(parts) == 2 and parts[0] == "predictions":
            return 200, json_body(await self.trace(parts[1]))
        raise NotFound(f"no admin route /admin/{'/'.join(parts)}")
