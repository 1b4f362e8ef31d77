"""Turning what the request path kept of one prediction into the record the log stores.

The request path keeps references only (its request, the answer, the
configuration it ran under); everything that costs — the input digest, the
artifact's sha256, the predicted labels, feature buckets — is computed here,
by the log's writer, between requests (``prediction_log``).
"""

from __future__ import annotations

import hashlib
import itertools
import os
from pathlib import Path
from typing import Any, Final

import orjson

from failsoft.data.prediction_options import PredictionLogOptions, SegmentOptions
from failsoft.protocol.types import Tensors

__all__ = [
    "MAX_ROWS",
    "TRAIL",
    "ArtifactHashes",
    "Pending",
    "RecordMaker",
    "bucket_name",
    "flat",
    "lineage_digest",
    "pending",
]

MAX_ROWS = 64  # predicted labels and segments kept per request
MAX_ELEMENTS = 4096  # per tensor, when inputs or outputs are recorded


# One prediction as the request path left it: references, nothing computed. A plain
# tuple of atoms, arrays and tuples (no dict, no object), so the garbage collector
# stops tracking it at its first pass: a buffer of live objects promoted from one
# generation to the next would make the collector's passes longer for every request.
Pending = tuple[
    float,  # time (epoch seconds)
    str,  # request id
    str | None,  # tenant
    str,  # model
    str,  # version asked for (or the split's choice)
    int,  # status
    int,  # revision
    int,  # key of the configuration it ran under (PredictionLog.config_of)
    str | None,  # version that answered
    str,  # served by ("" for a failure)
    bool,  # degraded
    tuple[Any, ...] | None,  # inputs: name, array, name, array, ... (flat: see flat())
    tuple[Any, ...] | None,  # outputs, the same way
    str | None,  # failure class
    str | None,  # error message
    list[dict[str, Any]] | None,  # failed attempts and fallback steps
    Any,  # the input constraints' verdict (flag or degrade; data/input_checks.py), or None
]
TRAIL: Final = 15


def flat(tensors: Tensors) -> tuple[Any, ...]:
    """``{a: x, b: y}`` as ``(a, x, b, y)``: one tuple of atoms and arrays, which the
    collector untracks in one pass (nested pairs would take a pass per level)."""
    if len(tensors) == 1:
        for pair in tensors.items():
            return pair
    if len(tensors) == 2:
        (a, x), (b, y) = tensors.items()
        return (a, x, b, y)
    return tuple(itertools.chain.from_iterable(tensors.items()))


def _named(parts: tuple[Any, ...], name: str | None) -> Any:
    """The array called ``name`` in a flat tuple (the first one for None)."""
    if name is None:
        return parts[1] if parts else None
    for index in range(0, len(parts), 2):
        if parts[index] == name:
            return parts[index + 1]
    return None


def unflat(parts: tuple[Any, ...]) -> Tensors:
    return dict(zip(parts[::2], parts[1::2], strict=True))


def pending(
    when: float,
    request_id: str,
    tenant: str | None,
    model: str,
    version: str,
    status: int,
    revision: int,
    config_key: int,
    *,
    served_version: str | None = None,
    served_by: str = "",
    degraded: bool = False,
    inputs: Tensors | None = None,
    outputs: Tensors | None = None,
    failure: str | None = None,
    error: str | None = None,
) -> Pending:
    return (
        when,
        request_id,
        tenant,
        model,
        version,
        status,
        revision,
        config_key,
        served_version,
        served_by,
        degraded,
        flat(inputs) if inputs is not None else None,
        flat(outputs) if outputs is not None else None,
        failure,
        error,
        None,
        None,
    )


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


def _predictions(outputs: tuple[Any, ...], name: str | None) -> tuple[list[Any], str] | None:
    """Per-row predicted label (class) or value (regression) from one output."""
    array = _named(outputs, name)
    if array is None or array.ndim == 0:
        return None
    rows = array[:MAX_ROWS] if len(array) > MAX_ROWS else array
    kind = array.dtype.kind
    if rows.ndim > 1 and not (kind == "f" and rows.shape[1] > 1):
        rows = rows.reshape(len(rows), -1)[:, 0]
    if kind in "iub":
        return rows.tolist(), "classification"
    if kind in "OSU":
        labels = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in rows]
        return labels, "classification"
    if kind == "f":
        if rows.ndim > 1:  # scores per class
            scores = rows.reshape(len(rows), rows.shape[1], -1)[:, :, 0]
            return scores.argmax(axis=1).tolist(), "classification"
        return rows.tolist(), "regression"
    return None


