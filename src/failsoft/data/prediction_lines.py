"""A chunk of the log's records encoded as JSON lines, the common case from a template.

Most answers are plain: a 200 with no failed attempt, no data warning and no
recorded tensors. Their records differ only in a few fields (request id,
time, tenant, revision, digest, rows, prediction); the rest depends on who
answered, which ``RecordMaker._static`` already knows. Making a dict per
record and encoding it with orjson cost 4 us a record on one core and 9 us in
a busy gateway (``benchmarks/serve.py --candidate assurance``); filling a
template with those few fields costs less than half as much. Every other
answer is made the general way (``RecordMaker.make``). Either way a line is
byte for byte what ``orjson.dumps(RecordMaker.make(...))`` gives
(``tests/data/test_prediction_lines.py``), so readers see one format.

The same pass gathers what the feedback index takes, column by column
(``Predicted``), in the order of the records.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import orjson

from failsoft.data.prediction_index import IndexRow, Predicted, index_row, kept_form
from failsoft.data.prediction_packed import DEGRADED, LINE, pack_alike, pack_lines
from failsoft.data.prediction_record import (
    Pending,
    RecordMaker,
    _header,
    _predictions,
    lineage_digest,
)

__all__ = ["Chunk", "ChunkEncoder", "uniform"]

log = logging.getLogger("failsoft.predictions")

UNSAFE_BYTES = bytes(range(32)) + b'"\\'  # what a JSON string must escape
MAX_SHAPES = 4096

# (model, asked, served version, served by) under one configuration -> what a plain
# record of such an answer takes from it: the configuration (to tell a new one that
# reuses the id), the static fields encoded, the version that answered, the label
# output, and whether its records can be plain at all.
Shape = tuple[Any, bytes, str, str | None, bool]

# A prediction's fields in the line, its kept form, and its kind (None: not to index).
Prediction = tuple[bytes, Any, str | None]
CLASSIFICATION = "classification"

# A chunk (``prediction_packed``) and the number of records that could not be made.
Chunk = tuple[bytes, int]


class ChunkEncoder:
    def __init__(self, maker: RecordMaker) -> None:
        self._maker = maker
        self._shapes: dict[tuple[Any, ...], Shape] = {}
        options = maker.options
        self._plain_possible = not (options.record_inputs or options.record_outputs)
        self._record_prediction = options.record_prediction

    def encode(self, items: list[Pending], configs: dict[int, Any], predicted: Predicted) -> Chunk:
        """The items' records as one chunk (``prediction_packed``; empty when none could be
        made); what carries a prediction is added to ``predicted``."""
        if not items:
            return b"", 0
        times = orjson.dumps([item[0] for item in items])[1:-1]
        quoted = _quoted_ids(items)
        try:
            packed = self._alike_chunk(items, configs, quoted, times, predicted)
        except Exception:  # taken item by item, where a record that cannot be made is counted
            log.debug("prediction log: a chunk taken item by item", exc_info=True)
            packed = None
        if packed is not None:
            return packed, 0
        lines = []
        indexed: list[IndexRow] = []
        bad = 0
        for item, request_id, when in zip(items, quoted, times.split(b","), strict=True):
            try:
                line = self._plain_line(item, request_id, when, configs, indexed)
                lines.append(line if line is not None else self._general(item, configs, indexed))
            except Exception:
                bad += 1
                log.exception("prediction log: a record could not be made")
        predicted.extend(indexed)
        return (pack_lines(lines) if lines else b""), bad

    def _plain_line(
        self,
        item: Pending,
        request_id: bytes | None,
        when: bytes,
        configs: dict[int, Any],
        indexed: list[IndexRow],
    ) -> bytes | None:
        """The line of a plain answer (its prediction added to ``indexed``); None for any
        other answer, to be made the general way."""
        inputs, outputs = item[11], item[12]
        if item[5] != 200 or item[15] or item[16] is not None or request_id is None:
            return None
        if not inputs or outputs is None:
            return None
        _, static, version, label, plain = self._shape(
            item[7], item[3], item[4], item[8], item[9], configs
        )
        if not plain:
            return None
        tenant = item[2]
        prediction, kept, kind = self._prediction(outputs, label)
        line = LINE % (
            request_id,
            when,
            static,
            DEGRADED[item[10]],
            _extra(tenant, item[6]),
            lineage_digest(inputs).encode(),
            len(inputs[1]),
            prediction,
        )
        if kind is not None:
            indexed.append((item[1], item[3], version, tenant, item[0], kept, None, kind))
        return line

    def _alike_chunk(
        self,
        items: list[Pending],
        configs: dict[int, Any],
        quoted: Sequence[bytes | None],
        times: bytes,
        predicted: Predicted,
    ) -> bytes | None:
        """The chunk packed column by column if its answers are all plain and alike (one
        model, version and replica; one input tensor of one dtype and shape; a one-row
        integer label of one dtype); None for any other chunk. Its lines are made from
        the packed columns by the writer process (``prediction_packed.lines_of``)."""
        count = len(items)
        columns = zip(*items, strict=True)  # the fields of Pending, each as a column
        (whens, ids, tenants, models, asked, statuses, revisions, keys, served_versions,
         served_bys, degraded, inputs, outputs, _, _, trails, verdicts) = columns  # fmt: skip
        if (
            statuses.count(200) != count
            or trails.count(None) != count
            or verdicts.count(None) != count
            or None in quoted
            or None in inputs
            or None in outputs
            or not self._record_prediction
        ):
            return None
        if not all(map(uniform, (keys, models, asked, served_versions, served_bys))):
            return None
        answer = (keys[0], models[0], asked[0], served_versions[0], served_bys[0])
        _, static, version, label, plain = self._shape(*answer, configs)
        if not plain or not uniform([len(parts) for parts in inputs]) or len(inputs[0]) != 2:
            return None
        names = [parts[0] for parts in inputs]
        arrays = [parts[1] for parts in inputs]
        labels = [parts[1] for parts in outputs]
        if not (
            uniform(names)
            and uniform([parts[0] for parts in outputs])
            and uniform([array.dtype for array in arrays])
            and uniform([array.shape for array in arrays])
            and uniform([array.dtype for array in labels])
            and uniform([array.shape for array in labels])
        ):
            return None
        dtype, shape = arrays[0].dtype, arrays[0].shape
        label_dtype, label_shape = labels[0].dtype, labels[0].shape
        if outputs[0][0] != label or dtype.hasobject or not shape:
            return None
        if label_dtype.kind not in "iu" or label_shape != (1,):
            return None
        values = np.frombuffer(_joined_bytes(labels), label_dtype).tolist()
        packed = pack_alike(
            static,
            _header(names[0], arrays[0]),
            shape[0],
            quoted,  # type: ignore[arg-type]  # no None: checked above
            times,
            degraded,
            _extras(tenants, revisions),
            orjson.dumps(values)[1:-1],
            _joined_bytes(arrays),
        )
        predicted.extend_columns(
            ids, models, [version] * count, tenants, whens, values, [None] * count,
            [CLASSIFICATION] * count,
        )  # fmt: skip
        return packed

    def _shape(
        self,
        config_key: int,
        model: str,
        asked: str,
        served_version: str | None,
        served_by: str,
        configs: dict[int, Any],
    ) -> Shape:
        """What the records of answers from (model, asked, served version, served by) under
        one configuration share."""
        config = configs.get(config_key)
        key = (config_key, model, asked, served_version, served_by)
        shape = self._shapes.get(key)
        if shape is not None and shape[0] is config:
            return shape
        maker = self._maker
        static, label = maker._static(config, model, asked, served_version, served_by)
        plain = self._plain_possible and model not in maker.options.feedback.segments
        encoded = orjson.dumps(static, option=orjson.OPT_SERIALIZE_NUMPY)[1:-1]
        if len(self._shapes) >= MAX_SHAPES:
            self._shapes.clear()
        shape = self._shapes[key] = (config, encoded, static["version"], label, plain)
        return shape

    def _prediction(self, outputs: tuple[Any, ...], label: str | None) -> Prediction:
        """The prediction's fields in the line, and what the index keeps of it (kind None:
        nothing to index)."""
        found = _predictions(outputs, label) if self._record_prediction else None
        if found is None:
            return b"", None, None
        labels, kind = found
        encoded = b',"prediction":%b,"kind":"%b"' % (orjson.dumps(labels), kind.encode())
        return encoded, kept_form(labels), kind if labels else None

    def _general(self, item: Pending, configs: dict[int, Any], indexed: list[IndexRow]) -> bytes:
        record = self._maker.make(item, configs.get(item[7]))
        line = orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY)
        row = index_row(record)
        if row is not None:
            indexed.append(row)
        return line


def _joined_bytes(arrays: Sequence[np.ndarray]) -> bytes | memoryview:
    """The bytes of arrays of one dtype and shape back to back, laid out as
    ``np.concatenate`` lays them out: joined through the buffer protocol, about 50 ns an
    array where ``np.concatenate`` takes 200 (it checks and converts each one, and the
    caller has checked them already); concatenated when one is not C-contiguous."""
    try:
        return b"".join(arrays)  # type: ignore[arg-type]  # ndarrays are buffers
    except TypeError:
        return np.concatenate(arrays).data


def uniform(values: Sequence[Any]) -> bool:
    """Whether every value equals the first (``count`` checks identity first, and a chunk's
    values are mostly the same object)."""
    return values.count(values[0]) == len(values)


def _extras(tenants: Sequence[str | None], revisions: Sequence[int]) -> Iterable[bytes]:
    """Each record's ``_extra``, made once per distinct (tenant, revision)."""
    if uniform(tenants) and uniform(revisions):
        return itertools.repeat(_extra(tenants[0], revisions[0]), len(tenants))
    pairs = list(zip(tenants, revisions, strict=True))
    made = {pair: _extra(*pair) for pair in set(pairs)}
    return [made[pair] for pair in pairs]


def _extra(tenant: str | None, revision: int) -> bytes:
    """The optional fields between the checks and the digest."""
    extra = b""
    if tenant is not None:
        extra = b',"tenant":' + orjson.dumps(tenant)
    if revision:
        extra += b',"revision":%d' % revision
    return extra


def _quoted_ids(items: list[Pending]) -> Sequence[bytes | None]:
    """Each item's request id as a JSON string (None: it cannot be one)."""
    ids = [item[1] for item in items]
    try:
        joined = "\0".join(ids).encode()
    except (TypeError, UnicodeEncodeError):
        return [_quoted(request_id) for request_id in ids]
    # Bytes of UTF-8 from 0x80 up are never to be escaped: one table pass over the bytes
    # tells whether any id needs escaping (a regular expression took 1,300 instructions
    # an id), and then the NULs that joined them cut them apart again, each quoted.
    if len(joined.translate(None, UNSAFE_BYTES)) != len(joined) - len(ids) + 1:
        return [_quoted(request_id) for request_id in ids]
    return (b'"' + joined.replace(b"\0", b'"\0"') + b'"').split(b"\0")


def _quoted(request_id: str) -> bytes | None:
    try:
        return orjson.dumps(request_id)
    except orjson.JSONEncodeError:
        return None
