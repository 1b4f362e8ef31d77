"""Shared tenant quotas: the Lua lease script on an injected clock, and leasing, falling back
and coming back against real Redis servers (the machine's, and one of the test's own)."""

from __future__ import annotations

import math
import os
import secrets
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from failsoft.clock import ManualClock
from failsoft.config import ConfigError, parse_config
from failsoft.control.quota_leases import (
    LEASE_SCRIPT,
    LOCAL,
    REDIS,
    LeasedBucket,
    QuotaLeases,
    QuotaOptions,
    _args,
)
from failsoft.control.tenants import TenantConfig, Tenants, key_digest
from failsoft.drills.jobs_drill import redis_server
from failsoft.errors import QuotaExceeded
from tests._tcp_proxy import TcpProxy

REDIS_URL = os.environ.get("FAILSOFT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
IN_CI = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture
def prefix() -> Iterator[str]:
    """A key prefix of this test's own on the machine's Redis, deleted afterwards."""
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError:
        if IN_CI:
            pytest.fail(f"Redis is not reachable at {REDIS_URL} (CI must run the quota tests)")
        pytest.skip(f"Redis is not reachable at {REDIS_URL}")
    name = f"failsoft-test-quota-{secrets.token_hex(4)}:"
    try:
        yield name
    finally:
        for key in client.scan_iter(match=name + "*"):
            client.delete(key)
        client.close()


@pytest.fixture
def sync_redis() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=2)
    yield client
    client.close()


def lease(
    client: redis.Redis, key: str, rate: float, cap: float, want: float, now: float
) -> tuple[int, float]:
    grant, left = client.eval(LEASE_SCRIPT, 1, key, *_args(rate, cap, want, now))  # type: ignore[misc]
    return int(grant), float(left)


def test_a_new_bucket_starts_full_and_grants_whole_tokens_up_to_the_ask(
    prefix: str, sync_redis: redis.Redis
) -> None:
    key = prefix + "t:requests"
    assert lease(sync_redis, key, 50, 50, 5, now=100.0) == (5, 45.0)
    assert lease(sync_redis, key, 50, 50, 40, now=100.0) == (40, 5.0)
    assert lease(sync_redis, key, 50, 50, 10, now=100.0) == (5, 0.0)  # only what is left
    assert lease(sync_redis, key, 50, 50, 10, now=100.0) == (0, 0.0)


def test_refill_follows_elapsed_time_and_stops_at_capacity(
    prefix: str, sync_redis: redis.Redis
) -> None:
    key = prefix + "t:requests"
    assert lease(sync_redis, key, 50, 50, 50, now=100.0) == (50, 0.0)
    # 0.05 s at 50/s is 2.5 tokens: 2 granted, the half token stays for later.
    assert lease(sync_redis, key, 50, 50, 10, now=100.05) == (2, pytest.approx(0.5))
    assert lease(sync_redis, key, 50, 50, 10, now=100.06) == (1, pytest.approx(0.0))
    assert lease(sync_redis, key, 50, 50, 100, now=200.0) == (50, 0.0)  # capped at 50


def test_a_clock_going_back_adds_nothing_and_the_key_expires_when_idle(
    prefix: str, sync_redis: redis.Redis
) -> None:
    key = prefix + "t:requests"
    assert lease(sync_redis, key, 10, 10, 10, now=100.0) == (10, 0.0)
    assert lease(sync_redis, key, 10, 10, 10, now=99.0) == (0, 0.0)
    assert lease(sync_redis, key, 10, 10, 10, now=100.2) == (2, pytest.approx(0.0))
    ttl_ms = int(sync_redis.pttl(key))  # type: ignore[arg-type]
    assert 60_000 < ttl_ms <= 61_000  # full again after 1 s; kept a minute more


