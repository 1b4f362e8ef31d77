from __future__ import annotations

import asyncio
import heapq
import math
import random
import statistics
from collections import deque
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from failsoft.clock import Cancel, ManualClock, settle
from failsoft.errors import Overloaded
from failsoft.observe.events import Event
from failsoft.pipeline.limiter import (
    AdaptiveLimiter,
    LimitChanged,
    LimiterOptions,
    Permit,
    Priority,
    RequestShed,
)

CRITICAL, DEFAULT, SHEDDABLE = Priority.CRITICAL, Priority.DEFAULT, Priority.SHEDDABLE


class Harness:
    """A limiter on a manual clock. Unless ``probe_rtt`` is None, its first
    window and min-RTT probe are done (every call ``probe_rtt``) and forgotten."""

    def __init__(self, probe_rtt: float | None = 0.1, seed: int = 7, **options: Any) -> None:
        options.setdefault("window_min_ms", 0)  # the clock stands still: windows close by count
        self.clock = ManualClock()
        self.events: list[Event] = []
        self.limiter = AdaptiveLimiter(
            LimiterOptions(**options), self.clock, self.events.append, "m", random.Random(seed)
        )
        if probe_rtt is not None and options.get("enabled", True):
            self.saturated_window(probe_rtt)
            assert self.probing()
            self.finish_probe(probe_rtt)
            self.events.clear()

    def probing(self) -> bool:
        return self.limiter.snapshot()["probing_min_rtt"] is True

    def finish_probe(self, rtt_s: float) -> None:
        """Run the current min-RTT probe to its end with calls of ``rtt_s`` one at a time."""
        while self.probing():
            admit_now(self.limiter, CRITICAL).release(True, rtt_s)

    def hold(self, count: int, priority: Priority = CRITICAL) -> list[Permit]:
        """Permits that must be granted at once."""
        return [admit_now(self.limiter, priority) for _ in range(count)]

    async def start(self, priority: Priority) -> asyncio.Task[Permit]:
        """An acquire that is expected to wait in the queue."""
        return await self.start_for(priority, None)

    async def start_for(self, priority: Priority, tenant: str | None) -> asyncio.Task[Permit]:
        """An acquire by ``tenant`` that is expected to wait in the queue."""
        task = asyncio.create_task(self.limiter.acquire(priority, tenant))
        await settle()
        assert not task.done()
        return task

    def saturated_window(self, rtt_s: float, ok: bool = True) -> None:
        """Finish one whole window of calls while the limit is kept full."""
        limiter = self.limiter
        size = max(10, limiter.limit)
        held = deque(self.hold(limiter.limit))
        for finished in range(1, size + 1):
            held.popleft().release(ok, rtt_s)
            if finished < size:
                held.append(admit_now(limiter, CRITICAL))
        for permit in held:
            permit.cancel()

    def limit_changes(self) -> list[tuple[int, int]]:
        return [(e.old, e.new) for e in self.events if isinstance(e, LimitChanged)]

    def sheds(self) -> list[RequestShed]:
        return [e for e in self.events if isinstance(e, RequestShed)]


def admit_now(limiter: AdaptiveLimiter, priority: Priority) -> Permit:
    """Run acquire to its first suspension point: an admission without waiting never gets there."""
    coroutine = limiter.acquire(priority)
    with pytest.raises(StopIteration) as stopped:
        coroutine.send(None)
    permit = stopped.value.value
    assert isinstance(permit, Permit)
    return permit


def admit_now_for(limiter: AdaptiveLimiter, priority: Priority, tenant: str | None) -> Permit:
    coroutine = limiter.acquire(priority, tenant)
    with pytest.raises(StopIteration) as stopped:
        coroutine.send(None)
    permit = stopped.value.value
    assert isinstance(permit, Permit)
    return permit


async def shed_reason(task: asyncio.Task[Permit]) -> str:
    with pytest.raises(Overloaded) as shed:
        await task
    return shed.value.message


# --- uncontended admission -----------------------------------------------------


async def test_uncontended_acquire_admits_without_suspending() -> None:
    h = Harness()
    permit = admit_now(h.limiter, DEFAULT)
    assert h.limiter.in_flight == 1
    assert h.clock.sleeping == 0
    permit.release(True, 0.01)
    assert h.limiter.in_flight == 0
    assert h.events == []


# --- the adaptive limit ------------------------------------------------------------


async def test_limit_grows_by_the_queue_allowance_at_baseline_rtt() -> None:
    h = Harness(initial_limit=10, smoothing=1.0)
    h.saturated_window(0.1)
    assert h.limiter.limit == int(10 + math.sqrt(10)) == 13
    assert h.events == [LimitChanged("m", 10, 13)]


async def test_limit_grows_smoothly_with_default_smoothing() -> None:
    h = Harness(initial_limit=10)
    limits = []
    for _ in range(8):
        h.saturated_window(0.1)
        limits.append(h.limiter.limit)
    assert limits == sorted(limits)
    assert 10 < limits[-1] < 10 + 8 * math.sqrt(limits[-1])
    changes = h.limit_changes()
    assert changes[0][0] == 10
    assert all(old < new for old, new in changes)


async def test_limit_holds_while_the_load_does_not_fill_it() -> None:
    h = Harness(initial_limit=10, smoothing=1.0)
    for _ in range(30):
        permits = h.hold(4)  # under half the limit
        for permit in permits:
            permit.release(True, 0.1)
    assert h.limiter.limit == 10
    assert h.events == []


