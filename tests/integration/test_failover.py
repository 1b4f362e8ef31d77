"""Two real gateways on one PostgreSQL store, one SIGKILLed under load, no balancer in front.

The client knows both addresses, alternates between them and, infer being
idempotent, retries a failed request once on the other gateway. Under
RATE requests/s (the acceptance's 200) to a model taking 50 ms a call, so
that requests are in flight, the first gateway is SIGKILLed (its
whole process group) after WARM_S: no request may fail after the retry, every
request sent after the kill is answered by the survivor, and the survivor's
`failsoft instances` lists the dead one STALE. The full measurement, also
behind HAProxy, is ``benchmarks/failover.py``. PostgreSQL is the server at
FAILSOFT_TEST_POSTGRES_URL with a schema of the test's own, dropped
afterwards; without a server the test skips, and fails in CI.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from benchmarks.failover import (
    Model,
    config_yaml,
    direct_route,
    drive,
    kill_group,
    outcome_of,
    warm_up,
)
from benchmarks.multi_instance import TOKEN, postgres_schema, start_gateway
from click.testing import CliRunner

from failsoft.cli import main
from failsoft.drills.server import ServerProcess
from tests.store.conftest import require_postgres

pytestmark = pytest.mark.integration

RATE = 200.0
SERVICE_MS = 50.0  # the model's time per call: about 10 requests in flight at the kill
WARMUP_S = 2.0  # unmeasured: the adaptive limiters learn the model's latency
WARM_S = 1.5
TAIL_S = 3.0
WITHIN_S = 20.0  # bound on the wait for the dead one to show stale


@pytest.fixture
def store_url() -> Iterator[str]:
    require_postgres().dispose()
    with postgres_schema("failsoft_failover") as url:
        yield url


@pytest.fixture
def gateways(
    tmp_path: Path, demo_dir: Path, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[list[ServerProcess]]:
    for name in ("FAILSOFT_BENCH_SLOTS", "FAILSOFT_BENCH_SERVICE_MS"):
        monkeypatch.setenv(name, "")  # config_yaml sets them for the gateways; restored after
    store = {"url": store_url, "poll_s": 30.0, "heartbeat_s": 0.5}
    config = config_yaml(demo_dir, store, SERVICE_MS)
    started: list[ServerProcess] = []
    try:
        for name in ("gw0", "gw1"):
            started.append(start_gateway(tmp_path / name, config))
        yield started
    finally:
        for server in started:
            server.stop()


def instances(server: ServerProcess) -> tuple[int, str, list[dict[str, object]]]:
    """`failsoft instances` against ``server``: exit code, table, rows (--json, asked first)."""
    env = {"FAILSOFT_ADMIN_TOKEN": TOKEN}
    shown = CliRunner().invoke(main, ["instances", "--url", server.url, "--json"], env=env)
    table = CliRunner().invoke(main, ["instances", "--url", server.url], env=env)
    assert "Traceback" not in table.output + shown.output
    return table.exit_code, table.output, json.loads(shown.stdout)["instances"]


def test_a_gateway_killed_under_load_loses_no_request_the_client_retries_once(
    gateways: list[ServerProcess],
) -> None:
    dead, survivor = gateways
    rows = instances(survivor)[2]
    assert sorted(str(row["address"]) for row in rows) == sorted([dead.url, survivor.url])

    model = Model.of(SERVICE_MS)
    warm_up(model, [dead.url, survivor.url], RATE, WARMUP_S)
    load = drive(
        model,
        direct_route([dead.url, survivor.url]),
        RATE,
        WARM_S + TAIL_S,
        WARM_S,
        lambda: kill_group(dead),
    )
    records, killed_at = asyncio.run(load)
    outcome = outcome_of("direct", records, killed_at, victim=0)
    print(
        f"\n{outcome.requests} requests at {RATE:g}/s, {outcome.after_kill} after the kill, "
        f"{outcome.in_flight} in flight at it: "
        f"{outcome.failed_first} failed without the retry {outcome.kinds}, "
        f"{outcome.failed_final} after it; survivor share {outcome.survivor_share:.3f}"
    )
    assert outcome.failed_final == 0, outcome
    assert outcome.survivor_share == 1.0, outcome
    assert min(outcome.balance_before) > 0.4, outcome  # both served before the kill
    assert outcome.failed_first > 0  # the kill was felt: the retries did the work
    assert outcome.in_flight > 0  # killed mid-request
    assert dead.process is not None
    assert dead.process.poll() is not None

    deadline = time.monotonic() + WITHIN_S
    while True:
        code, table, rows = instances(survivor)
        stale = [row for row in rows if row["address"] == dead.url and not row["alive"]]
        if stale:
            break
        assert time.monotonic() < deadline, f"the dead gateway not stale within {WITHIN_S} s"
        time.sleep(0.05)
    assert code == 1
    (line,) = [line for line in table.splitlines() if dead.url in line]
    assert "STALE" in line
    assert "1 gateway(s) stale" in table
    alive = [row for row in rows if row["alive"]]
    assert [row["address"] for row in alive] == [survivor.url]
