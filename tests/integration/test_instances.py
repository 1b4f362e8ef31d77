"""Several real gateways on one PostgreSQL store: changes followed within a second, a listing
of instances with their revision and liveness, a killed gateway seen stale then expired, the
LISTEN connection lost (polling carries on) and regained, and SLO budgets summed over the
gateways (a restart neither resets nor doubles them).

The gateways poll the store only every 30 s (except where the test says), so
a change seen within a second was carried by NOTIFY. The flip figure runs
FAILSOFT_TEST_FLIPS flips (20 by default); the full measurement with its
polling baseline is ``benchmarks/multi_instance.py``. PostgreSQL is the
server at FAILSOFT_TEST_POSTGRES_URL with a schema of the test's own,
dropped afterwards; without a server the tests skip, and fail in CI.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from benchmarks.multi_instance import (
    TOKEN,
    Figures,
    flip_latencies,
    gateway_yaml,
    postgres_schema,
    start_gateway,
)
from click.testing import CliRunner, Result
from sqlalchemy import make_url

from failsoft.cli import main
from failsoft.drills.server import ServerFailed, ServerProcess
from tests._tcp_proxy import TcpProxy
from tests.store.conftest import POSTGRES_URL, require_postgres

pytestmark = pytest.mark.integration

FLIPS = int(os.environ.get("FAILSOFT_TEST_FLIPS", "20"))
TARGET_S = 1.0  # issue 15: a flip on A in force on B within a second
MARGIN_S = 2.0  # what a single flip may take on a loaded machine: max(2x, +20 ms)
WITHIN_S = 20.0  # bound on every wait for a state
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ROW = [5.1, 3.5, 1.4, 0.2]


@pytest.fixture
def store_url() -> Iterator[str]:
    require_postgres().dispose()
    with postgres_schema("failsoft_inst") as url:
        yield url


class Gateways:
    def __init__(self, root: Path, demo_dir: Path, url: str) -> None:
        self.root, self.demo_dir, self.url = root, demo_dir, url
        self.started: list[ServerProcess] = []

    def start(self, name: str, **store: Any) -> ServerProcess:
        options = {"url": self.url, "poll_s": 30.0, "heartbeat_s": 0.5, **store}
        config = json.loads(gateway_yaml(self.demo_dir, options))
        config["incidents"] = {"persist_every_s": 0.5}  # SLO buckets saved and merged
        server = start_gateway(self.root / name, json.dumps(config))
        self.started.append(server)
        return server


@pytest.fixture
def gateways(tmp_path: Path, demo_dir: Path, store_url: str) -> Iterator[Gateways]:
    made = Gateways(tmp_path, demo_dir, store_url)
    yield made
    for server in made.started:
        server.stop()


def listing(server: ServerProcess) -> dict[str, Any]:
    answer = httpx.get(f"{server.url}/admin/instances", headers=AUTH, timeout=10)
    assert answer.status_code == 200, answer.text
    data: dict[str, Any] = answer.json()
    return data


def until(condition: Callable[[], bool], what: str, within_s: float = WITHIN_S) -> float:
    """Seconds until ``condition`` held (polled with a bound)."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < within_s, f"not {what} within {within_s} s"
        time.sleep(0.01)
    return time.monotonic() - start


def instances_cli(server: ServerProcess, *args: str) -> Result:
    result = CliRunner().invoke(
        main, ["instances", "--url", server.url, *args], env={"FAILSOFT_ADMIN_TOKEN": TOKEN}
    )
    assert "Traceback" not in result.output
    return result


def slo_events(server: ServerProcess) -> int | None:
    """The availability events of iris in the gateway's SLO status."""
    answer = httpx.get(f"{server.url}/admin/slo", headers=AUTH, timeout=10)
    assert answer.status_code == 200, answer.text
    rows = [row for row in answer.json()["slos"] if row["objective"] == "availability"]
    return rows[0]["events"] if rows else None


