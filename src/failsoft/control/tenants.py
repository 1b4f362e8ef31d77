"""Tenants: API keys and per-tenant quotas, checked first at admission.

A tenant is configured with the sha256 of its API key, never the key itself
(``failsoft keys add NAME`` prints a fresh key once, with the YAML to paste).
``Tenants.authenticate`` maps an ``Authorization: Bearer <key>`` header to a
``Tenant``; ``Tenants.admit`` then charges the request against the tenant's
token buckets: one token per request and one per row of the batch.

A bucket holds ``rate x burst_s`` tokens, starts full and refills
continuously, so a tenant may burst to the capacity and sustain the rate.
Every check-and-take is one synchronous call: on the single event loop no
other request can run between the check and the take, so the quotas hold
exactly under any concurrency without a lock. Not thread-safe.

With ``quotas.redis_url`` set, the buckets are leased from Redis and shared
by every gateway (``quota_leases.py``); the contract is the same.

Per-tenant state exists only for configured tenants: an unknown key is
refused before anything is stored for it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Protocol

from pydantic import Field, field_validator, model_validator

from failsoft._options import StrictModel
from failsoft.clock import Clock
from failsoft.errors import BadRequest, QuotaExceeded, Unauthorized
from failsoft.priority import Priority

KEY_PREFIX = "fsk_"
_KEY_BYTES = 32
_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")
_TENANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_SEND_KEY = "send Authorization: Bearer <tenant key>"

# A shortfall the bucket refills within this many seconds counts as available,
# so a caller who waits exactly the returned delay is admitted despite float
# rounding in the clock arithmetic. It lets through at most rate x 1 ns extra.
_SLACK_S = 1e-9

Rate = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class TenantConfig(StrictModel):
    key_sha256: str
    requests_per_s: Rate | None = None
    rows_per_s: Rate | None = None
    burst_s: Annotated[float, Field(gt=0, le=3600, allow_inf_nan=False)] = 1.0
    priority: Priority = Priority.DEFAULT

    @field_validator("key_sha256")
    @classmethod
    def _is_a_digest(cls, value: str) -> str:
        if value.startswith(KEY_PREFIX):
            raise ValueError(
                "this is an API key, not its hash: store only its sha256 "
                "(`failsoft keys add NAME` prints both)"
            )
        digest = value.lower()
        if not _HEX_SHA256.fullmatch(digest):
            raise ValueError("must be the sha256 of the API key as 64 hex digits")
        return digest

    @model_validator(mode="after")
    def _buckets_hold_a_request(self) -> TenantConfig:
        for field in ("requests_per_s", "rows_per_s"):
            rate = getattr(self, field)
            if rate is not None and rate * self.burst_s < 1:
                raise ValueError(
                    f"{field} x burst_s = {_number(rate * self.burst_s)} must be >= 1, "
                    "or no request could ever pass; raise burst_s"
                )
        return self


def new_key() -> str:
    """A fresh API key: the prefix and 32 random bytes, urlsafe base64 without padding."""
    random_part = base64.urlsafe_b64encode(secrets.token_bytes(_KEY_BYTES)).rstrip(b"=")
    return KEY_PREFIX + random_part.decode("ascii")


def key_digest(key: str) -> str:
    """The hex sha256 of the key's utf-8 bytes: what the configuration stores."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def key_entry_yaml(name: str, key: str) -> str:
    """The snippet ``failsoft keys add NAME`` prints, to paste under ``tenants:``."""
    if not _TENANT_NAME.fullmatch(name):
        raise ValueError(
            f"tenant name {name!r}: use letters, digits, '_', '.' or '-' "
            "(at most 64, starting with a letter or digit)"
        )
    return (
        f"  # {name}: the API key is shown once, when it is created; only its sha256\n"
        "  # is stored here. Hand the key to the tenant; a lost key is replaced, not recovered.\n"
        f"  {name}:\n"
        f"    key_sha256: {key_digest(key)}\n"
        "    requests_per_s: 100\n"
        "    # rows_per_s: 10000\n"
        "    burst_s: 1.0\n"
        "    priority: default\n"
    )


@dataclass(frozen=True, slots=True)
class Tenant:
    name: str
    priority: Priority


class Bucket(Protocol):
    """What admission needs of a quota: a ``TokenBucket``, or one leased from a shared
    store (``quota_leases.LeasedBucket``)."""

    @property
    def rate(self) -> float: ...
    @property
    def capacity(self) -> float: ...
    @property
    def tokens(self) -> float: ...
    def fits(self, amount: float) -> bool: ...
    def wait(self, amount: float) -> float: ...
    def take(self, amount: float) -> float: ...
    def give_back(self, amount: float) -> None: ...


# (tenant, "requests" or "rows", rate, capacity) -> the bucket to charge
BucketFactory = Callable[[str, str, float, float], Bucket]


