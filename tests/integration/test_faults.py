"""Acceptance drills: 3 replicas under steady open-loop load, one of them faulted.

Each test starts real servers (remote V2 servers for the `http` backend,
supervised workers for the `process` backend), drives the gateway at a
fixed rate, injects one fault on one replica a moment into the run, and
checks that every request was answered correctly. Bounded: about 10 s each.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from failsoft.drills.server import ServerProcess
from tests.integration._load import Outcome, open_loop, p99, summary
from tests.integration.conftest import ADMIN_TOKEN, REPO

pytestmark = pytest.mark.integration

RATE = 100.0  # requests per second
FAULT_AT = 0.6  # seconds into the run
TENSORS = """
    inputs:  [{name: x, datatype: FP32, shape: [-1, 4]}]
    outputs: [{name: label, datatype: INT64, shape: [-1], labels: [0, 1, 2]}]
"""
HEALTH = """
    health_check:
      interval_ms: 200
      inputs: {x: [[5.1, 3.5, 1.4, 0.2]]}
      expect: {label: [0]}
    fallback: [{python: "tests.integration._models:heuristic"}]
"""


def _env(fault_dir: Path, **extra: str) -> dict[str, str]:
    return {
        "PYTHONPATH": str(REPO),
        "FAILSOFT_ADMIN_TOKEN": ADMIN_TOKEN,
        "FAULT_DIR": str(fault_dir),
        **extra,
    }


class Fleet:
    """The gateway and what it fronts; `fault(i, kind)` breaks replica i."""

    def __init__(self, tmp: Path, backend: str) -> None:
        self.tmp = tmp
        self.backend = backend
        self.fault_dir = tmp / "faults"
        self.fault_dir.mkdir()
        self.upstreams: list[ServerProcess] = []
        self.gateway: ServerProcess | None = None

    def start(self) -> Fleet:
        if self.backend == "http":
            self.upstreams = [self._upstream(i) for i in range(3)]
            with ThreadPoolExecutor(3) as pool:
                list(pool.map(lambda server: server.start(), self.upstreams))
            urls = ", ".join(server.url for server in self.upstreams)
            version = f"{{backend: http, urls: [{urls}]}}"
        else:
            version = (
                "{backend: process, replicas: 3, restart_backoff_s: 0.1, "
                "worker: {backend: python, function: 'tests.integration._models:faulty'}}"
            )
        config = self.tmp / "gateway.yaml"
        config.write_text(f"""
models:
  demo:{TENSORS}
    versions:
      v1: {version}
    timeout_ms: 1000
{HEALTH}""")
        self.gateway = ServerProcess(config, env=_env(self.fault_dir)).start()
        return self

    def _upstream(self, index: int) -> ServerProcess:
        config = self.tmp / f"upstream{index}.yaml"
        config.write_text(f"""
models:
  demo:{TENSORS}
    versions:
      v1: {{backend: python, function: "tests.integration._models:faulty", execution: thread}}
    retry: {{enabled: false}}
    breaker: {{enabled: false}}
    ejection: {{enabled: false}}
    health_check: {{enabled: false}}
""")
        return ServerProcess(config, env=_env(self.fault_dir, FAULT_NAME=f"r{index}"))

    @property
    def url(self) -> str:
        assert self.gateway is not None
        return self.gateway.url

    def replicas(self) -> list[dict[str, object]]:
        assert self.gateway is not None
        status = httpx.get(
            self.gateway.url + "/admin/status", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        ).json()
        replicas: list[dict[str, object]] = status["models"]["demo"]["versions"]["v1"]["replicas"]
        return replicas

    def pid(self, index: int) -> int:
        if self.backend == "http":
            assert self.upstreams[index].process is not None
            return self.upstreams[index].process.pid
        pid = self.replicas()[index]["pid"]
        assert isinstance(pid, int)
        return pid

    def fault(self, index: int, kind: str) -> None:
        if kind == "kill":
            os.kill(self.pid(index), signal.SIGKILL)
        elif kind == "hang":
            os.kill(self.pid(index), signal.SIGSTOP)
        else:
            (self.fault_dir / f"{'r' if self.backend == 'http' else 'w'}{index}").write_text(kind)

    def all_down(self) -> None:
        for index in range(3):
            os.kill(
                self.pid(index), signal.SIGSTOP if self.backend == "process" else signal.SIGKILL
            )

    def stop(self) -> None:
        # A stopped process must be resumed to be stopped cleanly.
        for server in self.upstreams:
            if server.process and server.process.poll() is None:
                os.kill(server.process.pid, signal.SIGCONT)
        if self.gateway is not None and self.backend == "process":
            for replica in self.replicas():
                pid = replica.get("pid")
                if isinstance(pid, int):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGCONT)
        for server in [*self.upstreams, self.gateway]:
            if server is not None:
                server.stop()


@pytest.fixture(params=["http", "process"])
def fleet(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Fleet]:
    started = Fleet(tmp_path, request.param)
    try:
        yield started.start()
    finally:
        started.stop()


def drive(fleet: Fleet, seconds: float, inject: Callable[[], None]) -> list[Outcome]:
    async def run() -> list[Outcome]:
        load = asyncio.ensure_future(open_loop(fleet.url, "demo", RATE, seconds))
        await asyncio.sleep(FAULT_AT)  # the load runs meanwhile; this only places the fault
        await asyncio.get_running_loop().run_in_executor(None, inject)
        return await load

    return asyncio.run(run())


def during_fault(outcomes: list[Outcome], after: float = 0.0) -> list[Outcome]:
    return [o for o in outcomes if o.sent_at >= FAULT_AT + after]


def assert_all_correct(outcomes: list[Outcome]) -> None:
    print(summary(outcomes))
    wrong = [o for o in outcomes if not o.correct]
    assert not wrong, summary(outcomes)


def test_killed_replica(fleet: Fleet) -> None:
    outcomes = drive(fleet, 3.0, lambda: fleet.fault(1, "kill"))
    assert_all_correct(outcomes)
    if fleet.backend == "process":
        assert fleet.gateway is not None
        fleet.gateway.wait_for(lambda line: line.get("msg") == "worker restarted", timeout=10)
        back = drive(fleet, 5.0, lambda: None)
        assert_all_correct(back)
        assert any(o.served_by == "demo/v1/w1" for o in back), "restarted worker got no traffic"


def test_slow_replica(fleet: Fleet) -> None:
    outcomes = drive(fleet, 3.0, lambda: fleet.fault(0, "slow"))
    assert_all_correct(outcomes)
    assert p99(during_fault(outcomes)) <= 0.050, summary(during_fault(outcomes))


def test_hung_replica(fleet: Fleet) -> None:
    outcomes = drive(fleet, 3.5, lambda: fleet.fault(2, "hang"))
    assert_all_correct(outcomes)
    assert p99(during_fault(outcomes, after=1.0)) <= 0.050, summary(during_fault(outcomes, 1.0))


def test_replica_failing_half_its_calls(fleet: Fleet) -> None:
    outcomes = drive(fleet, 3.0, lambda: fleet.fault(1, "error"))
    assert_all_correct(outcomes)


def test_replica_answering_garbage(fleet: Fleet) -> None:
    outcomes = drive(fleet, 3.0, lambda: fleet.fault(0, "garbage"))
    assert_all_correct(outcomes)


def test_every_replica_down(fleet: Fleet) -> None:
    outcomes = drive(fleet, 3.0, fleet.all_down)
    assert_all_correct(outcomes)
    late = during_fault(outcomes, after=1.5)
    assert late
    assert all(o.degraded and o.served_by == "demo/v1/fallback:heuristic" for o in late)
