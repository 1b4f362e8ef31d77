"""The typed request and response every stage behind the protocol layer sees.

Tensors are plain numpy arrays keyed by name: the V2 datatype follows from
the array's dtype (see ``datatypes``), and BYTES tensors are object arrays of
``bytes``. Decoding happens once, in the protocol layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

Tensors = dict[str, np.ndarray]


@dataclass(slots=True, frozen=True)
class RequestedOutput:
    """An output the client asked for, and whether it wants it as binary data."""

    name: str
    binary: bool = False


@dataclass(slots=True)
class InferRequest:
    """One inference request, decoded.

    ``outputs`` is ``None`` when the client did not name outputs (all are
    returned). ``binary_output`` is the request-wide default for outputs that
    do not say (the V2 ``binary_data_output`` parameter).
    """

    inputs: Tensors
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    outputs: list[RequestedOutput] | None = None
    binary_output: bool = False
    # The V2 body this was decoded from, so a proxy can forward it unchanged
    # instead of encoding the same tensors again.
    raw: bytes | None = None
    raw_header_length: int | None = None
    # The inputs' digest, computed once when a stage needs it (cache, poison memory).
    digest: bytes | None = None


@dataclass(slots=True)
class InferResponse:
    model_name: str
    model_version: str
    outputs: Tensors
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
