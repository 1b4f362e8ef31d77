"""When a process backend adds or removes a worker: a pure state machine.

The policy reads failsoft's own signals, sampled by the driver
(``backends.autoscale``) every ``interval_ms`` from the model's adaptive limiter:

- *utilization*: ``(in flight + waiting) / limit``. By Little's law the
  limiter's capacity estimate is ``limit / RTT`` and the offered rate is
  ``in flight / RTT``, so this ratio is demand over estimated capacity;
- *queueing*: requests waiting at the limit, the step before any shed;
- *latency inflation*: the limiter's short RTT over its probed min RTT, the
  gradient it sets the limit by. Calls queue behind the limit inside the
  workers too (until the limit has come down to the knee): the RTT shows it
  before the limiter's own queue does;
- *sheds* and *completions* (cumulative counters): throughput actually served.

Scale up (one worker at a time) when, over the last ``window_s``, mean
utilization reached ``scale_up_utilization``, or the mean RTT inflation
``scale_up_rtt_ratio``, or requests queued at the limit in ``queued_share`` of
the samples, or any request was shed. Samples taken during a min-RTT probe
(the limit is cut to ``min_limit`` on purpose) are left out. The queue fills
before the limiter sheds (it sheds a waiter only after ``queue_timeout_ms``),
so a queue building at the limit starts a worker before the first shed.

Scale down (one at a time) once nothing queued or was shed for
``down_cooldown_s``, the last change is that old too, and the load would fit
in one worker fewer under ``scale_down_utilization``.

Whenever the workers are saturated (a scale-up decision, or a backlog lasting
``RATE_S``), the calls served per second per worker are remembered (the most
seen): a scale-down also needs the current rate within
``scale_down_utilization`` of what one worker fewer would serve. The limit
alone cannot say so: it has a floor, and holds below a knee.

A CPU-bound model gains nothing from more workers than cores. Two guards:
``cpu_bound: true`` caps the workers at the core count; and every scale-up
made under saturation is *checked*: ``up_cooldown_s`` after the new worker
took traffic, if the model is still saturated and its served throughput did
not rise by at least ``min_gain`` of the expected ``1/n``, the worker is
taken back and the count is capped there for ``ceiling_hold_s``.

Time is passed in (the driver's injected clock), so this is tested without
sleeping or processes.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import Field, model_validator

from failsoft._options import StrictModel

__all__ = ["AutoscaleOptions", "AutoscalePolicy", "Decision", "Sample"]

RATE_S = 2.0  # served throughput is measured over this long (a shorter window is noise)

Replicas = Annotated[int, Field(ge=1, le=64)]
Seconds = Annotated[float, Field(gt=0, le=86_400, allow_inf_nan=False)]
Share = Annotated[float, Field(gt=0, le=10, allow_inf_nan=False)]


class AutoscaleOptions(StrictModel):
    min_replicas: Replicas = 1
    max_replicas: Replicas = 4
    standby: Annotated[
        int,
        Field(ge=0, le=8, description="workers kept started out of rotation, for fast scale-up"),
    ] = 1
    interval_ms: Annotated[float, Field(ge=10, le=60_000, allow_inf_nan=False)] = 100.0
    window_s: Seconds = 1.0
    scale_up_utilization: Share = 0.9
    queued_share: Annotated[float, Field(gt=0, le=1)] = 0.3
    scale_up_rtt_ratio: Annotated[float, Field(gt=1, le=1000, allow_inf_nan=False)] = 2.0
    scale_down_utilization: Share = 0.5
    up_cooldown_s: Seconds = 3.0
    down_cooldown_s: Seconds = 30.0
    cpu_bound: Annotated[
        bool, Field(description="never run more workers than the machine has cores")
    ] = False
    min_gain: Annotated[float, Field(ge=0, le=1)] = 0.25
    ceiling_hold_s: Seconds = 300.0

    @model_validator(mode="after")
    def _consistent(self) -> AutoscaleOptions:
        if self.max_replicas < self.min_replicas:
            raise ValueError(
                f"autoscale.max_replicas ({self.max_replicas}) must be >= "
                f"autoscale.min_replicas ({self.min_replicas})"
            )
        if self.scale_down_utilization >= self.scale_up_utilization:
            raise ValueError(
                "autoscale.scale_down_utilization must be below autoscale.scale_up_utilization"
            )
        return self


@dataclass(frozen=True, slots=True)
class Sample:
    """The limiter as the driver saw it at one instant."""

    in_flight: int
    waiting: int
    limit: int
    shed: int  # cumulative
    completed: int  # cumulative
    rtt_ratio: float = 1.0  # short RTT / min RTT (1 while unknown)
    probing: bool = False  # a min-RTT probe holds the limit down on purpose


@dataclass(frozen=True, slots=True)
class Decision:
    action: Literal["up", "down"]
    replicas: int  # the count to move to
    reason: str


@dataclass(slots=True)
class _Point:
    at: float
    utilization: float
    queued: bool
    rtt_ratio: float
    shed: int
    completed: int


@dataclass(slots=True)
class _Check:
    """A scale-up to verify: did it raise the throughput served under saturation?"""

    at: float
    before_rate: float
    before_replicas: int


class AutoscalePolicy:
    """Decides the worker count; the driver carries a decision out and reports back."""

    def __init__(self, options: AutoscaleOptions, cores: int, now: float) -> None:
        self.options = options
        self.cores = max(1, cores)
        self.replicas = options.min_replicas
        self.busy = False  # a decision is being carried out
        self.ceiling = options.max_replicas  # lowered by a scale-up that gained nothing
        self._ceiling_until = -math.inf
        self._points: deque[_Point] = deque(maxlen=4096)
        self._last_change = -math.inf  # a gateway under load at start scales up at once
        self._started = now  # ... but scales down only a cool-down after it started
        self._last_pressure = -math.inf
        self._check: _Check | None = None
        self.per_worker = 0.0  # calls/s one worker served under backlog (0: not seen yet)

    @property
    def cap(self) -> int:
        """The most workers allowed now."""
        cap = min(self.options.max_replicas, self.ceiling)
        if self.options.cpu_bound:
            cap = min(cap, self.cores)
        return max(cap, self.options.min_replicas)

    def observe(self, now: float, sample: Sample) -> Decision | None:
        """Take one sample; a decision when the count should change (at most one at a time)."""
        previous = self._points[-1] if self._points else None
        new_sheds = sample.shed - previous.shed if previous is not None else 0
        utilization = (sample.in_flight + sample.waiting) / max(sample.limit, 1)
        queued = sample.waiting > 0 and not sample.probing
        point = _Point(
            now,
            utilization if not sample.probing else 0.0,
            queued,
            sample.rtt_ratio,
            sample.shed,
            sample.completed,
        )
        self._points.append(point)
        while self._points and self._points[0].at < now - max(self.options.window_s, RATE_S):
            self._points.popleft()
        if queued or new_sheds > 0:
            self._last_pressure = now
        if now >= self._ceiling_until and self.ceiling < self.options.max_replicas:
            self.ceiling = self.options.max_replicas  # a while on: the load may differ now
        if self.busy:
            return None
        if self._check is not None and now >= self._check.at:
            decision = self._verify(now)
            if decision is not None:
                return self._decide(now, decision)
        self._learn_capacity()
        saturated, why = self._saturated()
        if saturated:
            if self._check is not None or now - self._last_change < self.options.up_cooldown_s:
                return None
            if self.replicas >= self.cap:
                return None
            self._check = _Check(math.inf, self._rate(), self.replicas)
            # Saturated: the rate served just now is about what these workers can do.
            self.per_worker = max(self.per_worker, self._saturated_rate() / self.replicas)
            return self._decide(now, Decision("up", self.replicas + 1, why))
        return self._maybe_down(now)

    def done(self, now: float, replicas: int) -> None:
        """The driver carried out the last decision: ``replicas`` serve now."""
        grew = replicas > self.replicas
        self.replicas = replicas
        self.busy = False
        self._last_change = now
        self._points.clear()  # what was measured before says nothing of the new count
        if grew and self._check is not None:
            self._check.at = now + self.options.up_cooldown_s
        elif not grew:
            self._check = None

    def failed(self, now: float, replicas: int) -> None:
        """The decision could not be carried out (a worker did not start or pass its probe);
        ``replicas`` serve now."""
        self.replicas = replicas
        self.busy = False
        self._last_change = now
        self._check = None

    def _decide(self, now: float, decision: Decision) -> Decision:
        self.busy = True
        return decision

    def _window(self) -> list[_Point]:
        """The samples of the last ``window_s``; none unless they span most of it."""
        points = self._points
        if not points:
            return []
        start = points[-1].at - self.options.window_s
        recent = [p for p in points if p.at >= start - 1e-9]
        # Decide on a whole window only: one sample is one instant of a bursty queue.
        if recent[-1].at - recent[0].at < self.options.window_s * 0.8:
            return []
        return recent

    def _saturated(self, *, backlog_only: bool = False) -> tuple[bool, str]:
        """Whether demand exceeds what serves now; ``backlog_only``: judged by the queue and
        the in-flight count alone, not by the RTT (which lags while a backlog drains)."""
        points = self._window()
        if not points:
            return False, ""
        if points[-1].shed > points[0].shed:
            return True, "requests shed"
        mean = sum(p.utilization for p in points) / len(points)
        if mean >= self.options.scale_up_utilization:
            return True, f"utilization {mean:.2f} of the limiter's capacity estimate"
        inflation = sum(p.rtt_ratio for p in points) / len(points)
        if not backlog_only and inflation >= self.options.scale_up_rtt_ratio:
            return True, f"RTT {inflation:.1f}x the min RTT: calls are queueing"
        queued = sum(p.queued for p in points) / len(points)
        if queued >= self.options.queued_share:
            return True, f"queueing at the limit in {queued:.0%} of samples"
        return False, ""

    def _rate(self, span_s: float = RATE_S) -> float:
        """Calls served per second over the last ``span_s`` (at most RATE_S)."""
        points = [p for p in self._points if p.at >= self._points[-1].at - span_s - 1e-9]
        if len(points) < 2 or points[-1].at <= points[0].at:
            return 0.0
        return (points[-1].completed - points[0].completed) / (points[-1].at - points[0].at)

    def _full(self, point: _Point) -> bool:
        """Whether one sample shows the workers saturated."""
        options = self.options
        return (
            point.queued
            or point.utilization >= options.scale_up_utilization
            or point.rtt_ratio >= options.scale_up_rtt_ratio
        )

    def _saturated_rate(self) -> float:
        """Calls served per second over the sampling intervals that ended saturated."""
        served = seconds = 0.0
        points = list(self._points)
        for before, after in itertools.pairwise(points):
            if self._full(after):
                served += after.completed - before.completed
                seconds += after.at - before.at
        return served / seconds if seconds > 0 else 0.0

    def _verify(self, now: float) -> Decision | None:
        check = self._check
        assert check is not None
        self._check = None
        saturated, _ = self._saturated(backlog_only=True)
        if not saturated or check.before_rate <= 0:
            return None  # demand is met (or was not measured): the worker earns its keep
        after = self._rate()
        needed = check.before_rate * (1 + self.options.min_gain / check.before_replicas)
        if after >= needed * (1 - 1e-6):  # float noise of the window's span
            return None
        self.ceiling = check.before_replicas
        self._ceiling_until = now + self.options.ceiling_hold_s
        return Decision(
            "down",
            check.before_replicas,
            f"no throughput gain from worker {self.replicas} "
            f"({check.before_rate:.1f}/s -> {after:.1f}/s): CPU-bound at {self.replicas - 1}",
        )

    def _maybe_down(self, now: float) -> Decision | None:
        options = self.options
        if self.replicas <= options.min_replicas:
            return None
        if self.replicas > self.cap:
            return self._decide(now, Decision("down", self.replicas - 1, "above the cap"))
        cooldown = options.down_cooldown_s
        last = max(self._last_change, self._started, self._last_pressure)
        if now - last < cooldown:
            return None
        points = self._window()
        if not points:
            return None
        mean = sum(p.utilization for p in points) / len(points)
        after = mean * self.replicas / (self.replicas - 1)
        if after > options.scale_down_utilization:
            return None
        why = f"utilization {after:.2f} with one worker fewer"
        if self.per_worker <= 0 and self._rate() > 0:
            return None  # serving, and no measure of what fewer workers could serve
        if self.per_worker > 0:
            # The limit need not track the workers (it has a floor, and holds below a knee):
            # what one worker served under backlog says more about what n - 1 can carry.
            share = self._rate() / (self.per_worker * (self.replicas - 1))
            if share > options.scale_down_utilization:
                return None
            why = f"{share:.2f} of what one worker fewer serves saturated"
        return self._decide(now, Decision("down", self.replicas - 1, why))

    def _learn_capacity(self) -> None:
        """Under backlog, the calls served per second per worker are what a worker can do."""
        points = self._points
        if len(points) < 2 or points[-1].at - points[0].at < RATE_S * 0.8:
            return
        if all(p.queued or p.utilization >= self.options.scale_up_utilization for p in points):
            self.per_worker = max(self.per_worker, self._rate() / self.replicas)
