"""Strict conversion between JSON or binary data and numpy arrays, shared by the V2 and V1 codecs.

Every function takes ``where`` ("input 'x'", "output 'y'") and puts it at the
start of its error messages, so the client learns which tensor is wrong.
Nothing is coerced silently: a string is not a number, 1.7 is not an int,
300 is not a UINT8 and 1 is not a BOOL.

Binary tensor data is little-endian (Triton's binary extension); numpy's
native order is used, which is little-endian on every platform we run on.
"""

from __future__ import annotations

import math
import struct
from itertools import chain
from typing import Any

import numpy as np
import orjson

from failsoft.errors import BadRequest, ModelError
from failsoft.protocol.datatypes import DATATYPE_TO_DTYPE, DATATYPES, datatype_of

MAX_DIMS = 32  # numpy 1.x's limit; numpy 2 allows 64
_FLOATS = frozenset({"FP16", "FP32", "FP64"})
_INTS = frozenset({"UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"})
_NUMBER_TYPES = frozenset({float, int})
_JSON_KINDS = {
    str: "a string",
    bool: "a boolean",
    type(None): "null",
    dict: "an object",
    list: "a list",
    int: "a number",
    float: "a number",
}
_LENGTH_PREFIX = struct.Struct("<I")


def json_kind(value: Any) -> str:
    """A JSON value's type as a client would name it ("a string", "null")."""
    return _JSON_KINDS.get(type(value), type(value).__name__)


def load_json_object(data: bytes | memoryview, what: str) -> dict[str, Any]:
    try:
        loaded = orjson.loads(data)
    except orjson.JSONDecodeError as error:
        raise BadRequest(f"the {what} is not valid JSON: {error}") from None
    if type(loaded) is not dict:
        raise BadRequest(f"the {what} must be a JSON object, got {json_kind(loaded)}")
    return loaded


def parse_datatype(where: str, value: Any) -> str:
    if not isinstance(value, str) or value not in DATATYPE_TO_DTYPE:
        raise BadRequest(
            f"{where}: unknown datatype {_show(value)} (expected one of {', '.join(DATATYPES)})"
        )
    return value


def parse_shape(where: str, value: Any) -> list[int]:
    if type(value) is not list or not all(type(d) is int and d >= 0 for d in value):
        raise BadRequest(
            f"{where}: shape must be a list of non-negative integers, got {_show(value)}"
        )
    if len(value) > MAX_DIMS:
        raise BadRequest(f"{where}: shape has {len(value)} dimensions (at most {MAX_DIMS})")
    return value


def build_array(
    where: str, datatype: str, shape: list[int] | None, data: Any, *, null_as_nan: bool = False
) -> np.ndarray:
    """An array of ``datatype`` from JSON ``data``, flat or nested in row-major order.

    With ``shape`` None the shape is the nesting of ``data`` (V1 rows); else
    the element count must match ``shape`` and the nesting is not checked
    beyond being regular. ``null_as_nan`` accepts null in float data, which is
    how a JSON encoder writes NaN and infinities (used for responses only).
    """
    flat, nested_shape, types = _flatten(where, data)
    if shape is None:
        shape = nested_shape
    elif len(flat) != math.prod(shape):
        raise BadRequest(
            f"{where}: shape {shape} needs {math.prod(shape)} elements, got {len(flat)}"
        )
    if datatype in _FLOATS:
        array = _floats(where, datatype, flat, types, null_as_nan, shape)
    elif datatype in _INTS:
        array = _ints(where, datatype, flat, types, shape)
    elif datatype == "BOOL":
        _require(where, datatype, flat, types, frozenset({bool}), "true or false", shape)
        array = np.array(flat, dtype=np.bool_)
    else:
        _require(where, datatype, flat, types, frozenset({str}), "strings", shape)
        # orjson refuses lone surrogates, so every str it returns encodes to UTF-8.
        array = _object_array([item.encode() for item in flat])
    return _reshape(where, array, shape)


