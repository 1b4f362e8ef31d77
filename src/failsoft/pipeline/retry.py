"""Retries: options, a retry budget shared per model version, and jittered backoff.

A retry turns a transient failure into a success. Retries without a limit
turn an overload into a retry storm: every failing request becomes
``max_attempts`` calls at the moment the replicas can least afford them. So
every retry draws from a budget shared by all requests of one model version
(Finagle's ``RetryBudget``, Linkerd's retry budgets). Over a sliding window
a retry is allowed only while::

    retries <= budget_ratio * requests + budget_min_per_s * budget_window_s

The ratio caps the extra load at a fixed share (0.2: at most 20% more calls
than requests). The floor keeps retries possible at low traffic, where a
ratio alone would refuse most of them.

The window is ``window.SlidingCounts``: a ring of buckets, each a tenth of
the window, counting the current partly filled bucket plus the ten before
it, so the counted span is at least one window long and less than 1.1
windows. The guarantee this gives (and the tests check): the retries in
the ``window`` seconds up to any retry never exceed ``ratio`` times the
requests in the 1.1 windows up to it, plus the floor allowance. The only
slack is that a request keeps counting for up to one bucket longer than the
window. Time comes only from the injected clock; the budget is meant for
one event loop and is not thread-safe.

Between attempts the caller waits ``backoff_delay``: AWS's "full jitter",
a uniform draw from zero up to an exponentially growing, capped ceiling.
Drawing from zero, rather than adding a little noise to a fixed delay, keeps
clients that failed together from retrying together.
"""

from __future__ import annotations

import math
import random
from typing import Annotated

from pydantic import Field, field_validator, model_validator

from failsoft._options import StrictModel
from failsoft.clock import Clock
from failsoft.errors import LEGACY_CLASSES, FailureClass
from failsoft.pipeline.window import SlidingCounts

BudgetRatio = Annotated[float, Field(ge=0.0, le=1.0)]
BudgetFloor = Annotated[float, Field(ge=0.0)]
BudgetWindow = Annotated[float, Field(gt=0.0, le=600.0)]

# ratio * requests is a float; 0.29 * 100 is 28.999999999999996, which must
# still allow the 29th retry.
_ROUNDING = 1e-9
# 2.0 ** 1024 overflows; by then any sane ceiling has long been reached.
_MAX_DOUBLINGS = 1000


class RetryOptions(StrictModel):
    enabled: bool = True
    max_attempts: Annotated[int, Field(ge=1, le=10)] = 3  # the first attempt included
    backoff_base_ms: Annotated[float, Field(ge=0.0)] = 2.0
    backoff_max_ms: Annotated[float, Field(ge=0.0)] = 50.0
    budget_ratio: BudgetRatio = 0.2
    budget_min_per_s: BudgetFloor = 10.0
    budget_window_s: BudgetWindow = 10.0
    retry_on: frozenset[FailureClass] = Field(
        default=frozenset({FailureClass.REPLICA}),
        description="failure classes worth another attempt; only replica failures are "
        "(infra and logic, the names of earlier releases, mean replica)",
    )

    @field_validator("retry_on", mode="before")
    @classmethod
    def _legacy_names(cls, value: object) -> object:
        if isinstance(value, list | tuple | set | frozenset):
            return [
                LEGACY_CLASSES.get(item, item) if isinstance(item, str) else item for item in value
            ]
        return value

    @field_validator("retry_on")
    @classmethod
    def _replica_only(cls, value: frozenset[FailureClass]) -> frozenset[FailureClass]:
        others = sorted(value - {FailureClass.REPLICA})
        if others:
            raise ValueError(
                f"only replica failures can be retried; {', '.join(others)} would fail again"
            )
        return value

    @model_validator(mode="after")
    def _backoff_range(self) -> RetryOptions:
        if self.backoff_max_ms < self.backoff_base_ms:
            raise ValueError(
                f"backoff_max_ms ({self.backoff_max_ms}) must be at least "
                f"backoff_base_ms ({self.backoff_base_ms})"
            )
        return self


class RetryBudget:
    """Shared by all requests of one model version: how many retries may happen now."""

    __slots__ = ("_counts", "_floor", "_ratio")

    def __init__(self, ratio: float, min_per_s: float, window_s: float, clock: Clock) -> None:
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"ratio must be within [0, 1], got {ratio}")
        if not min_per_s >= 0.0:
            raise ValueError(f"min_per_s must be >= 0, got {min_per_s}")
        self._ratio = ratio
        self._floor = min_per_s * window_s
        self._counts = SlidingCounts(window_s, clock)  # first: requests, second: retries

    def deposit(self) -> None:
        """Record that one request arrived."""
        self._counts.add_first()

    def try_withdraw(self) -> bool:
        """Whether one retry may happen now; if so, it is counted."""
        counts = self._counts
        counts.rotate()
        if counts.second + 1 > self._allowance() + _ROUNDING:
            return False
        counts.add_second()
        return True

    def snapshot(self) -> dict[str, float]:
        """Requests and retries in the window, and how many retries are available now."""
        counts = self._counts
        counts.rotate()
        available = math.floor(self._allowance() + _ROUNDING) - counts.second
        return {
            "requests": float(counts.first),
            "retries": float(counts.second),
            "available": float(max(0, available)),
        }

    def _allowance(self) -> float:
        return self._ratio * self._counts.first + self._floor


def retry_budget(options: RetryOptions, clock: Clock) -> RetryBudget:
    """The budget the options describe."""
    return RetryBudget(
        options.budget_ratio, options.budget_min_per_s, options.budget_window_s, clock
    )


def backoff_delay(retry: int, base_s: float, max_s: float, rng: random.Random) -> float:
    """Seconds to wait before retry number ``retry`` (1 for the first retry).

    Full jitter: uniform in ``[0, min(max_s, base_s * 2 ** (retry - 1))]``.
    """
    if retry < 1:
        raise ValueError(f"retry counts from 1 (the first retry), got {retry}")
    if not (base_s >= 0.0 and max_s >= 0.0):
        raise ValueError(f"base_s and max_s must be >= 0, got {base_s} and {max_s}")
    ceiling = min(max_s, base_s * 2.0 ** min(retry - 1, _MAX_DOUBLINGS))
    return rng.uniform(0.0, ceiling)
