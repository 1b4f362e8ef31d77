"""The shared job queue: Redis Streams with one consumer group.

Every gateway is a consumer. A job is a hash; the stream carries its id. A
delivered entry stays in the group's pending list until the job finishes, so
a gateway that dies leaves it there and ``XAUTOCLAIM`` hands it to another once
it has been idle for a lease; a live worker keeps it by ``XCLAIM``-ing it to
itself (which resets the idle time). Retries wait in a sorted set until due.

Each change is one Lua script, so a job and its idempotency record are written
together and the fencing token is checked where the result is stored. The
scripts touch the idempotency key a job names (read from its hash): fine on one
Redis, not on a cluster. Only a Redis with ``appendonly yes`` is used: one that
keeps nothing on disk would lose every accepted job on restart.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

from failsoft.jobs.queue import (
    Job,
    KeyReused,
    Lease,
    NewJob,
    QueueError,
    QueueFull,
    QueueRefused,
    Submitted,
)

GROUP = "failsoft-workers"
MAX_BLOCK_S = 1.0

_FINISH = """
local function finish(job, stream, group, active, keep_ms)
  local msg = redis.call('HGET', job, 'msg')
  if msg and msg ~= '' then
    redis.call('XACK', stream, group, msg)
    redis.call('XDEL', stream, msg)
  end
  redis.call('DECR', active)
  redis.call('PEXPIRE', job, keep_ms)
  local ref = redis.call('HGET', job, 'ikey_ref')
  if ref and ref ~= '' then redis.call('PEXPIRE', ref, keep_ms) end
end
local function holds(job, token)
  return redis.call('HGET', job, 'state') == 'running' and redis.call('HGET', job, 'token') == token
end
"""

# KEYS: idempotency record (or the job again), job, stream, active counter
# ARGV: has key, id, fingerprint, max pending, field, value, ...
SUBMIT = """
if ARGV[1] == '1' then
  local found = redis.call('GET', KEYS[1])
  if found then return {0, found} end
end
if tonumber(redis.call('GET', KEYS[4]) or '0') >= tonumber(ARGV[4]) then return {2, ''} end
local fields = {}
for i = 5, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[2], unpack(fields))
if ARGV[1] == '1' then redis.call('SET', KEYS[1], ARGV[2] .. '\\n' .. ARGV[3]) end
redis.call('XADD', KEYS[3], '*', 'id', ARGV[2])
redis.call('INCR', KEYS[4])
return {1, ARGV[2]}
"""

# KEYS: job, stream, active; ARGV: entry id, group, max attempts, now, worker, keep ms
LEASE = (
    _FINISH
    + """
local job = KEYS[1]
local state = redis.call('HGET', job, 'state')
if state ~= 'queued' and state ~= 'running' then
  redis.call('XACK', KEYS[2], ARGV[2], ARGV[1])
  redis.call('XDEL', KEYS[2], ARGV[1])
  return {0}
end
redis.call('HSET', job, 'msg', ARGV[1])
local attempts = tonumber(redis.call('HGET', job, 'attempts'))
if attempts >= tonumber(ARGV[3]) then
  local how = 'it kept failing'
  if state == 'running' then how = 'its worker stopped answering' end
  redis.call('HSET', job, 'state', 'dead', 'finished_at', ARGV[4],
    'reason', 'gave up after ' .. attempts .. ' attempts (' .. how .. ')')
  finish(job, KEYS[2], ARGV[2], KEYS[3], ARGV[6])
  return {0}
end
local token = redis.call('HINCRBY', job, 'token', 1)
redis.call('HINCRBY', job, 'attempts', 1)
redis.call('HSET', job, 'state', 'running', 'worker', ARGV[5])
return {1, token, redis.call('HGETALL', job)}
"""
)

# KEYS: job, stream; ARGV: token, group
RENEW = (
    _FINISH
    + """
if not holds(KEYS[1], ARGV[1]) then return 0 end
local job = KEYS[1]
redis.call('XCLAIM', KEYS[2], ARGV[2], redis.call('HGET', job, 'worker'), 0,
  redis.call('HGET', job, 'msg'), 'JUSTID')
return 1
"""
)

# KEYS: job, stream, active; ARGV: token, group, now, keep ms, state, reason, result, rhl
FINISH = (
    _FINISH
    + """
if not holds(KEYS[1], ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[5], 'reason', ARGV[6], 'finished_at', ARGV[3])
if ARGV[5] == 'succeeded' then
  redis.call('HSET', KEYS[1], 'result', ARGV[7], 'rhl', ARGV[8])
  redis.call('HINCRBY', KEYS[1], 'stores', 1)
end
finish(KEYS[1], KEYS[2], ARGV[2], KEYS[3], ARGV[4])
return 1
"""
)

# KEYS: job, stream, active, delayed; ARGV: token, group, now, keep ms, reason, run at, max, id
RETRY = (
    _FINISH
    + """
