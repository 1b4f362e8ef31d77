"""A declared tensor: what a model takes or gives, checked on every request and answer.

A leaf module: the codecs, the contracts and the configuration all use it.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from failsoft._options import StrictModel
from failsoft.data.constraints import FeatureConstraint
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
    columns: Annotated[list[str], Field(min_length=1, max_length=100_000)] | None = Field(
        default=None, description="names of the last axis's positions (the features)"
    )
    features: dict[str, FeatureConstraint] | None = Field(
        default=None,
        description="constraints per column, by name (see columns) or index; a request that "
        "breaks one gets the model's input_policy",
    )

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
        if self.columns is not None or self.features:
            check_features(self)
        return self


def check_features(spec: TensorSpec) -> None:
    """``columns`` and ``features`` fit the tensor: ValueError naming what does not."""
    width = spec.shape[-1] if spec.shape else -1
    if spec.columns is not None:
        if width != len(spec.columns):
            raise ValueError(
                f"columns names {len(spec.columns)} features but the last axis of shape "
                f"{spec.shape} is {'any size' if width == -1 else width}"
            )
        if len(set(spec.columns)) != len(spec.columns):
            raise ValueError("columns must be distinct")
    if not spec.features:
        return
    if width < 1:
        raise ValueError("features need a fixed last axis (the columns), e.g. shape [-1, 4]")
    for key, constraint in spec.features.items():
        if not (spec.columns and key in spec.columns) and not (key.isdigit() and int(key) < width):
            known = f"one of {spec.columns} or " if spec.columns else ""
            raise ValueError(f"features.{key}: not a column ({known}an index 0..{width - 1})")
        floats = spec.datatype in _FLOAT_TYPES
        if (constraint.min is not None or constraint.max is not None) and spec.datatype in (
            "BYTES",
            "BOOL",
        ):
            raise ValueError(f"features.{key}: min/max do not apply to {spec.datatype}")
        if constraint.categories is not None:
            texts = [c for c in constraint.categories if isinstance(c, str)]
            if spec.datatype == "BYTES" and len(texts) != len(constraint.categories):
                raise ValueError(f"features.{key}: categories of a BYTES tensor are strings")
            if spec.datatype != "BYTES" and texts:
                raise ValueError(
                    f"features.{key}: categories of a {spec.datatype} tensor are numbers"
                )
        if constraint.integer and not floats:
            raise ValueError(f"features.{key}: integer applies to float tensors (FP16/32/64)")
        if (constraint.allow_nan or constraint.allow_inf) and not spec.allow_nan:
            raise ValueError(
                f"features.{key}: allow_nan/allow_inf need allow_nan on the tensor too "
                "(else the tensor's own check refuses NaN and infinity first)"
            )
