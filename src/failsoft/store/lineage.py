"""The audit entries behind one answer: its configuration revision and its artifact.

A logged prediction names the revision it ran under and the sha256 of the
model file that answered; this finds the audit entries that created and
applied that revision, and the ones that registered that artifact (under
any name and version), so `failsoft trace` can show who put them there, when.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import or_, select

from failsoft.store.audit import AuditEntry
from failsoft.store.store import Store
from failsoft.store.tables import audit_entries

__all__ = ["lineage_entries"]

MAX_ENTRIES = 50


def lineage_entries(store: Store, revision: int | None, sha256: str | None) -> list[dict[str, Any]]:
    """Audit entries of ``revision`` (created, applied, …) and of artifact ``sha256``."""
    clauses = []
    if revision:
        clauses.append(audit_entries.c.target == f"revision:{revision}")
    if sha256:
        clauses.append(
            (audit_entries.c.action == "artifact.registered")
            & (audit_entries.c.after_digest == sha256.lower())
        )
    if not clauses:
        return []
    query = (
        select(audit_entries).where(or_(*clauses)).order_by(audit_entries.c.seq).limit(MAX_ENTRIES)
    )
    with store.engine.read() as conn:
        rows = conn.execute(query).all()
    return [AuditEntry.from_row(row).to_dict() for row in rows]
