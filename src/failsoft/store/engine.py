"""A connection to the control store: one URL, SQLite or PostgreSQL.

``sqlite:///DATA_DIR/failsoft.db`` is the embedded default: WAL (readers
never wait for the writer), foreign keys on, a busy timeout, and write
transactions that start with ``BEGIN IMMEDIATE`` so two writers queue on the
lock instead of failing on an upgrade. ``postgresql+psycopg://…`` (or plain
``postgresql://``, which means the same) is for several gateways sharing one
store; an optional schema keeps tests and deployments apart: it is created
when missing and is the connection's search path.

Every write transaction holds one store-wide lock (an advisory lock on
PostgreSQL, the write lock on SQLite): control-plane writes are rare, and
one writer at a time keeps revision ids and audit sequence numbers gapless.

A store that cannot be reached when it is opened can be opened anyway: its
migration waits for the first transaction that reaches it (``defer``). A
caller that stops waiting for the store sets a ``deadline`` on its thread: a
write transaction that gets through after it is rolled back, not committed.

Errors leave this module as ``StoreError``, whose message names the store by
its URL without the password: never a driver traceback.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, exc, text
from sqlalchemy.engine import URL, make_url

__all__ = [
    "DEFAULT_DB_FILE",
    "StoreEngine",
    "StoreError",
    "StoreUnreachable",
    "deadline",
    "default_url",
    "redact",
]

DEFAULT_DB_FILE = "failsoft.db"
SQLITE_BUSY_TIMEOUT_MS = 10_000
CONNECT_TIMEOUT_S = 5
_SCHEMA = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_WRITE = "failsoft_write"


class StoreError(Exception):
    """The control store cannot do what was asked; the message says why, for people."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class StoreUnreachable(StoreError):
    """The store did not answer (connection refused, reset, timed out): try again later."""


def default_url(data_dir: Path) -> str:
    return f"sqlite:///{Path(data_dir).resolve() / DEFAULT_DB_FILE}"


