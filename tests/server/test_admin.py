"""The admin API, called directly on a real Runtime of one python-backend model.

Each test builds the routes over a started runtime (chaos enabled, probes
off, a ManualClock) and calls ``handle`` as the app would, with the method,
the path after /admin, the Authorization header and a body reader.
"""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from failsoft.clock import ManualClock
from failsoft.config import parse_config
from failsoft.control.faults import ChaosDisabled, FaultAdded, FaultNotFound
from failsoft.control.tenants import Tenants, key_digest
from failsoft.errors import BadRequest, MethodNotAllowed, NotFound, Unauthorized
from failsoft.observe.events import EventBus
from failsoft.observe.recent import KEPT, RecentEvents
from failsoft.runtime import Runtime
from failsoft.server.admin import ADMIN_BODY_LIMIT, AdminRoutes, Forbidden, ReadBody

TOKEN = "admin-token-for-tests-0123456789"
AUTH = f"Bearer {TOKEN}"
FAULT = {"kind": "error", "model": "m", "duration_s": 60}


def config(chaos: bool = True) -> dict[str, Any]:
    return {
        "server": {"admin_token": TOKEN},
        "chaos": {"enabled": chaos},
        "tenants": {"acme": {"key_sha256": key_digest("fsk_acme-test-key"), "requests_per_s": 5}},
        "models": {
            "m": {
                "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
                "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]}],
                "versions": {
                    "v1": {
                        "backend": "python",
                        "function": "tests._admission_models:label",
                        "replicas": 2,
                    }
                },
                "health_check": {"enabled": False},
            }
        },
    }


def body(data: bytes) -> ReadBody:
    async def read(limit: int) -> bytes:
        assert limit == ADMIN_BODY_LIMIT
        return data

    return read


NO_BODY = body(b"")


@dataclass
class Admin:
    routes: AdminRoutes
    runtime: Runtime

    async def call(
        self, method: str, path: str, data: bytes = b"", authorization: str | None = AUTH
    ) -> tuple[int, Any]:
        """``handle`` for ``path`` (after /admin/), with its JSON answer decoded."""
        status, answer = await self.routes.handle(
            method, path.split("/"), authorization, body(data)
        )
        return status, orjson.loads(answer)


Start = Callable[..., Awaitable[Admin]]


@pytest.fixture
async def admin() -> AsyncIterator[Start]:
    """Start (and afterwards close) a runtime and its admin routes."""
    runtimes: list[Runtime] = []

    async def start(chaos: bool = True, token: str | None = TOKEN) -> Admin:
        parsed = parse_config(config(chaos))
        clock = ManualClock(start=time.monotonic())
        runtime = Runtime(parsed, EventBus(), clock, random.Random(0))
        recent = RecentEvents(wall=lambda: 1_000.0)
        runtime.bus.subscribe(recent.observe, KEPT)
        tenants = Tenants(parsed.tenants, require_keys=False, clock=clock)
        await runtime.start()
        runtimes.append(runtime)
        return Admin(AdminRoutes(runtime, token, tenants.snapshot, recent), runtime)

    yield start
    for runtime in runtimes:
        await runtime.close()


# --- the token ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [None, "", f"Basic {TOKEN}", "Bearer wrong-token-0123456789abcdef", TOKEN],
    ids=["none", "empty", "basic-scheme", "wrong-token", "no-scheme"],
)
async def test_a_request_without_the_token_is_unauthorized(
    admin: Start, authorization: str | None
) -> None:
    gw = await admin()
    with pytest.raises(Unauthorized) as raised:
        await gw.routes.handle("GET", ["status"], authorization, NO_BODY)
    assert raised.value.status == 401


async def test_the_bearer_scheme_is_case_insensitive(admin: Start) -> None:
    gw = await admin()
    status, _ = await gw.call("GET", "status", authorization=f"bearer {TOKEN}")
    assert status == 200


async def test_the_admin_api_is_forbidden_when_no_token_is_configured(admin: Start) -> None:
    gw = await admin(token=None)
    with pytest.raises(Forbidden) as raised:
        await gw.routes.handle("GET", ["status"], AUTH, NO_BODY)
    assert raised.value.status == 403


# --- status and events ------------------------------------------------------------------


async def test_status_shows_each_model_version_and_replica(admin: Start) -> None:
    gw = await admin()
    status, answer = await gw.call("GET", "status")
    assert status == 200
    assert answer["ready"] is True
    model = answer["models"]["m"]
    assert (model["default_version"], model["ready"]) == ("v1", True)
    assert model["limiter"]["in_flight"] == 0
    version = model["versions"]["v1"]
    assert (version["backend"], version["ready"], version["in_flight"]) == ("python", True, 0)
    assert [replica["name"] for replica in version["replicas"]] == ["r0", "r1"]


async def test_status_shows_each_replicas_breaker_ejection_and_balancer(admin: Start) -> None:
    gw = await admin()
    _, answer = await gw.call("GET", "status")
    replica = answer["models"]["m"]["versions"]["v1"]["replicas"][0]
    assert (replica["available"], replica["healthy"]) == (True, True)
    assert replica["breaker"]["state"] == "closed"
    assert replica["ejection"]["ejected"] is False
    assert set(replica["balancer"]) == {"ewma_ms", "outstanding", "weight"}


