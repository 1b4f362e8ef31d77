"""The ``jobs:`` section of the configuration (read at start-up; a change needs a restart)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, ValidationInfo, model_validator

from failsoft._options import StrictModel


def _relative_to_config(value: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base_dir")
    return (Path(base) / value).resolve() if base is not None and not value.is_absolute() else value


class JobsOptions(StrictModel):
    enabled: bool = Field(
        default=True, description="accept `Prefer: respond-async`; off: such requests run inline"
    )
    queue: Literal["sqlite", "redis"] = Field(
        default="sqlite", description="sqlite (embedded, one file) or redis (Redis Streams)"
    )
    path: Annotated[Path, AfterValidator(_relative_to_config)] | None = Field(
        default=None,
        description="the SQLite queue's file; default: jobs.sqlite3 in the store's data_dir",
    )
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        description="the Redis holding the streams; it must have appendonly yes",
    )
    redis_prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:\-]{1,64}$")] = "failsoft:jobs"
    keep_s: Annotated[float, Field(gt=0, le=30 * 86_400)] = Field(
        default=86_400.0,
        description="a finished job, its result and its idempotency key are kept this long",
    )
    lease_s: Annotated[float, Field(ge=0.2, le=3600)] = Field(
        default=30.0,
        description="a worker's hold on a job; renewed while it runs, reclaimed once it lapses",
    )
    max_attempts: Annotated[int, Field(ge=1, le=100)] = Field(
        default=5, description="attempts before a job is dead-lettered"
    )
    backoff_s: Annotated[float, Field(ge=0, le=3600)] = Field(
        default=0.5, description="the first retry's delay; doubles per attempt"
    )
    backoff_max_s: Annotated[float, Field(ge=0, le=86_400)] = 30.0
    concurrency: Annotated[int, Field(ge=1, le=1024)] = Field(
        default=8, description="jobs one gateway runs at once (each also needs a spare slot)"
    )
    max_pending: Annotated[int, Field(ge=1, le=100_000_000)] = Field(
        default=1_000_000, description="queued and running jobs; more are refused with 503"
    )
    poll_s: Annotated[float, Field(gt=0, le=60)] = Field(
        default=0.25, description="how often an idle worker looks for jobs other gateways queued"
    )
    fsync: bool = Field(
        default=True,
        description="SQLite: fsync every commit (synchronous=FULL); off survives a process "
        "crash but not a power cut",
    )

    @model_validator(mode="after")
    def _consistent(self) -> JobsOptions:
        if self.backoff_max_s < self.backoff_s:
            raise ValueError("jobs.backoff_max_s must be at least jobs.backoff_s")
        if self.queue == "redis" and not self.redis_url.startswith(
            ("redis://", "rediss://", "unix://")
        ):
            raise ValueError("jobs.redis_url must start with redis://, rediss:// or unix://")
        return self

    def backoff(self, attempts: int) -> float:
        """The delay before the next attempt, after ``attempts`` failed ones."""
        return float(min(self.backoff_max_s, self.backoff_s * 2 ** max(0, attempts - 1)))
