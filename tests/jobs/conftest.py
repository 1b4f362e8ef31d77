"""Queues under test: SQLite in a temporary folder, and Redis Streams on a redis-server
with an append-only file that the session starts itself (Unix socket, own folder).
Without redis-server the Redis half is skipped locally and fails in CI."""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from failsoft.drills.jobs_drill import redis_server
from failsoft.jobs.redis_queue import RedisQueue
from failsoft.jobs.sqlite_queue import SqliteQueue

IN_CI = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")
_prefixes = itertools.count(1)


class Wall:
    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if shutil.which("redis-server") is None:
        if IN_CI:
            pytest.fail("redis-server is not installed (CI must run the Redis queue tests)")
        pytest.skip("redis-server is not installed")
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture
def wall() -> Wall:
    return Wall()


OPTIONS: dict[str, Any] = {"lease_s": 5.0, "max_attempts": 3, "keep_s": 60.0, "max_pending": 50}


@pytest.fixture(params=["sqlite", "redis"])
async def queue(
    request: pytest.FixtureRequest, tmp_path: Path, wall: Wall
) -> AsyncIterator[SqliteQueue | RedisQueue]:
    made: SqliteQueue | RedisQueue
    if request.param == "sqlite":
        made = SqliteQueue(tmp_path / "jobs.sqlite3", wall=wall, **OPTIONS)
    else:
        url = request.getfixturevalue("redis_url")
        made = RedisQueue(url, f"test{next(_prefixes)}", wall=wall, **OPTIONS)
    await made.open()
    yield made
    await made.close()


@pytest.fixture
def redis_url_or_none(request: pytest.FixtureRequest, queue: object) -> str | None:
    return request.getfixturevalue("redis_url") if isinstance(queue, RedisQueue) else None