# Hashers already fed one input's name, dtype and shape: a copy costs less than a new
# hasher and a header (the digest is the log's costliest field after the JSON). Keyed by
# the dtype itself: its ``.str`` is built anew at each call (0.5 us).
_STARTS: dict[tuple[str, Any, tuple[int, ...]], Any] = {}


def _header(name: str, array: Any) -> bytes:
    return f"{name}\0{array.dtype.str}\0{array.shape}\0".encode()


def digest_start(name: str, array: Any) -> Any:
    """A blake2b-128 hasher fed the header of the first input (copy it before use)."""
    key = (name, array.dtype, array.shape)
    start = _STARTS.get(key)
    if start is None:
        start = hashlib.blake2b(_header(name, array), digest_size=16)
        if len(_STARTS) < 4096:
            _STARTS[key] = start
    return start


def feed(hasher: Any, array: Any) -> None:
    """Add an input's values to a lineage digest."""
    if array.dtype.hasobject:  # its buffer holds pointers: hash the values
        hasher.update(orjson.dumps(array.tolist(), default=repr))
        return
    try:
        hasher.update(array)  # its buffer: the bytes tobytes() would copy
    except ValueError:  # not C-contiguous
        hasher.update(array.tobytes())


def lineage_digest(inputs: Tensors | tuple[Any, ...]) -> str:
    """blake2b-128 of the inputs' names, dtypes, shapes and bytes (hex), in name order."""
    parts = inputs if isinstance(inputs, tuple) else flat(inputs)
    pairs = sorted(zip(parts[::2], parts[1::2], strict=True)) if len(parts) > 2 else [parts]
    hasher = None
    for name, array in pairs:
        if hasher is None:
            hasher = digest_start(name, array).copy()
        else:
            hasher.update(_header(name, array))
        feed(hasher, array)
    return (hasher or hashlib.blake2b(digest_size=16)).hexdigest()


def _segments(inputs: tuple[Any, ...], segment: SegmentOptions) -> list[str] | None:
    array = _named(inputs, segment.input)
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


