from __future__ import annotations

import math

from failsoft.clock import ManualClock
from failsoft.pipeline.knee import Knee


def knee(hold_s: float = 1.0, max_hold_s: float = 8.0) -> tuple[Knee, ManualClock]:
    clock = ManualClock()
    return Knee(clock, hold_s, max_hold_s), clock


async def test_queueing_once_is_only_a_suspect() -> None:
    k, _ = knee()
    k.queued(6)
    assert k.level == 0
    assert k.ceiling() == math.inf


async def test_queueing_twice_in_a_row_holds_the_limit_below_that_level() -> None:
    k, clock = knee(hold_s=1.0)
    k.queued(6)
    k.queued(6)
    assert k.level == 6
    assert k.ceiling() == 5.5
    await clock.advance(0.999)
    assert k.ceiling() == 5.5
    await clock.advance(0.001)
    assert k.ceiling() == math.inf  # the limit may test the knee again
    assert k.level == 6


async def test_each_repeat_at_the_knee_doubles_the_hold_up_to_the_cap() -> None:
    k, clock = knee(hold_s=1.0, max_hold_s=5.0)
    k.queued(6)
    holds = []
    for _ in range(5):
        k.queued(6)
        holds.append(k.hold_s)
        await clock.advance(k.hold_s)
    assert holds == [1.0, 2.0, 4.0, 5.0, 5.0]


async def test_passing_at_the_knee_forgets_it() -> None:
    k, clock = knee()
    k.queued(6)
    k.queued(6)
    await clock.advance(1.0)
    k.passed(5)  # below the knee: says nothing about it
    assert k.level == 6
    k.passed(6)
    assert (k.level, k.hold_s, k.ceiling()) == (0, 0.0, math.inf)
    k.queued(6)  # a fresh start: once is a suspect again
    assert k.level == 0


async def test_a_pass_between_two_queueings_makes_neither_a_knee() -> None:
    k, _ = knee()
    k.queued(6)
    k.passed(6)
    k.queued(6)
    assert k.level == 0


async def test_a_stall_below_the_knee_keeps_the_knee_and_its_hold() -> None:
    k, clock = knee(hold_s=1.0)
    k.queued(6)
    k.queued(6)
    k.queued(6)  # hold 2 s
    k.queued(5)  # once, one level down: an event-loop stall, most likely
    assert (k.level, k.hold_s, k.ceiling()) == (6, 2.0, 5.5)
    k.passed(5)
    await clock.advance(2.0)
    k.queued(6)
    assert k.hold_s == 4.0  # the ladder went on


async def test_a_knee_can_move_down_when_a_lower_level_queues_twice() -> None:
    k, _ = knee(hold_s=1.0)
    k.queued(6)
    k.queued(6)
    k.queued(4)
    k.queued(4)
    assert (k.level, k.hold_s, k.ceiling()) == (4, 1.0, 3.5)


async def test_a_zero_hold_never_caps_the_limit() -> None:
    k, _ = knee(hold_s=0.0, max_hold_s=0.0)
    for _ in range(3):
        k.queued(6)
    assert k.level == 6
    assert k.ceiling() == math.inf
