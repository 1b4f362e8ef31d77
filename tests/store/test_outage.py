"""The store while it is down: opened anyway, migrated on return; late writes rolled back."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, make_url, text

from failsoft.store import Store, StoreUnreachable
from failsoft.store.engine import deadline
from tests._tcp_proxy import TcpProxy

from .conftest import POSTGRES_URL, RUN


def test_a_write_after_the_deadline_is_rolled_back(store: Store) -> None:
    with deadline(time.monotonic() - 1), pytest.raises(StoreUnreachable) as raised:
        store.add_revision({"models": {}}, actor="late")
    assert "deadline" in raised.value.message
    assert "nothing was written" in raised.value.message
    assert store.revisions() == []
    with deadline(time.monotonic() + 60):
        assert store.add_revision({"models": {}}, actor="in time").id == 1
    assert store.add_revision({"models": {}}, actor="no deadline").id == 2


@pytest.fixture
def proxied(postgres: Engine) -> Iterator[tuple[TcpProxy, str]]:
    """A schema of its own, reached through a proxy the test can cut."""
    schema = f"failsoft_test_{RUN}_outage"
    with postgres.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    target = make_url(POSTGRES_URL)
    with TcpProxy(target.host or "127.0.0.1", target.port or 5432) as proxy:
        url = target.set(port=proxy.port, query={"options": f"-csearch_path={schema}"})
        yield proxy, url.render_as_string(hide_password=False)
    with postgres.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))


def test_opened_while_unreachable_then_migrated_on_return(
    proxied: tuple[TcpProxy, str], tmp_path: Path
) -> None:
    proxy, url = proxied
    proxy.cut()
    with pytest.raises(StoreUnreachable):
        Store.open(tmp_path, url)
    store = Store.open(tmp_path, url, unreachable_ok=True)
    try:
        with pytest.raises(StoreUnreachable, match="Connection refused"):
            store.current_revision()
        proxy.restore()
        assert store.current_revision() is None  # migrated first: the tables exist
        assert store.add_revision({"models": {}}, actor="ci").id == 1
        assert store.verify().ok
    finally:
        store.close()