def infer(server: ServerProcess) -> httpx.Response:
    body = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 4], "data": ROW}]}
    answer = httpx.post(f"{server.url}/v2/models/iris/infer", json=body, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer


def test_changes_on_one_gateway_are_in_force_on_the_other_within_a_second(
    gateways: Gateways, demo_dir: Path, store_url: str
) -> None:
    a, b = gateways.start("a"), gateways.start("b")
    until(lambda: listing(b)["wakeups"]["mode"] == "listen", "B listening")

    latencies = flip_latencies(a.url, b.url, FLIPS)
    figures = Figures.of(latencies)
    print(f"\nflag flip on A in force on B, {FLIPS} flips: {figures}")
    assert figures.p50_s < TARGET_S, latencies
    assert figures.max_s < max(2 * TARGET_S, MARGIN_S), latencies
    assert listing(b)["wakeups"]["notifications"] >= FLIPS

    # A configuration applied on A is served by B.
    assert infer(b).headers["failsoft-served-by"].startswith("iris/v1/")
    config = json.loads(gateway_yaml(demo_dir, {"url": store_url}))
    config["models"]["iris"]["default_version"] = "v2"
    config["incidents"] = {"persist_every_s": 0.5}
    sent = time.monotonic()
    answer = httpx.post(f"{a.url}/admin/config", json={"config": config}, headers=AUTH, timeout=60)
    assert answer.status_code == 200, answer.text
    revision = answer.json()["revision"]
    until(lambda: infer(b).headers["failsoft-served-by"].startswith("iris/v2/"), "v2 served by B")
    took = time.monotonic() - sent  # from the apply's request: A's own apply included
    print(f"revision {revision} applied on A, served by B {took:.2f} s after the request")
    assert infer(b).headers.get("failsoft-revision") == str(revision)
    assert took < 30.0  # sooner than B's poll: it was woken

    # `failsoft instances` lists both, alive, on that revision.
    until(
        lambda: {row["revision"] for row in listing(a)["instances"]} == {revision},
        "both rows on the new revision",
    )
    shown = instances_cli(a, "--json")
    assert shown.exit_code == 0, shown.output
    rows = json.loads(shown.output)["instances"]
    assert sorted(row["address"] for row in rows) == sorted([a.url, b.url])
    assert all(row["alive"] and row["wakeups"] == "listen" for row in rows)
    table = instances_cli(a)
    assert table.exit_code == 0, table.output
    lines = table.output.splitlines()
    assert lines[0].split() == [
        "ID", "ADDRESS", "PID", "REV", "WAKE-UPS", "HEARTBEAT", "STATE", "STARTED"
    ]  # fmt: skip
    assert len(lines) == 3
    assert sum(line.startswith("* ") for line in lines) == 1
    assert all("alive" in line and str(revision) in line for line in lines[1:])

    # SLO budgets are the sum of both gateways' traffic, and a restart keeps the sum.
    until(lambda: slo_events(a) == slo_events(b), "both SLO views settled")
    before = slo_events(a) or 0
    for _ in range(30):
        infer(a)
    for _ in range(20):
        infer(b)
    took = until(lambda: slo_events(a) == slo_events(b) == before + 50, "the sum on both")
    print(f"30 requests on A, 20 on B: both count all 50 {took:.2f} s later")
    shown = CliRunner().invoke(
        main, ["slo", "status", "--url", a.url, "--json"], env={"FAILSOFT_ADMIN_TOKEN": TOKEN}
    )
    assert shown.exit_code == 0, shown.output
    (row,) = json.loads(shown.output)["slos"]
    assert (row["model"], row["events"], row["bad"]) == ("iris", before + 50, 0)
    assert b.stop() == 0  # a clean stop saves; the same data directory keeps its id
    b = gateways.start("b")
    assert slo_events(b) == before + 50  # loaded before serving: its own rows and A's
    for _ in range(10):
        infer(b)
    until(lambda: slo_events(a) == slo_events(b) == before + 60, "the new sum on both")


def test_a_killed_gateway_is_listed_stale_then_expires(gateways: Gateways) -> None:
    a = gateways.start("a", instance_expire_s=1.0)  # at least 6 beats: 3 s
    b = gateways.start("b", instance_expire_s=1.0)
    until(lambda: len(listing(a)["instances"]) == 2, "both registered")
    b_id = next(row["id"] for row in listing(a)["instances"] if row["address"] == b.url)

    assert b.process is not None
    os.killpg(b.process.pid, signal.SIGKILL)
    b.process.wait(10)

    def b_row() -> dict[str, Any] | None:
        return next((row for row in listing(a)["instances"] if row["id"] == b_id), None)

    took = until(lambda: (row := b_row()) is not None and not row["alive"], "B stale")
    print(f"\nB listed stale {took:.1f} s after SIGKILL (heartbeat 0.5 s, stale after 3)")
    shown = instances_cli(a)
    assert shown.exit_code == 1
    assert "STALE" in shown.output
    assert "1 gateway(s) stale" in shown.output
    assert instances_cli(a, "--alive").output.count("alive") == 1

    until(lambda: b_row() is None, "B's row expired")
    assert instances_cli(a).exit_code == 0

    # A gateway that stops cleanly leaves at once.
    c = gateways.start("c")
    until(lambda: len(listing(a)["instances"]) == 2, "C registered")
    assert c.stop() == 0
    assert [row["address"] for row in listing(a)["instances"]] == [a.url]


def test_the_listener_loses_postgres_polls_meanwhile_and_listens_again(
    gateways: Gateways, store_url: str
) -> None:
    server = make_url(POSTGRES_URL)
    with TcpProxy(server.host or "127.0.0.1", server.port or 5432) as proxy:
        poll_s = 2.0
        listen_url = make_url(store_url).set(port=proxy.port).render_as_string(False)
        a = gateways.start("a")
        b = gateways.start("b", poll_s=poll_s, listen_url=listen_url)
        until(lambda: listing(b)["wakeups"]["mode"] == "listen", "B listening")
        flip_latencies(a.url, b.url, 2)

        proxy.cut()
        until(lambda: listing(b)["wakeups"]["mode"] == "poll", "B polling")
        during = flip_latencies(a.url, b.url, 2)
        print(f"\nLISTEN lost: flips seen by polling (poll_s {poll_s:g}) after {during}")
        assert max(during) < poll_s + MARGIN_S
        assert listing(b)["wakeups"]["mode"] == "poll"  # still cut: it was the polling

        proxy.restore()
        until(lambda: listing(b)["wakeups"]["mode"] == "listen", "B listening again")
        heard = listing(b)["wakeups"]["notifications"]
        after = Figures.of(flip_latencies(a.url, b.url, 6))
        print(f"LISTEN back: {after}")
        assert after.p50_s < TARGET_S
        assert listing(b)["wakeups"]["notifications"] >= heard + 6
        assert listing(b)["wakeups"]["listen_connects"] == 2


def test_on_sqlite_a_gateway_registers_and_follows_by_polling(
    tmp_path: Path, demo_dir: Path
) -> None:
    server = start_gateway(tmp_path / "solo", gateway_yaml(demo_dir, {"heartbeat_s": 0.5}))
    try:
        until(lambda: len(listing(server)["instances"]) == 1, "registered")
        answer = listing(server)
        (row,) = answer["instances"]
        assert (row["id"], row["address"], row["pid"]) == (
            answer["self"],
            server.url,
            server.process.pid if server.process else None,
        )
        assert (row["wakeups"], answer["wakeups"]["mode"]) == ("poll", "poll")
        assert row["revision"] == 1
        shown = instances_cli(server)
        assert shown.exit_code == 0, shown.output
        assert "* " + row["id"] in shown.output
    finally:
        server.stop()


def test_a_listen_url_on_sqlite_is_refused_naming_the_key(tmp_path: Path, demo_dir: Path) -> None:
    folder = tmp_path / "bad"
    folder.mkdir()
    path = folder / "failsoft.yaml"
    path.write_text(gateway_yaml(demo_dir, {"listen_url": "postgresql://db/failsoft"}))
    with pytest.raises(ServerFailed) as failed:
        ServerProcess(path, "--data-dir", str(folder / "data")).start(timeout=60)
    assert "store.listen_url: LISTEN applies to a PostgreSQL store only" in str(failed.value)


def served_by_v2(server: ServerProcess, keys: range) -> int:
    """How many of these sticky keys B's traffic split sends to v2 now."""
    body = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 4], "data": ROW}]}
    with httpx.Client(timeout=10) as client:
        answers = [
            client.post(
                f"{server.url}/v2/models/iris/infer", json=body, headers={"Failsoft-Key": str(k)}
            )
            for k in keys
        ]
    assert all(answer.status_code == 200 for answer in answers)
    return sum(a.headers["failsoft-served-by"].startswith("iris/v2/") for a in answers)


