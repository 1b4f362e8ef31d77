"""Rows that change while the gateway runs: flags and rollouts.

A mixin of ``Store``: each change commits with its audit entry in one
transaction, under the store's write lock (so two rollouts of one model
cannot both start, even from two gateways).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, insert, select, update

from failsoft.store.encoding import canonical_json, sha256_hex
from failsoft.store.engine import StoreError
from failsoft.store.notify import FLAGS, notify
from failsoft.store.tables import flags, rollouts

if TYPE_CHECKING:
    from failsoft.store.audit import AuditLog
    from failsoft.store.engine import StoreEngine

ACTIVE = ("pending", "progressing", "running", "paused")
ENDED = ("promoted", "aborted", "rolled-back")


@dataclass(frozen=True)
class RolloutRow:
    id: str
    model: str
    status: str
    spec: dict[str, Any]
    state: dict[str, Any]
    created_at: str
    updated_at: str
    actor: str


def _digest(value: Mapping[str, Any] | None) -> str | None:
    return None if value is None else sha256_hex(canonical_json(dict(value)))


def _text(value: Mapping[str, Any]) -> str:
    try:
        return canonical_json(dict(value)).decode()
    except (TypeError, ValueError) as error:
        raise StoreError(f"not JSON: {error}") from None


class LiveRows:
    """Flags and rollouts; mixed into ``Store`` (which provides what is declared here)."""

    _engine: StoreEngine
    audit: AuditLog

    def _now(self) -> str:
        raise NotImplementedError

    def _changed(self) -> None:
        raise NotImplementedError

    # -- flags -----------------------------------------------------------------

    def flags(self) -> dict[str, dict[str, Any]]:
        """Every flag in the store: key -> spec."""
        with self._engine.read() as conn:
            rows = conn.execute(select(flags.c.key, flags.c.spec)).all()
        return {row.key: json.loads(row.spec) for row in rows}

    def set_flag(self, key: str, spec: Mapping[str, Any], *, actor: str) -> None:
        text = _text(spec)
        with self._engine.write() as conn:
            old = conn.execute(select(flags.c.spec).where(flags.c.key == key)).first()
            before = None if old is None else sha256_hex(old.spec.encode())
            values = {"spec": text, "updated_at": self._now(), "actor": actor}
            if old is None:
                conn.execute(insert(flags).values(key=key, **values))
            else:
                conn.execute(update(flags).where(flags.c.key == key).values(**values))
            self.audit.append(
                conn,
                actor=actor,
                action="flag.set",
                target=f"flag:{key}",
                before=before,
                after=sha256_hex(text.encode()),
                detail={"spec": json.loads(text)},
            )
            notify(conn, FLAGS)
        self._changed()

    def clear_flag(
        self,
        key: str,
        *,
        actor: str,
        reason: str = "cleared",
        only_if: Mapping[str, Any] | None = None,
    ) -> bool:
        """Remove a flag; False when there was none.

        ``only_if``: remove it only while its spec is still this one (an expiry
        must not clear a flag someone has set again since), else False.
        """
        with self._engine.write() as conn:
            old = conn.execute(select(flags.c.spec).where(flags.c.key == key)).first()
            if old is None:
                return False
            if only_if is not None and json.loads(old.spec) != json.loads(_text(only_if)):
                return False
            conn.execute(delete(flags).where(flags.c.key == key))
            self.audit.append(
                conn,
                actor=actor,
                action="flag.cleared",
                target=f"flag:{key}",
                before=sha256_hex(old.spec.encode()),
                after=None,
                detail={"reason": reason},
            )
            notify(conn, FLAGS)
        self._changed()
        return True

    # -- rollouts --------------------------------------------------------------

    def add_rollout(
        self,
        rollout_id: str,
        model: str,
        spec: Mapping[str, Any],
        state: Mapping[str, Any],
        *,
        actor: str,
        status: str = "running",
    ) -> RolloutRow:
        """A new active rollout; refused while the model has another one active."""
        with self._engine.write() as conn:
            active = conn.execute(
                select(rollouts.c.id).where(
                    rollouts.c.model == model, rollouts.c.status.in_(ACTIVE)
                )
            ).first()
            if active is not None:
                raise StoreError(
                    f"model {model!r} already has rollout {active.id} in progress: "
                    "promote, abort or let it finish first"
                )
            if conn.execute(select(rollouts.c.id).where(rollouts.c.id == rollout_id)).first():
                raise StoreError(f"there is already a rollout {rollout_id}")
            now = self._now()
            conn.execute(
                insert(rollouts).values(
                    id=rollout_id,
                    model=model,
                    status=status,
                    spec=_text(spec),
                    state=_text(state),
                    created_at=now,
                    updated_at=now,
                    actor=actor,
                )
            )
            self.audit.append(
                conn,
                actor=actor,
                action="rollout.started",
                target=f"rollout:{rollout_id}",
                before=None,
                after=_digest(spec),
                detail={"model": model, "spec": dict(spec)},
            )
            row = conn.execute(select(rollouts).where(rollouts.c.id == rollout_id)).one()
        self._changed()
        return _rollout(row)

    def update_rollout(
        self,
        rollout_id: str,
        *,
        status: str,
        state: Mapping[str, Any],
        actor: str,
        action: str,
        detail: Mapping[str, Any] | None = None,
    ) -> RolloutRow:
        """Record a step or a decision of a rollout (``action``: stepped, paused, …)."""
        with self._engine.write() as conn:
            old = conn.execute(select(rollouts).where(rollouts.c.id == rollout_id)).first()
            if old is None:
                raise StoreError(f"there is no rollout {rollout_id}")
            if old.status in ENDED and status != old.status:
                # Gateways sharing a store race: a rollout one of them ended stays ended.
                raise StoreError(f"rollout {rollout_id} has ended ({old.status})")
            conn.execute(
                update(rollouts)
                .where(rollouts.c.id == rollout_id)
                .values(status=status, state=_text(state), updated_at=self._now())
            )
            self.audit.append(
                conn,
                actor=actor,
                action=f"rollout.{action}",
                target=f"rollout:{rollout_id}",
                before=sha256_hex(old.state.encode()),
                after=_digest(state),
                detail={"status": status, **dict(detail or {})},
            )
            row = conn.execute(select(rollouts).where(rollouts.c.id == rollout_id)).one()
        self._changed()
        return _rollout(row)

    def rollout(self, rollout_id: str) -> RolloutRow | None:
        with self._engine.read() as conn:
            row = conn.execute(select(rollouts).where(rollouts.c.id == rollout_id)).first()
        return None if row is None else _rollout(row)

    def rollouts(self, *, model: str | None = None, active: bool = False) -> list[RolloutRow]:
        """Rollouts, newest first; ``active``: pending, progressing (running) or paused only."""
        query = select(rollouts).order_by(rollouts.c.created_at.desc())
        if model is not None:
            query = query.where(rollouts.c.model == model)
        if active:
            query = query.where(rollouts.c.status.in_(ACTIVE))
        with self._engine.read() as conn:
            rows = conn.execute(query).all()
        return [_rollout(row) for row in rows]


def _rollout(row: Any) -> RolloutRow:
    return RolloutRow(
        row.id,
        row.model,
        row.status,
        json.loads(row.spec),
        json.loads(row.state),
        row.created_at,
        row.updated_at,
        row.actor,
    )
