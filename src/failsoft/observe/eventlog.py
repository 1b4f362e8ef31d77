"""Logs the events a person wants to read about: state changes, not every request."""

from __future__ import annotations

import dataclasses
import logging

from failsoft.observe.events import Event
from failsoft.pipeline.breaker import BreakerTransition
from failsoft.pipeline.fallback import FallbackTierFailed, FallbackUsed
from failsoft.pipeline.version import AttemptFailed, RetryDenied
from failsoft.routing.ejection import ReplicaEjected, ReplicaReturned

log = logging.getLogger("failsoft.events")
RESERVED = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

_WARNINGS = (BreakerTransition, ReplicaEjected, FallbackTierFailed)
_INFO = (ReplicaReturned,)
_DEBUG = (AttemptFailed, RetryDenied, FallbackUsed)


def log_event(event: Event) -> None:
    if isinstance(event, _WARNINGS):
        level = logging.WARNING
    elif isinstance(event, _INFO):
        level = logging.INFO
    elif isinstance(event, _DEBUG):
        level = logging.DEBUG
    else:
        return
    if log.isEnabledFor(level):
        fields = {
            f"event_{key}" if key in RESERVED else key: value
            for key, value in dataclasses.asdict(event).items()
        }
        log.log(level, type(event).__name__, extra=fields)
