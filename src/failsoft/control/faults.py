"""The fault registry: which chaos faults are active, for whom, and until when.

Faults are off unless the configuration sets ``chaos.enabled``. Every fault
names its target (a model, optionally one version and one replica) and must
expire: ``duration_s`` is mandatory and capped by ``chaos.max_duration_s``
(5 minutes unless configured), so a forgotten fault cannot outlive an
incident drill. Adding, ending and clearing a fault are events on the bus,
which the event log writes out. The per-call effects (latency, errors, hangs,
garbage, dropped connections, and ``kill``: a real SIGKILL of a worker
process as a call reaches it, so that call meets the crash, once or every
``every_s`` while the fault lasts) live in ``pipeline/chaos.py``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Protocol, runtime_checkable

from pydantic import Field, ValidationError, model_validator

from failsoft._options import StrictModel, validation_problems
from failsoft.clock import Cancel, Clock
from failsoft.errors import BadRequest, FailsoftError, FailureClass
from failsoft.observe.events import Event

log = logging.getLogger("failsoft.chaos")

FaultKind = Literal["latency", "error", "hang", "garbage", "drop", "kill"]
# A kill waits for a request to meet it, but not longer than this: a worker the
# balancer happens not to pick must still crash, or the drill measures nothing.
KILL_AT_LATEST_S = 0.5
FAULT_KINDS: tuple[str, ...] = FaultKind.__args__  # type: ignore[attr-defined]
_Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$", max_length=128)]


class ChaosOptions(StrictModel):
    enabled: bool = Field(
        default=False, description="allow faults at all; off by default, and in production"
    )
    max_duration_s: Annotated[float, Field(gt=0, le=3600)] = Field(
        default=300.0, description="the longest a fault may last before it expires by itself"
    )
    max_faults: Annotated[int, Field(ge=1, le=1000)] = 64


class FaultSpec(StrictModel):
    """One fault as a person asks for it (admin API, CLI, drill file)."""

    kind: FaultKind
    model: _Name
    version: _Name | None = Field(default=None, description="every version when unset")
    replica: _Name | None = Field(default=None, description="every replica when unset")
    duration_s: Annotated[float, Field(gt=0)]
    probability: Annotated[float, Field(ge=0, le=1)] = 1.0
    latency_ms: Annotated[float, Field(ge=0, le=600_000)] = 0.0
    jitter_ms: Annotated[float, Field(ge=0, le=600_000)] = 0.0
    concurrency: Annotated[int, Field(ge=1, le=10_000)] | None = Field(
        default=None,
        description="latency: the slowed replica serves at most this many calls at once, "
        "as a saturated model would (unbounded when unset)",
    )
    error: Literal["status", "exception"] = "status"
    status: Annotated[int, Field(ge=500, le=599)] = 500
    every_s: Annotated[float, Field(gt=0, le=3600)] | None = Field(
        default=None,
        description="kill: kill again at the first call this many seconds after the last kill "
        "(once when unset)",
    )

    @model_validator(mode="after")
    def _fields_fit_kind(self) -> FaultSpec:
        if self.kind == "latency" and self.latency_ms + self.jitter_ms <= 0:
            raise ValueError("a latency fault needs latency_ms or jitter_ms above 0")
        if self.every_s is not None and self.kind != "kill":
            raise ValueError("every_s applies to kill faults only")
        if self.concurrency is not None and self.kind != "latency":
            raise ValueError("concurrency applies to latency faults only")
        return self

    def matches(self, model: str, version: str, replica: str) -> bool:
        return (
            self.model == model
            and (self.version is None or self.version == version)
            and (self.replica is None or self.replica == replica)
        )


@dataclass
class Fault:
    id: str
    spec: FaultSpec
    started_at: float
    expires_at: float
    injected: int = 0
    cancel_expiry: Cancel | None = None
    cancel_kill: Cancel | None = None
    _killed_at: dict[str, float] = field(default_factory=dict)
    _slots: dict[str, asyncio.Semaphore] = field(default_factory=dict)

    def kill_due(self, replica: str, now: float) -> bool:
        """Should this call to ``replica`` kill it first? Records the kill when so."""
        last = self._killed_at.get(replica)
        every = self.spec.every_s
        if last is not None and (every is None or now - last < every):
            return False
        self._killed_at[replica] = now
        return True

    def slots(self, replica: str) -> asyncio.Semaphore | None:
        """The replica's call slots under a latency fault with ``concurrency``."""
        limit = self.spec.concurrency
        if limit is None:
            return None
        found = self._slots.get(replica)
        if found is None:
            found = self._slots[replica] = asyncio.Semaphore(limit)
        return found

    def describe(self, now: float) -> dict[str, Any]:
        return {
            "id": self.id,
            **self.spec.model_dump(exclude_none=True),
            "remaining_s": round(max(0.0, self.expires_at - now), 3),
            "injected": self.injected,
        }


@dataclass(slots=True)
class FaultAdded(Event):
    id: str
    kind: str
    model: str
    version: str
    replica: str
    duration_s: float


@dataclass(slots=True)
class FaultEnded(Event):
    id: str
    kind: str
    model: str
    reason: str  # "expired" or "cleared"
    injected: int


@dataclass(slots=True)
class ReplicaKilled(Event):
    model: str
    version: str
    replica: str
    pid: int
    fault: str


