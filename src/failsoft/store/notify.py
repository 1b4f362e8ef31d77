"""Wake-ups for gateways sharing a PostgreSQL store: NOTIFY in the changing transaction.

A change that other gateways must follow (a revision applied, a flag set or
cleared) sends ``NOTIFY`` on the store's channel in the same transaction as
the change: PostgreSQL delivers it when, and only if, the change commits, so
a listener never wakes before the change is visible, nor for a change that
was rolled back. The payload is the topic only; the listener reads the
store itself (the store stays the truth, a lost wake-up costs one poll).

The channel is per database and schema (several stores share one server in
tests and deployments), and both sides compute it with the same SQL. SQLite
has nothing of the sort: there, polling is the only path.
"""

from __future__ import annotations

from typing import Final

from sqlalchemy import Connection, text

__all__ = ["CHANNEL_SQL", "FLAGS", "REVISION", "TOPICS", "notify"]

REVISION: Final = "revision"
FLAGS: Final = "flags"
TOPICS: Final = (REVISION, FLAGS)

# At most 9 + 24 characters: well inside PostgreSQL's 63 for an identifier.
CHANNEL_SQL: Final = (
    "'failsoft_' || left(md5(current_database() || '.' || "
    "coalesce(current_schema(), 'public')), 24)"
)


def notify(conn: Connection, topic: str) -> None:
    """Tell the gateways listening on this store that ``topic`` changed, at commit."""
    if conn.dialect.name != "postgresql":
        return
    conn.execute(text(f"SELECT pg_notify({CHANNEL_SQL}, :topic)"), {"topic": topic})