async def test_status_shows_the_tenants(admin: Start) -> None:
    gw = await admin()
    _, answer = await gw.call("GET", "status")
    assert answer["tenants"]["acme"] == {"requests_left": 5.0, "admitted": 0, "rejected": 0}


async def test_events_lists_the_recent_state_changes(admin: Start) -> None:
    gw = await admin()
    await gw.call("POST", "faults", orjson.dumps(FAULT))
    status, answer = await gw.call("GET", "events")
    assert status == 200
    [added] = answer["events"]
    assert (added["type"], added["id"], added["kind"]) == ("FaultAdded", "f1", "error")


async def test_events_is_empty_without_a_recent_events_ring(admin: Start) -> None:
    gw = await admin()
    routes = AdminRoutes(gw.runtime, TOKEN)
    status, answer = await routes.handle("GET", ["events"], AUTH, NO_BODY)
    assert (status, orjson.loads(answer)) == (200, {"events": []})


# --- faults -----------------------------------------------------------------------------


async def test_a_posted_fault_is_created_and_listed(admin: Start) -> None:
    gw = await admin()
    status, created = await gw.call("POST", "faults", orjson.dumps(FAULT))
    assert status == 201
    assert created["id"] == "f1"
    assert created["remaining_s"] == 60
    assert {key: created[key] for key in FAULT} == FAULT
    status, listed = await gw.call("GET", "faults")
    assert status == 200
    assert listed["enabled"] is True
    assert [fault["id"] for fault in listed["faults"]] == ["f1"]


async def test_delete_by_id_clears_that_fault_only(admin: Start) -> None:
    gw = await admin()
    await gw.call("POST", "faults", orjson.dumps(FAULT))
    await gw.call("POST", "faults", orjson.dumps({**FAULT, "replica": "r1"}))
    status, answer = await gw.call("DELETE", "faults/f1")
    assert (status, answer) == (200, {"cleared": 1})
    _, listed = await gw.call("GET", "faults")
    assert [fault["id"] for fault in listed["faults"]] == ["f2"]


async def test_delete_without_an_id_clears_every_fault(admin: Start) -> None:
    gw = await admin()
    await gw.call("POST", "faults", orjson.dumps(FAULT))
    await gw.call("POST", "faults", orjson.dumps(FAULT))
    assert await gw.call("DELETE", "faults") == (200, {"cleared": 2})
    _, listed = await gw.call("GET", "faults")
    assert listed["faults"] == []


async def test_deleting_an_unknown_fault_is_not_found(admin: Start) -> None:
    gw = await admin()
    with pytest.raises(FaultNotFound) as raised:
        await gw.call("DELETE", "faults/f9")
    assert raised.value.status == 404


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"{not json", "the body is not JSON"),
        (b"", "the body is not JSON"),
        (b"[1, 2]", "the body must be a JSON object"),
        (b'"error"', "the body must be a JSON object"),
        (orjson.dumps({**FAULT, "kind": "meteor"}), "invalid fault"),
        (orjson.dumps({**FAULT, "model": "other"}), "no replica matches model 'other'"),
    ],
    ids=["not-json", "empty", "array", "string", "unknown-kind", "unknown-model"],
)
async def test_a_bad_fault_body_is_a_bad_request(admin: Start, data: bytes, message: str) -> None:
    gw = await admin()
    with pytest.raises(BadRequest, match=message):
        await gw.call("POST", "faults", data)
    assert gw.runtime.faults.snapshot() == []


async def test_faults_are_refused_while_chaos_is_disabled(admin: Start) -> None:
    gw = await admin(chaos=False)
    with pytest.raises(ChaosDisabled) as raised:
        await gw.call("POST", "faults", orjson.dumps(FAULT))
    assert raised.value.status == 409
    _, listed = await gw.call("GET", "faults")
    assert listed == {"enabled": False, "faults": []}


async def test_a_posted_fault_is_an_event_on_the_bus(admin: Start) -> None:
    gw = await admin()
    added: list[object] = []
    gw.runtime.bus.subscribe(added.append, [FaultAdded])
    await gw.call("POST", "faults", orjson.dumps(FAULT))
    assert added == [FaultAdded("f1", "error", "m", "*", "*", 60.0)]


# --- routing ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["nope", "", "faults/f1/extra", "status/more"])
async def test_an_unknown_route_is_not_found(admin: Start, path: str) -> None:
    gw = await admin()
    with pytest.raises(NotFound, match="no admin route"):
        await gw.call("GET", path)


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("POST", "status", "GET"),
        ("DELETE", "events", "GET"),
        ("PUT", "faults", "GET, POST, DELETE"),
        ("GET", "faults/f1", "DELETE"),
    ],
)
async def test_a_wrong_method_is_not_allowed_and_names_the_allowed_ones(
    admin: Start, method: str, path: str, allow: str
) -> None:
    gw = await admin()
    with pytest.raises(MethodNotAllowed) as raised:
        await gw.call(method, path)
    assert (raised.value.status, raised.value.allow) == (405, allow)


async def test_head_is_allowed_wherever_get_is(admin: Start) -> None:
    gw = await admin()
    status, _ = await gw.call("HEAD", "status")
    assert status == 200


async def test_the_token_is_checked_before_the_route(admin: Start) -> None:
    gw = await admin()
    with pytest.raises(Unauthorized):
        await gw.call("GET", "nope", authorization=None)
