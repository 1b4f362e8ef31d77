"""Alembic migrations of the control store, run by ``failsoft.store.migrate`` on open."""