class RecordMaker:
    """``make(item)``: the stored form of one prediction (plain JSON types).

    What depends only on the configuration (the artifact's sha256, the output
    holding the label) is looked up once per configuration, not per record.
    """

    def __init__(self, options: PredictionLogOptions) -> None:
        self.options = options
        self._hashes = ArtifactHashes()
        # id(config) -> (config, {(model, version): sha256 or None}, {model: label output})
        self._by_config: dict[int, tuple[Any, dict[tuple[str, str], str | None], dict[str, Any]]]
        self._by_config = {}
        self._statics: dict[tuple[Any, ...], tuple[Any, dict[str, Any], str | None]] = {}

    def _of(self, config: Any) -> tuple[dict[tuple[str, str], str | None], dict[str, Any]]:
        found = self._by_config.get(id(config))
        if found is None or found[0] is not config:
            if len(self._by_config) >= 16:  # configurations come and go with revisions
                self._by_config.clear()
            found = self._by_config[id(config)] = (config, {}, {})
        return found[1], found[2]

    def artifact(self, config: Any, model: str, version: str | None) -> str | None:
        if config is None or version is None:
            return None
        artifacts, _ = self._of(config)
        key = (model, version)
        if key not in artifacts:
            model_config = config.models.get(model)
            backend = model_config.versions.get(version) if model_config is not None else None
            artifacts[key] = self._hashes.of(backend) if backend is not None else None
        return artifacts[key]

    def unhashed(
        self, config: Any, model: str, asked: str, served_version: str | None, served_by: str
    ) -> tuple[str, str] | None:
        """The (model, version) whose artifact the record of this answer names, when its
        sha256 is not known yet (None: known, or no artifact)."""
        if config is None:
            return None
        target = _answering(config, model, served_version or asked, _tier(served_by))
        if target is None or target[1] is None:
            return None
        artifacts, _ = self._of(config)
        return None if target in artifacts else (target[0], target[1])

    def hash_artifacts(self, wanted: list[tuple[Any, str, str]]) -> None:
        """Hash the artifacts of (config, model, version) now: model files can take seconds
        to read, so the log does it on a worker thread before it makes their records."""
        for config, model, version in wanted:
            self.artifact(config, model, version)

    def label_output(self, config: Any, model: str) -> str | None:
        segment = self.options.feedback.segments.get(model)
        if segment is not None and segment.label_output is not None:
            return segment.label_output
        if config is None:
            return None
        _, labels = self._of(config)
        if model not in labels:
            model_config = config.models.get(model)
            labels[model] = model_config.outputs[0].name if model_config is not None else None
        name: str | None = labels[model]
        return name

    def _static(
        self,
        config: Any,
        model: str,
        asked: str,
        served_version: str | None,
        served_by: str,
    ) -> tuple[dict[str, Any], str | None]:
        """The fields a record takes from who answered (the same for every answer of one
        replica), and the output holding the label: made once, shared after."""
        key = (id(config), model, asked, served_version, served_by)
        found = self._statics.get(key)
        if found is not None and found[0] is config:
            return found[1], found[2]
        tier = _tier(served_by)
        version = served_version or asked
        static: dict[str, Any] = {"model": model, "version": version, "attempts": []}
        if asked != version:
            static["version_requested"] = asked
        if served_by:
            static["served_by"] = served_by
        if served_by and tier is None:
            replica = served_by.rsplit("/", 1)[-1]
            static["replica"] = replica
            static["attempts"] = [{"replica": replica, "outcome": "answered"}]
        if tier is not None:
            static["fallback_tier"] = tier
            if tier.startswith("model:"):
                static["artifact_model"] = tier.partition(":")[2]
        answering = _answering(config, model, version, tier)
        if answering is not None:
            artifact = self.artifact(config, *answering)
            if artifact is not None:
                static["artifact_sha256"] = artifact
        label = self.label_output(config, model)
        if len(self._statics) >= 4096:
            self._statics.clear()
        self._statics[key] = (config, static, label)
        return static, label

    def make(self, item: Pending, config: Any) -> dict[str, Any]:
        """The stored form of ``item``; ``config``: the Config it ran under (or None)."""
        (
            when,
            request_id,
            tenant,
            model,
            asked,
            status,
            revision,
            _,
            served_version,
            served_by,
            degraded,
            input_items,
            output_items,
            failure,
            error,
            trail,
            verdict,
        ) = item
        options = self.options
        static, label = self._static(config, model, asked, served_version, served_by)
        # Fields that would be null are left out (readers use .get): a smaller line is
        # cheaper to encode, write and scan.
        record: dict[str, Any] = {
            "request_id": request_id,
            "time": when,
            **static,
            "status": status,
            "degraded": degraded,
            "checks": _checks(status, failure, input_items is not None),
        }
        if verdict is not None:  # served, though the input broke a constraint
            record["checks"] = {**record["checks"], "input_constraints": _verdict(verdict)}
        if trail:
            record["attempts"] = [*trail, *static["attempts"]]
        if tenant is not None:
            record["tenant"] = tenant
        if revision:
            record["revision"] = revision
        if failure is not None:
            record["failure_class"] = failure
            record["error"] = error
        if input_items:
            record["input_digest"] = lineage_digest(input_items)
            record["rows"] = len(input_items[1])
            if options.record_inputs:
                record["inputs"] = _tensors(unflat(input_items))
        if output_items is not None:
            if options.record_prediction:
                found = _predictions(output_items, label)
                if found is not None:
                    record["prediction"], record["kind"] = found
            if options.record_outputs:
                record["outputs"] = _tensors(unflat(output_items))
        segment = options.feedback.segments.get(model)
        if segment is not None and input_items:
            record["segments"] = _segments(input_items, segment)
        return record


_LOCAL_TIERS = ("heuristic", "static", "stale_cache")


def _answering(
    config: Any, model: str, version: str, tier: str | None
) -> tuple[str, str | None] | None:
    """The model and version whose artifact made an answer (None: a local fallback)."""
    if tier in _LOCAL_TIERS:
        return None
    if tier is not None and tier.startswith("model:"):
        other = tier.partition(":")[2]
        target = config.models.get(other) if config is not None else None
        return other, target.default if target is not None else None
    return model, version


_PASSED = {"input_contract": "passed", "output_contract": "passed"}
_REFUSED = {"input_contract": "refused"}
_NOT_REACHED = {"input_contract": "not reached"}
_NO_ANSWER = {"input_contract": "passed", "output_contract": "no answer"}


def _verdict(verdict: Any) -> str:
    header = verdict.violation.header()
    text = header.decode("ascii", "replace") if isinstance(header, bytes) else str(header)
    return f"{verdict.policy}: {text}"


def _checks(status: int, failure: str | None, decoded: bool) -> dict[str, str]:
    """What the contracts said: the input contract ran before any answer; the output
    contract judged every replica's answer and every fallback answer."""
    if status == 200:
        return _PASSED
    if failure == "data":
        return _REFUSED
    if not decoded:
        return _NOT_REACHED
    return _NO_ANSWER
