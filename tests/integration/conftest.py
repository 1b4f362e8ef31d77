from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from failsoft.drills.server import ServerProcess

REPO = Path(__file__).resolve().parents[2]
ADMIN_TOKEN = "test-admin-token"


def launch(directory: Path, config_text: str) -> ServerProcess:
    """Write the configuration and start `failsoft serve` on an ephemeral port."""
    path = directory / "failsoft.yaml"
    path.write_text(config_text)
    server = ServerProcess(
        path,
        env={
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
            "FAILSOFT_ADMIN_TOKEN": ADMIN_TOKEN,
        },
    )
    return server.start()


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[[str], ServerProcess]]:
    """Start servers for one test; each is stopped (SIGTERM, then SIGKILL) afterwards."""
    started: list[ServerProcess] = []

    def start(config_text: str) -> ServerProcess:
        started.append(launch(tmp_path, config_text))
        return started[-1]

    yield start
    for server in started:
        server.stop()
