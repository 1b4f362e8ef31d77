"""A declared tensor: what a model takes or gives, checked on every request and answer.

A leaf module: the codecs, the contracts and the configuration all use it.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from failsoft._options import StrictModel
from failsoft.protocol.datatypes import DATATYPES

Datatype = Literal[
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
]
assert set(Datatype.__args__) == set(DATATYPES)  # type: ignore[attr-defined]


_FLOAT_TYPES = ("FP16", "FP32", "FP64")
_LABEL_TYPES = tuple(datatype for datatype in DATATYPES if datatype not in _FLOAT_TYPES)


class TensorSpec(StrictModel):
    """A declared input or output: its name, V2 datatype and shape (-1: any size).

    The optional value contract (``range``, ``labels``, ``allow_nan``) is
    checked on every request (a violation is a 400) and every answer (a
    violation is a model failure, retried or fallen back, never returned).
    """

    name: Annotated[str, Field(min_length=1, max_length=256)]
    datatype: Datatype
    shape: list[Annotated[int, Field(ge=-1)]]
    range: tuple[float, float] | None = None
    labels: Annotated[list[int | str], Field(min_length=1, max_length=100_000)] | None = None
    allow_nan: bool = False

    @model_validator(mode="after")
    def _contract_fits_datatype(self) -> TensorSpec:
        if self.range is not None:
            if self.datatype in ("BYTES", "BOOL"):
                raise ValueError(f"range does not apply to {self.datatype}")
            if self.range[0] > self.range[1]:
                raise ValueError(f"range minimum {self.range[0]} is above its maximum")
        if self.labels is not None and self.datatype not in _LABEL_TYPES:
            raise ValueError(
                f"labels apply to integer, BOOL and BYTES tensors, not {self.datatype}"
            )
        if self.allow_nan and self.datatype not in _FLOAT_TYPES:
            raise ValueError("allow_nan applies to FP16, FP32 and FP64 tensors only")
        return self
