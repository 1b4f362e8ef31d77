"""The gateways sharing this store: who runs where, on which revision, seen when.

A mixin of ``Store``. Each gateway writes its own row (``beat_instance``)
every ``heartbeat_s`` seconds, off the request path; the row says its
address, process, start time, the revision it serves and when it last beat.
A row whose heartbeats stopped (the gateway was killed, its host lost) is
*stale* after ``STALE_AFTER_BEATS`` missed beats, and is removed once it is
older than the expiry (``expire_instances``, which live gateways call).
A gateway that stops cleanly removes its own row.

Ages are measured on the writer's and the reader's wall clocks: hosts that
share a store keep their clocks in sync (NTP); a skew well under the stale
threshold (3 beats: 6 s by default) changes nothing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, insert, select, update

from failsoft.store.encoding import utc_text
from failsoft.store.tables import instances

if TYPE_CHECKING:
    from collections.abc import Callable

    from failsoft.store.engine import StoreEngine

__all__ = ["STALE_AFTER_BEATS", "InstanceRow", "InstanceRows", "epoch_of"]

STALE_AFTER_BEATS = 3  # missed heartbeats before a gateway is reported stale


def epoch_of(text: str) -> float:
    """``utc_text``'s output back to seconds since the epoch."""
    moment = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    return moment.timestamp()


@dataclass(frozen=True)
class InstanceRow:
    id: str
    address: str
    host: str
    pid: int
    started_at: str
    revision: int
    heartbeat_at: str
    heartbeat_s: float
    wakeups: str  # how it hears of changes: "listen" (NOTIFY) or "poll"

    def age_s(self, now: float) -> float:
        """Seconds since the last heartbeat (never negative: clocks may differ a little)."""
        return max(0.0, now - epoch_of(self.heartbeat_at))

    def alive(self, now: float) -> bool:
        return self.age_s(now) <= STALE_AFTER_BEATS * self.heartbeat_s

    def as_json(self, now: float) -> dict[str, Any]:
        return {
            **asdict(self),
            "age_s": round(self.age_s(now), 3),
            "alive": self.alive(now),
        }


class InstanceRows:
    """The ``instances`` table; mixed into ``Store`` (which provides what is declared here)."""

    _engine: StoreEngine
    _wall: Callable[[], float]

    def beat_instance(
        self,
        instance_id: str,
        *,
        address: str,
        host: str,
        pid: int,
        started_at: float,
        revision: int,
        heartbeat_s: float,
        wakeups: str,
    ) -> None:
        """Write this gateway's row: created on the first beat, refreshed on the next ones."""
        values = {
            "address": address,
            "host": host,
            "pid": pid,
            "started_at": utc_text(started_at),
            "revision": revision,
            "heartbeat_at": utc_text(self._wall()),
            "heartbeat_s": heartbeat_s,
            "wakeups": wakeups,
        }
        with self._engine.write("heartbeat") as conn:
            changed = conn.execute(
                update(instances).where(instances.c.id == instance_id).values(**values)
            ).rowcount
            if not changed:
                conn.execute(insert(instances).values(id=instance_id, **values))

    def instances(self) -> list[InstanceRow]:
        """Every registered gateway, by address."""
        with self._engine.read() as conn:
            rows = conn.execute(
                select(instances).order_by(instances.c.address, instances.c.id)
            ).all()
        return [
            InstanceRow(
                row.id,
                row.address,
                row.host,
                row.pid,
                row.started_at,
                row.revision,
                row.heartbeat_at,
                float(row.heartbeat_s),
                row.wakeups,
            )
            for row in rows
        ]

    def remove_instance(self, instance_id: str) -> bool:
        """Remove a gateway's row (it stops); False when there was none."""
        with self._engine.write("deregister") as conn:
            removed = conn.execute(delete(instances).where(instances.c.id == instance_id))
        return bool(removed.rowcount)

    def expire_instances(self, older_than_s: float) -> list[str]:
        """Remove the rows whose last heartbeat is older than ``older_than_s``; their ids."""
        cutoff = utc_text(self._wall() - older_than_s)
        with self._engine.write("expire instances") as conn:
            gone = (
                conn.execute(select(instances.c.id).where(instances.c.heartbeat_at < cutoff))
                .scalars()
                .all()
            )
            if gone:
                conn.execute(delete(instances).where(instances.c.id.in_(gone)))
        return list(gone)
