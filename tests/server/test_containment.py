"""A bad request or a bad client stays contained to itself, through the real app in-process.

Poison inputs get 422 and charge no replica; errors never carry a model's
exception text; require_keys covers every route that names a model; row
quotas charge the real batch; a priority above the tenant's is capped.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from failsoft.config import parse_config
from failsoft.control.tenants import key_digest
from failsoft.observe.events import EventBus
from failsoft.observe.metrics import Metrics
from failsoft.runtime import Runtime
from failsoft.server.app import FailsoftApp

KEY = "fsk_alice-test-key"
ADMIN = "admin-token-0123456789"
Client = Callable[[dict[str, Any]], Awaitable[tuple[httpx.AsyncClient, FailsoftApp]]]


def row(*values: float) -> dict[str, Any]:
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": list(values)}]}


def config(**extra: Any) -> dict[str, Any]:
    model = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
        "outputs": [
            {"name": "label", "datatype": "INT64", "shape": [-1]},
            {"name": "score", "datatype": "FP32", "shape": [-1]},
        ],
        "versions": {
            "v1": {
                "backend": "python",
                "function": "tests._admission_models:nan_on_huge",
                "execution": "inline",
                "replicas": 2,
            }
        },
        "health_check": {"enabled": False},
    }
    return {"models": {"m": model}, **extra}


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    started: list[tuple[FailsoftApp, httpx.AsyncClient]] = []

    async def start(data: dict[str, Any]) -> tuple[httpx.AsyncClient, FailsoftApp]:
        parsed = parse_config(data)
        # The system clock: a retry's backoff must pass (it is at most milliseconds).
        app = FailsoftApp(Runtime(parsed, EventBus()), parsed.server, Metrics())
        await app.runtime.start()
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw")
        started.append((app, http))
        return http, app

    yield start
    for app, http in started:
        await http.aclose()
        await app.runtime.close()


async def test_a_poison_input_gets_422_and_charges_no_replica(client: Client) -> None:
    http, app = await client(config())
    for _ in range(40):  # each replica builds a record of answering well (10 calls or more)
        assert (await http.post("/v2/models/m/infer", json=row(1, 2))).status_code == 200

    for attempt in range(30):  # one poison request in five, among good traffic
        poison = await http.post("/v2/models/m/infer", json=row(3e38, 3e38))
        assert poison.status_code == 422, attempt
        for _ in range(4):
            assert (await http.post("/v2/models/m/infer", json=row(1, 2))).status_code == 200
        assert "output contract" in poison.json()["error"]

    pipeline = app.runtime.model("m").version(None)
    assert [r["breaker"]["failure_rate"] for r in pipeline.snapshot()] == [0.0, 0.0]  # type: ignore[index]
    assert (await http.get("/v2/health/ready")).status_code == 200
    assert (await http.post("/v2/models/m/infer", json=row(1, 2))).status_code == 200


async def test_a_model_error_shows_no_exception_text(client: Client) -> None:
    data = config()
    data["models"]["m"]["versions"]["v1"]["function"] = "tests._runtime_models:broken"
    http, _ = await client(data)
    answer = await http.post("/v2/models/m/infer", json=row(1, 2))
    assert answer.status_code == 500
    request_id = answer.headers["x-request-id"]
    assert answer.json() == {"error": f"the model failed on this request (request id {request_id})"}


async def test_require_keys_covers_every_route_that_names_a_model(client: Client) -> None:
    tenants = {"alice": {"key_sha256": key_digest(KEY)}}
    http, _ = await client(
        config(server={"require_keys": True, "admin_token": ADMIN}, tenants=tenants)
    )
    key = {"Authorization": f"Bearer {KEY}"}
    for path in ("/", "/v2/models/m", "/v2/models/m/ready", "/v1/models/m"):
        assert (await http.get(path)).status_code == 401, path
        assert (await http.get(path, headers=key)).status_code == 200, path
    assert (await http.post("/v2/models/m/infer", json=row(1, 2))).status_code == 401
    # Health and server metadata stay open for orchestrators.
    for path in ("/v2/health/live", "/v2/health/ready", "/v2"):
        assert (await http.get(path)).status_code == 200, path
    # Metrics need the admin token, not a tenant key.
    assert (await http.get("/metrics", headers=key)).status_code == 401
    metrics = await http.get("/metrics", headers={"Authorization": f"Bearer {ADMIN}"})
    assert metrics.status_code == 200
    # An unknown model's 404 lists no models.
    unknown = await http.get("/v2/models/nope", headers=key)
    assert unknown.status_code == 404
    assert "'m'" not in unknown.text


async def test_inputs_with_different_batch_sizes_are_refused(client: Client) -> None:
    data = config()
    data["models"]["m"]["inputs"].append({"name": "y", "datatype": "FP32", "shape": [-1, 1]})
    http, _ = await client(data)
    body = {
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]},
            {"name": "y", "datatype": "FP32", "shape": [3, 1], "data": [1, 2, 3]},
        ]
    }
    answer = await http.post("/v2/models/m/infer", json=body)
    assert answer.status_code == 400
    assert "same batch size" in answer.json()["error"]


async def test_the_row_quota_charges_the_whole_batch(client: Client) -> None:
    tenants = {"alice": {"key_sha256": key_digest(KEY), "rows_per_s": 4, "burst_s": 1}}
    http, _ = await client(config(tenants=tenants))
    key = {"Authorization": f"Bearer {KEY}"}
    three = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [3, 2], "data": [1] * 6}]}
    assert (await http.post("/v2/models/m/infer", json=three, headers=key)).status_code == 200
    refused = await http.post("/v2/models/m/infer", json=three, headers=key)
    assert refused.status_code == 429
    assert "row quota" in refused.json()["error"]


async def test_a_request_over_its_request_quota_is_refused_before_its_body_is_read(
    client: Client,
) -> None:
    tenants = {"alice": {"key_sha256": key_digest(KEY), "requests_per_s": 1, "burst_s": 1}}
    http, _ = await client(config(tenants=tenants))
    key = {"Authorization": f"Bearer {KEY}"}
    assert (await http.post("/v2/models/m/infer", json=row(1, 2), headers=key)).status_code == 200
    # Not even valid JSON: a quota refusal must come before any decoding.
    refused = await http.post("/v2/models/m/infer", content=b"{not json", headers=key)
    assert refused.status_code == 429
