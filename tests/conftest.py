from __future__ import annotations

from pathlib import Path

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--long",
        action="store_true",
        default=False,
        help="also run the long forms (e.g. every drill again with resilience off)",
    )


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