async def test_limit_shrinks_by_the_gradient_past_the_tolerance() -> None:
    # Binary fractions of a second keep the arithmetic exact.
    h = Harness(0.125, initial_limit=40, max_limit=40, smoothing=1.0)
    h.saturated_window(0.375)  # 3 x the min RTT, tolerance 1.5: gradient 0.5
    # No square-root allowance on the way down: the limit goes to the gradient's share.
    assert h.limiter.limit == 20
    assert h.events == [LimitChanged("m", 40, 20)]
    snapshot = h.limiter.snapshot()
    assert snapshot["short_rtt_ms"] == pytest.approx(375.0)
    assert snapshot["min_rtt_ms"] == pytest.approx(125.0)


async def test_rtt_within_the_tolerance_does_not_shrink_the_limit() -> None:
    h = Harness(
        0.125, initial_limit=40, max_limit=40, smoothing=1.0, rtt_tolerance=1.5, rtt_slack_ms=0
    )
    for _ in range(5):
        h.saturated_window(0.1875)  # exactly 1.5 x the min RTT
    assert h.limiter.limit == 40
    assert h.events == []


async def test_the_slack_absorbs_event_loop_noise_of_a_fast_model() -> None:
    # A 0.5 ms model whose calls take 2 ms under load because the gateway's own
    # event loop is busy: 4x the min RTT, yet within tolerance x min RTT + 2 ms.
    h = Harness(0.0005, initial_limit=40, max_limit=40, smoothing=1.0)
    for _ in range(5):
        h.saturated_window(0.002)
    assert h.limiter.limit == 40


async def test_the_slack_is_a_floor_not_an_addition_to_the_tolerance() -> None:
    # min RTT 125 ms: tolerance 1.5 allows 187.5 ms, the 2 ms slack only 127 ms.
    h = Harness(0.125, initial_limit=40, max_limit=40, smoothing=1.0, rtt_tolerance=1.5)
    h.saturated_window(0.1875)
    assert h.limiter.limit == 40
    h.saturated_window(0.1875 + 0.001)  # within 1.5 x min RTT + 2 ms, but past the larger
    assert h.limiter.limit == 39


async def test_calls_queueing_take_the_limit_below_their_level() -> None:
    h = Harness(0.125, initial_limit=40, rtt_slack_ms=0)
    h.saturated_window(0.125)
    assert h.limiter.limit == 41  # 40 + 0.2 x sqrt(40) = 41.26
    # A gradient of 0.99 smoothed would only shave 0.08 off 41.26: the limit still leaves 41.
    h.saturated_window(1.1 * 0.125 / 0.99)
    assert h.limiter.limit == 40


async def test_a_window_also_spans_window_min_ms() -> None:
    h = Harness(None, initial_limit=10, window_min_ms=100)
    h.saturated_window(0.01)  # a whole window of calls, in no time
    assert not h.probing()
    await h.clock.advance(0.1)
    admit_now(h.limiter, CRITICAL).release(True, 0.01)
    assert h.probing()  # the first window closed, and started the first probe


async def test_calls_admitted_under_an_earlier_limit_are_no_samples() -> None:
    h = Harness(initial_limit=10, smoothing=1.0)
    early = h.hold(5)
    for _ in range(10):
        admit_now(h.limiter, CRITICAL).release(True, 0.1)
    assert h.limiter.limit == 13
    for permit in early:  # admitted at 10, finishing late: they say nothing about 13
        permit.release(True, 1.0)
    h.saturated_window(0.1)
    assert h.limiter.limit == int(13 + math.sqrt(13))


async def test_limit_settles_where_the_rtt_reaches_the_tolerance() -> None:
    # A server with 4 slots of 0.1 s: at n calls in flight each takes 0.1 * max(1, n / 4).
    h = Harness(initial_limit=32, max_limit=64, rtt_tolerance=1.5, rtt_slack_ms=0)
    for _ in range(60):
        h.saturated_window(0.1 * max(1.0, h.limiter.limit / 4))
    limits = []
    for _ in range(40):
        h.saturated_window(0.1 * max(1.0, h.limiter.limit / 4))
        limits.append(h.limiter.limit)
    assert set(limits) <= {6, 7}  # the RTT is 1.5 x the min RTT at 6 in flight


def slots_rtt(limit: int, slots: int = 5, service_s: float = 0.1) -> float:
    """The mean RTT of a server with ``slots`` slots kept full with ``limit`` calls."""
    return service_s * max(1.0, limit / slots)


async def limits_over_time(h: Harness, windows: int, slots: int = 5) -> list[int]:
    """The limit after each of ``windows`` saturated windows 0.1 s apart (``slots`` slots)."""
    seen = []
    for _ in range(windows):
        h.saturated_window(slots_rtt(h.limiter.limit, slots))
        seen.append(h.limiter.limit)
        await h.clock.advance(0.1)
    return seen


async def test_a_limit_that_queues_twice_is_tried_ever_more_rarely() -> None:
    # 5 slots: a sixth call in flight waits inside the server, for 20 s.
    held = await limits_over_time(Harness(initial_limit=5, knee_hold_s=1, knee_hold_max_s=8), 200)
    assert set(held) <= {4, 5, 6}  # 4: min_limit, during a min-RTT probe
    # Twice (a suspect, then the knee), then after holds of about 1, 2, 4, 8 and 8 s.
    assert 5 <= held.count(6) <= 9
    unheld = await limits_over_time(Harness(initial_limit=5, knee_hold_s=0), 200)
    assert unheld.count(6) > 5 * held.count(6)


