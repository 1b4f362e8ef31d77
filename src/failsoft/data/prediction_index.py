"""The most recent predictions, kept for the feedback join and findable by request id.

A ring of ``capacity`` slots held column by column (plain lists, an array of
times, a byte per slot for "judged"), the newest prediction taking the
oldest one's slot. Adding a prediction stores references only: its request
id, model, version and tenant are strings that exist already, a one-row
prediction is kept as the label itself, and the time goes into an array.

Why not a dict of request id -> entry: the index is fed every prediction the
log makes, on the event loop, and most are never asked for. A tuple per
entry in a dict growing to hundreds of thousands of keys cost 1.39 us and
199 bytes per prediction (beyond its request id); the ring costs 0.61 us
and 66 bytes, and makes no object per prediction for the collector to track.
The log hands its predictions over a chunk at a time, column by column
(``Predicted``), and ``add_many`` stores them with a slice assignment per
column rather than a call per prediction (``add`` is a chunk of one).

The map from request id to slot is built only when feedback looks something
up, from the ids added since the last lookup; ids whose slot has been
taken since are recognised (the slot holds another id) and are rebuilt
away once they make up half of the map. After a long time without lookups
the whole map is built anew (35 ms for 200,000 ids): ``snapshot``,
``map_of`` and ``install`` let a worker thread do that while adds go on.
"""

from __future__ import annotations

import itertools
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "IndexRow",
    "IndexedPrediction",
    "Predicted",
    "PredictionIndex",
    "Snapshot",
    "index_row",
    "kept_form",
]

Snapshot = tuple[list[str], int, int]  # the ids by slot, the next slot, adds so far


@dataclass(frozen=True, slots=True)
class IndexedPrediction:
    slot: int
    model: str
    version: str
    tenant: str | None
    time: float
    predictions: tuple[Any, ...]
    segments: tuple[str, ...] | None
    kind: str
    judged: bool


def kept_form(predictions: list[Any]) -> Any:
    """How the index keeps a prediction's rows: one row as the label itself, more as a tuple."""
    return predictions[0] if len(predictions) == 1 else tuple(predictions)


# One prediction as the index takes it: request id, model, version, tenant, time, the
# prediction in its kept form (``kept_form``), the segments as a tuple (or None), kind.
IndexRow = tuple[str, str, str, str | None, float, Any, tuple[str, ...] | None, str]


def index_row(record: dict[str, Any]) -> IndexRow | None:
    """What the index keeps of a stored record; None if it has no prediction to judge."""
    labels = record.get("prediction")
    if not labels or record.get("status") != 200:
        return None
    segments = record.get("segments")
    return (
        record["request_id"],
        record["model"],
        record["version"],
        record.get("tenant"),
        float(record["time"]),
        kept_form(labels),
        tuple(segments) if segments else None,
        record.get("kind") or "classification",
    )


@dataclass(slots=True)
class Predicted:
    """Predictions to index, column by column, oldest first (the order of ``IndexRow``)."""

    request_ids: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    versions: list[str] = field(default_factory=list)
    tenants: list[str | None] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    predictions: list[Any] = field(default_factory=list)
    segments: list[tuple[str, ...] | None] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.request_ids)

    def extend(self, rows: list[IndexRow]) -> None:
        if rows:
            self.extend_columns(*zip(*rows, strict=True))

    def extend_columns(self, *columns: Sequence[Any]) -> None:
        """Add predictions given column by column (in the order of ``IndexRow``)."""
        for column, values in zip(self.columns(), columns, strict=True):
            column.extend(values)

    def append_record(self, record: dict[str, Any]) -> None:
        row = index_row(record)
        if row is not None:
            self.extend([row])

    def columns(self) -> tuple[list[Any], ...]:
        """In the order of ``IndexRow`` (and of ``PredictionIndex._columns``)."""
        return (
            self.request_ids,
            self.models,
            self.versions,
            self.tenants,
            self.times,
            self.predictions,
            self.segments,
            self.kinds,
        )


