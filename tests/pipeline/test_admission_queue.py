from __future__ import annotations

import asyncio

from failsoft.pipeline.admission_queue import AdmissionQueue, Priority, Waiter

CRITICAL, DEFAULT, SHEDDABLE = Priority.CRITICAL, Priority.DEFAULT, Priority.SHEDDABLE


def waiter(priority: Priority, tenant: str | None) -> Waiter:
    return Waiter(priority, tenant, asyncio.get_running_loop().create_future())


def queued(queue: AdmissionQueue, *entries: tuple[Priority, str | None]) -> list[Waiter]:
    waiters = [waiter(priority, tenant) for priority, tenant in entries]
    for one in waiters:
        queue.push(one, 0.0)
    return waiters


async def test_counts_by_priority_and_removal() -> None:
    queue = AdmissionQueue()
    a, b, c = queued(queue, (DEFAULT, "a"), (DEFAULT, "b"), (SHEDDABLE, None))
    assert (len(queue), queue.waiting(DEFAULT), queue.waiting(SHEDDABLE)) == (3, 2, 1)
    assert queue.remove(b)
    assert not queue.remove(b)  # already gone
    assert (len(queue), queue.waiting(DEFAULT)) == (2, 1)
    assert queue.remove(a)
    assert queue.remove(c)
    assert len(queue) == 0
    assert queue.next(DEFAULT) is None


async def test_one_tenant_is_served_newest_first() -> None:
    queue = AdmissionQueue()
    first, second, third = queued(queue, (DEFAULT, "a"), (DEFAULT, "a"), (DEFAULT, "a"))
    served = []
    while (one := queue.next(DEFAULT)) is not None:
        queue.remove(one)
        served.append(one)
    assert served == [third, second, first]


async def test_the_tenant_with_fewest_calls_in_flight_goes_first() -> None:
    queue = AdmissionQueue()
    for _ in range(3):
        queue.started("flood")
    queue.started("quiet")
    quiet, flood = queued(queue, (DEFAULT, "quiet"), (DEFAULT, "flood"))
    assert queue.next(DEFAULT) is quiet  # 1 in flight against 3, though older
    queue.started("quiet")
    queue.started("quiet")
    queue.started("quiet")
    assert queue.next(DEFAULT) is flood  # 4 against 3
    queue.finished("flood")
    queue.finished("flood")
    assert (queue.in_flight("flood"), queue.in_flight("quiet"), queue.in_flight("x")) == (1, 4, 0)


async def test_on_a_tie_in_flight_the_tenant_waiting_longest_takes_its_turn() -> None:
    queue = AdmissionQueue()
    a1, b1 = queued(queue, (DEFAULT, "a"), (DEFAULT, "b"))
    assert queue.next(DEFAULT) is a1
    a2 = queued(queue, (DEFAULT, "a"))[0]
    assert queue.next(DEFAULT) is b1  # "a" sent again: "b" has waited longer
    queue.remove(b1)
    assert queue.next(DEFAULT) is a2  # then "a", newest first


async def test_priorities_are_separate_lanes() -> None:
    queue = AdmissionQueue()
    critical, default = queued(queue, (CRITICAL, "a"), (DEFAULT, "b"))
    assert queue.next(CRITICAL) is critical
    assert queue.next(DEFAULT) is default
    assert queue.next(SHEDDABLE) is None


async def test_a_victim_comes_from_the_least_important_lower_priority_first() -> None:
    queue = AdmissionQueue()
    x, y1, y2, default_x = queued(
        queue, (SHEDDABLE, "x"), (SHEDDABLE, "y"), (SHEDDABLE, "y"), (DEFAULT, "x")
    )
    # The oldest waiter of the tenant holding most sheddable places, not the oldest overall.
    assert queue.victim(CRITICAL, "z") is y1
    assert queue.victim(DEFAULT, "x") is y1
    for one in (x, y1, y2):
        queue.remove(one)
    assert queue.victim(CRITICAL, "x") is default_x  # then the next priority up
    assert queue.victim(DEFAULT, "y") is None


async def test_within_a_priority_only_a_tenant_with_two_more_places_loses_one() -> None:
    queue = AdmissionQueue()
    f1, _, _ = queued(queue, (DEFAULT, "flood"), (DEFAULT, "flood"), (DEFAULT, "flood"))
    assert queue.victim(DEFAULT, "flood") is None  # never evicts its own tenant
    assert queue.victim(DEFAULT, "quiet") is f1  # 3 places against none
    assert queue.victim(SHEDDABLE, "quiet") is None  # a lower priority evicts nobody
    queued(queue, (DEFAULT, "quiet"), (DEFAULT, "quiet"))
    assert queue.victim(DEFAULT, "quiet") is None  # 3 against 2: no back and forth
    assert queue.victim(DEFAULT, None) is f1  # the anonymous tenant holds no place


async def test_a_lane_stands_while_it_has_not_been_empty() -> None:
    queue = AdmissionQueue()
    a1, a2, b1 = waiter(DEFAULT, "a"), waiter(DEFAULT, "a"), waiter(DEFAULT, "b")
    assert queue.push(a1, 10.0) == 0.0
    assert queue.push(a2, 10.5) == 0.5
    assert queue.push(b1, 10.5) == 0.0  # every tenant and priority has its own lane
    queue.remove(a1)
    assert queue.push(waiter(DEFAULT, "a"), 11.0) == 1.0  # a2 kept it standing
    queue.remove(a2)
    assert queue.push(waiter(CRITICAL, "a"), 11.0) == 0.0
