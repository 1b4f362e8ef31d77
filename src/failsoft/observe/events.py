"""The event bus: stages emit facts, observers (metrics, logs) subscribe.

Strategies and backends never call an observer directly; they emit a small
frozen event on the bus, and whoever cares subscribes. Dispatch is
synchronous and cheap; an observer that raises is logged and skipped so a
broken observer can never fail a request.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from failsoft.errors import FailureClass

log = logging.getLogger("failsoft.events")

# Events are plain slotted dataclasses, not frozen ones: a frozen dataclass
# pays for object.__setattr__ per field, and events are made on the hot path.


class Event:
    """Base of every event; strategies define their own subclasses next to them."""

    __slots__ = ()


@dataclass(slots=True)
class RequestFinished(Event):
    model: str
    version: str
    status: int
    failure_class: FailureClass | None
    seconds: float
    replica: str = ""
    degraded: bool = False  # answered by a fallback tier
    tenant: str | None = None


@dataclass(slots=True)
class VersionAnswered(Event):
    """An answer a version gave, while its model is in a rollout (for the analysis)."""

    model: str
    version: str
    outputs: dict[str, Any]  # output name -> numpy array


@dataclass(slots=True)
class ReplicaStateChanged(Event):
    model: str
    version: str
    replica: str
    available: bool
    reason: str


@dataclass(slots=True)
class WorkerRestarted(Event):
    model: str
    version: str
    replica: str
    pid: int
    exit_code: int | None
    reason: str


@dataclass(slots=True)
class ConfigApplied(Event):
    """A configuration revision is now served by this gateway."""

    revision: int


@dataclass(slots=True)
class FlagChanged(Event):
    """A runtime flag was set (``value``) or cleared (``value`` None) by ``actor``."""

    key: str
    value: object
    actor: str


Observer = Callable[[Event], None]


class EventBus:
    """Synchronous fan-out. An observer may name the event types it wants, so the
    events of every request (attempts, answers) reach only those that count them."""

    def __init__(self) -> None:
        self._everything: list[Observer] = []
        self._by_type: dict[type[Event], list[Observer]] = {}
        self._routes: dict[type[Event], list[Observer]] = {}  # observers per type, built lazily

    def subscribe(self, observer: Observer, kinds: Iterable[type[Event]] | None = None) -> None:
        if kinds is None:
            self._everything.append(observer)
        else:
            for kind in kinds:
                self._by_type.setdefault(kind, []).append(observer)
        self._routes.clear()

    def emit(self, event: Event) -> None:
        kind = type(event)
        observers = self._routes.get(kind)
        if observers is None:
            observers = self._routes[kind] = [*self._everything, *self._by_type.get(kind, ())]
        for observer in observers:
            try:
                observer(event)
            except Exception:
                log.exception("event observer failed", extra={"event_type": kind.__name__})
