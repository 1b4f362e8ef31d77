"""The open-loop load driver: requests leave on schedule whether or not answers came.

Each request's latency counts from its *scheduled* send time, so a stalled
gateway shows up as latency instead of as fewer samples (no coordinated
omission). Requests are bounded in number, in flight and in time; one that
cannot be sent because too many are outstanding is counted as lost, not
queued. Answers are checked against the expected outputs of their request.

A hostile client's attack and a readiness poll run the same way, on the same
time 0 (a ``Schedule``), each on its own connections.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import orjson

from failsoft.backends.h1pool import H1Pool, PoolError
from failsoft.drills.experiment import Attack, AttackRequest, Load, RequestSpec

MAX_IN_FLIGHT = 4096
# An attack's own bound: its bodies may be large, and it is not judged on its latency.
MAX_ATTACK_IN_FLIGHT = 32
READINESS_INTERVAL_S = 0.1
READINESS_TIMEOUT_S = 1.0
_EARLY_S = 0.0005  # event-loop timers tick in ms: send up to this much before schedule
NOT_SENT = -1  # status of a request the driver could not send (too many in flight)
NO_ANSWER = 0  # status of a request that got no HTTP answer (reset, timeout)


async def send_on_schedule(
    offsets: Sequence[float],
    start: float,
    clock: Callable[[], float],
    lags: np.ndarray,
    launch: Callable[[int, float], Coroutine[Any, Any, None] | None],
    timeout_s: float,
) -> int:
    """Start ``launch(index, origin)`` at ``start + offsets[index]``, open loop.

    ``launch`` returns the request's coroutine, or None when it refuses to
    send (too many in flight). ``origin`` is the schedule when late, so
    coordinated omission stays visible, or the real send when a millisecond
    timer tick sent it a little early. Waits for every request, at most
    ``timeout_s`` after the last send; returns how many were cut off.
    """
    tasks: set[asyncio.Task[None]] = set()
    for index, offset in enumerate(offsets):
        scheduled = start + offset
        delay = scheduled - clock()
        while delay > _EARLY_S:  # pacing: the wake-up time is the point, not an event
            await asyncio.sleep(delay - _EARLY_S)
            delay = scheduled - clock()
        sent = clock()
        lags[index] = sent - scheduled
        if delay < 0 and index % 16 == 0:
            await asyncio.sleep(0)  # behind schedule: still let answers in
        request = launch(index, min(sent, scheduled))
        if request is not None:
            task = asyncio.create_task(request)
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    if not tasks:
        return 0
    _, pending = await asyncio.wait(set(tasks), timeout=timeout_s)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    return len(pending)


@dataclass(frozen=True)
class Schedule:
    """Time 0 of a drill's loads, on the monotonic clock and on the wall clock."""

    clock: float  # time.perf_counter()
    wall: float  # time.time()

    @classmethod
    def soon(cls, delay_s: float = 0.01) -> Schedule:
        return cls(time.perf_counter() + delay_s, time.time() + delay_s)


Send = Callable[[H1Pool, int, float], Coroutine[Any, Any, None]]


async def _drive(
    base_url: str,
    offsets: np.ndarray,
    schedule: Schedule,
    send: Send,
    *,
    max_in_flight: int,
    timeout_s: float,
) -> None:
    """``send(pool, index, origin)`` for every offset, open loop, on a pool of its own.

    A request that would exceed ``max_in_flight`` is not sent (its outcome stays
    as it was made: not sent).
    """
    parts = urlsplit(base_url)
    assert parts.hostname is not None
    pool = H1Pool(parts.hostname, parts.port or 80, max_in_flight, idle_timeout_s=4.0)
    in_flight = 0

    async def one(index: int, origin: float) -> None:
        nonlocal in_flight
        try:
            await send(pool, index, origin)
        finally:
            in_flight -= 1

    def launch(index: int, origin: float) -> Coroutine[Any, Any, None] | None:
        nonlocal in_flight
        if in_flight >= max_in_flight:
            return None  # the gateway is this far behind
        in_flight += 1
        return one(index, origin)

    lags = np.zeros(len(offsets))
    try:
        await send_on_schedule(
            offsets.tolist(), schedule.clock, time.perf_counter, lags, launch, timeout_s
        )
    finally:
        await pool.close()


@dataclass(frozen=True)
class PreparedRequest:
    body: bytes
    expect: dict[str, np.ndarray] | None