async def test_a_knee_that_stops_queueing_is_forgotten() -> None:
    h = Harness(initial_limit=5, knee_hold_s=1, knee_hold_max_s=1)
    await limits_over_time(h, 50)  # the knee at 6 is known
    grown = await limits_over_time(h, 50, slots=8)  # the server got 3 more slots
    assert max(grown) >= 8


async def test_one_window_never_more_than_halves_the_limit() -> None:
    h = Harness(initial_limit=100, max_limit=100, min_limit=1, smoothing=1.0)
    h.saturated_window(100.0)
    assert h.limiter.limit == 50


async def test_limit_stays_within_min_and_max() -> None:
    h = Harness(initial_limit=10, min_limit=8, max_limit=12, smoothing=1.0)
    h.saturated_window(0.1)
    assert h.limiter.limit == 12
    for _ in range(10):
        h.saturated_window(5.0)
    assert h.limiter.limit == 8
    assert h.limit_changes()[0] == (10, 12)
    assert all(8 <= new <= 12 for _, new in h.limit_changes())


async def test_failures_shrink_the_limit_multiplicatively() -> None:
    h = Harness(initial_limit=20, min_limit=4)
    h.saturated_window(0.0, ok=False)
    assert h.events == [LimitChanged("m", 20, 18)]
    for _ in range(30):
        h.saturated_window(0.0, ok=False)
    assert h.limiter.limit == 4


async def test_a_trickle_of_failures_shrinks_in_proportion() -> None:
    h = Harness(initial_limit=20, smoothing=1.0)
    held = h.hold(20)
    for index, permit in enumerate(held):
        permit.release(index % 10 != 0, 0.1)  # 2 of 20 failed
    grown = 20 + math.sqrt(20)
    assert h.limiter.limit == int(grown * (1 - 0.1 * 2 / 20)) == 24


async def test_unusable_rtts_are_not_samples() -> None:
    h = Harness(initial_limit=10, smoothing=1.0)
    held = h.hold(10)
    for permit in held:
        permit.release(True, math.nan)
    assert h.limiter.limit == 10
    assert h.limiter.snapshot()["short_rtt_ms"] == pytest.approx(100.0)  # the first window
    assert h.events == []


# --- min-RTT probes --------------------------------------------------------------------


async def test_the_first_window_sets_nothing_and_starts_the_first_probe() -> None:
    h = Harness(None, initial_limit=20)
    assert (h.limiter.limit, h.probing()) == (20, False)  # a fresh limiter admits as usual
    h.saturated_window(5.0)  # no baseline yet: however slow, it moves nothing
    assert h.limiter.snapshot()["short_rtt_ms"] == pytest.approx(5000.0)
    assert (h.limiter.limit, h.probing()) == (4, True)  # but it starts the probe
    assert h.limit_changes() == [(20, 4)]


async def test_a_probe_pins_the_limit_to_min_limit_and_takes_the_median() -> None:
    h = Harness(None, initial_limit=20, min_limit=3, min_rtt_samples=5)
    h.saturated_window(0.5)
    assert (h.limiter.limit, h.probing()) == (3, True)
    samples = [
        (True, 0.05),
        (False, 0.01),
        (True, math.nan),
        (True, 0.03),
        (True, 0.5),
        (True, 0.04),
    ]
    for ok, rtt_s in samples:  # a failure and an unusable RTT are no samples
        admit_now(h.limiter, CRITICAL).release(ok, rtt_s)
    assert h.probing()
    held = h.hold(3)
    waiter = await h.start(CRITICAL)  # the probe's limit is full
    held[0].release(True, 0.02)  # the fifth sample ends the probe
    await settle()
    assert not h.probing()
    assert h.limiter.snapshot()["min_rtt_ms"] == pytest.approx(40.0)  # the median of 5
    assert h.limit_changes() == [(20, 3), (3, 20)]
    assert waiter.done()  # the restored limit admits the waiter
    assert h.limiter.in_flight == 3


async def test_calls_admitted_before_a_probe_are_no_probe_samples() -> None:
    h = Harness(initial_limit=12, min_rtt_interval_s=1.0, min_rtt_jitter=0.0, min_rtt_samples=3)
    held = h.hold(12)
    await h.clock.advance(1.0)
    for permit in held[:11]:
        permit.release(True, 0.1)
    admit_now(h.limiter, CRITICAL).release(True, 0.1)  # closes the window: the probe starts
    assert (h.limiter.limit, h.probing()) == (4, True)
    held[11].release(True, 5.0)  # admitted before the probe: it may have queued
    assert h.probing()
    for rtt_s in (0.2, 0.3, 0.25):
        admit_now(h.limiter, CRITICAL).release(True, rtt_s)
    assert not h.probing()
    assert h.limiter.snapshot()["min_rtt_ms"] == pytest.approx(250.0)
    grown = int(12 + 0.2 * math.sqrt(12))
    assert h.limit_changes() == [(12, 4), (4, grown)]


async def test_probes_recur_after_the_jittered_interval_and_follow_a_slower_server() -> None:
    h = Harness(initial_limit=10, min_rtt_interval_s=10.0, min_rtt_jitter=0.5, seed=3)
    draws = random.Random(3)
    first_gap = 10.0 * (1 + 0.5 * draws.random())
    await h.clock.advance(first_gap - 0.01)
    h.saturated_window(0.1)
    assert not h.probing()
    await h.clock.advance(0.02)
    h.saturated_window(0.1)
    assert h.probing()
    probe_ended = h.clock.now()
    h.finish_probe(0.3)  # the model became slower: the baseline follows it
    assert h.limiter.snapshot()["min_rtt_ms"] == pytest.approx(300.0)
    second_gap = 10.0 * (1 + 0.5 * draws.random())
    await h.clock.advance(probe_ended + second_gap - h.clock.now() - 0.01)
    h.saturated_window(0.3)
    assert not h.probing()
    await h.clock.advance(0.02)
    h.saturated_window(0.3)
    assert h.probing()


