"""Alembic's entry point: always online, on the connection ``migrate.upgrade`` hands over.

The caller's transaction (which holds the store's write lock) wraps the
whole upgrade, so two gateways starting at once migrate one after the other.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from failsoft.store.tables import metadata

if context.is_offline_mode():
    raise RuntimeError("failsoft runs its migrations online, on an open store")

connection = context.config.attributes["connection"]
assert isinstance(connection, Connection)
context.configure(connection=connection, target_metadata=metadata, transactional_ddl=True)
with context.begin_transaction():
    context.run_migrations()