class TokenBucket:
    """``capacity`` tokens refilled at ``rate`` per second, starting full (or at ``tokens``).

    ``take`` checks and removes in one synchronous call; with a single event
    loop no other request can interleave between the two, so concurrent
    requests never overdraw the bucket.
    """

    __slots__ = ("_capacity", "_clock", "_rate", "_tokens", "_updated")

    def __init__(
        self, rate: float, capacity: float, clock: Clock, tokens: float | None = None
    ) -> None:
        if not (0 < rate < math.inf and 0 < capacity < math.inf):
            raise ValueError(f"rate ({rate}) and capacity ({capacity}) must be positive and finite")
        self._rate = rate
        self._capacity = capacity
        self._clock = clock
        self._tokens = capacity if tokens is None else min(capacity, tokens)
        self._updated = clock.now()

    @property
    def rate(self) -> float:
        return self._rate

    @property
    def capacity(self) -> float:
        return self._capacity

    @property
    def tokens(self) -> float:
        """Tokens available now."""
        self._refill()
        return max(0.0, self._tokens)

    def fits(self, amount: float) -> bool:
        """Whether ``amount`` can ever be taken: it is at most the capacity."""
        return amount <= self._capacity + self._rate * _SLACK_S

    def wait(self, amount: float) -> float:
        """Seconds until ``amount`` is available (0.0 if now, inf if never); takes nothing."""
        if amount < 0:
            raise ValueError(f"amount must be >= 0, got {amount}")
        if not self.fits(amount):
            return math.inf
        self._refill()
        seconds = (amount - self._tokens) / self._rate
        return 0.0 if seconds <= _SLACK_S else seconds

    def take(self, amount: float) -> float:
        """Remove ``amount`` and return 0.0, or remove nothing and return ``wait(amount)``."""
        seconds = self.wait(amount)
        if seconds == 0.0:
            # May dip below zero by the slack; the next refill pays it back.
            self._tokens -= amount
        return seconds

    def give_back(self, amount: float) -> None:
        """Refund tokens taken for a request that was refused later (capped at capacity)."""
        self._refill()
        self._tokens = min(self._capacity, self._tokens + amount)

    def _refill(self) -> None:
        now = self._clock.now()
        elapsed = now - self._updated
        if elapsed > 0:
            self._tokens = min(self._capacity, self._tokens + elapsed * self._rate)
            self._updated = now


class _TenantState:
    __slots__ = ("admitted", "config", "digest", "rejected", "requests", "rows", "tenant")

    def __init__(self, name: str, config: TenantConfig, buckets: BucketFactory) -> None:
        self.config = config
        self.tenant = Tenant(name, config.priority)
        self.digest = config.key_sha256
        burst = config.burst_s
        rate = config.requests_per_s
        self.requests = None if rate is None else buckets(name, "requests", rate, rate * burst)
        rate = config.rows_per_s
        self.rows = None if rate is None else buckets(name, "rows", rate, rate * burst)
        self.admitted = 0
        self.rejected = 0


