"""Logs the events a person wants to read about: state changes, not every request."""

from __future__ import annotations

import dataclasses
import logging

from failsoft.control.faults import FaultAdded, FaultEnded, ReplicaKilled
from failsoft.control.registry import (
    ArtifactCopyBad,
    ArtifactRepaired,
    ArtifactUnrecoverable,
    ArtifactWriteFailed,
)
from failsoft.data.drift import DriftCleared, DriftDetected
from failsoft.observe.events import Event
from failsoft.pipeline.breaker import BreakerTransition
from failsoft.pipeline.fallback import FallbackTierFailed, FallbackUsed
from failsoft.pipeline.version import AttemptFailed, PanicChanged, PoisonDetected, RetryDenied
from failsoft.routing.ejection import ReplicaEjected, ReplicaReturned

log = logging.getLogger("failsoft.events")
RESERVED = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

_LEVELS: dict[type[Event], int] = {
    BreakerTransition: logging.WARNING,
    FaultAdded: logging.WARNING,
    FaultEnded: logging.WARNING,
    ReplicaKilled: logging.WARNING,
    ReplicaEjected: logging.WARNING,
    FallbackTierFailed: logging.WARNING,
    PanicChanged: logging.WARNING,
    ArtifactCopyBad: logging.WARNING,
    ArtifactWriteFailed: logging.WARNING,
    ArtifactUnrecoverable: logging.ERROR,
    DriftDetected: logging.WARNING,
    DriftCleared: logging.INFO,
    ReplicaReturned: logging.INFO,
    ArtifactRepaired: logging.INFO,
    PoisonDetected: logging.DEBUG,
    AttemptFailed: logging.DEBUG,
    RetryDenied: logging.DEBUG,
    FallbackUsed: logging.DEBUG,
}


LOGGED = tuple(_LEVELS)  # the event types worth subscribing log_event to


def log_event(event: Event) -> None:
    level = _LEVELS.get(type(event))  # one dict lookup: this sees every event
    if level is None or not log.isEnabledFor(level):
        return
    fields = {
        f"event_{key}" if key in RESERVED else key: value
        for key, value in dataclasses.asdict(event).items()  # type: ignore[call-overload]
    }
    log.log(level, type(event).__name__, extra=fields)
