"""Turning what the request path kept of one prediction into the record the log stores.

The request path keeps references only (its request, the answer, the
configuration it ran under); everything that costs — the input digest, the
artifact's sha256, the predicted labels, feature buckets — is computed here,
on the log's writer thread.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from failsoft.data.prediction_options import PredictionLogOptions, SegmentOptions
from failsoft.pipeline.cache import input_digest
from failsoft.protocol.types import InferRequest, Tensors

__all__ = ["MAX_ROWS", "ArtifactHashes", "Pending", "bucket_name", "to_record"]

MAX_ROWS = 64  # predicted labels and segments kept per request
MAX_ELEMENTS = 4096  # per tensor, when inputs or outputs are recorded


@dataclass(slots=True)
class Pending:
    """One prediction as the request path left it (references, nothing computed)."""

    time: float  # epoch seconds
    request_id: str
    tenant: str | None
    model: str
    version: str  # the version asked for (or the split's choice)
    status: int
    revision: int
    config: Any  # the Config the request ran under (immutable)
    served_version: str | None = None
    served_by: str = ""
    degraded: bool = False
    request: InferRequest | None = None
    outputs: Tensors | None = None
    failure: str | None = None
    error: str | None = None
    trail: list[dict[str, Any]] | None = None


class ArtifactHashes:
    """sha256 of model files, computed once per (path, size, mtime)."""

    def __init__(self) -> None:
        self._known: dict[tuple[str, int, int], str] = {}

    def of(self, backend: Any) -> str | None:
        worker = getattr(backend, "worker", None)
        if worker is not None:
            backend = worker
        pinned = getattr(backend, "sha256", None)
        if pinned:
            return str(pinned).lower()
        path = getattr(backend, "path", None)
        if path is None:
            return None
        try:
            stat = os.stat(path)
        except OSError:
            return None
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        found = self._known.get(key)
        if found is None:
            found = _file_sha256(Path(path))
            if found is None:
                return None
            if len(self._known) > 1024:
                self._known.clear()
            self._known[key] = found
        return found


def _file_sha256(path: Path) -> str | None:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


def bucket_name(value: float, edges: list[float]) -> str:
    """``<a``, ``a..b`` or ``>=b`` for the bucket of ``value`` (edges sorted)."""
    if value != value:  # NaN
        return "nan"
    if value < edges[0]:
        return f"<{edges[0]:g}"
    for low, high in itertools.pairwise(edges):
        if value < high:
            return f"{low:g}..{high:g}"
    return f">={edges[-1]:g}"


def _predictions(outputs: Tensors, name: str | None) -> tuple[list[Any], str] | None:
    """Per-row predicted label (class) or value (regression) from one output."""
    if not outputs:
        return None
    array = outputs.get(name) if name else next(iter(outputs.values()))
    if array is None or array.ndim == 0:
        return None
    rows = array[:MAX_ROWS]
    kind = array.dtype.kind
    if kind in "iub":
        flat = rows.reshape(len(rows), -1)[:, 0]
        return [int(v) for v in flat], "classification"
    if kind in "OSU":
        flat = rows.reshape(len(rows), -1)[:, 0]
        labels = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in flat]
        return labels, "classification"
    if kind == "f":
        if rows.ndim >= 2 and rows.shape[1] > 1:  # scores per class
            scores = rows.reshape(len(rows), rows.shape[1], -1)[:, :, 0]
            return [int(v) for v in np.argmax(scores, axis=1)], "classification"
        return [float(v) for v in rows.reshape(len(rows), -1)[:, 0]], "regression"
    return None


def _segments(request: InferRequest, segment: SegmentOptions) -> list[str] | None:
    array = request.inputs.get(segment.input)
    if array is None or array.ndim == 0 or array.dtype.kind not in "iuf":
        return None
    rows = array[:MAX_ROWS].reshape(min(len(array), MAX_ROWS), -1)
    if segment.column >= rows.shape[1]:
        return None
    prefix = f"{segment.input}[{segment.column}]"
    return [f"{prefix}:{bucket_name(float(v), segment.edges)}" for v in rows[:, segment.column]]


def _tensors(tensors: Tensors) -> dict[str, Any]:
    shown: dict[str, Any] = {}
    for name, array in tensors.items():
        if array.size > MAX_ELEMENTS:
            shown[name] = f"(not recorded: {array.size} elements)"
        elif array.dtype.kind in "OS":
            shown[name] = [
                v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
                for v in array.reshape(-1)
            ]
        else:
            shown[name] = array.tolist()
    return shown


def _tier(served_by: str) -> str | None:
    _, marker, tier = served_by.partition("/fallback:")
    return tier if marker else None


def to_record(
    item: Pending, options: PredictionLogOptions, hashes: ArtifactHashes
) -> dict[str, Any]:
    """The stored form of one prediction (plain JSON types)."""
    config = item.config
    model_config = config.models.get(item.model) if config is not None else None
    tier = _tier(item.served_by)
    attempts = list(item.trail or ())
    replica = None
    if item.served_by and tier is None:
        replica = item.served_by.rsplit("/", 1)[-1]
        attempts.append({"replica": replica, "outcome": "answered", "failure_class": None})
    answering_model = item.model
    answering_version: str | None = item.served_version or item.version
    if tier is not None and tier.startswith("model:"):
        answering_model = tier.partition(":")[2]
        target = config.models.get(answering_model) if config is not None else None
        answering_version = target.default if target is not None else None
    artifact = None
    if tier not in ("heuristic", "static", "stale_cache"):
        found = config.models.get(answering_model) if config is not None else None
        if found is not None and answering_version in found.versions:
            artifact = hashes.of(found.versions[answering_version])
    record: dict[str, Any] = {
        "request_id": item.request_id,
        "time": item.time,
        "tenant": item.tenant,
        "model": item.model,
        "version": item.served_version or item.version,
        "version_requested": item.version,
        "status": item.status,
        "replica": replica,
        "served_by": item.served_by or None,
        "artifact_sha256": artifact,
        "artifact_model": answering_model if answering_model != item.model else None,
        "revision": item.revision or None,
        "attempts": attempts,
        "fallback_tier": tier,
        "degraded": item.degraded,
        "failure_class": item.failure,
        "error": item.error,
        "checks": _checks(item),
        "input_digest": None,
    }
    request = item.request
    if request is not None:
        try:
            digest = request.digest or input_digest(request.inputs)
            record["input_digest"] = digest.hex()
        except TypeError:
            record["input_digest"] = None
        record["rows"] = len(next(iter(request.inputs.values()))) if request.inputs else 0
        if options.record_inputs:
            record["inputs"] = _tensors(request.inputs)
    segment = options.feedback.segments.get(item.model)
    if item.outputs is not None:
        if options.record_prediction:
            label_output = segment.label_output if segment is not None else None
            if label_output is None and model_config is not None:
                label_output = model_config.outputs[0].name
            found_predictions = _predictions(item.outputs, label_output)
            if found_predictions is not None:
                record["prediction"], record["kind"] = found_predictions
        if options.record_outputs:
            record["outputs"] = _tensors(item.outputs)
    if segment is not None and request is not None:
        record["segments"] = _segments(request, segment)
    return record


def _checks(item: Pending) -> dict[str, str]:
    """What the contracts said: the input contract ran before any answer; the output
    contract judged every replica's answer and every fallback answer."""
    if item.status == 200:
        return {"input_contract": "passed", "output_contract": "passed"}
    if item.failure == "data":
        return {"input_contract": "refused"}
    if item.request is None:
        return {"input_contract": "not reached"}
    return {"input_contract": "passed", "output_contract": "no answer"}
