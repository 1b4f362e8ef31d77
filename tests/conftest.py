from __future__ import annotations

from pathlib import Path

import pytest

# Tests that judge latency, rates or detection times under load. With `pytest -n 2`
# they all run on one worker, one after the other (xdist's loadgroup), so two of them
# never crowd each other on a two-core machine; the other worker takes everything else.
TIMED_FILES = frozenset(
    {
        "test_autoscale.py",
        "test_drills.py",
        "test_failover.py",
        "test_quota_shared.py",
        "test_ray_backend.py",
        "test_recovery.py",
    }
)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--long",
        action="store_true",
        default=False,
        help="also run the long forms (e.g. every drill again with resilience off)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in TIMED_FILES:
            item.add_marker(pytest.mark.xdist_group("timed"))


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