class Tenants:
    """The configured tenants: authenticate a request, then admit it against the quotas."""

    __slots__ = ("_by_digest", "_by_name", "_require_keys")

    def __init__(
        self,
        tenants: Mapping[str, TenantConfig],
        require_keys: bool,
        clock: Clock,
        previous: Tenants | None = None,
        buckets: BucketFactory | None = None,
    ) -> None:
        """``previous``: tenants served before a reconfiguration; an unchanged tenant keeps
        its buckets and counts (a change of configuration is no reset of a quota).
        ``buckets``: makes each quota's bucket; default a local ``TokenBucket``."""
        self._require_keys = require_keys
        if buckets is None:

            def buckets(_tenant: str, _kind: str, rate: float, capacity: float) -> Bucket:
                return TokenBucket(rate, capacity, clock)

        self._by_name: dict[str, _TenantState] = {}
        self._by_digest: dict[str, _TenantState] = {}
        for name, config in tenants.items():
            kept = previous._by_name.get(name) if previous is not None else None
            state = (
                kept
                if kept is not None and kept.config == config
                else _TenantState(name, config, buckets)
            )
            twin = self._by_digest.get(state.digest)
            if twin is not None:
                raise ValueError(
                    f"tenants {twin.tenant.name!r} and {name!r} have the same key_sha256: "
                    "give each tenant its own key"
                )
            self._by_name[name] = self._by_digest[state.digest] = state

    @property
    def require_keys(self) -> bool:
        return self._require_keys

    def authenticate(self, authorization: str | None) -> Tenant | None:
        """The tenant of an ``Authorization`` header, or None for an anonymous request.

        No header is anonymous only when keys are not required. A header that
        is malformed or carries an unknown key is always refused.
        """
        if authorization is None:
            if self._require_keys:
                raise Unauthorized(f"an API key is required: {_SEND_KEY}")
            return None
        digest = key_digest(_bearer_key(authorization))
        # The dict finds the candidate in constant time; the final comparison
        # is constant-time too, so response timing says nothing about the digest.
        state = self._by_digest.get(digest)
        if state is None or not hmac.compare_digest(state.digest, digest):
            raise Unauthorized(f"unknown API key: {_SEND_KEY}")
        return state.tenant

    def admit(self, tenant: Tenant | None, rows: int) -> None:
        """Charge one request of ``rows`` rows to the tenant, or raise without charging.

        Raises ``BadRequest`` for a batch larger than the row bucket could ever
        hold, ``QuotaExceeded`` with the seconds until the request would pass
        when a bucket is short. Anonymous requests (None) have no quota.
        """
        if tenant is None:
            return
        if rows < 0:
            raise ValueError(f"rows must be >= 0, got {rows}")
        state = self._state(tenant)
        try:
            _charge(state, rows)
        except (BadRequest, QuotaExceeded):
            state.rejected += 1
            raise
        state.admitted += 1

    def admit_request(self, tenant: Tenant | None) -> None:
        """Charge one request, before its body is read; QuotaExceeded when short.

        The first half of ``admit``: a tenant over its request quota costs no
        decoding. ``admit_rows`` charges the rows once the batch is known.
        """
        if tenant is None:
            return
        state = self._state(tenant)
        requests = state.requests
        if requests is None:
            return
        seconds = requests.take(1)
        if seconds:
            state.rejected += 1
            raise _over(tenant.name, "request", requests, seconds)

    def admit_rows(self, tenant: Tenant | None, rows: int) -> None:
        """Charge the rows of a request ``admit_request`` let in; refunds it when refused."""
        if tenant is None:
            return
        if rows < 0:
            raise ValueError(f"rows must be >= 0, got {rows}")
        state = self._state(tenant)
        row_bucket = state.rows
        try:
            if row_bucket is not None:
                _charge_rows(state.tenant.name, row_bucket, rows)
        except (BadRequest, QuotaExceeded):
            if state.requests is not None:
                state.requests.give_back(1)
            state.rejected += 1
            raise
        state.admitted += 1

    def snapshot(self) -> dict[str, dict[str, float]]:
        """Per tenant: tokens left in each limited bucket, and admitted and rejected counts."""
        return {name: _snapshot(state) for name, state in self._by_name.items()}

    def _state(self, tenant: Tenant) -> _TenantState:
        state = self._by_name.get(tenant.name)
        if state is None:
            raise ValueError(f"tenant {tenant.name!r} is not one of these tenants")
        return state


def _bearer_key(authorization: str) -> str:
    # Never echo the header: a key sent without its scheme would land in the message.
    parts = authorization.split()
    if len(parts) != 2 or parts[0].lower() != "bearer":
        raise Unauthorized(f"malformed Authorization header: {_SEND_KEY}")
    return parts[1]


def _charge(state: _TenantState, rows: int) -> None:
    requests, row_bucket, name = state.requests, state.rows, state.tenant.name
    if row_bucket is not None and not row_bucket.fits(rows):
        raise _too_big(name, row_bucket, rows)
    if requests is not None:
        seconds = requests.take(1)
        if seconds:
            # Report when both buckets will have enough, not only the first.
            rows_wait = row_bucket.wait(rows) if row_bucket is not None else 0.0
            raise _over(name, "request", requests, max(seconds, rows_wait))
    if row_bucket is not None:
        try:
            _charge_rows(name, row_bucket, rows)
        except QuotaExceeded:
            if requests is not None:
                requests.give_back(1)
            raise


def _charge_rows(name: str, bucket: Bucket, rows: int) -> None:
    if not bucket.fits(rows):
        raise _too_big(name, bucket, rows)
    seconds = bucket.take(rows)
    if seconds:
        raise _over(name, "row", bucket, seconds)


def _too_big(name: str, bucket: Bucket, rows: int) -> BadRequest:
    return BadRequest(
        f"a batch of {rows} rows exceeds tenant {name!r}'s burst of "
        f"{_number(bucket.capacity)} rows (rows_per_s x burst_s): split the batch"
    )


def _over(name: str, what: str, bucket: Bucket, seconds: float) -> QuotaExceeded:
    return QuotaExceeded(
        f"tenant {name!r} is over its {what} quota ({_number(bucket.rate)}/s)",
        retry_after_s=seconds,
    )


def _snapshot(state: _TenantState) -> dict[str, float]:
    snapshot: dict[str, float] = {}
    if state.requests is not None:
        snapshot["requests_left"] = state.requests.tokens
    if state.rows is not None:
        snapshot["rows_left"] = state.rows.tokens
    snapshot["admitted"] = state.admitted
    snapshot["rejected"] = state.rejected
    return snapshot


def _number(value: float) -> str:
    return f"{value:.0f}" if value.is_integer() else f"{value:g}"
