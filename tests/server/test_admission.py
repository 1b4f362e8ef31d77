"""Admission through the real app in-process: keys, priorities, quotas, the limit, the bulkhead."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from failsoft.call import Call
from failsoft.clock import ManualClock, settle
from failsoft.config import parse_config
from failsoft.control.tenants import TenantConfig, Tenants, key_digest
from failsoft.observe.events import EventBus
from failsoft.observe.metrics import Metrics
from failsoft.pipeline.limiter import AdaptiveLimiter, LimiterOptions
from failsoft.priority import Priority
from failsoft.runtime import Runtime
from failsoft.server.admission import Admission
from failsoft.server.app import FailsoftApp
from tests import _admission_models as models

ALICE, BOB = "fsk_alice-test-key", "fsk_bob-test-key"
ROW = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
Client = Callable[[dict[str, Any]], Awaitable[tuple[httpx.AsyncClient, ManualClock]]]


def model(function: str, replicas: int = 1, **extra: Any) -> dict[str, Any]:
    version = {
        "backend": "python",
        "function": function,
        "execution": "thread",
        "replicas": replicas,
    }
    return {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]}],
        "versions": {"v1": version},
        "health_check": {"enabled": False},
        **extra,
    }


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    started: list[tuple[FailsoftApp, httpx.AsyncClient]] = []

    async def start(config: dict[str, Any]) -> tuple[httpx.AsyncClient, ManualClock]:
        clock = ManualClock(start=time.monotonic())
        app = FailsoftApp(
            Runtime(parse_config(config), EventBus(), clock), parse_config(config).server, Metrics()
        )
        await app.runtime.start()
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw")
        started.append((app, http))
        return http, clock

    yield start
    models.GATE.set()
    for app, http in started:
        await http.aclose()
        await app.runtime.close()
    models.GATE.clear()


def tenants(**quota: Any) -> dict[str, Any]:
    return {
        "alice": {"key_sha256": key_digest(ALICE), **quota},
        "bob": {"key_sha256": key_digest(BOB), "priority": "critical"},
    }


async def test_keys_are_checked(client: Client) -> None:
    http, _ = await client(
        {
            "server": {"require_keys": True},
            "tenants": tenants(),
            "models": {"m": model("tests._admission_models:label")},
        }
    )
    missing = await http.post("/v2/models/m/infer", json=ROW)
    assert missing.status_code == 401
    wrong = await http.post(
        "/v2/models/m/infer", json=ROW, headers={"Authorization": "Bearer nope"}
    )
    assert wrong.status_code == 401
    ok = await http.post(
        "/v2/models/m/infer", json=ROW, headers={"Authorization": f"Bearer {ALICE}"}
    )
    assert ok.status_code == 200


async def test_an_unknown_priority_is_a_bad_request(client: Client) -> None:
    http, _ = await client({"models": {"m": model("tests._admission_models:label")}})
    answer = await http.post(
        "/v2/models/m/infer", json=ROW, headers={"Failsoft-Priority": "urgent"}
    )
    assert answer.status_code == 400
    assert "critical, default, sheddable" in answer.json()["error"]


async def test_quota_gives_429_with_retry_after_and_refills(client: Client) -> None:
    http, clock = await client(
        {
            "tenants": tenants(requests_per_s=2, burst_s=1),
            "models": {"m": model("tests._admission_models:label")},
        }
    )
    alice = {"Authorization": f"Bearer {ALICE}"}
    statuses = [
        (await http.post("/v2/models/m/infer", json=ROW, headers=alice)).status_code
        for _ in range(3)
    ]
    assert statuses == [200, 200, 429]
    over = await http.post("/v2/models/m/infer", json=ROW, headers=alice)
    assert over.headers["retry-after"] == "1"
    assert "tenant 'alice' is over its request quota" in over.json()["error"]
    bob = await http.post(
        "/v2/models/m/infer", json=ROW, headers={"Authorization": f"Bearer {BOB}"}
    )
    assert bob.status_code == 200  # one tenant's quota never touches another's
    await clock.advance(1.0)
    assert (await http.post("/v2/models/m/infer", json=ROW, headers=alice)).status_code == 200


async def wait_entered(count: int) -> None:
    for _ in range(count):
        assert await asyncio.to_thread(models.ENTERED.acquire, True, 10)


async def test_over_the_limit_is_shed_with_503_and_retry_after(client: Client) -> None:
    limiter = {"initial_limit": 1, "min_limit": 1, "max_limit": 1, "queue_size": 0}
    http, _ = await client(
        {"models": {"m": model("tests._admission_models:gated", limiter=limiter)}}
    )
    held = asyncio.ensure_future(http.post("/v2/models/m/infer", json=ROW))
    await wait_entered(1)
    shed = await http.post("/v2/models/m/infer", json=ROW)
    assert shed.status_code == 503
    assert int(shed.headers["retry-after"]) >= 1
    models.GATE.set()
    assert (await held).status_code == 200


async def test_a_shed_request_gets_a_local_fallback_answer_when_one_is_configured(
    client: Client,
) -> None:
    limiter = {"initial_limit": 1, "min_limit": 1, "max_limit": 1, "queue_size": 0}
    fallback = [{"python": "tests._admission_models:heuristic"}]
    http, _ = await client(
        {
            "models": {
                "m": model("tests._admission_models:gated", limiter=limiter, fallback=fallback)
            }
        }
    )
    held = asyncio.ensure_future(http.post("/v2/models/m/infer", json=ROW))
    await wait_entered(1)
    degraded = await http.post("/v2/models/m/infer", json=ROW)
    assert degraded.status_code == 200
    assert degraded.headers["failsoft-degraded"] == "true"
    assert degraded.headers["failsoft-served-by"] == "m/v1/fallback:heuristic"
    models.GATE.set()
    assert (await held).headers["failsoft-degraded"] == "false"


async def test_sheddable_work_is_shed_first(client: Client) -> None:
    limiter = {
        "initial_limit": 2,
        "min_limit": 2,
        "max_limit": 2,
        "queue_size": 0,
        "sheddable_share": 0.5,
        "default_share": 1.0,
    }
    http, _ = await client(
        {"models": {"m": model("tests._admission_models:gated", replicas=2, limiter=limiter)}}
    )
    sheddable = {"Failsoft-Priority": "sheddable"}
    first = asyncio.ensure_future(http.post("/v2/models/m/infer", json=ROW, headers=sheddable))
    await wait_entered(1)
    second = await http.post("/v2/models/m/infer", json=ROW, headers=sheddable)
    assert second.status_code == 503  # sheddable may use half the limit: it is full
    critical = asyncio.ensure_future(
        http.post("/v2/models/m/infer", json=ROW, headers={"Failsoft-Priority": "critical"})
    )
    await wait_entered(1)  # critical still got the last slot
    models.GATE.set()
    assert (await first).status_code == 200
    assert (await critical).status_code == 200


async def test_the_bulkhead_caps_calls_in_flight_per_version(client: Client) -> None:
    http, _ = await client(
        {"models": {"m": model("tests._admission_models:gated", bulkhead={"max_in_flight": 1})}}
    )
    held = asyncio.ensure_future(http.post("/v2/models/m/infer", json=ROW))
    await wait_entered(1)
    refused = await http.post("/v2/models/m/infer", json=ROW)
    assert refused.status_code == 503
    assert "bulkhead" in refused.json()["error"]
    models.GATE.set()
    assert (await held).status_code == 200


async def test_the_tenant_reaches_the_limiter_so_a_quiet_tenant_is_served_first() -> None:
    clock = ManualClock()
    alice, carol = "fsk_alice-test-key", "fsk_carol-test-key"
    admission = Admission(
        Tenants(
            {
                "alice": TenantConfig(key_sha256=key_digest(alice), priority="critical"),
                "carol": TenantConfig(key_sha256=key_digest(carol), priority="critical"),
            },
            require_keys=True,
            clock=clock,
        )
    )
    options = LimiterOptions(initial_limit=2, min_limit=2, max_limit=2, queue_size=4)
    limiter = AdaptiveLimiter(options, clock, lambda _: None, "m")
    entered: list[str] = []

    async def hold(key: str, name: str, done: asyncio.Event) -> None:
        tenant, priority = admission.identify(f"Bearer {key}", "critical")
        call = Call("req", "m", "v1", clock.now() + 10.0, EventBus(), clock)
        held = admission.hold(tenant, priority, limiter, call) or await admission.wait(
            tenant, priority, limiter, call
        )
        try:
            entered.append(name)
            call.sample = True
            await done.wait()
        finally:
            held.release()

    first, second, later = asyncio.Event(), asyncio.Event(), asyncio.Event()
    held = [
        asyncio.ensure_future(hold(alice, "alice", first)),
        asyncio.ensure_future(hold(alice, "alice", second)),
    ]
    await settle()
    carol_waits = asyncio.ensure_future(hold(carol, "carol", later))
    await settle()
    alice_waits = asyncio.ensure_future(hold(alice, "alice-again", later))  # newer; alice holds 2
    await settle()
    first.set()
    await settle()
    assert entered == ["alice", "alice", "carol"]
    assert limiter.in_flight == 2
    later.set()
    second.set()
    await asyncio.gather(*held, carol_waits, alice_waits)
    assert limiter.in_flight == 0


class RecordingPermit:
    def __init__(self, outcomes: list[object]) -> None:
        self._outcomes = outcomes

    def release(self, ok: bool, rtt_s: float) -> None:
        self._outcomes.append((ok, rtt_s))

    def cancel(self) -> None:
        self._outcomes.append("cancelled")


class RecordingLimiter:
    """Stands in for AdaptiveLimiter: records how each permit was given back."""

    def __init__(self) -> None:
        self.outcomes: list[object] = []

    def try_acquire(self, priority: Priority, tenant: str | None) -> RecordingPermit:
        return RecordingPermit(self.outcomes)


async def test_a_permit_feeds_the_limiter_only_what_the_model_did() -> None:
    clock = ManualClock()
    admission = Admission(Tenants({}, require_keys=False, clock=clock))
    limiter = RecordingLimiter()

    for sample in (None, True, False):
        call = Call("req", "m", "v1", clock.now() + 10.0, EventBus(), clock)
        held = admission.hold(None, Priority.DEFAULT, limiter, call)  # type: ignore[arg-type]
        assert held is not None
        try:
            await clock.advance(0.25)
            call.sample = sample
        finally:
            held.release()

    # A cache hit, a poison input or a client's own deadline (None) is no sample.
    assert limiter.outcomes == ["cancelled", (True, 0.25), (False, 0.25)]


def test_a_priority_above_the_tenants_is_capped_and_anonymous_gets_default() -> None:
    clock = ManualClock()
    admission = Admission(
        Tenants(
            {"alice": TenantConfig(key_sha256=key_digest(ALICE), priority="sheddable")},
            require_keys=False,
            clock=clock,
        )
    )
    assert admission.identify(f"Bearer {ALICE}", "critical")[1] is Priority.SHEDDABLE
    assert admission.identify(f"Bearer {ALICE}", None)[1] is Priority.SHEDDABLE
    assert admission.identify(None, "critical")[1] is Priority.DEFAULT
    assert admission.identify(None, "sheddable")[1] is Priority.SHEDDABLE
