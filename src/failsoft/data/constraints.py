"""Per-feature input constraints, as written in a model's configuration (a leaf module).

A tensor whose last axis holds features (a batch of rows of columns, say
``[-1, 4]``) may name its columns and constrain each, by name or by index::

    inputs:
      - name: features
        datatype: FP32
        shape: [-1, 4]
        columns: [sepal_length, sepal_width, petal_length, petal_width]
        features:
          sepal_length: {min: 4.0, max: 8.0}
          "3": {min: 0.0, max: 2.6}          # by index
    input_policy: degrade                     # reject | flag | degrade

What a request that breaks one does is the model's ``input_policy``
(``data/input_checks.py`` compiles and runs the checks).
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import Field, model_validator

from failsoft._options import StrictModel

InputPolicy = Literal["reject", "flag", "degrade"]
Compatibility = Literal["backward", "forward", "full", "none"]
MAX_CATEGORIES = 10_000


class FeatureConstraint(StrictModel):
    """What one column (feature) of an input may hold."""

    min: float | None = Field(default=None, description="smallest value allowed")
    max: float | None = Field(default=None, description="largest value allowed")
    categories: (
        Annotated[list[int | str], Field(min_length=1, max_length=MAX_CATEGORIES)] | None
    ) = Field(default=None, description="the only values allowed (integer or BYTES tensors)")
    integer: bool = Field(default=False, description="whole numbers only (float tensors)")
    allow_nan: bool = Field(
        default=False,
        description="NaN is allowed in this column (the tensor must set allow_nan too)",
    )
    allow_inf: bool = Field(
        default=False,
        description="+-infinity is allowed in this column (the tensor must set allow_nan too)",
    )

    @model_validator(mode="after")
    def _sane(self) -> FeatureConstraint:
        for name in ("min", "max"):
            value = getattr(self, name)
            if value is not None and math.isnan(value):
                raise ValueError(f"{name} must be a number, not NaN")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min:g} is above max {self.max:g}")
        if self.categories is not None and (self.min is not None or self.max is not None):
            raise ValueError("give categories or min/max, not both")
        return self

    @property
    def empty(self) -> bool:
        return self == EMPTY


EMPTY = FeatureConstraint()
