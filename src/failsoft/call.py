"""What travels with one request through the stages: identity, deadline, bus, clock.

``client_limited`` says the client asked for a deadline shorter than the
model's own ``timeout_ms``: when that deadline runs out mid-attempt, the
client cut the call short and no replica is charged for it.

The version pipeline leaves the outcome of its model call in ``sample`` so
that admission control can feed the limiter with real model calls only
(None: no replica was judged, as for a cache hit, a shed or a poison input).
"""

from __future__ import annotations

from dataclasses import dataclass

from failsoft.clock import Clock
from failsoft.observe.events import EventBus


@dataclass(slots=True)
class Call:
    request_id: str
    model: str
    version: str
    deadline: float  # seconds on ``clock``
    bus: EventBus
    clock: Clock
    client_limited: bool = False
    sample: bool | None = None  # the model call succeeded (True) or a replica failed (False)

    def remaining(self) -> float:
        """Seconds left before the deadline (negative once it has passed)."""
        return self.deadline - self.clock.now()
