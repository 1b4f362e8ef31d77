"""The ``quotas:`` section: tenant quotas shared by gateways through Redis (off by default).

Apart from ``quota_leases.py`` so that reading a configuration loads no Redis client.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from failsoft._options import StrictModel

__all__ = ["QuotaOptions"]


class QuotaOptions(StrictModel):
    redis_url: str | None = Field(
        default=None,
        description="share tenant quotas between gateways through this Redis "
        "(redis://host:port/db); unset: each gateway limits on its own",
    )
    key_prefix: str = Field(default="failsoft:quota:", min_length=1, max_length=200)
    lease: Annotated[float, Field(ge=1, allow_inf_nan=False)] | None = Field(
        default=None,
        description="tokens leased at a time; default 10% of rate x burst_s (at least 1). "
        "Bounds the excess over the quota: at most one lease per gateway",
    )
    refill_s: Annotated[float, Field(gt=0, le=10)] = Field(
        default=0.02, description="at most one top-up round trip to Redis per this period"
    )
    deadline_s: Annotated[float, Field(gt=0, le=10)] = Field(
        default=0.25, description="a Redis call slower than this counts as Redis being down"
    )
    probe_s: Annotated[float, Field(gt=0, le=300)] = Field(
        default=1.0, description="while on local limits, try Redis again this often"
    )
    instances: Annotated[int, Field(ge=1, le=10_000)] | None = Field(
        default=None,
        description="gateways sharing the quotas, for the local share when Redis is down; "
        "default: the count last seen in Redis",
    )

    @property
    def enabled(self) -> bool:
        return self.redis_url is not None
