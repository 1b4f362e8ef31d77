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

The window is a ring of ``_BUCKETS + 1`` counters, each ``window / _BUCKETS``
seconds wide. The budget counts the current, partly filled bucket plus the
``_BUCKETS`` before it, so the counted span is at least one window long and
less than ``window + window / _BUCKETS``. The guarantee this gives (and the
tests check): the retries in the ``window`` seconds up to any retry never
exceed ``ratio`` times the requests in the ``window + window / _BUCKETS``
seconds up to it, plus the floor allowance. The only slack is that a request
keeps counting for up to one bucket longer than the window. Time comes only
from the injected clock; the budget is meant for one event loop and is not
thread-safe.

Between attempts the caller waits ``backoff_delay``: AWS's "full jitter",
a uniform draw from zero up to an exponentially growing, capped ceiling.
Drawing from zero, rather than adding a little noise to a fixed delay, keeps
clients that failed together from retrying together.
"""

from __future__ import annotations

import math
import random
from typing import Annotated

from pydantic import Field, model_validator

from failsoft._options import StrictModel
from failsoft.clock import Clock
from failsoft.errors import FailureClass

BudgetRatio = Annotated[float, Field(ge=0.0, le=1.0)]
BudgetFloor = Annotated[float, Field(ge=0.0)]
BudgetWindow = Annotated[float, Field(gt=0.0, le=600.0)]

_BUCKETS = 10
_SLOTS = _BUCKETS + 1
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
    retry_on: frozenset[FailureClass] = frozenset({FailureClass.INFRA, FailureClass.LOGIC})

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

    __slots__ = (
        "_bucket",
        "_clock",
        "_floor",
        "_ratio",
        "_request_counts",
        "_requests",
        "_retries",
        "_retry_counts",
        "_width",
    )

    def __init__(self, ratio: float, min_per_s: float, window_s: float, clock: Clock) -> None:
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"ratio must be within [0, 1], got {ratio}")
        if not min_per_s >= 0.0:
            raise ValueError(f"min_per_s must be >= 0, got {min_per_s}")
        if not 0.0 < window_s < math.inf:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        self._ratio = ratio
        self._floor = min_per_s * window_s
        self._width = window_s / _BUCKETS
        self._clock = clock
        self._request_counts = [0] * _SLOTS
        self._retry_counts = [0] * _SLOTS
        self._requests = 0
        self._retries = 0
        self._bucket = self._bucket_now()

    def deposit(self) -> None:
        """Record that one request arrived."""
        slot = self._rotate()
        self._request_counts[slot] += 1
        self._requests += 1

    def try_withdraw(self) -> bool:
        """Whether one retry may happen now; if so, it is counted."""
        slot = self._rotate()
        if self._retries + 1 > self._allowance() + _ROUNDING:
            return False
        self._retry_counts[slot] += 1
        self._retries += 1
        return True

    def snapshot(self) -> dict[str, float]:
        """Requests and retries in the window, and how many retries are available now."""
        self._rotate()
        available = math.floor(self._allowance() + _ROUNDING) - self._retries
        return {
            "requests": float(self._requests),
            "retries": float(self._retries),
            "available": float(max(0, available)),
        }

    def _allowance(self) -> float:
        return self._ratio * self._requests + self._floor

    def _bucket_now(self) -> int:
        return math.floor(self._clock.now() / self._width)

    def _rotate(self) -> int:
        """Clear the buckets that left the window; return the current bucket's slot."""
        bucket = self._bucket_now()
        passed = bucket - self._bucket
        # A clock that steps back (passed < 0) keeps counting into the current bucket.
        if passed >= _SLOTS:
            self._clear()
        elif passed > 0:
            for gone in range(self._bucket + 1, bucket + 1):
                self._clear_slot(gone % _SLOTS)
        if passed > 0:
            self._bucket = bucket
        return self._bucket % _SLOTS

    def _clear_slot(self, slot: int) -> None:
        self._requests -= self._request_counts[slot]
        self._retries -= self._retry_counts[slot]
        self._request_counts[slot] = 0
        self._retry_counts[slot] = 0

    def _clear(self) -> None:
        self._request_counts = [0] * _SLOTS
        self._retry_counts = [0] * _SLOTS
        self._requests = 0
        self._retries = 0


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
