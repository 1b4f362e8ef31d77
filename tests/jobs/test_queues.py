"""The queue contract, on SQLite and on Redis Streams: idempotency records written with
the job, tenant scoping, fencing tokens, retries with back-off, dead letters, purging."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from failsoft.jobs.queue import Job, KeyReused, Lease, NewJob, QueueFull
from failsoft.jobs.redis_queue import RedisQueue
from failsoft.jobs.sqlite_queue import SqliteQueue
from tests.jobs.conftest import OPTIONS, Wall

Queue = SqliteQueue | RedisQueue


def new_job(
    tenant: str = "acme", key: str | None = "k1", body: bytes = b"{}", model: str = "m"
) -> NewJob:
    return NewJob(
        id=os.urandom(16).hex(),
        tenant=tenant,
        idempotency_key=key,
        fingerprint=f"{model}:{body.hex()}",
        model=model,
        version=None,
        body=body,
        header_length=None,
        created_at=1.0,
    )


async def lease_one(queue: Queue, worker: str = "w1", deadline_s: float = 10.0) -> Lease:
    """The next lease; Redis hands lapsed ones back on its own clock, so poll for it."""
    give_up = time.monotonic() + deadline_s
    while time.monotonic() < give_up:
        leases = await queue.lease(worker, 1, 0.05)
        if leases:
            return leases[0]
    raise AssertionError("no job was leased in time")


async def job_of(queue: Queue, job_id: str, tenant: str = "acme") -> Job:
    job = await queue.get(tenant, job_id)
    assert job is not None
    return job


async def test_same_key_and_body_name_the_same_job(queue: Queue) -> None:
    first = await queue.submit(new_job())
    again = await queue.submit(new_job())
    assert first.created
    assert not again.created
    assert again.job_id == first.job_id
    assert (await job_of(queue, first.job_id)).state == "queued"


async def test_same_key_with_another_body_is_refused(queue: Queue) -> None:
    await queue.submit(new_job(body=b"{1}"))
    with pytest.raises(KeyReused):
        await queue.submit(new_job(body=b"{2}"))


async def test_keys_and_job_ids_belong_to_their_tenant(queue: Queue) -> None:
    mine = await queue.submit(new_job(tenant="acme"))
    theirs = await queue.submit(new_job(tenant="globex"))
    assert theirs.created
    assert theirs.job_id != mine.job_id
    assert await queue.get("globex", mine.job_id) is None
    assert (await job_of(queue, theirs.job_id, "globex")).tenant == "globex"


async def test_a_full_queue_refuses_new_jobs(queue: Queue) -> None:
    for _ in range(OPTIONS["max_pending"]):
        await queue.submit(new_job(key=None))
    with pytest.raises(QueueFull):
        await queue.submit(new_job(key=None))


async def test_a_lapsed_lease_is_fenced_and_the_result_stored_once(
    queue: Queue, wall: Wall, redis_url_or_none: str | None
) -> None:
    submitted = await queue.submit(new_job())
    first = await lease_one(queue, "dead-worker")
    assert first.token == 1
    assert first.job.attempts == 1
    taker: Queue = queue
    if isinstance(queue, RedisQueue):  # another gateway, whose lease is short
        assert redis_url_or_none is not None
        taker = RedisQueue(redis_url_or_none, queue._p, **{**OPTIONS, "lease_s": 0.2})
    else:
        wall.now += OPTIONS["lease_s"] + 1
    second = await lease_one(taker, "live-worker")
    assert second.job.id == submitted.job_id
    assert second.token == 2
    assert second.job.attempts == 2
    assert not await queue.renew(first)
    assert not await queue.complete(first, b"stale", None)  # the dead worker's late answer
    assert await taker.complete(second, b"fresh", None)
    assert not await taker.complete(second, b"again", None)
    job = await job_of(queue, submitted.job_id)
    assert (job.state, job.result, job.stores) == ("succeeded", b"fresh", 1)
    if taker is not queue:
        await taker.close()


async def test_failures_back_off_then_dead_letter(queue: Queue, wall: Wall) -> None:
    submitted = await queue.submit(new_job())
    for attempt in range(1, OPTIONS["max_attempts"] + 1):
        lease = await lease_one(queue)
        assert lease.job.attempts == attempt
        assert await queue.retry(lease, "503: the model failed (replica)", 30.0)
        if attempt < OPTIONS["max_attempts"]:
            assert await queue.lease("w1", 1, 0) == []  # backing off
            wall.now += 31
    job = await job_of(queue, submitted.job_id)
    assert job.state == "dead"
    assert job.reason == "gave up after 3 attempts; last: 503: the model failed (replica)"
    assert await queue.lease("w1", 1, 0) == []


async def test_a_failed_job_is_final(queue: Queue) -> None:
    submitted = await queue.submit(new_job())
    lease = await lease_one(queue)
    assert await queue.fail(lease, "model 'm' no longer exists")
    job = await job_of(queue, submitted.job_id)
    assert (job.state, job.reason, job.stores) == ("failed", "model 'm' no longer exists", 0)
    assert await queue.lease("w1", 1, 0) == []
    assert not await queue.complete(lease, b"late", None)


async def test_sqlite_dead_letters_a_job_whose_last_lease_lapsed(tmp_path, wall: Wall) -> None:  # type: ignore[no-untyped-def]
    queue = SqliteQueue(tmp_path / "q.sqlite3", wall=wall, **OPTIONS)
    await queue.open()
    submitted = await queue.submit(new_job())
    for _ in range(OPTIONS["max_attempts"]):
        await lease_one(queue)
        wall.now += OPTIONS["lease_s"] + 1
    assert await queue.lease("w1", 1, 0) == []
    job = await job_of(queue, submitted.job_id)
    assert job.state == "dead"
    assert job.reason == "gave up after 3 attempts (its worker stopped answering)"
    await queue.close()


async def test_finished_jobs_and_their_keys_are_purged(
    queue: Queue, wall: Wall, redis_url_or_none: str | None
) -> None:
    if isinstance(queue, RedisQueue):  # Redis expires them itself: a short keep_s
        assert redis_url_or_none is not None
        await queue.close()
        queue = RedisQueue(redis_url_or_none, queue._p + "p", **{**OPTIONS, "keep_s": 0.3})
    submitted = await queue.submit(new_job())
    lease = await lease_one(queue)
    assert await queue.complete(lease, b"r", None)
    if isinstance(queue, SqliteQueue):
        assert await queue.purge() == 0  # kept for keep_s
        wall.now += OPTIONS["keep_s"] + 1
        assert await queue.purge() == 1
    give_up = time.monotonic() + 10
    while await queue.get("acme", submitted.job_id) is not None:
        assert time.monotonic() < give_up, "the finished job was never purged"
        await asyncio.sleep(0.05)
    again = await queue.submit(new_job())  # the key is free again
    assert again.created
    assert again.job_id != submitted.job_id
    if isinstance(queue, RedisQueue):
        await queue.close()


async def test_one_refused_call_does_not_undo_the_others_committed_with_it(queue: Queue) -> None:
    await queue.submit(new_job(key="taken", body=b"{1}"))
    outcomes = await asyncio.gather(
        queue.submit(new_job(key="a")),
        queue.submit(new_job(key="taken", body=b"{2}")),
        queue.submit(new_job(key="b")),
        return_exceptions=True,
    )
    assert isinstance(outcomes[1], KeyReused)
    for outcome in (outcomes[0], outcomes[2]):
        assert not isinstance(outcome, BaseException)
        assert outcome.created
        assert (await job_of(queue, outcome.job_id)).state == "queued"
