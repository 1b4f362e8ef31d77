"""Options of the prediction log and of the feedback join (``predictions:`` in the config).

Defaults keep privacy first: inputs and outputs are not recorded unless asked
for; the predicted label or value of each row is (feedback needs it to judge
accuracy), unless ``record_prediction`` is off.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, Field, ValidationInfo, field_validator, model_validator

from failsoft._options import StrictModel

__all__ = ["FeedbackOptions", "PredictionLogOptions", "SegmentOptions"]


def _relative_to_the_file(value: Path | None, info: ValidationInfo) -> Path | None:
    base = (info.context or {}).get("base_dir")
    if value is not None and base is not None and not value.is_absolute():
        return (Path(base) / value).resolve()
    return value


class SegmentOptions(StrictModel):
    """Buckets of one input feature: accuracy is also kept per bucket.

    ``edges`` [a, b] make the buckets ``<a``, ``a..b`` and ``>=b``.
    """

    input: Annotated[str, Field(min_length=1, max_length=128)]
    column: Annotated[int, Field(ge=0, le=1_000_000)] = 0
    edges: Annotated[list[float], Field(min_length=1, max_length=64)]
    label_output: str | None = Field(
        default=None, description="the output holding the prediction (default: the first)"
    )

    @field_validator("edges")
    @classmethod
    def _sorted(cls, edges: list[float]) -> list[float]:
        if any(b <= a for a, b in itertools.pairwise(edges)):
            raise ValueError(f"edges must be strictly increasing, got {edges}")
        return edges


class FeedbackOptions(StrictModel):
    index_records: Annotated[int, Field(ge=1_000, le=10_000_000)] = Field(
        default=200_000,
        description="recent predictions kept in memory for the join; older ones are looked "
        "up in the log files",
    )
    lookup_max_bytes: Annotated[int, Field(ge=0, le=1 << 40)] = Field(
        default=256 << 20,
        description="log bytes read per feedback call for ids no longer in memory; what is "
        "not found within them is counted unknown",
    )
    window_s: Annotated[float, Field(ge=1, le=30 * 86_400)] = Field(
        default=3600.0, description="accuracy windows, by the time of the prediction"
    )
    windows: Annotated[int, Field(ge=1, le=1_000)] = 24
    segments: dict[str, SegmentOptions] = Field(
        default_factory=dict, description="model name -> the feature whose buckets are segments"
    )


class PredictionLogOptions(StrictModel):
    enabled: bool = False
    sample_rate: float = Field(default=1.0, description="share of predictions recorded, 0..1")
    directory: Annotated[Path | None, AfterValidator(_relative_to_the_file)] = Field(
        default=None,
        description="relative to the configuration file; default: <data dir>/predictions "
        "(the control store's folder)",
    )
    record_inputs: bool = False
    record_outputs: bool = False
    record_prediction: bool = True
    buffer_records: Annotated[int, Field(ge=16, le=10_000_000)] = Field(
        default=65_536,
        description="records waiting for the writer; beyond this new ones are dropped and "
        "counted (serving never waits)",
    )
    flush_interval_s: Annotated[float, Field(gt=0, le=60)] = Field(
        default=0.5, description="the writer wakes this often (and when a batch is full)"
    )
    batch_records: Annotated[int, Field(ge=1, le=1_000_000)] = 4096
    fsync: bool = Field(default=True, description="fsync each batch (survives a power loss)")
    segment_bytes: Annotated[int, Field(ge=4096, le=1 << 40)] = 64 << 20
    segment_s: Annotated[float, Field(gt=0, le=30 * 86_400)] = 3600.0
    max_age_s: Annotated[float, Field(gt=0, le=3650 * 86_400)] = 7 * 86_400.0
    max_total_bytes: Annotated[int, Field(ge=4096, le=1 << 50)] = 1 << 30
    feedback: FeedbackOptions = Field(default_factory=FeedbackOptions)

    @field_validator("sample_rate", mode="before")
    @classmethod
    def _rate(cls, value: object) -> object:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"sample_rate must be a number from 0 to 1, got {value!r}")
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(
                f"sample_rate must be from 0 to 1 (a share: 0.1 records 10%), got {value!r}"
            )
        return value

    @model_validator(mode="after")
    def _batch_fits(self) -> PredictionLogOptions:
        if self.batch_records > self.buffer_records:
            raise ValueError(
                f"batch_records ({self.batch_records}) must not exceed buffer_records "
                f"({self.buffer_records})"
            )
        return self