def test_the_script_uses_redis_time_when_no_clock_is_given(
    prefix: str, sync_redis: redis.Redis
) -> None:
    key = prefix + "t:requests"
    grant, left = sync_redis.eval(LEASE_SCRIPT, 1, key, *_args(1000, 1000, 1000))  # type: ignore[misc]
    assert (int(grant), float(left)) == (1000, 0.0)
    seconds, micros = sync_redis.time()  # type: ignore[misc]
    stored = float(sync_redis.hget(key, "ts"))  # type: ignore[arg-type]
    assert abs(stored - (seconds + micros / 1e6)) < 1.0


def options(prefix: str, **extra: object) -> QuotaOptions:
    return QuotaOptions.model_validate(
        {"redis_url": REDIS_URL, "key_prefix": prefix, "deadline_s": 1.0, **extra}
    )


@pytest.fixture
async def leases(prefix: str) -> AsyncIterator[QuotaLeases]:
    modes: list[str] = []
    owner = QuotaLeases(options(prefix), ManualClock(), on_mode=modes.append)
    owner._client = aioredis.Redis.from_url(REDIS_URL, socket_timeout=1.0)
    owner._script = owner._client.register_script(LEASE_SCRIPT)
    yield owner
    await owner._client.aclose()


async def test_requests_spend_the_slice_and_a_round_tops_it_up(leases: QuotaLeases) -> None:
    bucket = leases.bucket("t", "requests", 50.0, 50.0)
    assert isinstance(bucket, LeasedBucket)
    assert bucket.lease == 5.0  # 10% of rate x burst
    assert bucket.take(1) > 0  # nothing leased yet: refused, and the bucket asks for a lease
    assert await leases.round()
    assert bucket.tokens == 5.0
    assert [bucket.take(1) for _ in range(5)] == [0.0] * 5  # no Redis call on the way
    assert bucket.take(1) > 0
    assert await leases.round()
    assert bucket.tokens == 5.0
    assert leases.instances == 1  # this gateway counted itself in


async def test_two_gateways_share_one_bucket(prefix: str, leases: QuotaLeases) -> None:
    other = QuotaLeases(options(prefix), ManualClock(), instance_id="other")
    other._client = aioredis.Redis.from_url(REDIS_URL, socket_timeout=1.0)
    other._script = other._client.register_script(LEASE_SCRIPT)
    try:
        mine = leases.bucket("t", "requests", 1.0, 20.0)  # a refill too slow to matter
        theirs = other.bucket("t", "requests", 1.0, 20.0)
        admitted = 0
        for _ in range(10):
            await leases.round()
            await other.round()
            for bucket in (mine, theirs):
                while bucket.take(1) == 0.0:
                    admitted += 1
        assert 20 <= admitted <= 21  # the capacity, plus at most what refilled meanwhile
        assert leases.instances == 2
        assert other.instances == 2
    finally:
        await other._client.aclose()


async def test_a_batch_larger_than_a_lease_asks_for_what_it_needs(leases: QuotaLeases) -> None:
    rows = leases.bucket("t", "rows", 100.0, 100.0)
    await leases.round()
    assert rows.tokens == 10.0
    assert rows.take(30) > 0
    await leases.round()
    assert rows.take(30) == 0.0
    assert rows.take(101) == math.inf  # could never fit


async def test_tenants_charge_leased_buckets(leases: QuotaLeases) -> None:
    key = "fsk_test"
    config = TenantConfig(key_sha256=key_digest(key), requests_per_s=20, burst_s=1)
    tenants = Tenants({"t": config}, True, ManualClock(), buckets=leases.bucket)
    tenant = tenants.authenticate(f"Bearer {key}")
    await leases.round()  # the lease made ahead, when the bucket was created
    for _ in range(2):
        tenants.admit_request(tenant)
    with pytest.raises(QuotaExceeded):
        tenants.admit_request(tenant)


