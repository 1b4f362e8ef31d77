"""Two real gateways sharing one tenant quota (50/s, burst 1 s) through a redis-server of
the test's own: 200 req/s offered hold the quota together, and a Redis stopped under load
costs no request (only 429s), keeps each gateway within its share and ends back on Redis.

A short form of ``benchmarks/quota_shared.py`` (60 s shared, 20 s outage), with a
noise margin for a loaded machine. Without redis-server the tests skip, and fail in CI.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from benchmarks._load import free_port
from benchmarks.quota_shared import (
    QUOTA,
    gateway_yaml,
    outage_run,
    quota_mode,
    redis_on_port,
    shared_run,
    start_gateway,
    stop,
    wait_mode,
)

from failsoft.control.tenants import new_key
from failsoft.drills.server import ServerProcess
from tests.jobs.conftest import IN_CI

pytestmark = pytest.mark.integration

SHARED_S = 10.0
OUTAGE_S = 4.0
MARGIN = 0.1  # the shared figure is 1.00 +- 0.04 at full size; a loaded machine adds noise
WITHIN_S = 20.0


@dataclass
class Pair:
    urls: list[str]
    gateways: list[ServerProcess]
    key: str
    folder: Path
    port: int


@pytest.fixture
def pair(tmp_path: Path, demo_dir: Path) -> Iterator[Pair]:
    if shutil.which("redis-server") is None:
        if IN_CI:
            pytest.fail("redis-server is not installed (CI must run the shared quota tests)")
        pytest.skip("redis-server is not installed")
    port = free_port()
    key = new_key()
    gateways: list[ServerProcess] = []
    with redis_on_port(tmp_path / "redis", port) as url:
        try:
            for name in ("a", "b"):
                config = gateway_yaml(demo_dir, url, "test:", key)
                gateways.append(start_gateway(tmp_path / name, config))
            urls = [g.url for g in gateways]
            wait_mode(urls, "redis", WITHIN_S)
            yield Pair(urls, gateways, key, tmp_path / "redis", port)
        finally:
            for gateway in gateways:
                gateway.stop()


def test_two_gateways_hold_one_quota_together(pair: Pair) -> None:
    load, ratio = shared_run(pair.urls, pair.key, SHARED_S)
    assert load.failed() == []
    assert 1 - MARGIN <= ratio <= 1 + MARGIN, f"admitted {ratio * QUOTA:.1f}/s"
    for gateway in range(2):  # both took part: the quota is shared, not won by one
        assert load.admitted(2.0, SHARED_S, gateway) > 0.25 * QUOTA * (SHARED_S - 2)


def test_redis_down_under_load_costs_no_request_and_holds_each_share(pair: Pair) -> None:
    outage = outage_run(pair.urls, pair.key, pair.folder, pair.port, 2.0, OUTAGE_S)
    try:
        assert outage.load.failed() == []
        assert outage.load.refused_to_send == 0
        for gateway in range(2):
            share = outage.share_ratio(gateway)
            assert 0.5 <= share <= 1 + MARGIN, f"gateway {gateway}: {share:.2f} x its share"
        assert outage.back_s < WITHIN_S
        for server in pair.gateways:
            server.wait_for(lambda line: "Redis unreachable" in str(line.get("msg")), WITHIN_S)
            server.wait_for(lambda line: line.get("msg") == "quota leases back on Redis", 5)
        assert all(quota_mode(url) == "redis" for url in pair.urls)
    finally:
        stop(outage.restarted)