class ChaosDisabled(FailsoftError):
    status = 409
    failure_class = FailureClass.CLIENT


@runtime_checkable
class Killable(Protocol):
    name: str

    def kill(self) -> int | None:
        """SIGKILL the replica's process; its pid, or None when none is running."""
        ...


@dataclass(frozen=True)
class Target:
    model: str
    version: str
    replica: str
    killable: Killable | None


class FaultRegistry:
    """Active faults, looked up on every call: an empty registry costs one attribute read."""

    def __init__(
        self,
        options: ChaosOptions,
        clock: Clock,
        emit: Callable[[Event], None],
        targets: Callable[[], Sequence[Target]],
    ) -> None:
        self.options = options
        self._clock = clock
        self._emit = emit
        self._targets = targets
        self._faults: dict[str, Fault] = {}
        self._ids = itertools.count(1)
        self.active = False

    def add(self, spec: FaultSpec | dict[str, Any]) -> Fault:
        if not self.options.enabled:
            raise ChaosDisabled(
                "chaos is disabled: set `chaos: {enabled: true}` in the configuration "
                "(or start with `failsoft serve --chaos`) to allow faults"
            )
        spec = parse_fault(spec) if isinstance(spec, dict) else spec
        if spec.duration_s > self.options.max_duration_s:
            raise BadRequest(
                f"duration_s {spec.duration_s:g} is over the cap of "
                f"{self.options.max_duration_s:g} s (chaos.max_duration_s)"
            )
        if len(self._faults) >= self.options.max_faults:
            raise BadRequest(
                f"{len(self._faults)} faults are active, the most allowed (chaos.max_faults)"
            )
        targets = [t for t in self._targets() if spec.matches(t.model, t.version, t.replica)]
        if not targets:
            raise BadRequest(f"no replica matches {_target_text(spec)}")
        if spec.kind == "kill" and any(t.killable is None for t in targets):
            raise BadRequest(
                f"kill applies to process replicas only; {_target_text(spec)} has others "
                "(name a process version)"
            )
        now = self._clock.now()
        fault = Fault(f"f{next(self._ids)}", spec, now, now + spec.duration_s)
        self._faults[fault.id] = fault
        self.active = True
        fault.cancel_expiry = self._clock.call_later(
            spec.duration_s, lambda: self._end(fault.id, "expired")
        )
        if spec.kind == "kill":
            killables = [t for t in targets if t.killable is not None]
            fault.cancel_kill = self._clock.call_later(
                KILL_AT_LATEST_S, lambda: self._kill_waiting(fault, killables)
            )
        self._emit(
            FaultAdded(
                fault.id,
                spec.kind,
                spec.model,
                spec.version or "*",
                spec.replica or "*",
                spec.duration_s,
            )
        )
        return fault

    def matching(self, model: str, version: str, replica: str) -> list[Fault]:
        now = self._clock.now()
        return [
            fault
            for fault in self._faults.values()
            if fault.expires_at > now and fault.spec.matches(model, version, replica)
        ]

    def snapshot(self) -> list[dict[str, Any]]:
        now = self._clock.now()
        return [fault.describe(now) for fault in self._faults.values() if fault.expires_at > now]

    def clear(self, fault_id: str | None = None) -> int:
        """End one fault, or all when ``fault_id`` is None; how many ended."""
        if fault_id is None:
            ids = list(self._faults)
        elif fault_id in self._faults:
            ids = [fault_id]
        else:
            raise FaultNotFound(f"no active fault {fault_id!r} (active: {sorted(self._faults)})")
        for one in ids:
            self._end(one, "cleared")
        return len(ids)

    def _end(self, fault_id: str, reason: str) -> None:
        fault = self._faults.pop(fault_id, None)
        if fault is None:
            return
        for cancel in (fault.cancel_expiry, fault.cancel_kill):
            if cancel is not None:
                cancel()
        self.active = bool(self._faults)
        spec = fault.spec
        self._emit(FaultEnded(fault.id, spec.kind, spec.model, reason, fault.injected))

    def _kill_waiting(self, fault: Fault, targets: list[Target]) -> None:
        """Kill the targets no request has reached since the fault began."""
        if fault.id not in self._faults:
            return
        for target in targets:
            if fault.kill_due(target.replica, self._clock.now()):
                self.kill(fault, target)

    def kill(self, fault: Fault, target: Target) -> None:
        """SIGKILL the target's process now for ``fault``: counted and told on the bus."""
        pid = target.killable.kill() if target.killable is not None else None
        if pid is not None:
            fault.injected += 1
            self._emit(ReplicaKilled(target.model, target.version, target.replica, pid, fault.id))


class FaultNotFound(FailsoftError):
    status = 404
    failure_class = FailureClass.CLIENT


def parse_fault(data: dict[str, Any]) -> FaultSpec:
    """A fault from JSON or YAML data; a BadRequest naming each bad field."""
    try:
        return FaultSpec.model_validate(data)
    except ValidationError as error:
        problems = validation_problems(error, root="fault")
        raise BadRequest("invalid fault: " + "; ".join(problems)) from None


def _target_text(spec: FaultSpec) -> str:
    return f"model {spec.model!r}" + "".join(
        f", {key} {value!r}"
        for key, value in (("version", spec.version), ("replica", spec.replica))
        if value is not None
    )
