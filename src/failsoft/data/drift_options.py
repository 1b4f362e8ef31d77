"""A model's drift settings (``models.NAME.drift`` in the configuration).

A leaf module: the configuration imports it without loading any sketch.

    drift:
      profile: iris.profile.json        # the reference of every version
      profiles: {v2: iris-v2.profile.json}   # a version's own, where it differs
      min_count: 1000                   # a window is judged from this many rows

Defaults are the issue's: PSI 0.1 warns and 0.2 alerts (numbers), a
Jensen-Shannon distance of 0.1 / 0.2 for labels. A feature alerts only when
the lower bound of the bias-corrected interval of its distance (one-sided,
at ``z``) is above the threshold, so a small window's noise does not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, Field, ValidationInfo, model_validator

from failsoft._options import StrictModel

__all__ = ["DriftOptions", "DriftWindow"]


def _resolve(value: Path | None, info: ValidationInfo) -> Path | None:
    base = (info.context or {}).get("base_dir")
    if value is not None and base is not None and not value.is_absolute():
        return (Path(base) / value).resolve()
    return value


def _resolve_all(value: dict[str, Path], info: ValidationInfo) -> dict[str, Path]:
    return {key: path for key, path in ((k, _resolve(v, info)) for k, v in value.items()) if path}


class DriftWindow(StrictModel):
    """A sliding window: ``seconds`` of traffic kept as buckets of ``bucket_s``."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_]+$", max_length=16)]
    seconds: Annotated[float, Field(gt=0, le=7 * 86_400)]
    bucket_s: Annotated[float, Field(gt=0, le=86_400)]

    @model_validator(mode="after")
    def _buckets(self) -> DriftWindow:
        buckets = self.seconds / self.bucket_s
        if buckets < 1 or buckets > 1000 or abs(buckets - round(buckets)) > 1e-9:
            raise ValueError("seconds must be a whole number (1 to 1000) of bucket_s")
        return self

    @property
    def buckets(self) -> int:
        return round(self.seconds / self.bucket_s)


def _default_windows() -> list[DriftWindow]:
    return [
        DriftWindow(name="30s", seconds=30, bucket_s=5),
        DriftWindow(name="1h", seconds=3600, bucket_s=300),
    ]


class DriftOptions(StrictModel):
    enabled: bool = Field(default=True, description="on when a profile is given")
    profile: Annotated[Path | None, AfterValidator(_resolve)] = None
    profiles: Annotated[dict[str, Path], AfterValidator(_resolve_all)] = Field(
        default_factory=dict, description="a version's own profile, by version name"
    )
    windows: Annotated[list[DriftWindow], Field(min_length=1, max_length=4)] = Field(
        default_factory=_default_windows
    )
    min_count: Annotated[int, Field(ge=50, le=10_000_000)] = 1000
    bins: Annotated[int, Field(ge=2, le=100)] = 10
    psi_warn: Annotated[float, Field(gt=0)] = 0.1
    psi_alert: Annotated[float, Field(gt=0)] = 0.2
    js_warn: Annotated[float, Field(gt=0, le=1)] = 0.1
    js_alert: Annotated[float, Field(gt=0, le=1)] = 0.2
    z: Annotated[float, Field(ge=0, le=10)] = Field(
        default=3.0, description="normal quantile of the one-sided bound judged (3.0: 99.87%)"
    )
    alert_share: Annotated[float, Field(ge=0, lt=1)] = Field(
        default=0.0,
        description="the model drifts when more than this share of its features alert "
        "(0: any one feature)",
    )
    outputs: bool = Field(default=True, description="judge the outputs' drift too")
    evaluate_every_s: Annotated[float, Field(gt=0, le=3600)] = 5.0
    flush_every_s: Annotated[float, Field(gt=0, le=60)] = 0.5
    queue: Annotated[int, Field(ge=16, le=1_000_000)] = Field(
        default=20_000, description="answers waiting to be sketched; beyond it they are dropped"
    )
    queue_rows: Annotated[int, Field(ge=1000, le=100_000_000)] = Field(
        default=1_000_000, description="rows waiting to be sketched (the memory bound)"
    )

    @model_validator(mode="after")
    def _consistent(self) -> DriftOptions:
        if self.psi_warn > self.psi_alert or self.js_warn > self.js_alert:
            raise ValueError("a warn threshold must not be above its alert threshold")
        names = [window.name for window in self.windows]
        if len(set(names)) != len(names):
            raise ValueError(f"window names must be distinct, got {names}")
        return self

    def profile_for(self, version: str) -> Path | None:
        return self.profiles.get(version, self.profile)