class SteppedClock:
    """Time that a simulation sets directly (it never sleeps or schedules)."""

    def __init__(self) -> None:
        self.time = 0.0

    def now(self) -> float:
        return self.time

    async def sleep(self, seconds: float) -> None:
        raise AssertionError("not used")

    def call_later(self, seconds: float, callback: Callable[[], None]) -> Cancel:
        raise AssertionError("not used")


def try_admit(limiter: AdaptiveLimiter, priority: Priority) -> Permit | None:
    """Admit at once, or None when shed (a limiter without a queue never suspends)."""
    coroutine = limiter.acquire(priority)
    try:
        coroutine.send(None)
    except StopIteration as stopped:
        permit = stopped.value
        assert isinstance(permit, Permit)
        return permit
    except Overloaded:
        return None
    raise AssertionError("acquire suspended")


async def test_at_3x_load_the_limit_settles_near_the_servers_slots_through_probes() -> None:
    """A server of 4 slots of about 20 ms (200 calls/s), offered 600 calls/s for 60 s.

    The limit must settle just above the 4 slots (a queue inside the server
    would only add latency) while keeping the slots busy, also across the
    min-RTT probes that pin it to min_limit now and then.
    """
    slots, service_s, rate, seconds = 4, 0.02, 600.0, 60.0
    clock, rng = SteppedClock(), random.Random(11)
    events: list[Event] = []
    limiter = AdaptiveLimiter(LimiterOptions(queue_size=0), clock, events.append, "m", rng)
    free_at = [0.0] * slots  # when each slot of the server is next free
    finishing: list[tuple[float, int, Permit, float]] = []  # (finish, order, permit, admitted)
    done_at: list[float] = []
    rtts: list[float] = []
    limits: list[int] = []
    for index in range(int(rate * seconds)):
        now = index / rate
        while finishing and finishing[0][0] <= now:
            finished, _, permit, admitted = heapq.heappop(finishing)
            clock.time = finished
            permit.release(True, finished - admitted)
            done_at.append(finished)
            rtts.append(finished - admitted)
        clock.time = now
        limits.append(limiter.limit)
        permit = try_admit(limiter, DEFAULT)
        if permit is None:
            continue
        slot = min(range(slots), key=free_at.__getitem__)
        free_at[slot] = max(now, free_at[slot]) + service_s * rng.uniform(0.9, 1.1)
        heapq.heappush(finishing, (free_at[slot], index, permit, now))
    settled = slice(len(limits) // 6, None)  # after the first 10 s
    goodput = sum(1 for t in done_at if t >= seconds / 6) / (seconds * 5 / 6)
    assert goodput >= 0.9 * slots / service_s
    # About rtt_tolerance (1.1) x the min RTT + rtt_slack_ms (2 ms): where the limit settles.
    assert statistics.mean(rtts[len(rtts) // 6 :]) <= 1.1 * service_s + 0.002 + 0.003
    steady = [limit for limit in limits[settled] if limit != 4]  # 4 is min_limit: probes
    assert min(steady) >= 5
    assert max(steady) <= 7
    probes = [new for old, new in ((e.old, e.new) for e in events if isinstance(e, LimitChanged))]
    assert probes.count(4) >= 3  # every 10 to 15 s after the first


# --- priorities --------------------------------------------------------------------


async def test_sheddable_cannot_exceed_its_share_but_critical_can_fill_the_limit() -> None:
    h = Harness(initial_limit=10, sheddable_share=0.5, default_share=0.9)
    h.hold(5, SHEDDABLE)
    shed_waiter = await h.start(SHEDDABLE)
    assert h.limiter.in_flight == 5
    h.hold(4, DEFAULT)
    default_waiter = await h.start(DEFAULT)
    h.hold(1, CRITICAL)
    assert h.limiter.in_flight == h.limiter.limit == 10
    critical_waiter = await h.start(CRITICAL)
    assert h.limiter.waiting == 3
    for task in (shed_waiter, default_waiter, critical_waiter):
        task.cancel()
    await settle()


async def test_shares_round_down_but_leave_at_least_one_slot() -> None:
    h = Harness(initial_limit=1, min_limit=1, sheddable_share=0.1, default_share=0.1)
    admit_now(h.limiter, SHEDDABLE)  # 0.1 x 1 rounds down to 0, raised to 1
    waiter = await h.start(CRITICAL)
    waiter.cancel()
    await settle()


async def test_waiters_are_served_critical_then_default_then_sheddable_newest_first() -> None:
    h = Harness(initial_limit=10, queue_size=10)
    held = deque(h.hold(10))
    served: list[str] = []

    async def wait(name: str, priority: Priority) -> None:
        held.append(await h.limiter.acquire(priority))
        served.append(name)

    tasks = []
    for name, priority in [
        ("s1", SHEDDABLE),
        ("d1", DEFAULT),
        ("c1", CRITICAL),
        ("d2", DEFAULT),
        ("s2", SHEDDABLE),
        ("c2", CRITICAL),
    ]:
        tasks.append(asyncio.create_task(wait(name, priority)))
        await settle()
    assert h.limiter.waiting == 6
    while not all(task.done() for task in tasks):
        held.popleft().release(True, 0.01)
        await settle()
    assert served == ["c2", "c1", "d2", "d1", "s2", "s1"]  # by priority, newest first
    assert h.limiter.in_flight == len(held)


async def test_a_slot_is_not_given_to_a_waiter_over_its_allowance() -> None:
    h = Harness(initial_limit=10, default_share=0.9)
    held = h.hold(10)
    waiter = await h.start(DEFAULT)
    held[0].release(True, 0.01)
    await settle()
    assert not waiter.done()  # 9 in flight: default may use 9
    held[1].release(True, 0.01)
    await settle()
    assert waiter.done()
    assert h.limiter.in_flight == 9


async def test_a_newcomer_does_not_jump_the_queue_of_its_priority() -> None:
    h = Harness(initial_limit=10)
    held = h.hold(10)
    first = await h.start(CRITICAL)
    held[0].release(True, 0.01)
    late = asyncio.create_task(h.limiter.acquire(CRITICAL))
    await settle()
    assert first.done()
    assert not late.done()
    late.cancel()
    await settle()


# --- fairness between tenants ----------------------------------------------------------


async def test_a_quiet_tenant_is_served_before_a_flooding_one() -> None:
    h = Harness(initial_limit=4)
    flood = [admit_now_for(h.limiter, CRITICAL, "flood") for _ in range(4)]
    f1 = await h.start_for(CRITICAL, "flood")
    q1 = await h.start_for(CRITICAL, "quiet")
    f2 = await h.start_for(CRITICAL, "flood")  # the newest, but its tenant holds 3 slots
    flood.pop().release(True, 0.1)
    await settle()
    assert [q1.done(), f1.done(), f2.done()] == [True, False, False]
    flood.pop().release(True, 0.1)  # flood 2 in flight, quiet 1: flood's turn, newest first
    await settle()
    assert [f2.done(), f1.done()] == [True, False]
    q1.result().release(True, 0.1)
    await settle()
    assert f1.done()
    assert (h.limiter.in_flight, h.limiter.waiting) == (4, 0)


async def test_tenants_with_as_many_in_flight_take_turns() -> None:
    h = Harness(initial_limit=4)
    held = [admit_now_for(h.limiter, CRITICAL, name) for name in ("a", "a", None, None)]
    a1 = await h.start_for(CRITICAL, "a")
    anonymous = await h.start_for(CRITICAL, None)  # anonymous requests are one tenant
    a2 = await h.start_for(CRITICAL, "a")
    held[0].release(True, 0.1)  # "a" 1 in flight, anonymous 2
    await settle()
    assert [a2.done(), a1.done(), anonymous.done()] == [True, False, False]
    held[2].release(True, 0.1)  # 2 in flight each: anonymous has waited longest
    await settle()
    assert [anonymous.done(), a1.done()] == [True, False]
    held[1].release(True, 0.1)
    await settle()
    assert a1.done()


async def test_priority_comes_before_fairness_between_tenants() -> None:
    h = Harness(initial_limit=4)
    held = [admit_now_for(h.limiter, CRITICAL, "flood") for _ in range(4)]
    quiet = await h.start_for(DEFAULT, "quiet")
    flood = await h.start_for(CRITICAL, "flood")
    held[0].release(True, 0.1)
    await settle()
    assert [flood.done(), quiet.done()] == [True, False]
    held[1].release(True, 0.1)
    held[2].release(True, 0.1)  # default may fill 3 of the 4 slots
    await settle()
    assert quiet.done()


async def test_a_full_queue_evicts_the_oldest_waiter_of_the_tenant_holding_most_places() -> None:
    h = Harness(initial_limit=4, queue_size=3)
    h.hold(4)
    f1, f2, f3 = [await h.start_for(DEFAULT, "flood") for _ in range(3)]
    q1 = await h.start_for(DEFAULT, "quiet")
    assert "evicted by fair share" in await shed_reason(f1)
    # flood 2 places, quiet 1: neither may take the other's place any more.
    with pytest.raises(Overloaded, match="queue full"):
        await h.limiter.acquire(DEFAULT, "flood")
    with pytest.raises(Overloaded, match="queue full"):
        await h.limiter.acquire(DEFAULT, "quiet")
    assert h.sheds() == [
        RequestShed("m", DEFAULT, "evicted by fair share"),
        RequestShed("m", DEFAULT, "queue full"),
        RequestShed("m", DEFAULT, "queue full"),
    ]
    for task in (f2, f3, q1):
        task.cancel()
    await settle()
    # A lower priority is evicted first: the oldest waiter of its tenant holding most places.
    s_x = await h.start_for(SHEDDABLE, "x")
    s_y1 = await h.start_for(SHEDDABLE, "y")
    s_y2 = await h.start_for(SHEDDABLE, "y")
    c_x = await h.start_for(CRITICAL, "x")
    assert "evicted by higher priority" in await shed_reason(s_y1)
    assert [s_x.done(), s_y2.done()] == [False, False]
    for task in (s_x, s_y2, c_x):
        task.cancel()
    await settle()
    assert h.limiter.waiting == 0


# --- queue: timeout, full, eviction, cancellation --------------------------------------


async def test_queue_timeout_sheds_with_overloaded_and_an_event() -> None:
    h = Harness(initial_limit=4, queue_timeout_ms=100)
    h.hold(4)
    waiter = await h.start(DEFAULT)
    await h.clock.advance(0.099)
    assert not waiter.done()
    await h.clock.advance(0.001)
    assert "queue timeout" in await shed_reason(waiter)
    assert h.sheds() == [RequestShed("m", DEFAULT, "queue timeout")]
    assert h.limiter.waiting == 0
    assert h.limiter.in_flight == 4


async def test_a_waiter_joining_a_standing_lane_times_out_after_a_min_rtt() -> None:
    h = Harness(0.02, initial_limit=4, queue_timeout_ms=100)
    h.hold(4)
    first = await h.start_for(DEFAULT, "flood")  # t = 0
    await h.clock.advance(0.06)
    second = await h.start_for(DEFAULT, "flood")  # standing 60 ms: not yet a whole timeout
    await h.clock.advance(0.05)  # t = 110 ms
    assert first.done()
    third = await h.start_for(DEFAULT, "flood")  # second kept the lane standing 110 ms
    quiet = await h.start_for(DEFAULT, "quiet")  # its own lane: not standing
    await h.clock.advance(0.025)
    assert third.done()  # after one min RTT, 20 ms
    assert not second.done()
    await h.clock.advance(0.03)  # t = 165 ms
    assert second.done()
    assert not quiet.done()
    await h.clock.advance(0.05)
    assert quiet.done()
    assert [e.reason for e in h.sheds()] == [
        "queue timeout",
        "standing queue timeout",
        "queue timeout",
        "queue timeout",
    ]
    for task in (first, second, third, quiet):
        assert isinstance(task.exception(), Overloaded)


async def assert_a_lane_standing_110_ms_keeps_the_whole_timeout(h: Harness) -> None:
    h.hold(4)
    await h.start(DEFAULT)
    await h.clock.advance(0.06)
    await h.start(DEFAULT)
    await h.clock.advance(0.05)
    late = await h.start(DEFAULT)  # the lane has stood 110 ms
    await h.clock.advance(0.09)
    assert not late.done()
    await h.clock.advance(0.02)
    assert "(queue timeout)" in await shed_reason(late)


async def test_during_a_probe_standing_lanes_keep_the_whole_timeout() -> None:
    h = Harness(0.02, initial_limit=10, min_rtt_interval_s=1.0, min_rtt_jitter=0.0)
    await h.clock.advance(1.01)
    h.saturated_window(0.02)
    assert h.probing()
    await assert_a_lane_standing_110_ms_keeps_the_whole_timeout(h)


async def test_standing_lanes_keep_the_whole_timeout_when_turned_off() -> None:
    h = Harness(0.02, initial_limit=4, queue_timeout_ms=100, standing_timeout_rtts=0)
    await assert_a_lane_standing_110_ms_keeps_the_whole_timeout(h)


async def test_a_full_queue_sheds_a_newcomer_of_no_higher_priority() -> None:
    h = Harness(initial_limit=4, queue_size=2)
    h.hold(4)
    await h.start(DEFAULT)
    await h.start(CRITICAL)
    with pytest.raises(Overloaded, match="queue full"):
        await h.limiter.acquire(DEFAULT)
    with pytest.raises(Overloaded, match="queue full"):
        await h.limiter.acquire(SHEDDABLE)
    assert h.sheds() == [
        RequestShed("m", DEFAULT, "queue full"),
        RequestShed("m", SHEDDABLE, "queue full"),
    ]
    assert h.limiter.waiting == 2


async def test_without_a_queue_over_the_allowance_is_shed_at_once() -> None:
    h = Harness(initial_limit=4, queue_size=0)
    h.hold(4)
    with pytest.raises(Overloaded, match="over limit"):
        await h.limiter.acquire(CRITICAL)
    assert h.sheds() == [RequestShed("m", CRITICAL, "over limit")]


async def test_a_higher_priority_newcomer_evicts_the_oldest_lowest_waiter() -> None:
    # The oldest: with newest-first service it would be served last, if before its timeout.
    h = Harness(initial_limit=4, queue_size=3)
    h.hold(4)
    s1 = await h.start(SHEDDABLE)
    d1 = await h.start(DEFAULT)
    s2 = await h.start(SHEDDABLE)
    d2 = await h.start(DEFAULT)
    assert "evicted by higher priority" in await shed_reason(s1)
    assert not s2.done()
    c2 = await h.start(CRITICAL)
    assert "evicted by higher priority" in await shed_reason(s2)
    c3 = await h.start(CRITICAL)
    assert "evicted by higher priority" in await shed_reason(d1)
    assert not d2.done()
    assert h.sheds() == [
        RequestShed("m", SHEDDABLE, "evicted by higher priority"),
        RequestShed("m", SHEDDABLE, "evicted by higher priority"),
        RequestShed("m", DEFAULT, "evicted by higher priority"),
    ]
    assert h.limiter.waiting == 3
    # An evicted waiter's timer is gone: nothing more is shed when it would have fired.
    for task in (d2, c2, c3):
        task.cancel()
    await h.clock.advance(1.0)
    assert len(h.sheds()) == 3


async def test_a_cancelled_waiter_leaves_the_queue() -> None:
    h = Harness(initial_limit=4)
    held = h.hold(4)
    gone = await h.start(DEFAULT)
    stays = await h.start(SHEDDABLE)
    gone.cancel()
    await settle()
    assert h.limiter.waiting == 1
    assert h.limiter.snapshot()["waiting"] == {"critical": 0, "default": 0, "sheddable": 1}
    await h.clock.advance(1.0)  # the cancelled waiter's timer no longer fires
    assert h.sheds() == [RequestShed("m", SHEDDABLE, "queue timeout")]
    assert "queue timeout" in await shed_reason(stays)
    held[0].release(True, 0.01)
    assert h.limiter.in_flight == 3


async def test_a_waiter_cancelled_before_it_ran_is_skipped_when_a_slot_frees() -> None:
    h = Harness(initial_limit=4)
    held = h.hold(4)
    first = await h.start(DEFAULT)
    second = await h.start(DEFAULT)
    first.cancel()  # its task has not run yet: it is still in the queue
    held[0].release(True, 0.01)
    assert h.limiter.in_flight == 3  # default allowance of 4 is 3
    held[1].release(True, 0.01)
    await settle()
    assert first.cancelled()
    assert second.done()
    assert h.limiter.in_flight == 3
    assert h.limiter.waiting == 0


async def test_a_waiter_cancelled_after_its_grant_frees_the_slot_for_the_next() -> None:
    h = Harness(initial_limit=4)
    held = h.hold(4)
    granted = await h.start(CRITICAL)
    next_in_line = await h.start(CRITICAL)
    held[0].release(True, 0.01)  # the slot goes to `granted`
    assert h.limiter.in_flight == 4
    granted.cancel()  # before it could run and take the permit
    await settle()
    assert granted.cancelled()
    assert next_in_line.done()
    assert h.limiter.in_flight == 4
    assert h.limiter.waiting == 0
    next_in_line.result().release(True, 0.01)
    assert h.limiter.in_flight == 3


async def test_a_growing_limit_admits_several_waiters_at_once() -> None:
    h = Harness(initial_limit=10, smoothing=1.0, queue_size=20)
    held = h.hold(10)
    waiters = [await h.start(CRITICAL) for _ in range(15)]
    for permit in held:
        permit.release(True, 0.1)
    await settle()
    assert h.limiter.limit == 13
    assert sum(task.done() for task in waiters) == 13
    assert (h.limiter.in_flight, h.limiter.waiting) == (13, 2)
    for task in waiters:
        if task.done():
            task.result().cancel()
        else:
            task.cancel()
    await settle()
    assert (h.limiter.in_flight, h.limiter.waiting) == (0, 0)


# --- permits, disabled, retry-after ------------------------------------------------------


async def test_release_and_cancel_are_idempotent() -> None:
    h = Harness(initial_limit=10, smoothing=1.0)
    held = h.hold(10)
    for _ in range(10):
        held[0].release(True, 0.1)  # one sample, not a whole window
        held[0].cancel()
    held[1].cancel()
    held[1].release(True, 0.1)
    assert h.limiter.in_flight == 8
    assert h.events == []


async def test_disabled_limiter_admits_everything_and_never_adapts() -> None:
    h = Harness(enabled=False, initial_limit=4, queue_size=0)
    held = [admit_now(h.limiter, SHEDDABLE) for _ in range(500)]
    assert h.limiter.in_flight == 500
    for permit in held:
        permit.release(False, 10.0)
    assert (h.limiter.in_flight, h.limiter.limit) == (0, 4)
    assert h.events == []
    assert h.limiter.snapshot()["enabled"] is False


async def test_retry_after_estimates_the_queue_drain_time() -> None:
    h = Harness(None, initial_limit=10, queue_size=4, queue_timeout_ms=200)
    h.hold(10)
    waiters = [await h.start(CRITICAL) for _ in range(4)]
    with pytest.raises(Overloaded) as shed:
        await h.limiter.acquire(CRITICAL)
    # No RTT known yet: the 200 ms queue timeout stands in for it.
    assert shed.value.retry_after_s == pytest.approx(0.2 * (4 + 1) / 10)
    for task in waiters:
        task.cancel()
    await settle()


@pytest.mark.parametrize(
    ("rtt_s", "retry_after_s"), [(2.0, 2.0 / 13), (0.001, 0.05), (1000.0, 30.0)]
)
async def test_retry_after_uses_the_short_rtt_within_bounds(
    rtt_s: float, retry_after_s: float
) -> None:
    h = Harness(rtt_s, initial_limit=10, smoothing=1.0, queue_size=0)
    h.saturated_window(rtt_s)  # the limit grows to 13
    h.hold(h.limiter.limit)
    with pytest.raises(Overloaded) as shed:
        await h.limiter.acquire(CRITICAL)
    assert shed.value.retry_after_s == pytest.approx(retry_after_s)


# --- options and snapshot --------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"initial_limit": 0},
        {"initial_limit": 100_001},
        {"min_limit": 0},
        {"min_limit": 10, "max_limit": 5, "initial_limit": 7},
        {"initial_limit": 2, "min_limit": 4},
        {"initial_limit": 2000, "max_limit": 1024},
        {"smoothing": 0},
        {"smoothing": 1.5},
        {"rtt_tolerance": 0.9},
        {"rtt_tolerance": math.inf},
        {"long_window": 9},
        {"queue_size": -1},
        {"queue_timeout_ms": 0},
        {"sheddable_share": 0},
        {"sheddable_share": 1.1},
        {"default_share": 0},
        {"sheddable_share": 0.9, "default_share": 0.5},
        {"min_rtt_interval_s": 0},
        {"min_rtt_interval_s": math.inf},
        {"min_rtt_jitter": -0.1},
        {"min_rtt_jitter": 1.1},
        {"min_rtt_samples": 0},
        {"standing_timeout_rtts": -1},
        {"standing_timeout_rtts": math.nan},
        {"window_min_ms": -1},
        {"knee_hold_s": -1},
        {"knee_hold_s": 4, "knee_hold_max_s": 2},
        {"queue_limit": 10},
    ],
)
def test_invalid_options_are_rejected(options: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        LimiterOptions.model_validate(options)


def test_option_errors_name_the_fields() -> None:
    with pytest.raises(ValidationError, match=r"max_limit \(5\) must be >= min_limit \(10\)"):
        LimiterOptions(min_limit=10, max_limit=5, initial_limit=7)
    with pytest.raises(ValidationError, match=r"initial_limit \(2\) must be within"):
        LimiterOptions(initial_limit=2)


def test_boundary_options_are_accepted() -> None:
    options = LimiterOptions(
        initial_limit=1,
        min_limit=1,
        max_limit=1,
        smoothing=1.0,
        rtt_tolerance=1.0,
        long_window=10,
        queue_size=0,
        sheddable_share=1.0,
        default_share=1.0,
        min_rtt_jitter=0.0,
        min_rtt_samples=1,
        standing_timeout_rtts=0.0,
    )
    assert options.max_limit == options.min_limit


async def test_snapshot() -> None:
    h = Harness(None, initial_limit=6, queue_size=1)
    assert h.limiter.snapshot() == {
        "enabled": True,
        "limit": 6,
        "in_flight": 0,
        "waiting": {"critical": 0, "default": 0, "sheddable": 0},
        "short_rtt_ms": None,
        "min_rtt_ms": None,
        "probing_min_rtt": False,
        "shed": {"critical": 0, "default": 0, "sheddable": 0},
    }
    h.saturated_window(0.05)
    assert h.limiter.snapshot()["probing_min_rtt"] is True
    h.finish_probe(0.05)
    h.saturated_window(0.05)
    h.hold(h.limiter.limit)
    waiter = await h.start(DEFAULT)
    with pytest.raises(Overloaded):
        await h.limiter.acquire(SHEDDABLE)
    limit = h.limiter.limit
    assert h.limiter.snapshot() == {
        "enabled": True,
        "limit": limit,
        "in_flight": limit,
        "waiting": {"critical": 0, "default": 1, "sheddable": 0},
        "short_rtt_ms": pytest.approx(50.0),
        "min_rtt_ms": pytest.approx(50.0),
        "probing_min_rtt": False,
        "shed": {"critical": 0, "default": 0, "sheddable": 1},
    }
    waiter.cancel()
    await settle()


# --- property ------------------------------------------------------------------------

operation = st.one_of(
    st.tuples(
        st.just("acquire"), st.sampled_from(list(Priority)), st.sampled_from(["a", "b", None])
    ),
    st.tuples(st.just("release"), st.integers(0, 50), st.booleans(), st.floats(0.001, 1.0)),
    st.tuples(st.just("cancel_permit"), st.integers(0, 50)),
    st.tuples(st.just("cancel_waiter"), st.integers(0, 50)),
    st.tuples(st.just("advance"), st.floats(0.0, 0.08)),
)


@settings(max_examples=200, deadline=None)
@given(
    initial_limit=st.integers(1, 8),
    queue_size=st.integers(0, 4),
    smoothing=st.sampled_from([0.2, 1.0]),
    probe_samples=st.integers(1, 4),
    operations=st.lists(operation, max_size=80),
)
def test_limiter_invariants_hold_for_any_sequence(
    initial_limit: int,
    queue_size: int,
    smoothing: float,
    probe_samples: int,
    operations: list[tuple[Any, ...]],
) -> None:
    h = Harness(
        0.02,  # a min RTT under the queue timeout: standing lanes time out sooner
        initial_limit=initial_limit,
        min_limit=1,
        max_limit=12,
        queue_size=queue_size,
        smoothing=smoothing,
        queue_timeout_ms=50,
        min_rtt_interval_s=0.1,  # probes come and go during the sequence
        min_rtt_samples=probe_samples,
    )
    limiter = h.limiter

    async def run() -> None:
        held: list[Permit] = []
        pending: list[asyncio.Task[Permit]] = []
        for op in operations:
            await apply(op, held, pending)
            await settle()
            if collect(held, pending):
                # Grants come after the one limit update a step can make.
                assert limiter.in_flight <= limiter.limit
            assert limiter.in_flight == len(held) >= 0
            assert limiter.waiting == len(pending) <= queue_size
            assert 1 <= limiter.limit <= 12
            waiting = limiter.snapshot()["waiting"]
            assert isinstance(waiting, dict)
            assert sum(waiting.values()) == limiter.waiting
        for task in pending:
            task.cancel()
        await settle()
        assert limiter.waiting == 0
        for permit in held:
            permit.release(True, 0.01)
        assert limiter.in_flight == 0

    async def apply(
        op: tuple[Any, ...], held: list[Permit], pending: list[asyncio.Task[Permit]]
    ) -> None:
        kind = op[0]
        if kind == "acquire":
            pending.append(asyncio.create_task(limiter.acquire(op[1], op[2])))
        elif kind == "advance":
            await h.clock.advance(op[1])
        elif kind == "release" and held:
            held.pop(op[1] % len(held)).release(op[2], op[3])
        elif kind == "cancel_permit" and held:
            held.pop(op[1] % len(held)).cancel()
        elif kind == "cancel_waiter" and pending:
            pending[op[1] % len(pending)].cancel()

    def collect(held: list[Permit], pending: list[asyncio.Task[Permit]]) -> int:
        admitted = 0
        for task in [task for task in pending if task.done()]:
            pending.remove(task)
            if task.cancelled():
                continue
            if task.exception() is None:
                held.append(task.result())
                admitted += 1
            else:
                assert isinstance(task.exception(), Overloaded)
        return admitted

    asyncio.run(run())