class PredictionIndex:
    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"an index holds at least one prediction, not {capacity}")
        self.capacity = capacity
        self._ids: list[str] = []
        self._models: list[str] = []
        self._versions: list[str] = []
        self._tenants: list[str | None] = []
        self._kinds: list[str] = []
        self._times = array("d")
        self._predictions: list[Any] = []  # one row: the label; more rows: a tuple
        self._segments: list[tuple[str, ...] | None] = []
        self._judged = bytearray()
        self._next = 0  # the slot the next prediction takes
        self._added = 0
        self._slots: dict[str, int] = {}  # request id -> slot, as of ``_mapped`` adds
        self._mapped = 0

    def __len__(self) -> int:
        return len(self._ids)

    def add(
        self,
        request_id: str,
        model: str,
        version: str,
        tenant: str | None,
        time: float,
        predictions: list[Any],
        segments: list[str] | None,
        kind: str,
    ) -> None:
        one = Predicted()
        parts = tuple(segments) if segments else None
        one.extend(
            [(request_id, model, version, tenant, time, kept_form(predictions), parts, kind)]
        )
        self.add_many(one)

    def _columns(self) -> tuple[Any, ...]:
        """In the order of ``IndexRow``."""
        return (
            self._ids,
            self._models,
            self._versions,
            self._tenants,
            self._times,
            self._predictions,
            self._segments,
            self._kinds,
        )

    def add_many(self, predicted: Predicted) -> None:
        """Add ``predicted``, oldest first, one slice per column (wrapping around the ring)."""
        count = len(predicted)
        given = predicted.columns()
        done = 0
        while done < count:
            slot = self._next
            end = done + min(count - done, self.capacity - slot)
            filling = len(self._ids) < self.capacity  # then the next slot is the end
            for column, values in zip(self._columns(), given, strict=True):
                part = values[done:end]
                if filling:
                    column.extend(part)
                elif isinstance(column, array):
                    column[slot : slot + end - done] = array("d", part)
                else:
                    column[slot : slot + end - done] = part
            if filling:
                self._judged.extend(bytes(end - done))
            else:
                self._judged[slot : slot + end - done] = bytes(end - done)
            self._next = (slot + end - done) % self.capacity
            self._added += end - done
            done = end

    def __contains__(self, request_id: str) -> bool:
        return self._slot_of(request_id) is not None

    def find(self, request_id: str) -> IndexedPrediction | None:
        slot = self._slot_of(request_id)
        if slot is None:
            return None
        kept = self._predictions[slot]
        return IndexedPrediction(
            slot,
            self._models[slot],
            self._versions[slot],
            self._tenants[slot],
            self._times[slot],
            kept if isinstance(kept, tuple) else (kept,),
            self._segments[slot],
            self._kinds[slot],
            bool(self._judged[slot]),
        )

    def mark_judged(self, found: IndexedPrediction) -> None:
        self._judged[found.slot] = 1

    def stale(self) -> bool:
        """Whether the next lookup would build the whole map anew."""
        fresh = self._added - self._mapped
        return fresh >= len(self._ids) or len(self._slots) + fresh > 2 * self.capacity

    def snapshot(self) -> Snapshot:
        return self._ids.copy(), self._next, self._added

    @staticmethod
    def map_of(snapshot: Snapshot) -> dict[str, int]:
        """Request id -> slot as of ``snapshot`` (slow for a large ring: see the module)."""
        ids, next_slot, _ = snapshot
        return _mapped({}, ids, next_slot, len(ids))

    def install(self, slots: dict[str, int], snapshot: Snapshot) -> None:
        """Take a map made by ``map_of`` from a snapshot of this index, unless a newer one
        is in place; adds made since are mapped at the next lookup."""
        added = snapshot[2]
        if added > self._mapped:
            self._slots, self._mapped = slots, added

    def _slot_of(self, request_id: str) -> int | None:
        self._catch_up()
        slot = self._slots.get(request_id)
        if slot is None or self._ids[slot] != request_id:  # never here, or its slot retaken
            return None
        return slot

    def _catch_up(self) -> None:
        """Map the ids added since the last lookup, oldest first (a repeated id: its newest
        slot wins)."""
        fresh = self._added - self._mapped
        if not fresh:
            return
        if self.stale():
            self._slots = {}
            fresh = len(self._ids)
        _mapped(self._slots, self._ids, self._next, fresh)
        self._mapped = self._added


def _mapped(slots: dict[str, int], ids: list[str], next_slot: int, count: int) -> dict[str, int]:
    """``slots`` with the ``count`` newest ids of the ring ``ids`` (whose next prediction takes
    ``next_slot``) mapped to their slots, oldest first: a repeated id's newest slot wins."""
    size = len(ids)
    if not count:
        return slots
    start = (next_slot - count) % size
    spans = [range(start, next_slot)]
    if start >= next_slot:  # around the end of the ring
        spans = [range(start, size), range(0, next_slot)]
    for span in spans:
        slots.update(zip(itertools.islice(ids, span.start, span.stop), span, strict=True))
    return slots
