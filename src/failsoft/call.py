"""What travels with one request through the stages: identity, deadline, bus."""

from __future__ import annotations

import time
from dataclasses import dataclass

from failsoft.observe.events import EventBus


@dataclass(slots=True)
class Call:
    request_id: str
    model: str
    version: str
    deadline: float  # time.monotonic() seconds
    bus: EventBus

    def remaining(self) -> float:
        """Seconds left before the deadline (negative once it has passed)."""
        return self.deadline - time.monotonic()