if not holds(KEYS[1], ARGV[1]) then return 0 end
local attempts = tonumber(redis.call('HGET', KEYS[1], 'attempts'))
if attempts >= tonumber(ARGV[7]) then
  redis.call('HSET', KEYS[1], 'state', 'dead', 'finished_at', ARGV[3],
    'reason', 'gave up after ' .. attempts .. ' attempts; last: ' .. ARGV[5])
  finish(KEYS[1], KEYS[2], ARGV[2], KEYS[3], ARGV[4])
  return 1
end
local msg = redis.call('HGET', KEYS[1], 'msg')
redis.call('HSET', KEYS[1], 'state', 'queued', 'reason', ARGV[5], 'msg', '')
redis.call('ZADD', KEYS[4], ARGV[6], ARGV[8])
redis.call('XACK', KEYS[2], ARGV[2], msg)
redis.call('XDEL', KEYS[2], msg)
return 1
"""
)

# KEYS: delayed, stream; ARGV: now, limit
PROMOTE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, id in ipairs(due) do
  redis.call('XADD', KEYS[2], '*', 'id', id)
  redis.call('ZREM', KEYS[1], id)
end
return #due
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _optional_int(value: bytes | None) -> int | None:
    return int(value) if value else None


def _job(fields: dict[bytes, bytes]) -> Job:
    def text(name: str) -> str:
        return fields.get(name.encode(), b"").decode()

    return Job(
        id=text("id"),
        tenant=text("tenant"),
        idempotency_key=text("ikey") or None,
        model=text("model"),
        version=text("version") or None,
        body=fields.get(b"body", b""),
        header_length=_optional_int(fields.get(b"hl")),
        state=text("state"),  # type: ignore[arg-type]
        attempts=int(fields.get(b"attempts", b"0")),
        created_at=float(fields.get(b"created_at", b"0")),
        finished_at=float(fields[b"finished_at"]) if fields.get(b"finished_at") else None,
        result=fields.get(b"result") or None,
        result_header_length=_optional_int(fields.get(b"rhl")),
        reason=text("reason") or None,
        stores=int(fields.get(b"stores", b"0")),
    )


class RedisQueue:
    def __init__(
        self,
        url: str,
        prefix: str,
        *,
        lease_s: float,
        max_attempts: int,
        keep_s: float,
        max_pending: int,
        require_aof: bool = True,
        wall: Callable[[], float] = time.time,
    ) -> None:
        import redis.asyncio as aioredis

        self._redis = aioredis.Redis.from_url(
            url, socket_timeout=MAX_BLOCK_S + 4.0, socket_connect_timeout=2.0
        )
        self._p = prefix
        self._stream = f"{prefix}:stream"
        self._delayed = f"{prefix}:delayed"
        self._active = f"{prefix}:active"
        self._lease_ms = max(1, round(lease_s * 1000))
        self._lease_s = lease_s
        self._max_attempts = max_attempts
        self._keep_ms = max(1, round(keep_s * 1000))
        self._max_pending = max_pending
        self._require_aof = require_aof
        self._wall = wall
        self._ready = False
        self._cursor = "0-0"
        register = self._redis.register_script
        self._submit, self._lease = register(SUBMIT), register(LEASE)
        self._renew, self._finish = register(RENEW), register(FINISH)
        self._retry, self._promote = register(RETRY), register(PROMOTE)

    def _job_key(self, job_id: str) -> str:
        return f"{self._p}:job:{job_id}"

    def _key_ref(self, tenant: str, key: str) -> str:
        digest = hashlib.sha256(key.encode()).hexdigest()[:40]
        return f"{self._p}:key:{tenant}:{digest}"

    async def _call(self, coroutine: Any) -> Any:
        from redis.exceptions import RedisError

        try:
            return await coroutine
        except RedisError as error:
            raise QueueError(
                f"the job queue (Redis) is unavailable: {type(error).__name__}"
            ) from error

    async def open(self) -> None:
        """Check the Redis keeps an append-only file and make the consumer group."""
        from redis.exceptions import ResponseError

        if self._ready:
            return
        info = await self._call(self._redis.info("persistence"))
        if self._require_aof and int(info.get("aof_enabled", 0)) != 1:
            raise QueueRefused(
                "the Redis for jobs has appendonly off: accepted jobs would be lost when it "
                "restarts; start it with --appendonly yes, or use jobs.queue: sqlite"
            )
        try:
            await self._call(self._redis.xgroup_create(self._stream, GROUP, id="0", mkstream=True))
        except QueueError as error:
            if not isinstance(error.__cause__, ResponseError) or "BUSYGROUP" not in str(
                error.__cause__
            ):
                raise
        self._ready = True

    async def close(self) -> None:
        await self._redis.aclose()

    async def submit(self, job: NewJob) -> Submitted:
        await self.open()
        has_key = job.idempotency_key is not None
        ref = self._key_ref(job.tenant, job.idempotency_key) if job.idempotency_key else ""
        fields: list[str | bytes | int | float] = [
            "id", job.id, "tenant", job.tenant, "ikey", job.idempotency_key or "",
            "ikey_ref", ref, "fingerprint", job.fingerprint, "model", job.model,
            "version", job.version or "", "body", job.body,
            "hl", "" if job.header_length is None else job.header_length,
            "state", "queued", "attempts", 0, "token", 0, "stores", 0,
            "created_at", repr(job.created_at), "msg", "",
        ]  # fmt: skip
        job_key = self._job_key(job.id)
        answer = await self._call(
            self._submit(
                keys=[ref or job_key, job_key, self._stream, self._active],
                args=["1" if has_key else "0", job.id, job.fingerprint, self._max_pending, *fields],
            )
        )
        code, value = int(answer[0]), _text(answer[1])
        if code == 2:
            raise QueueFull("too many jobs are waiting; try again later")
        if code == 0:
            job_id, _, fingerprint = value.partition("\n")
            if fingerprint != job.fingerprint:
                raise KeyReused(job.idempotency_key or "")
            return Submitted(job_id, created=False)
        return Submitted(job.id, created=True)

    async def get(self, tenant: str, job_id: str) -> Job | None:
        fields = await self._call(self._redis.hgetall(self._job_key(job_id)))
        if not fields or fields.get(b"tenant", b"").decode() != tenant:
            return None
        return _job(fields)

    async def lease(self, worker: str, count: int, wait_s: float) -> list[Lease]:
        await self.open()
        redis = self._redis
        await self._call(
            self._promote(keys=[self._delayed, self._stream], args=[self._wall(), 100])
        )
        cursor, claimed, *_ = await self._call(
            redis.xautoclaim(
                self._stream, GROUP, worker, self._lease_ms, start_id=self._cursor, count=count
            )
        )
        self._cursor = _text(cursor)
        entries = [(entry, fields) for entry, fields in claimed if fields]
        if len(entries) < count:
            block = None if entries or wait_s <= 0 else round(min(wait_s, MAX_BLOCK_S) * 1000)
            read = await self._call(
                redis.xreadgroup(
                    GROUP, worker, {self._stream: ">"}, count=count - len(entries), block=block
                )
            )
            for _stream, messages in read or []:
                entries.extend(messages)
        if not entries:
            return []
        now, leases = repr(self._wall()), []
        async with redis.pipeline(transaction=False) as pipe:  # one round trip for all
            for entry, fields in entries:
                job_key = self._job_key(_text(fields[b"id"]))
                await self._lease(
                    keys=[job_key, self._stream, self._active],
                    args=[entry, GROUP, self._max_attempts, now, worker, self._keep_ms],
                    client=pipe,
                )
            answers = await self._call(pipe.execute())
        for (entry, _), answer in zip(entries, answers, strict=True):
            if int(answer[0]) != 1:
                continue
            flat = answer[2]
            job = _job(dict(zip(flat[::2], flat[1::2], strict=True)))
            leases.append(Lease(job, int(answer[1]), _text(entry)))
        return leases

    async def renew(self, lease: Lease) -> bool:
        answer = await self._call(
            self._renew(keys=[self._job_key(lease.job.id), self._stream], args=[lease.token, GROUP])
        )
        return int(answer) == 1

    async def _end(
        self, lease: Lease, state: str, reason: str, result: bytes = b"", rhl: str = ""
    ) -> bool:
        answer = await self._call(
            self._finish(
                keys=[self._job_key(lease.job.id), self._stream, self._active],
                args=[
                    lease.token,
                    GROUP,
                    repr(self._wall()),
                    self._keep_ms,
                    state,
                    reason,
                    result,
                    rhl,
                ],
            )
        )
        return int(answer) == 1

    async def complete(self, lease: Lease, result: bytes, header_length: int | None) -> bool:
        rhl = "" if header_length is None else str(header_length)
        return await self._end(lease, "succeeded", "", result, rhl)

    async def fail(self, lease: Lease, reason: str) -> bool:
        return await self._end(lease, "failed", reason)

    async def retry(self, lease: Lease, reason: str, delay_s: float) -> bool:
        answer = await self._call(
            self._retry(
                keys=[self._job_key(lease.job.id), self._stream, self._active, self._delayed],
                args=[
                    lease.token,
                    GROUP,
                    repr(self._wall()),
                    self._keep_ms,
                    reason,
                    repr(self._wall() + delay_s),
                    self._max_attempts,
                    lease.job.id,
                ],
            )
        )
        return int(answer) == 1

    async def purge(self) -> int:
        return 0  # finished jobs and their keys expire on their own (PEXPIRE keep_s)

    async def counts(self) -> dict[str, int]:
        active = await self._call(self._redis.get(self._active))
        delayed = await self._call(self._redis.zcard(self._delayed))
        return {"pending": int(active or 0), "delayed": int(delayed)}
