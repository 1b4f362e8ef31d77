from __future__ import annotations

import asyncio
import math
from collections import deque
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from failsoft.clock import ManualClock, settle
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
    def __init__(self, **options: Any) -> None:
        self.clock = ManualClock()
        self.events: list[Event] = []
        self.limiter = AdaptiveLimiter(
            LimiterOptions(**options), self.clock, self.events.append, "m"
        )

    def hold(self, count: int, priority: Priority = CRITICAL) -> list[Permit]:
        """Permits that must be granted at once."""
        return [admit_now(self.limiter, priority) for _ in range(count)]

    async def start(self, priority: Priority) -> asyncio.Task[Permit]:
        """An acquire that is expected to wait in the queue."""
        task = asyncio.create_task(self.limiter.acquire(priority))
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


def baseline(h: Harness, rtt_s: float = 0.1, windows: int = 10) -> None:
    for _ in range(windows):
        h.saturated_window(rtt_s)


async def test_limit_shrinks_when_short_rtt_exceeds_the_tolerance() -> None:
    h = Harness(initial_limit=40, max_limit=40, smoothing=1.0)
    baseline(h)
    assert h.limiter.limit == 40
    h.saturated_window(0.3)  # 3x the baseline, tolerance 1.5
    long = 0.1 + (0.3 - 0.1) * 2 / 601
    gradient = 1.5 * long / 0.3
    assert h.limiter.limit == int(40 * gradient + math.sqrt(40)) == 26
    assert h.events == [LimitChanged("m", 40, 26)]
    snapshot = h.limiter.snapshot()
    assert snapshot["short_rtt_ms"] == pytest.approx(300.0)
    assert snapshot["long_rtt_ms"] == pytest.approx(long * 1000)


async def test_rtt_within_the_tolerance_does_not_shrink_the_limit() -> None:
    h = Harness(initial_limit=40, max_limit=40, smoothing=1.0)
    baseline(h)
    for _ in range(5):
        h.saturated_window(0.14)
    assert h.limiter.limit == 40
    assert h.events == []


async def test_one_window_never_more_than_halves_the_limit() -> None:
    h = Harness(initial_limit=100, max_limit=100, min_limit=1, smoothing=1.0)
    baseline(h)
    h.saturated_window(100.0)
    assert h.limiter.limit == int(100 * 0.5 + 10)


async def test_limit_stays_within_min_and_max() -> None:
    h = Harness(initial_limit=10, min_limit=8, max_limit=12, smoothing=1.0)
    baseline(h)
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
    assert h.limiter.snapshot()["short_rtt_ms"] is None


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
    h = Harness(initial_limit=10, queue_size=4, queue_timeout_ms=200)
    h.hold(10)
    waiters = [await h.start(CRITICAL) for _ in range(4)]
    with pytest.raises(Overloaded) as shed:
        await h.limiter.acquire(CRITICAL)
    # No RTT known yet: the 200 ms queue timeout stands in for it.
    assert shed.value.retry_after_s == pytest.approx(0.2 * (4 + 1) / 10)
    for task in waiters:
        task.cancel()
    await settle()


@pytest.mark.parametrize(("rtt_s", "retry_after_s"), [(2.0, 0.2), (0.001, 0.05), (1000.0, 30.0)])
async def test_retry_after_uses_the_short_rtt_within_bounds(
    rtt_s: float, retry_after_s: float
) -> None:
    h = Harness(initial_limit=10, queue_size=0)
    h.saturated_window(rtt_s)
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
    )
    assert options.max_limit == options.min_limit


async def test_snapshot() -> None:
    h = Harness(initial_limit=4, queue_size=1)
    assert h.limiter.snapshot() == {
        "enabled": True,
        "limit": 4,
        "in_flight": 0,
        "waiting": {"critical": 0, "default": 0, "sheddable": 0},
        "short_rtt_ms": None,
        "long_rtt_ms": None,
        "shed": {"critical": 0, "default": 0, "sheddable": 0},
    }
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
        "long_rtt_ms": pytest.approx(50.0),
        "shed": {"critical": 0, "default": 0, "sheddable": 1},
    }
    waiter.cancel()
    await settle()


# --- property ------------------------------------------------------------------------

operation = st.one_of(
    st.tuples(st.just("acquire"), st.sampled_from(list(Priority))),
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
    operations=st.lists(operation, max_size=80),
)
def test_limiter_invariants_hold_for_any_sequence(
    initial_limit: int,
    queue_size: int,
    smoothing: float,
    operations: list[tuple[Any, ...]],
) -> None:
    h = Harness(
        initial_limit=initial_limit,
        min_limit=1,
        max_limit=12,
        queue_size=queue_size,
        smoothing=smoothing,
        queue_timeout_ms=50,
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
            pending.append(asyncio.create_task(limiter.acquire(op[1])))
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
