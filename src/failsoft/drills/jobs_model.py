"""A `python`-backend model that records every execution in PostgreSQL (the jobs drill).

Input ``tag`` (BYTES [1]); output ``echo`` (BYTES [1]): ``done:<tag>``, so a
result can be checked against its request. Each call inserts (job id, tag,
process id) into ``<schema>.executions``; the job id is the request id the
gateway's job runner sets, read here because the model runs inline (on the
event loop, in the runner's context). Configure with ``execution: inline``.

    FAILSOFT_JOBS_PG_URL      postgresql://postgres@127.0.0.1:5432/test
    FAILSOFT_JOBS_PG_SCHEMA   the drill's own schema
"""

from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np

from failsoft.observe.logging import request_id_var

_lock = threading.Lock()
_connection: Any = None


def _connect() -> Any:
    import psycopg

    global _connection
    if _connection is None or _connection.closed:
        _connection = psycopg.connect(
            os.environ.get("FAILSOFT_JOBS_PG_URL", "postgresql://postgres@127.0.0.1:5432/test"),
            autocommit=True,
            connect_timeout=3,
        )
    return _connection


def record(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    tags = [t.decode() if isinstance(t, bytes) else str(t) for t in inputs["tag"].ravel()]
    schema = os.environ["FAILSOFT_JOBS_PG_SCHEMA"]
    job_id = request_id_var.get() or ""
    with _lock:
        connection = _connect()
        with connection.cursor() as cursor:
            cursor.executemany(
                f'INSERT INTO "{schema}".executions (job_id, tag, pid) VALUES (%s, %s, %s)',
                [(job_id, tag, os.getpid()) for tag in tags],
            )
    return {"echo": np.array([f"done:{tag}".encode() for tag in tags], dtype=object)}


def echo(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The same answer without recording: the throughput benchmark's model."""
    tags = [t.decode() if isinstance(t, bytes) else str(t) for t in inputs["tag"].ravel()]
    return {"echo": np.array([f"done:{tag}".encode() for tag in tags], dtype=object)}


def slow_echo(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``echo`` taking a quarter of a second: keeps jobs running when a gateway is killed."""
    import time

    time.sleep(0.25)
    return echo(inputs)