@pytest.fixture
def own_redis(tmp_path: Path) -> Path:
    """A folder for a redis-server of this test's own, which it may stop and start."""
    if shutil.which("redis-server") is None:
        if IN_CI:
            pytest.fail("redis-server is not installed")
        pytest.skip("redis-server is not installed")
    return tmp_path / "redis"


async def test_falls_back_to_a_local_share_and_returns_when_redis_is_back(
    own_redis: Path,
) -> None:
    clock = ManualClock()
    modes: list[str] = []
    with redis_server(own_redis, aof=False) as url:
        owner = QuotaLeases(
            options("q:", redis_url=url, instances=2, deadline_s=0.5),
            clock,
            on_mode=modes.append,
        )
        owner.start()
        assert owner._task is not None
        owner._task.cancel()  # before it runs: the test drives the rounds
        bucket = owner.bucket("t", "requests", 10.0, 10.0)
        assert await owner.round()
        assert bucket.take(1) == 0.0
        assert bucket.tokens == 0.0  # a lease of 1 token (10% of 10)
    # Redis stopped: the next round fails and the bucket keeps this gateway's share.
    bucket.take(1)
    assert not await owner.round()
    assert owner.mode == LOCAL
    assert modes == [REDIS, LOCAL]
    assert isinstance(bucket, LeasedBucket)
    assert bucket.mode == LOCAL
    assert bucket.tokens == 0.0  # no burst on fall-back: it starts from the slice's tokens
    await clock.advance(1.0)
    admitted = 0
    while bucket.take(1) == 0.0:
        admitted += 1
    assert admitted == 5  # 10/s shared by 2 gateways, one second
    with redis_server(own_redis, aof=False):
        assert await owner.round()
        assert owner.mode == REDIS
        assert modes == [REDIS, LOCAL, REDIS]
        assert bucket.mode == REDIS
        assert bucket.tokens == 1.0
        await owner.close()


async def test_a_hanging_redis_costs_one_deadline_then_the_local_share(prefix: str) -> None:
    clock = ManualClock()
    with TcpProxy("127.0.0.1", 6379) as proxy:
        url = f"redis://127.0.0.1:{proxy.port}/0"
        owner = QuotaLeases(options(prefix, redis_url=url, deadline_s=0.2, instances=4), clock)
        owner.start()
        assert owner._task is not None
        owner._task.cancel()  # before it runs: the test drives the rounds
        try:
            bucket = owner.bucket("t", "requests", 40.0, 40.0)
            assert await owner.round()
            assert bucket.tokens == 4.0
            proxy.cut(hang=True)  # accepts, answers nothing
            bucket.take(4)
            started = time.monotonic()
            assert not await owner.round()
            assert time.monotonic() - started < 0.2 + 0.5  # the deadline, with a margin
            assert owner.mode == LOCAL
            await clock.advance(1.0)
            assert bucket.tokens == 10.0  # 40/s shared by the 4 configured gateways
            proxy.restore()
            assert await owner.round()
            assert owner.mode == REDIS
            assert bucket.tokens == 4.0
        finally:
            await owner.close()


def test_the_quotas_section_is_off_by_default_and_bad_values_name_their_key() -> None:
    models = {"m": {"inputs": [], "outputs": [], "versions": {}}}
    assert not QuotaOptions().enabled
    with pytest.raises(ConfigError) as caught:
        parse_config({"models": models, "quotas": {"deadline_s": 0, "leases": 3}})
    problems = "\n".join(caught.value.problems)
    assert "quotas.deadline_s: Input should be greater than 0" in problems
    assert "quotas.leases: unknown key" in problems


