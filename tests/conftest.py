from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo models, trained once per test session into a temporary folder."""
    from failsoft.demo import prepare_demo

    directory = tmp_path_factory.mktemp("demo")
    prepare_demo(directory, progress=lambda message: None)
    return directory
