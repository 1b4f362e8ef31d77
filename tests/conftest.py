from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests._stalls import STALL_S, stall_timer


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--long",
        action="store_true",
        default=False,
        help="also run the long forms (e.g. every drill again with resilience off)",
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """A test still running after a few minutes prints what its tasks wait for."""
    limit = float(item.config.getoption("--timeout", None) or item.config.getini("timeout") or 0)
    timer = stall_timer(item.nodeid, min(STALL_S, limit / 2) if limit > 0 else STALL_S)
    try:
        return (yield)
    finally:
        timer.cancel()


@pytest.fixture(scope="session")
def long_run(request: pytest.FixtureRequest) -> bool:
    """Whether `--long` was given."""
    return bool(request.config.getoption("--long"))


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo models, trained once per test session into a temporary folder."""
    from failsoft.demo import prepare_demo

    directory = tmp_path_factory.mktemp("demo")
    prepare_demo(directory, progress=lambda message: None)
    return directory