async def test_the_excess_over_one_bucket_is_at_most_one_lease_per_gateway(prefix: str) -> None:
    """Slices leased, then held while the shared bucket refills: spent together with the
    refilled bucket, they are the whole excess (on an injected Redis clock)."""
    now = [100.0]
    owners = [
        QuotaLeases(
            options(prefix, lease=5), ManualClock(), instance_id=name, redis_clock=lambda: now[0]
        )
        for name in ("a", "b")
    ]
    for owner in owners:
        owner._client = aioredis.Redis.from_url(REDIS_URL, socket_timeout=1.0)
        owner._script = owner._client.register_script(LEASE_SCRIPT)
    try:
        buckets = [owner.bucket("t", "requests", 10.0, 10.0) for owner in owners]
        for owner in owners:
            await owner.round()  # 5 each: the shared bucket is empty
        now[0] += 60.0  # idle: the shared bucket is full again, the slices still held
        admitted = 0
        for _ in range(5):  # a burst at one instant (the Redis clock stands still)
            for owner, bucket in zip(owners, buckets, strict=True):
                await owner.round()
                while bucket.take(1) == 0.0:
                    admitted += 1
        assert admitted == 10 + 2 * 5  # the capacity + one lease per gateway, no more
    finally:
        for owner in owners:
            await owner._client.aclose()


async def test_a_stopping_gateway_hands_its_unspent_slices_back(
    prefix: str, sync_redis: redis.Redis
) -> None:
    owner = QuotaLeases(options(prefix), ManualClock(), redis_clock=lambda: 100.0)
    owner._client = aioredis.Redis.from_url(REDIS_URL, socket_timeout=1.0)
    owner._script = owner._client.register_script(LEASE_SCRIPT)
    bucket = owner.bucket("t", "requests", 50.0, 50.0)
    assert await owner.round()
    assert bucket.take(2) == 0.0
    assert float(sync_redis.hget(prefix + "t:requests", "tokens")) == 45.0  # type: ignore[arg-type]
    await owner.close()  # hands 3 back
    assert float(sync_redis.hget(prefix + "t:requests", "tokens")) == 48.0  # type: ignore[arg-type]
    assert bucket.tokens == 0.0
    # Given back up to the capacity, never beyond.
    assert lease(sync_redis, prefix + "t:requests", 50, 50, -10, now=100.0) == (-10, 50.0)


async def test_a_bucket_over_its_quota_asks_redis_once_per_token_of_its_share(
    prefix: str,
) -> None:
    clock = ManualClock()
    owner = QuotaLeases(options(prefix, instances=2), clock, redis_clock=lambda: 100.0)
    owner._client = aioredis.Redis.from_url(REDIS_URL, socket_timeout=1.0)
    owner._script = owner._client.register_script(LEASE_SCRIPT)
    try:
        bucket = owner.bucket("t", "requests", 1.0, 1.0)
        assert await owner.round()
        assert bucket.take(1) == 0.0
        assert await owner.round()  # the shared bucket is empty: nothing granted
        assert bucket.take(1) > 0
        assert owner._hungry == {}  # refused requests do not send it back to Redis
        await clock.advance(1.9)
        assert owner._hungry == {}
        await clock.advance(0.1)  # 2 gateways share 1/s: one token of its share takes 2 s
        assert list(owner._hungry) == [prefix + "t:requests"]
    finally:
        await owner._client.aclose()


async def test_a_share_too_small_for_a_batch_refuses_it_until_redis_is_back() -> None:
    clock = ManualClock()
    owner = QuotaLeases(options("p:", instances=4), clock)  # never started: no Redis call
    rows = owner.bucket("t", "rows", 10.0, 10.0)
    requests = owner.bucket("t", "requests", 1.0, 2.0)
    assert isinstance(rows, LeasedBucket)
    assert isinstance(requests, LeasedBucket)
    owner._fall_back(ConnectionError("down"))
    await clock.advance(4.0)  # the local shares fill: 2.5 rows, 1 request (at least one)
    assert rows.take(8) == owner.options.probe_s  # fits the quota, not a quarter of it
    assert rows.take(2) == 0.0
    assert requests.take(1) == 0.0  # a share of 0.5 tokens still lets a request through
    assert rows.take(11) == math.inf  # fits nowhere: a bad request, as without Redis
