from __future__ import annotations

import random

from failsoft.clock import ManualClock
from failsoft.pipeline.throttle import AdaptiveThrottle, ThrottleOptions


def make(**options: float) -> tuple[AdaptiveThrottle, ManualClock]:
    clock = ManualClock()
    return AdaptiveThrottle(ThrottleOptions(**options), clock, random.Random(3)), clock


def test_healthy_backend_is_never_throttled() -> None:
    throttle, _ = make()
    for _ in range(1000):
        assert throttle.allow()
        throttle.accepted()
    assert throttle.rejection_probability() == 0.0


def test_refusing_backend_is_throttled_with_the_sre_probability() -> None:
    throttle, _ = make(k=2.0)
    for _ in range(100):
        throttle.allow()
        throttle.accepted()
    sent = sum(throttle.allow() for _ in range(1000))  # the backend accepts none of these
    # With 100 accepts, k=2 lets about 200 requests pass before rejections dominate.
    assert 200 <= sent < 450
    assert throttle.rejection_probability() > 0.7


async def test_window_forgets_old_refusals() -> None:
    throttle, clock = make(window_s=10.0)
    for _ in range(500):
        throttle.allow()  # all refused by the backend
    assert throttle.rejection_probability() > 0.9
    await clock.advance(12.0)
    assert throttle.rejection_probability() == 0.0


def test_disabled_throttle_always_allows() -> None:
    throttle, _ = make(enabled=False)
    assert all(throttle.allow() for _ in range(100))
    assert throttle.rejection_probability() == 0.0
