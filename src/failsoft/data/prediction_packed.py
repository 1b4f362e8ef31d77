"""Chunks of the prediction log as the gateway hands them to the writer process.

A chunk is one bytes object, in one of two forms:

- ``LINES``: JSON lines already encoded (each ending in a newline);
- ``ALIKE``: the records of a chunk of plain, alike answers (one model, version
  and replica; one input tensor of one dtype and shape; a one-row integer
  label), packed column by column: the fields the records share once, the
  request ids, times, flags, optional fields and labels each as one run of
  bytes, and the inputs' bytes back to back.

Packing an alike chunk costs the event loop a few C calls per column; what
costs per record — each input's blake2b digest and the line itself — is
done by ``lines_of``, in the writer process, on the other core. ``lines_of``
gives byte for byte the lines ``orjson.dumps(RecordMaker.make(...))`` would
(``tests/data/test_prediction_packed.py``).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Sequence
from typing import Final

import orjson

from failsoft.data.prediction_record import _checks

__all__ = ["ALIKE", "DEGRADED", "LINE", "LINES", "count_of", "lines_of", "pack_alike", "pack_lines"]

LINES: Final = b"L"
ALIKE: Final = b"A"
# kind, then: records, rows, and the lengths of static, header, ids, times, extras, labels
_ALIKE_HEAD = struct.Struct("<cIIIIIIII")
_LINES_HEAD = struct.Struct("<cI")  # kind, records

PASSED: Final = orjson.dumps(_checks(200, None, True))
# A plain answer's line: what varies goes in by %; the checks are the contracts' "passed".
LINE: Final = (
    b'{"request_id":%b,"time":%b,%b,"status":200,"degraded":%b,"checks":'
    + PASSED
    + b'%b,"input_digest":"%b","rows":%d%b}'
)
LINE_ONE_LABEL: Final = LINE.replace(b"%b}", b',"prediction":[%d],"kind":"classification"}')
DEGRADED: Final = (b"false", b"true")  # by the flag (bool or 0/1)


def pack_lines(lines: list[bytes]) -> bytes:
    """A chunk of encoded lines (without their newlines)."""
    lines.append(b"")
    return _LINES_HEAD.pack(LINES, len(lines) - 1) + b"\n".join(lines)


def pack_alike(
    static: bytes,
    header: bytes,
    rows: int,
    quoted_ids: Sequence[bytes],
    times: bytes,
    degraded: Sequence[bool],
    extras: Iterable[bytes],
    labels: bytes,
    inputs: bytes | memoryview,
) -> bytes:
    """An alike chunk: ``static`` is the records' shared fields (encoded, no braces),
    ``header`` the digest's header of the input, ``times`` and ``labels`` JSON arrays
    without brackets, ``inputs`` every record's input bytes back to back."""
    ids = b"\0".join(quoted_ids)
    extra = b"\0".join(extras)
    head = _ALIKE_HEAD.pack(
        ALIKE,
        len(quoted_ids),
        rows,
        len(static),
        len(header),
        len(ids),
        len(times),
        len(extra),
        len(labels),
    )
    return b"".join((head, static, header, ids, times, bytes(degraded), extra, labels, inputs))


def count_of(chunk: bytes) -> int:
    """The records a chunk holds."""
    return int(_LINES_HEAD.unpack_from(chunk)[1])


def lines_of(chunk: bytes) -> bytes:
    """The chunk's records as JSON lines, each ending in a newline."""
    if chunk[:1] == LINES:
        return chunk[_LINES_HEAD.size :]
    if chunk[:1] != ALIKE:
        raise ValueError(f"not a chunk of the prediction log: {chunk[:1]!r}")
    _, count, rows, *sizes = _ALIKE_HEAD.unpack_from(chunk)
    view = memoryview(chunk)
    at = _ALIKE_HEAD.size
    parts = []
    for size in (*sizes[:4], count, *sizes[4:]):
        parts.append(view[at : at + size])
        at += size
    static, header, ids, times, degraded, extras, labels = (bytes(part) for part in parts)
    inputs = view[at:]
    width = len(inputs) // count if count else 0
    start = hashlib.blake2b(header, digest_size=16)
    digests = []
    for index in range(count):
        hasher = start.copy()
        hasher.update(inputs[index * width : (index + 1) * width])
        digests.append(hasher.hexdigest().encode())
    lines = [
        LINE_ONE_LABEL % (request_id, when, static, DEGRADED[flag], extra, digest, rows, label)
        for request_id, when, flag, extra, digest, label in zip(
            ids.split(b"\0"),
            times.split(b","),
            degraded,
            extras.split(b"\0"),
            digests,
            map(int, labels.split(b",")),
            strict=True,
        )
    ]
    lines.append(b"")
    return b"\n".join(lines)