def from_binary(where: str, datatype: str, shape: list[int], chunk: memoryview) -> np.ndarray:
    """An array from Triton binary tensor data (zero-copy and read-only for numbers)."""
    count = math.prod(shape)
    if datatype == "BYTES":
        return _reshape(where, _object_array(_split_bytes(where, chunk, count)), shape)
    dtype = DATATYPE_TO_DTYPE[datatype]
    if len(chunk) % dtype.itemsize:
        raise BadRequest(
            f"{where}: binary_data_size {len(chunk)} is not a multiple of "
            f"{dtype.itemsize} ({datatype} element size)"
        )
    if len(chunk) // dtype.itemsize != count:
        raise BadRequest(
            f"{where}: shape {shape} needs {count} elements, "
            f"got {len(chunk) // dtype.itemsize} ({len(chunk)} bytes)"
        )
    array = np.frombuffer(chunk, dtype=dtype)
    if datatype == "BOOL" and count and np.frombuffer(chunk, dtype=np.uint8).max() > 1:
        raise BadRequest(f"{where}: BOOL binary data must hold only bytes 0 and 1")
    return _reshape(where, array, shape)


def output_datatype(where: str, array: np.ndarray) -> str:
    try:
        return datatype_of(array)
    except TypeError as error:
        raise ModelError(f"{where}: {error}") from None


def to_json(array: np.ndarray, flat: bool) -> Any:
    """Numbers as a C-contiguous array that orjson serializes itself (OPT_SERIALIZE_NUMPY).

    BYTES arrays are not handled here: see ``utf8_strings``.
    """
    if flat:
        return array.ravel()
    return array if array.flags.c_contiguous else array.copy(order="C")


def utf8_strings(where: str, array: np.ndarray) -> list[str] | None:
    """The flattened elements of a BYTES array as str; None if one is not UTF-8."""
    try:
        return [
            item if type(item) is str else _as_bytes(where, item).decode()
            for item in array.ravel().tolist()
        ]
    except UnicodeDecodeError:
        return None


def to_binary(where: str, array: np.ndarray, datatype: str) -> bytes:
    if datatype != "BYTES":
        return np.ascontiguousarray(array).tobytes()
    parts = []
    for item in array.ravel().tolist():
        element = _as_bytes(where, item)
        parts.append(_LENGTH_PREFIX.pack(len(element)))
        parts.append(element)
    return b"".join(parts)


def _flatten(where: str, data: Any) -> tuple[list[Any], list[int], set[type]]:
    """The leaves of nested lists, the nesting shape, and the leaves' Python types."""
    if type(data) is not list:
        return [data], [], {type(data)}
    level: list[Any] = data
    shape = [len(data)]
    while True:
        types = set(map(type, level))
        if list not in types:
            return level, shape, types
        if len(types) > 1:
            raise BadRequest(f"{where}: ragged data: lists and values mixed at depth {len(shape)}")
        lengths = set(map(len, level))
        if len(lengths) > 1:
            raise BadRequest(
                f"{where}: ragged data: lists at depth {len(shape)} have "
                f"different lengths {sorted(lengths)[:4]}"
            )
        shape.append(lengths.pop())
        level = list(chain.from_iterable(level))


def _floats(
    where: str,
    datatype: str,
    flat: list[Any],
    types: set[type],
    null_as_nan: bool,
    shape: list[int],
) -> np.ndarray:
    if null_as_nan and type(None) in types:
        flat = [math.nan if item is None else item for item in flat]
        types = types - {type(None)} | {float}
    _require(where, datatype, flat, types, _NUMBER_TYPES, "numbers", shape)
    dtype = DATATYPE_TO_DTYPE[datatype]
    limit = _FLOAT_LIMITS.get(datatype)
    # 1e39 would silently become inf as FP32 (orjson itself only yields finite
    # numbers). Checking the magnitude first is cheaper than np.errstate.
    if limit is not None and flat and _largest(flat, null_as_nan) > limit:
        index = int(np.nanargmax(np.abs(np.array(flat, dtype=np.float64))))
        raise BadRequest(
            f"{where}: value {flat[index]} {_at(index, shape)} is out of range for {datatype}"
        )
    return np.array(flat, dtype=dtype)


_FLOAT_LIMITS = {"FP16": float(np.finfo(np.float16).max), "FP32": float(np.finfo(np.float32).max)}


