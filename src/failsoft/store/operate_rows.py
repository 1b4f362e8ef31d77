"""SLO buckets and incidents in the control store (blocking: call from a thread).

Rows belong to one gateway (``gateway``, the id kept in its data directory:
``gateway_id``), so gateways sharing a store keep their own counts and
incidents. One ``save`` writes, in one transaction: the SLO buckets that changed (their
full counts, so saving twice is harmless, and the time of the save), the
incidents that changed, and the audit entries of the incidents' state
changes, so a state and its record commit together. Buckets past their
window are pruned in the same transaction, whichever gateway saved them (a
gateway gone for good leaves none behind). ``load_peers`` sums the other
gateways' buckets: all of them, or those of the buckets saved since a time.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, delete, func, insert, or_, select, tuple_, update

from failsoft.control.incident_model import Incident
from failsoft.control.slo import COUNTS, Bucket
from failsoft.store.encoding import canonical_json, utc_text
from failsoft.store.engine import StoreError
from failsoft.store.store import Store
from failsoft.store.tables import incidents, slo_buckets

__all__ = [
    "AuditItem",
    "Loaded",
    "gateway_id",
    "load",
    "load_peers",
    "read_incident",
    "save",
]

RESOLVED_LOADED = 200  # resolved incidents loaded at start-up (older ones stay in the store)
KEYS_PER_QUERY = 500  # buckets summed per statement (a bounded IN list)


@dataclass(frozen=True)
class AuditItem:
    incident: int
    action: str
    actor: str
    detail: dict[str, Any]


@dataclass(frozen=True)
class Loaded:
    buckets: list[Bucket]
    incidents: list[Incident]
    next_id: int


GATEWAY_ID_FILE = "gateway-id"


def gateway_id(data_dir: Path) -> str:
    """This gateway's id: kept in its data directory, made on first use."""
    path = Path(data_dir) / GATEWAY_ID_FILE
    try:
        found = path.read_text().strip()
    except OSError:
        found = ""
    if found:
        return found[:64]
    made = secrets.token_hex(8)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(made + "\n")
    return made


def _text(incident: Incident) -> str:
    try:
        return canonical_json(incident.as_json()).decode()
    except (TypeError, ValueError) as error:
        raise StoreError(f"incident {incident.id} is not JSON: {error}") from None


def save(
    store: Store,
    gateway: str,
    buckets: Sequence[Bucket],
    changed: Sequence[Incident],
    audits: Sequence[AuditItem],
    prune_before: tuple[int, int] | None = None,
    saved_at: float | None = None,
) -> None:
    """``saved_at``: this gateway's clock (epoch seconds), stamped on the buckets."""
    if not buckets and not changed and not audits and prune_before is None:
        return
    stamp = time.time() if saved_at is None else saved_at
    now = utc_text(time.time())
    with store.engine.write() as conn:
        for bucket in buckets:
            key = (
                (slo_buckets.c.gateway == gateway)
                & (slo_buckets.c.series == bucket.series)
                & (slo_buckets.c.resolution == bucket.resolution)
                & (slo_buckets.c.start == bucket.start)
            )
            counts: dict[str, float] = dict(zip(COUNTS, bucket.counts, strict=True))
            counts["saved_at"] = stamp
            if conn.execute(update(slo_buckets).where(key).values(**counts)).rowcount == 0:
                conn.execute(
                    insert(slo_buckets).values(
                        gateway=gateway,
                        series=bucket.series,
                        resolution=bucket.resolution,
                        start=bucket.start,
                        **counts,
                    )
                )
        for incident in changed:
            values: dict[str, str] = {
                "model": incident.model,
                "cause": incident.cause,
                "state": incident.state,
                "opened_at": utc_text(incident.opened_at),
                "updated_at": now,
                "data": _text(incident),
            }
            done = conn.execute(
                update(incidents)
                .where(incidents.c.gateway == gateway, incidents.c.id == incident.id)
                .values(**values)
            )
            if done.rowcount == 0:
                conn.execute(insert(incidents).values(gateway=gateway, id=incident.id, **values))
        for item in audits:
            store.audit.append(
                conn,
                actor=item.actor,
                action=item.action,
                target=f"incident:{item.incident}",
                detail={**item.detail, "gateway": gateway},
            )
        if prune_before is not None:
            minutes, hours = prune_before
            conn.execute(
                delete(slo_buckets).where(
                    or_(
                        (slo_buckets.c.resolution == 60) & (slo_buckets.c.start < minutes),
                        (slo_buckets.c.resolution == 3600) & (slo_buckets.c.start < hours),
                    ),
                )
            )
    if audits:
        with contextlib.suppress(StoreError):  # committed; the next checkpoint covers it
            store.checkpoint()