def redact(url: str | URL) -> str:
    """The URL as people may see it: the password, if any, replaced by ***."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except exc.ArgumentError:
        return "<an unparseable store URL>"


def _reason(error: BaseException) -> str:
    """The driver's own words, first lines only, without SQLAlchemy's boilerplate."""
    original = getattr(error, "orig", None) or error
    lines = [
        line.strip()
        for line in str(original).splitlines()
        if line.strip() and not line.strip().startswith("CONTEXT:")
    ]
    return "; ".join(lines[:2]) or type(original).__name__


def _parse(url: str) -> URL:
    try:
        parsed = make_url(url)
    except exc.ArgumentError:
        raise StoreError(
            f"store URL {redact(url)} is not a URL; use sqlite:///PATH or "
            "postgresql+psycopg://USER@HOST:PORT/DB"
        ) from None
    if parsed.drivername in ("postgresql", "postgres", "postgresql+psycopg"):
        return parsed.set(drivername="postgresql+psycopg")
    if parsed.drivername in ("sqlite", "sqlite+pysqlite"):
        if parsed.database in (None, "", ":memory:"):
            raise StoreError(
                f"store URL {redact(parsed)} names no file; the SQLite store is a file "
                "(sqlite:///DATA_DIR/failsoft.db)"
            )
        return parsed
    raise StoreError(
        f"store URL {redact(parsed)}: unsupported database {parsed.drivername!r}; "
        "use sqlite:///PATH or postgresql+psycopg://…"
    )


def _lock_key(schema: str | None) -> int:
    digest = hashlib.sha256(f"failsoft store {schema or ''}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class StoreEngine:
    """A SQLAlchemy engine with the store's connection rules and error messages."""

    def __init__(self, url: str, schema: str | None = None) -> None:
        parsed = _parse(url)
        self.url = redact(parsed)
        self.dialect = "sqlite" if parsed.drivername.startswith("sqlite") else "postgresql"
        if schema is not None and self.dialect == "sqlite":
            raise StoreError(f"store {self.url}: a schema applies to PostgreSQL only")
        if schema is not None and not _SCHEMA.match(schema):
            raise StoreError(
                f"store schema {schema!r} must be lower-case letters, digits and _ "
                "(at most 63, not starting with a digit)"
            )
        self.schema = schema
        self._lock_key = _lock_key(schema)
        self._thread_lock = threading.Lock()
        # Work the open could not do (the store was down): done before the next use.
        self._pending: Callable[[], None] | None = None
        self._pending_lock = threading.Lock()
        self._local = threading.local()
        self.engine = self._create(parsed)
        with self.translate("open"):
            if schema is not None:
                self._create_schema()

    def _create(self, parsed: URL) -> Engine:
        if self.dialect == "sqlite":
            assert parsed.database is not None
            try:
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise StoreError(f"cannot open the control store {self.url}: {error}") from None
            engine = create_engine(parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
            event.listen(engine, "connect", _sqlite_connect)
            event.listen(engine, "begin", _sqlite_begin)
            return engine
        connect_args: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT_S}
        if self.schema is not None:
            connect_args["options"] = f"-c search_path={self.schema}"
        return create_engine(parsed, connect_args=connect_args, pool_pre_ping=True)

    def _create_schema(self) -> None:
        with self.engine.connect() as conn, conn.begin():
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": self._lock_key})
            conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"'))

    @contextmanager
    def translate(self, doing: str) -> Iterator[None]:
        """Turn database errors into a StoreError naming the store and the driver's reason."""
        try:
            yield
        except (exc.OperationalError, exc.InterfaceError) as error:
            raise StoreUnreachable(
                f"control store {self.url} unreachable or failing ({doing}): {_reason(error)}"
            ) from None
        except exc.SQLAlchemyError as error:
            raise StoreError(
                f"control store {self.url}: {doing} failed: {_reason(error)}"
            ) from None

    def defer(self, prepare: Callable[[], None]) -> None:
        """Run ``prepare`` (which may use this engine) before the next transaction, and
        before every one after it until it succeeds: a migration that the open could
        not do because the store was unreachable."""
        self._pending = prepare

    def _ready(self) -> None:
        if self._pending is None or getattr(self._local, "preparing", False):
            return
        with self._pending_lock:
            prepare = self._pending
            if prepare is None:
                return
            self._local.preparing = True
            try:
                prepare()
            finally:
                self._local.preparing = False
            self._pending = None

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read transaction (SQLite: a WAL snapshot from the first read on)."""
        self._ready()
        with self.translate("read"), self.engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def snapshot(self) -> Iterator[Connection]:
        """A read-only transaction in which every statement sees the same snapshot."""
        self._ready()
        with self.translate("read"), self.engine.connect() as conn:
            if self.dialect == "postgresql":
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                if self.dialect == "postgresql":
                    conn.execute(text("SET TRANSACTION READ ONLY"))
                yield conn

    @contextmanager
    def write(self, doing: str = "write") -> Iterator[Connection]:
        """A write transaction holding the store-wide write lock until it ends."""
        self._ready()
        with self._thread_lock, self.translate(doing), self.engine.connect() as conn:
            conn.execution_options(**{_WRITE: True})
            with conn.begin():
                if self.dialect == "postgresql":
                    conn.execute(
                        text("SELECT pg_advisory_xact_lock(:key)"), {"key": self._lock_key}
                    )
                self._check_deadline(doing)
                yield conn
                self._check_deadline(doing)  # the caller gave up: roll back, do not commit

    def _check_deadline(self, doing: str) -> None:
        at = getattr(_caller, "deadline", None)
        if at is not None and time.monotonic() > at:
            raise StoreUnreachable(
                f"control store {self.url} unreachable or failing ({doing}): no answer "
                "within the caller's deadline; nothing was written"
            )

    def dispose(self) -> None:
        self.engine.dispose()

    def listen_params(self, url: str | None = None) -> dict[str, Any]:
        """psycopg connection parameters for a dedicated LISTEN connection: this store's
        (or those of ``url``, the same database reached another way), with its schema."""
        if self.dialect != "postgresql":
            raise StoreError(f"store {self.url}: LISTEN needs PostgreSQL")
        parsed = self.engine.url if url is None else _parse(url)
        if not parsed.drivername.startswith("postgresql"):
            raise StoreError(f"listen URL {redact(parsed)} is not a PostgreSQL URL")
        _args, params = self.engine.dialect.create_connect_args(parsed)
        params["connect_timeout"] = CONNECT_TIMEOUT_S
        if self.schema is not None:
            params["options"] = f"-c search_path={self.schema}"
        return dict(params)


_caller = threading.local()


@contextmanager
def deadline(at: float | None) -> Iterator[None]:
    """Writes on this thread commit only before ``at`` (``time.monotonic()``): a caller that
    stopped waiting for the store (it hung) must not see its change land later."""
    before = getattr(_caller, "deadline", None)
    _caller.deadline = at
    try:
        yield
    finally:
        _caller.deadline = before


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # pysqlite's own transaction handling would BEGIN lazily and defer the lock;
    # _sqlite_begin issues BEGIN itself.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        # FULL, not NORMAL: a checkpoint copied outside the database must never
        # cover an entry that a power cut takes back.
        cursor.execute("PRAGMA synchronous=FULL")
    finally:
        cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    immediate = conn.get_execution_options().get(_WRITE, False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
