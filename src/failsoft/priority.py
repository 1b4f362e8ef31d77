"""How urgent a request is: one type for tenants, admission and the limiter."""

from __future__ import annotations

from enum import StrEnum


class Priority(StrEnum):
    CRITICAL = "critical"
    DEFAULT = "default"
    SHEDDABLE = "sheddable"


# Most important first: the order waiters are served in.
ORDER = (Priority.CRITICAL, Priority.DEFAULT, Priority.SHEDDABLE)
RANK = {Priority.SHEDDABLE: 0, Priority.DEFAULT: 1, Priority.CRITICAL: 2}


def capped(requested: Priority, ceiling: Priority) -> Priority:
    """The requested priority, or the ceiling when the request asks for more."""
    return requested if RANK[requested] <= RANK[ceiling] else ceiling
