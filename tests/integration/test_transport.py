"""The HTTP front door of a real `failsoft serve` against hostile clients, on real sockets."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from failsoft.drills.server import ServerProcess
from tests._raw_http import Address, connect, get, is_closed, read_response, seconds_until_closed
from tests.integration.conftest import REPO, launch

pytestmark = pytest.mark.integration

HEALTH = "/v2/health/live"
MODELS = """
models:
  shout:
    inputs:  [{name: text, datatype: BYTES, shape: [-1]}]
    outputs: [{name: upper, datatype: BYTES, shape: [-1]}]
    versions:
      v1: {backend: python, function: "tests.integration._models:shout"}
"""


def address_of(server: ServerProcess) -> Address:
    url = urlsplit(server.url)
    assert url.hostname is not None
    assert url.port is not None
    return url.hostname, url.port


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Address]:
    """A server with short deadlines: half a second for a head, half a second idle."""
    server = launch(
        tmp_path_factory.mktemp("strict"),
        "server: {max_connections: 16, header_timeout_s: 0.5, keep_alive_s: 0.5}" + MODELS,
    )
    yield address_of(server)
    assert server.stop() == 0


@pytest.fixture(scope="module")
def patient(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Address]:
    """A server whose deadlines are too long to matter: only eviction frees its 16 slots."""
    server = launch(
        tmp_path_factory.mktemp("patient"),
        "server: {max_connections: 16, header_timeout_s: 60, keep_alive_s: 60}" + MODELS,
    )
    yield address_of(server)
    assert server.stop() == 0


def test_a_partial_head_is_closed_after_the_header_timeout(strict: Address) -> None:
    with connect(strict) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nhost: test\r\nx-slow: ")
        assert 0.4 < seconds_until_closed(sock, 5) < 3


def test_a_silent_connection_is_closed_after_the_header_timeout(strict: Address) -> None:
    with connect(strict) as sock:
        assert 0.4 < seconds_until_closed(sock, 5) < 3


def test_an_idle_keep_alive_connection_is_closed_after_keep_alive(strict: Address) -> None:
    with connect(strict) as sock:
        for _ in range(3):
            assert get(sock, HEALTH)[0] == 200
        assert 0.4 < seconds_until_closed(sock, 5) < 3


def test_a_100_kib_header_gets_431_and_health_stays_fast(strict: Address) -> None:
    with connect(strict) as sock:
        sock.sendall(
            b"GET /v2/health/live HTTP/1.1\r\nhost: test\r\nx-big: " + b"a" * 102_400 + b"\r\n\r\n"
        )
        status, headers, body = read_response(sock)
        assert status == 431
        assert headers["connection"] == "close"
        assert json.loads(body) == {"error": "request headers are over the 65536-byte limit"}
        assert seconds_until_closed(sock, 5) < 5
    with connect(strict) as sock:
        started = time.monotonic()
        assert get(sock, HEALTH)[0] == 200
        assert time.monotonic() - started < 0.5


def test_sixteen_slowloris_sockets_do_not_block_real_requests(patient: Address) -> None:
    slowloris = [connect(patient) for _ in range(16)]
    for sock in slowloris:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nhost: test\r\nx-slow: ")
    try:
        took = []
        for _ in range(8):  # each on a new connection, each evicting one slowloris socket
            with connect(patient) as sock:
                started = time.monotonic()
                assert get(sock, HEALTH)[0] == 200
                took.append(time.monotonic() - started)
        assert max(took) < 1.0, took
        # The longest waiting went first; the newest slowloris sockets are still open.
        assert seconds_until_closed(slowloris[0], 5) < 5
        assert not is_closed(slowloris[-1])
        with connect(patient) as sock:  # a keep-alive client among 15 slowloris sockets
            took = []
            for _ in range(50):
                started = time.monotonic()
                assert get(sock, HEALTH)[0] == 200
                took.append(time.monotonic() - started)
        assert statistics.median(took) < 0.05, took
    finally:
        for sock in slowloris:
            sock.close()


def test_a_short_admin_token_in_the_environment_stops_startup_clearly(tmp_path: Path) -> None:
    config = tmp_path / "failsoft.yaml"
    config.write_text(MODELS)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "FAILSOFT_ADMIN_TOKEN": "too-short",
    }
    done = subprocess.run(
        [sys.executable, "-m", "failsoft", "serve", "--config", str(config), "--port", "0"],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    stderr = done.stderr.decode()
    assert done.returncode == 1
    assert "FAILSOFT_ADMIN_TOKEN: must be at least 16 characters" in stderr
    assert "Traceback" not in stderr
    assert "too-short" not in stderr
