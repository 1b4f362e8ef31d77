"""The store suite runs on SQLite (a temporary data directory) and PostgreSQL.

PostgreSQL is the server at ``FAILSOFT_TEST_POSTGRES_URL`` (default
127.0.0.1:5432, database ``test``); each test gets a schema of its own,
``failsoft_test_<run>_<n>``, dropped afterwards. Without a server the
PostgreSQL half is skipped locally, and fails in CI (``CI`` set).
"""

from __future__ import annotations

import itertools
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text

from failsoft.store import Store

POSTGRES_URL = os.environ.get(
    "FAILSOFT_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
IN_CI = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")
RUN = secrets.token_hex(3)
_schemas = itertools.count(1)


class Wall:
    """An injected wall clock: seconds since the epoch, moved by the test."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass(frozen=True)
class Target:
    """Where a test's store lives: ``url`` None means SQLite in the data directory."""

    dialect: str
    url: str | None
    schema: str | None

    def open(self, data_dir: Path, wall: Wall, **options: float) -> Store:
        return Store.open(data_dir, self.url, schema=self.schema, wall=wall, **options)


def require_postgres(why: str = "") -> Engine:
    """An engine on the test server; skip without one, or fail in CI (saying ``why``)."""
    engine = create_engine(POSTGRES_URL, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as error:
        engine.dispose()
        reason = f"PostgreSQL is not reachable at {POSTGRES_URL}: {str(error).splitlines()[0]}"
        if IN_CI:
            pytest.fail(f"{reason} ({why})" if why else reason)
        pytest.skip(reason)
    return engine


@pytest.fixture(scope="session")
def postgres() -> Iterator[Engine]:
    engine = require_postgres("CI must run the PostgreSQL half of the store suite")
    yield engine
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def target(request: pytest.FixtureRequest) -> Iterator[Target]:
    if request.param == "sqlite":
        yield Target("sqlite", None, None)
        return
    engine: Engine = request.getfixturevalue("postgres")
    schema = f"failsoft_test_{RUN}_{next(_schemas)}"
    yield Target("postgresql", POSTGRES_URL, schema)
    with engine.begin() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))


@pytest.fixture
def wall() -> Wall:
    return Wall()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def store(target: Target, data_dir: Path, wall: Wall) -> Iterator[Store]:
    opened = target.open(data_dir, wall)
    yield opened
    opened.close()


def tamper(store: Store, *statements: str) -> None:
    """Run SQL as an attacker with database access: triggers bypassed, then put back."""
    engine = store.engine.engine
    with engine.begin() as conn:
        if store.dialect == "postgresql":
            conn.execute(text("ALTER TABLE audit_entries DISABLE TRIGGER USER"))
            conn.execute(text("ALTER TABLE checkpoints DISABLE TRIGGER USER"))
            for statement in statements:
                conn.execute(text(statement))
            conn.execute(text("ALTER TABLE audit_entries ENABLE TRIGGER USER"))
            conn.execute(text("ALTER TABLE checkpoints ENABLE TRIGGER USER"))
            return
        triggers = conn.execute(
            text("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'")
        ).all()
        for name, _ in triggers:
            conn.execute(text(f"DROP TRIGGER {name}"))
        for statement in statements:
            conn.execute(text(statement))
        for _, sql in triggers:
            conn.execute(text(sql))