def load(store: Store, gateway: str, keep_after: tuple[int, int]) -> Loaded:
    """The buckets still in their windows, the active and recent incidents, the next id."""
    with store.engine.read() as conn:
        rows = conn.execute(
            select(slo_buckets).where(slo_buckets.c.gateway == gateway, _kept(keep_after))
        ).all()
        active = conn.execute(
            select(incidents.c.data).where(
                incidents.c.gateway == gateway, incidents.c.state != "resolved"
            )
        ).all()
        resolved = conn.execute(
            select(incidents.c.data)
            .where(incidents.c.gateway == gateway, incidents.c.state == "resolved")
            .order_by(incidents.c.id.desc())
            .limit(RESOLVED_LOADED)
        ).all()
        last = conn.execute(
            select(func.coalesce(func.max(incidents.c.id), 0)).where(incidents.c.gateway == gateway)
        ).scalar_one()
    buckets = [
        Bucket(row.series, row.resolution, row.start, tuple(int(row._mapping[n]) for n in COUNTS))
        for row in rows
    ]
    found = [Incident.from_json(json.loads(row.data)) for row in (*active, *resolved)]
    return Loaded(buckets, sorted(found, key=lambda i: i.id), int(last) + 1)


def _kept(keep_after: tuple[int, int]) -> ColumnElement[bool]:
    minutes, hours = keep_after
    return or_(
        (slo_buckets.c.resolution == 60) & (slo_buckets.c.start >= minutes),
        (slo_buckets.c.resolution == 3600) & (slo_buckets.c.start >= hours),
    )


def load_peers(
    store: Store, gateway: str, keep_after: tuple[int, int], since: float | None
) -> tuple[list[Bucket], float | None]:
    """Every bucket of the other gateways still in its window, summed over them, or (with
    ``since``) only the buckets some other gateway saved at or after ``since``; and the
    latest save time seen (``since`` when nothing was found)."""
    c = slo_buckets.c
    others = (c.gateway != gateway) & _kept(keep_after)
    summed = select(
        c.series,
        c.resolution,
        c.start,
        func.max(c.saved_at),
        *(func.sum(c[name]) for name in COUNTS),
    ).group_by(c.series, c.resolution, c.start)
    with store.engine.read() as conn:
        if since is None:
            rows = list(conn.execute(summed.where(others)).all())
        else:
            keys = conn.execute(
                select(c.series, c.resolution, c.start)
                .where(others, c.saved_at >= since)
                .distinct()
            ).all()
            rows = []
            for first in range(0, len(keys), KEYS_PER_QUERY):
                chunk = [tuple(key) for key in keys[first : first + KEYS_PER_QUERY]]
                where = tuple_(c.series, c.resolution, c.start).in_(chunk)
                rows.extend(conn.execute(summed.where(others, where)).all())
    buckets = [
        Bucket(row[0], int(row[1]), int(row[2]), tuple(int(n) for n in row[4:])) for row in rows
    ]
    return buckets, max((float(row[3]) for row in rows), default=since)


def read_incident(store: Store, gateway: str, incident_id: int) -> Incident | None:
    with store.engine.read() as conn:
        row = conn.execute(
            select(incidents.c.data).where(
                incidents.c.gateway == gateway, incidents.c.id == incident_id
            )
        ).first()
    return None if row is None else Incident.from_json(json.loads(row.data))
