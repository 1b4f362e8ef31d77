"""The bounded admission queue of a limiter: by priority first, fair between tenants within one.

Waiters are kept in lanes, one per priority and tenant. Which waiter gets a
freed slot:

- the most important priority with waiters first (critical > default >
  sheddable): fairness between tenants never overrides priority;
- within it, the tenant with the fewest calls in flight (max-min fairness of
  the limit's slots), so a tenant that floods the queue cannot starve a quiet
  one: the quiet tenant's next waiter is served at the next free slot;
  on a tie, the tenant whose newest waiter has waited longest, so that tied
  tenants take turns, and a tenant sending often does not win every tie;
- within the tenant, its newest waiter (under overload the oldest are about to
  time out anyway; serving the newest keeps admitted latency short, as
  Facebook's adaptive LIFO does).

When the queue is full, a newcomer may take the place of (evict) the oldest
waiter of the tenant holding the most places in the least important priority
below its own. Without one, it may evict within its own priority from another
tenant that holds at least two more places than the newcomer's tenant: a
flooding tenant's burst cannot lock a quiet tenant out of a full queue, and
two tenants never evict each other back and forth.

The queue also tells how long a lane has been *standing*: never empty since
its first waiter arrived (CoDel's measure, as in Facebook's adaptive LIFO).
The limiter shortens the timeout of waiters that join a lane standing for a
whole queue timeout: that tenant is offering more than its share steadily,
and its waiters, served newest first, would mostly time out anyway.

Choosing the next waiter or a victim, and counting the waiters of a priority,
scan the tenants waiting at a priority: O(tenants), and tenants come from the
configuration, so that stays small. Queueing and removing a waiter are O(1).
A tenant is known by its name; None is the anonymous tenant.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import TYPE_CHECKING

from failsoft.clock import Cancel
from failsoft.priority import ORDER, RANK, Priority

if TYPE_CHECKING:
    from failsoft.errors import Overloaded
    from failsoft.pipeline.limiter import Permit


TenantKey = str | None  # a tenant's name; None for anonymous requests
_NOBODY = object()  # excludes no tenant


def _noop() -> None:
    pass


class Waiter:
    __slots__ = ("cancel_timer", "future", "priority", "seq", "tenant")

    def __init__(
        self,
        priority: Priority,
        tenant: TenantKey,
        future: asyncio.Future[Permit | Overloaded],
    ) -> None:
        self.priority = priority
        self.tenant = tenant
        # Resolves to the permit when granted a slot, or to the error to raise when shed.
        self.future = future
        self.cancel_timer: Cancel = _noop
        self.seq = 0  # arrival order, set by the queue


class _Lane:
    """One tenant's waiters at one priority, oldest first."""

    __slots__ = ("since", "waiters")

    def __init__(self, since: float) -> None:
        self.since = since  # when its first waiter arrived: it has not been empty since
        self.waiters: OrderedDict[Waiter, None] = OrderedDict()


class AdmissionQueue:
    """Waiters by priority and tenant, and every tenant's calls in flight. Not thread-safe."""

    __slots__ = ("_arrivals", "_count", "_in_flight", "_lanes")

    def __init__(self) -> None:
        self._lanes: dict[Priority, dict[TenantKey, _Lane]] = {p: {} for p in ORDER}
        self._in_flight: dict[TenantKey, int] = {}
        self._count = 0
        self._arrivals = 0

    def __len__(self) -> int:
        return self._count

    def waiting(self, priority: Priority) -> int:
        return sum(len(lane.waiters) for lane in self._lanes[priority].values())

    def in_flight(self, tenant: TenantKey) -> int:
        return self._in_flight.get(tenant, 0)

    def started(self, tenant: TenantKey) -> None:
        """One call of ``tenant`` was admitted."""
        self._in_flight[tenant] = self._in_flight.get(tenant, 0) + 1

    def finished(self, tenant: TenantKey) -> None:
        """One admitted call of ``tenant`` gave its slot back."""
        left = self._in_flight[tenant] - 1
        if left:
            self._in_flight[tenant] = left
        else:
            del self._in_flight[tenant]

    def push(self, waiter: Waiter, now: float) -> float:
        """Queue the waiter; returns how long its lane has been standing (0.0 if it was empty)."""
        self._arrivals += 1
        waiter.seq = self._arrivals
        lanes = self._lanes[waiter.priority]
        lane = lanes.get(waiter.tenant)
        if lane is None:
            lane = lanes[waiter.tenant] = _Lane(now)
        lane.waiters[waiter] = None
        self._count += 1
        return now - lane.since

    def remove(self, waiter: Waiter) -> bool:
        """Take the waiter out of the queue; False if it was not in it."""
        lanes = self._lanes[waiter.priority]
        lane = lanes.get(waiter.tenant)
        if lane is None or waiter not in lane.waiters:
            return False
        del lane.waiters[waiter]
        if not lane.waiters:
            del lanes[waiter.tenant]
        self._count -= 1
        return True

    def next(self, priority: Priority) -> Waiter | None:
        """The waiter of ``priority`` to serve next (it stays queued), or None."""
        lanes = self._lanes[priority]
        if not lanes:
            return None
        if len(lanes) == 1:
            lane = next(iter(lanes.values()))
        else:
            in_flight = self._in_flight
            lane = min(
                lanes.items(),
                key=lambda item: (in_flight.get(item[0], 0), next(reversed(item[1].waiters)).seq),
            )[1]
        return next(reversed(lane.waiters))

    def victim(self, priority: Priority, tenant: TenantKey) -> Waiter | None:
        """The waiter a newcomer of ``priority`` and ``tenant`` may evict from a full queue."""
        rank = RANK[priority]
        for lower in reversed(ORDER):
            if RANK[lower] >= rank:
                break
            largest = self._largest(lower, _NOBODY)
            if largest is not None:
                return next(iter(largest))
        own = self._lanes[priority].get(tenant)
        largest = self._largest(priority, tenant)
        if largest is not None and len(largest) >= (len(own.waiters) if own else 0) + 2:
            return next(iter(largest))
        return None

    def _largest(self, priority: Priority, besides: object) -> OrderedDict[Waiter, None] | None:
        """The waiters of the longest lane of ``priority`` but tenant ``besides``'s, if any."""
        best: OrderedDict[Waiter, None] | None = None
        for tenant, lane in self._lanes[priority].items():
            if tenant != besides and (best is None or len(lane.waiters) > len(best)):
                best = lane.waiters
        return best
