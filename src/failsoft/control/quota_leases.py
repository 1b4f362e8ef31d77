"""Tenant quotas shared by several gateways through Redis, without Redis on the request path.

The true bucket of each tenant quota lives in Redis (a hash: tokens, time).
A gateway does not ask Redis per request: it leases a *slice* of tokens
(``lease`` tokens, default 10% of rate x burst) with one atomic Lua script
that refills the shared bucket by the time elapsed on Redis's own clock
(``TIME``) and grants up to the tokens asked for. Requests spend the local
slice synchronously, like a ``TokenBucket``; when a slice falls under half
a lease, a background task tops it up (every hungry bucket in one pipelined
round trip, at most one round per ``refill_s``).

Tokens are granted before they are spent, so the gateways together never
admit more than Redis granted: the only excess over a single bucket is
slices granted earlier and spent later, at most ``lease`` per instance.

Every Redis call has a deadline (``deadline_s``). When a round fails, each
bucket falls back to a local ``TokenBucket`` with this instance's share of
the quota (rate / live instances: ``instances`` if configured, else the
count of gateways seen in Redis before it failed; 1 if it never answered), starting from what was
left of its slice, so the fall-back is no burst. The gauge
``failsoft_quota_mode{mode="redis|local"}`` and a log line say so. Every
``probe_s`` it tries Redis again; a bucket returns to Redis with its first
new lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time
from collections.abc import Callable
from typing import Any

from redis.exceptions import RedisError

from failsoft.clock import Clock
from failsoft.control.quota_options import QuotaOptions
from failsoft.control.tenants import Bucket, TokenBucket
from failsoft.waiting import wait_at_most

__all__ = ["LEASE_SCRIPT", "LeasedBucket", "QuotaLeases", "QuotaOptions"]

log = logging.getLogger("failsoft.control")

REDIS = "redis"
LOCAL = "local"
MAX_BATCH = 1000  # buckets topped up per round trip; the rest wait for the next round
MEMBER_TTL_S = 5.0  # a gateway not seen in Redis for this long no longer counts
_SLACK_S = 1e-9
_TIMER_SLACK_S = 1e-3  # an event loop's timer may fire a hair before its time

# KEYS[1] the bucket. ARGV: rate, capacity, want, ttl_ms, [now in seconds: tests only].
# A negative want gives tokens back (a gateway stopping), up to the capacity.
# Returns {granted (integer), tokens left (string: Lua numbers would be truncated)}.
LEASE_SCRIPT = """
local rate = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local now
if ARGV[5] then
  now = tonumber(ARGV[5])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = capacity
  ts = now
end
if now > ts then
  tokens = tokens + (now - ts) * rate
  ts = now
end
if tokens > capacity then tokens = capacity end
local grant = math.floor(math.min(want, tokens))
tokens = tokens - grant
if tokens > capacity then tokens = capacity end
local left = string.format('%.17g', tokens)
redis.call('HSET', KEYS[1], 'tokens', left, 'ts', string.format('%.6f', ts))
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return {grant, left}
"""


class LeasedBucket:
    """A tenant's quota spent from a leased slice (or a local share while Redis is down).

    Same contract as ``TokenBucket``: every call is synchronous and never
    touches Redis; ``take`` asks the owner for a top-up when the slice runs low.
    """

    __slots__ = (
        "_clock", "_local", "_owner", "_slice", "_want", "capacity", "key", "lease",
        "not_before", "rate",
    )  # fmt: skip

    def __init__(
        self, key: str, rate: float, capacity: float, lease: float, owner: QuotaLeases
    ) -> None:
        self.key = key
        self.rate = rate
        self.capacity = capacity
        self.lease = max(1.0, min(lease, capacity))
        self._owner = owner
        self._clock = owner.clock
        self._slice = 0.0
        self._want = 0.0  # the largest amount refused since the last lease
        self._local: TokenBucket | None = None
        self.not_before = -math.inf  # asked in vain: no new lease before this time

    @property
    def mode(self) -> str:
        return LOCAL if self._local is not None else REDIS

    @property
    def tokens(self) -> float:
        return self._local.tokens if self._local is not None else self._slice

    def fits(self, amount: float) -> bool:
        return amount <= self.capacity + self.rate * _SLACK_S

    def wait(self, amount: float) -> float:
        if self._local is not None:
            if self.fits(amount) and not self._local.fits(amount):
                # More than this gateway's share could ever hold: only after Redis is back.
                return self._owner.options.probe_s
            return self._local.wait(amount)
        if not self.fits(amount):
            return math.inf
        if amount <= self._slice:
            return 0.0
        # The shared refill is split among the gateways; the next lease comes no sooner.
        share = self.rate / self._owner.instances
        return max(self._owner.options.refill_s, (amount - self._slice) / share)

    def take(self, amount: float) -> float:
        if self._local is not None:
            seconds = self.wait(amount)
            return self._local.take(amount) if seconds == 0.0 else seconds
        if self.fits(amount) and amount <= self._slice:
            self._slice -= amount
            if self._slice < self.lease / 2:
                self._owner.hungry(self)
            return 0.0
        seconds = self.wait(amount)
        if seconds != math.inf:
            self._want = max(self._want, amount)
            self._owner.hungry(self)
        return seconds

    def give_back(self, amount: float) -> None:
        if self._local is not None:
            self._local.give_back(amount)
        else:
            self._slice = min(self.capacity, self._slice + amount)

    def wanted(self) -> float:
        """Tokens to ask Redis for: up to a lease, or the largest refused amount."""
        return max(0.0, max(self.lease, self._want) - self._slice)

    def granted(self, tokens: float) -> None:
        """A lease arrived: spend from Redis's tokens from now on."""
        self._local = None
        self._slice += tokens
        if self._slice >= self._want:
            self._want = 0.0

    def go_local(self, instances: int) -> None:
        """Redis is down: limit to this gateway's share, starting from what the slice held."""
        if self._local is not None:
            return
        # At least one token, so a request can pass whatever the number of gateways.
        capacity = max(1.0, self.capacity / instances)
        self._local = TokenBucket(self.rate / instances, capacity, self._clock, tokens=self._slice)
        self._slice = 0.0
        self._want = 0.0