def _largest(flat: list[Any], may_hold_nan: bool) -> float:
    if len(flat) <= 64:
        if not may_hold_nan:  # JSON has no NaN: two C calls instead of a generator
            return float(max(max(flat), -min(flat)))
        return max((abs(v) for v in flat if v == v), default=0.0)  # NaN != NaN: skipped
    magnitudes = np.abs(np.array(flat, dtype=np.float64))
    return float(magnitudes[~np.isnan(magnitudes)].max(initial=0.0))


def _ints(
    where: str, datatype: str, flat: list[Any], types: set[type], shape: list[int]
) -> np.ndarray:
    _require(where, datatype, flat, types, _NUMBER_TYPES, "integers", shape)
    if float in types:
        flat = [_exact_int(where, datatype, i, item, shape) for i, item in enumerate(flat)]
    dtype = DATATYPE_TO_DTYPE[datatype]
    if not flat:
        return np.empty(0, dtype=dtype)
    info = np.iinfo(dtype)
    try:
        wide = np.array(flat, dtype=np.int64)
    except OverflowError:  # beyond int64: compare as Python ints
        low, high = min(flat), max(flat)
    else:
        if datatype == "INT64":
            return wide
        low, high = int(wide.min()), int(wide.max())
    for value in (low, high):
        if not info.min <= value <= info.max:
            index = flat.index(value)
            raise BadRequest(
                f"{where}: value {value} is out of range for {datatype} "
                f"({info.min}..{info.max}) {_at(index, shape)}"
            )
    return np.array(flat, dtype=dtype)


def _exact_int(where: str, datatype: str, index: int, item: int | float, shape: list[int]) -> int:
    if isinstance(item, int):
        return item
    if not item.is_integer():
        raise BadRequest(
            f"{where}: {datatype} data must be integers, got {item} {_at(index, shape)}"
        )
    return int(item)


def _at(index: int, shape: list[int]) -> str:
    """Where element ``index`` (row-major) sits: its row and column in a table."""
    if len(shape) < 2 or index >= math.prod(shape):
        return f"at index {index}"
    position = [int(p) for p in np.unravel_index(index, shape)]
    if len(shape) == 2:
        return f"at index {index} (row {position[0]}, column {position[1]})"
    return f"at index {index} (position {position})"


def _require(
    where: str,
    datatype: str,
    flat: list[Any],
    types: set[type],
    allowed: frozenset[type],
    wanted: str,
    shape: list[int],
) -> None:
    if types <= allowed:
        return
    index, item = next((i, v) for i, v in enumerate(flat) if type(v) not in allowed)
    raise BadRequest(
        f"{where}: {datatype} data must be {wanted}, got {json_kind(item)} "
        f"{_show(item)} {_at(index, shape)}"
    )


def _split_bytes(where: str, chunk: memoryview, count: int) -> list[bytes]:
    elements: list[bytes] = []
    position, end = 0, len(chunk)
    while position < end:
        if position + 4 > end:
            raise BadRequest(
                f"{where}: malformed BYTES binary data: {end - position} "
                f"trailing bytes cannot hold a 4-byte length prefix"
            )
        (length,) = _LENGTH_PREFIX.unpack_from(chunk, position)
        position += 4
        if position + length > end:
            raise BadRequest(
                f"{where}: malformed BYTES binary data: element "
                f"{len(elements)} declares {length} bytes, {end - position} left"
            )
        elements.append(bytes(chunk[position : position + length]))
        position += length
    if len(elements) != count:
        raise BadRequest(
            f"{where}: shape needs {count} elements, the BYTES binary data holds {len(elements)}"
        )
    return elements


def _object_array(items: list[Any]) -> np.ndarray:
    array = np.empty(len(items), dtype=np.object_)
    array[:] = items
    return array


def _reshape(where: str, array: np.ndarray, shape: list[int]) -> np.ndarray:
    try:
        return array.reshape(shape)
    except ValueError as error:  # a zero-size shape whose other dimensions are absurd
        raise BadRequest(f"{where}: shape {shape} is not usable: {error}") from None


def _as_bytes(where: str, item: Any) -> bytes:
    if type(item) is bytes:
        return item
    if type(item) is str:
        return item.encode()
    raise ModelError(f"{where}: a BYTES element must be bytes or str, got {type(item).__name__}")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