@dataclass
class Outcomes:
    """One entry per scheduled request, in schedule order."""

    offsets: np.ndarray  # scheduled send, seconds since the load started
    latency_s: np.ndarray  # from the scheduled send; NaN without an answer
    status: np.ndarray  # HTTP status, NO_ANSWER or NOT_SENT
    correct: np.ndarray  # 200 and the expected outputs
    degraded: np.ndarray  # answered by a fallback tier
    priority: list[str]
    started_at: float  # wall-clock time (time.time()) of offset 0
    served_by: list[str] = field(default_factory=list)  # Failsoft-Served-By ("" unanswered)
    warned: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))  # data warning

    @classmethod
    def empty(cls, offsets: np.ndarray, priority: list[str], started_at: float) -> Outcomes:
        size = len(offsets)
        return cls(
            offsets,
            np.full(size, math.nan),
            np.full(size, NOT_SENT, dtype=np.int32),
            np.zeros(size, dtype=bool),
            np.zeros(size, dtype=bool),
            priority,
            started_at,
            [""] * size,
            np.zeros(size, dtype=bool),
        )


def prepare(spec: RequestSpec) -> PreparedRequest:
    expect = (
        {name: np.asarray(values) for name, values in spec.expect.items()} if spec.expect else None
    )
    return PreparedRequest(orjson.dumps({"inputs": spec.inputs}), expect)


def is_correct(payload: bytes, expect: dict[str, np.ndarray] | None) -> bool:
    if expect is None:
        return True
    try:
        outputs = {output["name"]: output["data"] for output in orjson.loads(payload)["outputs"]}
        for name, wanted in expect.items():
            got = np.asarray(outputs[name])
            if got.size != wanted.size:
                return False
            if wanted.dtype.kind == "f" or got.dtype.kind == "f":
                if not np.allclose(got.ravel(), wanted.ravel(), rtol=0, atol=1e-4):
                    return False
            elif not np.array_equal(got.ravel(), wanted.ravel()):
                return False
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return False
    return True


def _mix(weights: dict[str, float], count: int, rng: random.Random) -> list[str]:
    names = list(weights)
    return rng.choices(names, weights=[weights[n] for n in names], k=count)


async def run_load(
    base_url: str,
    load: Load,
    *,
    duration_s: float | None = None,
    tenant_keys: dict[str, str] | None = None,
    seed: int = 0,
    schedule: Schedule | None = None,
) -> Outcomes:
    """Drive ``load`` against a failsoft at ``base_url``; every request is awaited."""
    duration = duration_s if duration_s is not None else load.duration_s
    count = max(1, round(load.rate * duration))
    rng = random.Random(seed)
    offsets = np.arange(count) / load.rate
    priorities = _mix({str(k): v for k, v in load.priorities.items()}, count, rng)
    tenants = (
        _mix({n: t.weight for n, t in load.tenants.items()}, count, rng) if tenant_keys else []
    )
    requests = [prepare(spec) for spec in load.requests]
    path = infer_path(load.model, load.version)
    timeout_s = load.timeout_ms / 1000
    base_headers = [
        ("Content-Type", "application/json"),
        ("Failsoft-Timeout-Ms", str(load.timeout_ms)),
    ]
    clock = time.perf_counter
    schedule = schedule or Schedule.soon()
    outcomes = Outcomes.empty(offsets, priorities, schedule.wall)

    async def send(pool: H1Pool, index: int, origin: float) -> None:
        request = requests[index % len(requests)]
        headers = [*base_headers, ("Failsoft-Priority", priorities[index])]
        if tenants and tenant_keys:
            headers.append(("Authorization", f"Bearer {tenant_keys[tenants[index]]}"))
        try:
            # A little past the gateway's own deadline: its answer, not ours, is measured.
            response = await pool.request("POST", path, headers, request.body, timeout_s + 1.0)
        except PoolError:
            outcomes.status[index] = NO_ANSWER
            return
        outcomes.latency_s[index] = clock() - origin
        outcomes.status[index] = response.status
        outcomes.served_by[index] = response.headers.get("failsoft-served-by", "")
        if response.status == 200:
            outcomes.correct[index] = is_correct(response.body, request.expect)
            outcomes.degraded[index] = response.headers.get("failsoft-degraded") == "true"
            outcomes.warned[index] = "failsoft-data-warning" in response.headers

    await _drive(
        base_url,
        offsets,
        schedule,
        send,
        max_in_flight=MAX_IN_FLIGHT,
        timeout_s=timeout_s + 2.0,
    )
    return outcomes


def infer_path(model: str, version: str | None) -> str:
    return f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"