class QuotaLeases:
    """The buckets of this gateway's tenants and the background task that leases for them."""

    def __init__(
        self,
        options: QuotaOptions,
        clock: Clock,
        *,
        on_mode: Callable[[str], None] | None = None,
        client: Any = None,
        instance_id: str | None = None,
        redis_clock: Callable[[], float] | None = None,
    ) -> None:
        """``redis_clock``: tests only, the time the lease script refills by (else Redis TIME)."""
        if options.redis_url is None and client is None:
            raise ValueError("quotas.redis_url is not set")
        self.options = options
        self.clock = clock
        self.id = instance_id or secrets.token_hex(6)
        self._redis_clock = redis_clock
        self._client = client
        self._script: Any = None
        self._on_mode = on_mode
        self._buckets: dict[str, LeasedBucket] = {}
        self._hungry: dict[str, LeasedBucket] = {}  # bounded by the buckets
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._seen_instances = 1
        self.mode = REDIS
        self.rounds = 0  # round trips that reached Redis
        self.failures = 0  # round trips that did not
        if on_mode is not None:
            on_mode(REDIS)

    @property
    def instances(self) -> int:
        configured = self.options.instances
        return configured if configured is not None else max(1, self._seen_instances)

    def bucket(self, tenant: str, kind: str, rate: float, capacity: float) -> Bucket:
        """A ``BucketFactory`` for ``Tenants``: the tenant's quota, leased from Redis."""
        key = f"{self.options.key_prefix}{tenant}:{kind}"
        lease = self.options.lease if self.options.lease is not None else 0.1 * capacity
        bucket = LeasedBucket(key, rate, capacity, lease, self)
        if self.mode == LOCAL:
            bucket.go_local(self.instances)
        self._buckets[key] = bucket  # a reconfigured tenant replaces its old bucket
        self.hungry(bucket)  # lease ahead, so the first request finds tokens
        return bucket

    def hungry(self, bucket: LeasedBucket) -> None:
        if self._buckets.get(bucket.key) is not bucket:
            return  # replaced by a reconfiguration
        if self.clock.now() < bucket.not_before - _TIMER_SLACK_S:
            return  # asked in vain just now; a timer asks again
        self._hungry[bucket.key] = bucket
        if self.mode == REDIS:
            self._wake.set()

    def start(self) -> None:
        """Begin leasing (call on the running event loop)."""
        if self._client is None:
            import redis.asyncio as aioredis

            deadline = self.options.deadline_s
            self._client = aioredis.Redis.from_url(
                self.options.redis_url or "",
                socket_timeout=deadline,
                socket_connect_timeout=deadline,
                retry_on_timeout=False,
            )
        self._script = self._client.register_script(LEASE_SCRIPT)
        self._task = asyncio.ensure_future(self.run())

    async def close(self) -> None:
        """Stop leasing and hand the unspent slices back (within one deadline)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._client is not None and self.mode == REDIS:
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                await self.give_back()
        if self._client is not None:
            with contextlib.suppress(Exception):  # closing a dead connection
                await self._client.aclose()

    async def run(self) -> None:
        """Top up hungry slices until cancelled; probe Redis while it is down."""
        options = self.options
        while True:
            if self.mode == LOCAL:
                await asyncio.sleep(options.probe_s)
                for bucket in self._buckets.values():  # every bucket back on Redis
                    self._hungry[bucket.key] = bucket
            else:
                with contextlib.suppress(TimeoutError):
                    # Idle, a round still comes every second: it counts this gateway in.
                    await wait_at_most(self._wake.wait(), 1.0)
            self._wake.clear()
            await self.round()
            await asyncio.sleep(options.refill_s)

    async def round(self) -> bool:
        """One pipelined round trip: count this gateway in, lease for hungry buckets."""
        batch: list[LeasedBucket] = []
        while self._hungry and len(batch) < MAX_BATCH:
            key = next(iter(self._hungry))
            batch.append(self._hungry.pop(key))
        members = self.options.key_prefix + "instances"
        at = self._redis_clock() if self._redis_clock is not None else None
        now = time.time()
        try:
            async with asyncio.timeout(self.options.deadline_s):
                pipe = self._client.pipeline(transaction=False)
                pipe.zadd(members, {self.id: now})
                pipe.zremrangebyscore(members, "-inf", now - MEMBER_TTL_S)
                pipe.zcard(members)
                pipe.pexpire(members, int(MEMBER_TTL_S * 2000))
                for bucket in batch:
                    await self._script(
                        keys=[bucket.key],
                        args=_args(bucket.rate, bucket.capacity, bucket.wanted(), now=at),
                        client=pipe,
                    )
                results = await pipe.execute()
        except (RedisError, OSError, TimeoutError) as error:
            for bucket in batch:
                self._hungry.setdefault(bucket.key, bucket)
            self.failures += 1
            self._fall_back(error)
            return False
        self.rounds += 1
        self._seen_instances = int(results[2])
        for bucket, (grant, _left) in zip(batch, results[4:], strict=True):
            if int(grant) == 0 and bucket.wanted() > 0:
                self._back_off(bucket)
            bucket.granted(float(grant))
        if self.mode == LOCAL:
            self.mode = REDIS
            log.info("quota leases back on Redis", extra={"instances": self.instances})
            if self._on_mode is not None:
                self._on_mode(REDIS)
        return True

    def _back_off(self, bucket: LeasedBucket) -> None:
        """The shared bucket is empty: ask again once this gateway's share of the refill
        makes a token, not every ``refill_s`` (a tenant over its quota costs Redis little)."""
        delay = max(self.options.refill_s, self.instances / bucket.rate)
        bucket.not_before = self.clock.now() + delay
        self.clock.call_later(delay, lambda: self.hungry(bucket))

    async def give_back(self) -> int:
        """Return every slice's whole unspent tokens to Redis; how many were returned."""
        held = [b for b in self._buckets.values() if b.mode == REDIS and b.tokens >= 1]
        if not held:
            return 0
        at = self._redis_clock() if self._redis_clock is not None else None
        async with asyncio.timeout(self.options.deadline_s):
            pipe = self._client.pipeline(transaction=False)
            returned = 0
            for bucket in held:
                tokens = math.floor(bucket.tokens)
                returned += tokens
                bucket.granted(-tokens)
                await self._script(
                    keys=[bucket.key],
                    args=_args(bucket.rate, bucket.capacity, -tokens, now=at),
                    client=pipe,
                )
            await pipe.execute()
        return returned

    def _fall_back(self, error: BaseException) -> None:
        if self.mode == LOCAL:
            return
        self.mode = LOCAL
        share = self.instances
        for bucket in self._buckets.values():
            bucket.go_local(share)
        log.warning(
            "quota leases: Redis unreachable, each tenant limited to this gateway's share",
            extra={"instances": share, "error": type(error).__name__},
        )
        if self._on_mode is not None:
            self._on_mode(LOCAL)


def _args(rate: float, capacity: float, want: float, now: float | None = None) -> list[str]:
    # Whole milliseconds: an idle key lives until its bucket would be full again, plus a margin.
    ttl_ms = int(1000 * (capacity / rate + 60))
    args = [repr(rate), repr(capacity), repr(math.ceil(want)), str(ttl_ms)]
    if now is not None:
        args.append(repr(now))
    return args


def open_quota_leases(
    options: QuotaOptions, clock: Clock, gauge: Callable[[float, str], None]
) -> QuotaLeases | None:
    """The gateway's shared quotas when ``quotas.redis_url`` is set; ``gauge(value, mode)``
    receives 1 for the mode in force and 0 for the other."""
    if not options.enabled:
        return None

    def on_mode(mode: str) -> None:
        for each in (REDIS, LOCAL):
            gauge(1.0 if each == mode else 0.0, each)

    return QuotaLeases(options, clock, on_mode=on_mode)
