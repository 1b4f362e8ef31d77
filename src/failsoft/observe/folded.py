"""Warnings that come by the thousand, folded into one line per key per interval.

Under overload every shed request is a failure worth knowing about, but a log
line for each would flood the logs exactly when someone reads them. So failed
requests are counted per model and logged once per ``interval_s``, with the
count of each kind and one request id to look up. The counts are bounded: one
entry per model and failure kind.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections import Counter
from dataclasses import dataclass, field

INTERVAL_S = 1.0


@dataclass
class _Fold:
    counts: Counter[str] = field(default_factory=Counter)
    example: str = ""  # the last message, with its request id
    request_id: str = ""


class FoldedLog:
    def __init__(
        self, logger: logging.Logger, message: str, interval_s: float = INTERVAL_S
    ) -> None:
        self._log = logger
        self._message = message
        self._interval_s = interval_s
        self._folds: dict[str, _Fold] = {}
        self._timer: asyncio.TimerHandle | None = None

    def note(self, key: str, kind: str, message: str, request_id: str) -> None:
        """Count one occurrence; the first in an interval schedules the line."""
        if not self._log.isEnabledFor(logging.WARNING):
            return
        fold = self._folds.get(key)
        if fold is None:
            fold = self._folds[key] = _Fold()
        fold.counts[kind] += 1
        fold.example = message
        fold.request_id = request_id
        if self._timer is None:
            # In a fresh context: the line is about many requests, not the one that came first.
            self._timer = asyncio.get_running_loop().call_later(
                self._interval_s, self.flush, context=contextvars.Context()
            )

    def flush(self) -> None:
        """Log one line per key with its counts, and start counting afresh."""
        self._timer = None
        folds, self._folds = self._folds, {}
        for key, fold in folds.items():
            self._log.warning(
                self._message,
                extra={
                    "model": key,
                    "counts": dict(fold.counts),
                    "total": sum(fold.counts.values()),
                    "seconds": self._interval_s,
                    "last_error": fold.example,
                    "last_request_id": fold.request_id,
                },
            )