def test_a_rollout_and_its_rollback_on_one_gateway_are_in_force_on_the_other_at_once(
    gateways: Gateways,
) -> None:
    a, b = gateways.start("a"), gateways.start("b")
    until(lambda: listing(b)["wakeups"]["mode"] == "listen", "B listening")
    keys = range(40)
    assert served_by_v2(b, keys) == 0
    spec = {"model": "iris", "to": "v2", "steps": [50, 100], "step_s": 3600}
    answer = httpx.post(f"{a.url}/admin/rollouts", json=spec, headers=AUTH, timeout=30)
    assert answer.status_code == 201, answer.text
    rollout = answer.json()["id"]
    followed = until(lambda: served_by_v2(b, keys) > 0, "B following A's rollout")

    sent = time.monotonic()
    answer = httpx.post(f"{a.url}/admin/rollouts/{rollout}/abort", headers=AUTH, timeout=30)
    assert answer.status_code == 200, answer.text
    back = until(lambda: served_by_v2(b, keys) == 0, "B back on v1")
    took = time.monotonic() - sent
    print(f"\nrollout followed by B in {followed:.2f} s; abort on A in force on B {took:.2f} s")
    assert took < max(2 * TARGET_S, MARGIN_S), took  # polls are 30 s apart: NOTIFY woke B
    assert back <= took