# --- a hostile client -------------------------------------------------------------------


@dataclass(frozen=True)
class PreparedAttack:
    kind: str
    body: bytes
    headers: list[tuple[str, str]]


def oversize_body(size: int) -> bytes:
    """A V2-looking JSON body of exactly ``size`` bytes (a valid request, padded)."""
    head = (
        b'{"inputs":[{"name":"features","datatype":"FP32","shape":[1,4],'
        b'"data":[5.1,3.5,1.4,0.2]}],"parameters":{"padding":"'
    )
    tail = b'"}}'
    return head + b"x" * max(0, size - len(head) - len(tail)) + tail


def prepare_attack(spec: AttackRequest) -> PreparedAttack:
    headers = [("Content-Type", "application/json")]
    if spec.kind == "oversize":
        assert spec.body_bytes is not None
        body = oversize_body(spec.body_bytes)
    else:
        payload: dict[str, Any] = {"inputs": spec.inputs}
        if spec.outputs is not None:
            payload["outputs"] = [{"name": name} for name in spec.outputs]
        body = orjson.dumps(payload)
    if spec.timeout_ms is not None:
        headers.append(("Failsoft-Timeout-Ms", str(spec.timeout_ms)))
    headers += list(spec.headers.items())
    return PreparedAttack(spec.kind, body, headers)


@dataclass
class AttackOutcomes:
    """One entry per attack request, in schedule order; times as the good load's."""

    offsets: np.ndarray
    kinds: list[str]
    status: np.ndarray  # HTTP status, NO_ANSWER or NOT_SENT
    degraded: np.ndarray  # answered 200 by a fallback tier
    start_s: float  # the attack's window, as scheduled
    end_s: float

    @classmethod
    def empty(
        cls, offsets: np.ndarray, kinds: list[str], start_s: float, end_s: float
    ) -> AttackOutcomes:
        size = len(offsets)
        return cls(
            offsets,
            kinds,
            np.full(size, NOT_SENT, dtype=np.int32),
            np.zeros(size, dtype=bool),
            start_s,
            end_s,
        )


async def run_attack(
    base_url: str,
    attack: Attack,
    path: str,
    window_s: tuple[float, float],
    *,
    schedule: Schedule,
    timeout_s: float = 2.0,
) -> AttackOutcomes:
    """Send ``attack``'s requests, cycled, at its rate through ``window_s`` (load time)."""
    start, end = window_s
    count = max(1, round(attack.rate * (end - start)))
    offsets = start + np.arange(count) / attack.rate
    requests = [prepare_attack(spec) for spec in attack.requests]
    outcomes = AttackOutcomes.empty(
        offsets, [requests[i % len(requests)].kind for i in range(count)], start, end
    )

    async def send(pool: H1Pool, index: int, origin: float) -> None:
        request = requests[index % len(requests)]
        try:
            response = await pool.request("POST", path, request.headers, request.body, timeout_s)
        except PoolError:
            outcomes.status[index] = NO_ANSWER
            return
        outcomes.status[index] = response.status
        if response.status == 200:
            outcomes.degraded[index] = response.headers.get("failsoft-degraded") == "true"

    await _drive(
        base_url,
        offsets,
        schedule,
        send,
        max_in_flight=MAX_ATTACK_IN_FLIGHT,
        timeout_s=timeout_s + 1.0,
    )
    return outcomes


# --- readiness ----------------------------------------------------------------------------


@dataclass
class ReadinessPolls:
    offsets: np.ndarray  # scheduled, seconds since the load started
    status: np.ndarray  # HTTP status, NO_ANSWER or NOT_SENT


async def poll_readiness(
    base_url: str,
    duration_s: float,
    *,
    schedule: Schedule,
    interval_s: float = READINESS_INTERVAL_S,
    timeout_s: float = READINESS_TIMEOUT_S,
) -> ReadinessPolls:
    """GET /v2/health/ready every ``interval_s`` through the run, open loop."""
    offsets = np.arange(max(1, math.ceil(duration_s / interval_s))) * interval_s
    polls = ReadinessPolls(offsets, np.full(len(offsets), NOT_SENT, dtype=np.int32))

    async def send(pool: H1Pool, index: int, origin: float) -> None:
        try:
            response = await pool.request("GET", "/v2/health/ready", [], b"", timeout_s)
        except PoolError:
            polls.status[index] = NO_ANSWER
            return
        polls.status[index] = response.status

    await _drive(base_url, offsets, schedule, send, max_in_flight=16, timeout_s=timeout_s + 1.0)
    return polls
