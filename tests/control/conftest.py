"""The store fixtures (SQLite and PostgreSQL) for the control-plane tests that need one."""

from tests.store.conftest import postgres, target  # noqa: F401
