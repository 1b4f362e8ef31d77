"""V2 tensor datatypes and their numpy equivalents."""

from __future__ import annotations

import numpy as np

DATATYPE_TO_DTYPE: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}

DATATYPES: tuple[str, ...] = tuple(DATATYPE_TO_DTYPE)

_DTYPE_TO_DATATYPE: dict[np.dtype, str] = {v: k for k, v in DATATYPE_TO_DTYPE.items()}


def datatype_of(array: np.ndarray) -> str:
    """The V2 datatype name of an array; unicode and bytes arrays count as BYTES."""
    found = _DTYPE_TO_DATATYPE.get(array.dtype)
    if found is not None:
        return found
    if array.dtype.kind in ("U", "S"):
        return "BYTES"
    raise TypeError(f"numpy dtype {array.dtype} has no V2 datatype")
