"""Opening a store: URLs, migrations, SQLite settings, PostgreSQL schemas, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from failsoft.store import Store, StoreError, default_url, redact
from failsoft.store.migrate import current_revision, head_revision
from failsoft.store.tables import metadata

from .conftest import Target, Wall

TABLES = {"revisions", "artifacts", "audit_entries", "checkpoints", "tokens"}


def test_migrations_build_the_schema_of_the_code_on_a_fresh_store(store: Store) -> None:
    with store.engine.read() as conn:
        assert current_revision(conn) == head_revision()
        assert set(inspect(conn).get_table_names()) >= TABLES
        # The migration and tables.py describe the same schema.
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []


def test_reopening_migrates_nothing_and_keeps_the_data(
    target: Target, data_dir: Path, wall: Wall
) -> None:
    with target.open(data_dir, wall) as first:
        first.add_revision({"models": {}}, actor="alice")
    with target.open(data_dir, wall) as again:
        assert [revision.id for revision in again.revisions()] == [1]
        with again.engine.read() as conn:
            assert current_revision(conn) == head_revision()


def test_sqlite_is_a_wal_file_in_the_data_directory(data_dir: Path, wall: Wall) -> None:
    with Store.open(data_dir, wall=wall) as store:
        assert store.url == default_url(data_dir)
        assert (data_dir / "failsoft.db").is_file()
        with store.engine.read() as conn:
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
            assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 10_000


@pytest.mark.parametrize("target", ["postgresql"], indirect=True)
def test_postgres_store_lives_in_its_own_schema(store: Store, target: Target) -> None:
    with store.engine.read() as conn:
        assert conn.execute(text("SELECT current_schema()")).scalar() == target.schema
        assert set(inspect(conn).get_table_names(schema=target.schema)) >= TABLES
        assert not TABLES & set(inspect(conn).get_table_names(schema="public"))


def test_an_unreachable_store_is_a_clear_error_without_the_password(tmp_path: Path) -> None:
    url = "postgresql+psycopg://failsoft:s3cret@127.0.0.1:1/control"
    with pytest.raises(StoreError) as caught:
        Store.open(tmp_path, url)
    message = caught.value.message
    assert "s3cret" not in message
    assert "postgresql+psycopg://failsoft:***@127.0.0.1:1/control" in message
    assert "unreachable" in message
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("mysql://root:pw@db/x", "unsupported database 'mysql'"),
        ("sqlite:///:memory:", "names no file"),
        ("sqlite://", "names no file"),
        ("not a url", "is not a URL"),
    ],
)
def test_bad_urls_say_what_to_use(tmp_path: Path, url: str, says: str) -> None:
    with pytest.raises(StoreError, match=says) as caught:
        Store.open(tmp_path, url)
    assert "pw" not in caught.value.message


def test_bad_schemas_are_refused(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="PostgreSQL only"):
        Store.open(tmp_path, schema="mine")
    with pytest.raises(StoreError, match="lower-case letters"):
        Store.open(tmp_path, "postgresql+psycopg://u@127.0.0.1:1/x", schema='x"; DROP')


def test_a_sqlite_file_that_cannot_be_created_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match="cannot open the control store"):
        Store.open(tmp_path / "data", f"sqlite:///{blocker}/sub/failsoft.db")


def test_failures_after_opening_are_store_errors(store: Store) -> None:
    # The store breaking under a running gateway (here: its table gone).
    with store.engine.engine.begin() as conn:
        conn.execute(text("DROP TABLE revisions"))
    with pytest.raises(StoreError, match=r"control store .*(read|write)"):
        store.add_revision({}, actor="alice")
    with pytest.raises(StoreError):
        store.revisions()


def test_redact_hides_only_the_password() -> None:
    assert redact("postgresql+psycopg://u:p@h:5/d") == "postgresql+psycopg://u:***@h:5/d"
    assert redact("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"
