"""Input constraint policies through the real app in-process: reject, flag and degrade.

A request that breaks a feature constraint is a data failure: whatever the
policy, it never moves a breaker, the ejection detector, the balancer, the
limiter or readiness, and under degrade the version it was routed to never
sees it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from failsoft.config import parse_config
from failsoft.observe.events import Event, EventBus, RequestFinished
from failsoft.observe.metrics import Metrics
from failsoft.runtime import Runtime
from failsoft.server.app import FailsoftApp
from tests._runtime_models import STATE

Client = Callable[[str], Awaitable[tuple[httpx.AsyncClient, FailsoftApp, list[Event]]]]
INFER = "/v2/models/m/infer"


def rows(*values: tuple[float, float]) -> dict[str, Any]:
    flat = [v for pair in values for v in pair]
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": [len(values), 2], "data": flat}]}


def config(policy: str) -> dict[str, Any]:
    model = {
        "inputs": [
            {
                "name": "x",
                "datatype": "FP32",
                "shape": [-1, 2],
                "columns": ["width", "height"],
                "features": {"height": {"min": 0, "max": 10}},
            }
        ],
        "outputs": [
            {"name": "label", "datatype": "INT64", "shape": [-1]},
            {"name": "score", "datatype": "FP32", "shape": [-1]},
        ],
        "versions": {
            "v1": {
                "backend": "python",
                "function": "tests._runtime_models:healthy",
                "execution": "inline",
                "replicas": 2,
            },
            "v2": {
                "backend": "python",
                "function": "tests._runtime_models:backup",
                "execution": "inline",
            },
        },
        "default_version": "v1",
        "health_check": {"enabled": False},
        "fallback": [{"version": "v2"}],
        "input_policy": policy,
    }
    return {"models": {"m": model}}


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    started: list[tuple[FailsoftApp, httpx.AsyncClient]] = []

    async def start(policy: str) -> tuple[httpx.AsyncClient, FailsoftApp, list[Event]]:
        STATE.reset()
        parsed = parse_config(config(policy))
        bus = EventBus()
        seen: list[Event] = []
        bus.subscribe(seen.append, [RequestFinished])
        app = FailsoftApp(Runtime(parsed, bus), parsed.server, Metrics())
        await app.runtime.start()
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw")
        started.append((app, http))
        return http, app, seen

    yield start
    for app, http in started:
        await http.aclose()
        await app.runtime.close()


def replica_state(app: FailsoftApp) -> list[dict[str, object]]:
    """What a failure charged to a replica would move (the balancer's latency decays with
    time, so only its outstanding calls are compared)."""
    state = []
    for replica in app.runtime.model("m").version("v1").snapshot():
        balancer = replica.pop("balancer")
        state.append({**replica, "outstanding": balancer["outstanding"]})  # type: ignore[index]
    return state


class CountingGradient:
    """The limiter's real control law, counting the samples it is fed."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.fed: list[bool] = []

    def add(self, ok: bool, *args: Any) -> Any:
        self.fed.append(ok)
        return self.real.add(ok, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def count_limiter_samples(app: FailsoftApp) -> list[bool]:
    limiter = app.runtime.model("m").limiter
    counting = CountingGradient(limiter._gradient)
    limiter._gradient = counting  # type: ignore[assignment]
    return counting.fed


def violations_counted(app: FailsoftApp, policy: str) -> float:
    key = ("m", "v1", "x", "height", policy)
    return app.metrics.data_violations.values.get(key, 0.0)


async def test_reject_answers_422_naming_tensor_row_and_column(client: Client) -> None:
    http, app, seen = await client("reject")
    before = replica_state(app)
    fed = count_limiter_samples(app)
    answer = await http.post(INFER, json=rows((1, 2), (3, 11.5), (4, 5)))
    assert answer.status_code == 422
    body = answer.json()
    assert body["error"] == "input 'x' row 1 column 'height': value 11.5 is above max 10"
    assert body["violations"] == [
        {
            "tensor": "x",
            "row": 1,
            "column": "height",
            "index": 1,
            "position": [1, 1],
            "constraint": "max",
            "value": 11.5,
            "limit": 10.0,
        }
    ]
    assert body["violating_rows"] == 1
    assert STATE.calls == {}  # no replica saw it
    assert fed == []
    assert replica_state(app) == before
    finished = [e for e in seen if isinstance(e, RequestFinished)]
    assert [(e.status, e.failure_class and e.failure_class.value) for e in finished] == [
        (422, "data")
    ]
    assert violations_counted(app, "reject") == 1
    assert (await http.post(INFER, json=rows((1, 2)))).status_code == 200


async def test_flag_serves_from_the_version_with_a_warning_and_counts_it(client: Client) -> None:
    http, app, _ = await client("flag")
    answer = await http.post(INFER, json=rows((1, -3)))
    assert answer.status_code == 200
    assert answer.headers["failsoft-degraded"] == "false"
    assert answer.headers["failsoft-served-by"].startswith("m/v1/")
    assert answer.headers["failsoft-data-warning"] == (
        "1 row(s) break the input constraints; input 'x' row 0 column 'height': "
        "value -3 is below min 0"
    )
    good = await http.post(INFER, json=rows((1, 3)))
    assert "failsoft-data-warning" not in good.headers
    assert violations_counted(app, "flag") == 1
    metrics = (await http.get("/metrics")).text
    assert (
        'failsoft_data_violations_total{column="height",model="m",policy="flag",'
        'tensor="x",version="v1"} 1.0' in metrics
    )


async def test_degrade_answers_from_the_fallback_and_charges_nobody(client: Client) -> None:
    http, app, _ = await client("degrade")
    for _ in range(20):  # a record of good answers first
        assert (await http.post(INFER, json=rows((1, 2)))).status_code == 200
    before = replica_state(app)
    calls_before = STATE.calls["healthy"]
    fed = count_limiter_samples(app)
    for _ in range(30):
        answer = await http.post(INFER, json=rows((1, 99)))
        assert answer.status_code == 200
        assert answer.headers["failsoft-degraded"] == "true"
        assert answer.headers["failsoft-served-by"] == "m/v1/fallback:version:v2"
        assert "failsoft-data-warning" in answer.headers
        assert answer.json()["outputs"][0]["data"] == [0]  # v2's answer: 1 > 99 is false
    assert STATE.calls["healthy"] == calls_before  # v1 never saw a violator
    assert STATE.calls["backup"] == 30
    assert fed == []  # the limiter judged no fallback call as the model's own
    assert replica_state(app) == before  # breakers, ejection, balancer: untouched
    assert (await http.get("/v2/health/ready")).status_code == 200
    good = await http.post(INFER, json=rows((3, 2)))
    assert good.headers["failsoft-degraded"] == "false"
    assert good.json()["outputs"][0]["data"] == [1]
    assert violations_counted(app, "degrade") == 30


async def test_degrade_without_a_fallback_is_refused_at_load() -> None:
    data = config("degrade")
    data["models"]["m"]["fallback"] = []
    with pytest.raises(Exception, match="input_policy degrade needs a fallback chain"):
        parse_config(data)


async def test_the_v1_protocol_meets_the_same_constraints(client: Client) -> None:
    http, _, _ = await client("reject")
    good = await http.post("/v1/models/m:predict", json={"instances": [[1, 2]]})
    assert good.status_code == 200
    bad = await http.post("/v1/models/m:predict", json={"instances": [[1, 2], [1, 20]]})
    assert bad.status_code == 422
    assert bad.json()["violations"][0]["row"] == 1
    assert STATE.calls["healthy"] == 1
