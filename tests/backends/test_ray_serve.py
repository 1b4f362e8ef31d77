"""RayServeReplica: what the Ray Serve proxy's answers mean, and the ray backend's configuration."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from failsoft.backends import build_replicas
from failsoft.backends.ray_serve import RayHandleReplica, RayServeReplica
from failsoft.config import ConfigError, RayBackend, parse_config
from failsoft.errors import (
    BadRequest,
    FailsoftError,
    FailureClass,
    ModelError,
    PayloadTooLarge,
    UpstreamError,
)
from failsoft.observe.events import EventBus
from failsoft.protocol.types import InferRequest
from tests.backends.test_http import call, upstream

# What Ray's proxy sends when a replica actor dies mid-request (or the deployment raised).
RAY_500 = b"Internal Server Error"
NO_ROUTE = b"Path '/iris-a/v2/models/iris/infer' not found. Ping http://.../-/routes"


@pytest.mark.parametrize(
    ("status", "body", "kind", "failure_class"),
    [
        # The app's own V2 error objects: the request's fault, or the model's (attribution).
        (400, b'{"error": "bad input"}', BadRequest, FailureClass.DATA),
        (413, b'{"error": "too large"}', PayloadTooLarge, FailureClass.CLIENT),
        (500, b'{"error": "the model failed: ValueError"}', ModelError, FailureClass.REPLICA),
        # Ray's: a dead actor, a missing application, no replica ready, a proxy timeout.
        (500, RAY_500, UpstreamError, FailureClass.REPLICA),
        (502, b"", UpstreamError, FailureClass.REPLICA),
        (404, NO_ROUTE, UpstreamError, FailureClass.REPLICA),
        (503, b"Deployment is unavailable", UpstreamError, FailureClass.REPLICA),
        (408, b"Request timed out", UpstreamError, FailureClass.REPLICA),
        (500, b'["error"]', UpstreamError, FailureClass.REPLICA),
    ],
)
async def test_a_proxy_answer_is_charged_to_who_caused_it(
    status: int, body: bytes, kind: type[FailsoftError], failure_class: FailureClass
) -> None:
    replica = RayServeReplica("iris-a", "http://127.0.0.1:8000/iris-a", 4, "iris", None)
    try:
        error = replica.status_error(status, body)
    finally:
        await replica.close()
    assert type(error) is kind
    assert error.failure_class is failure_class
    assert "iris-a" in error.message or kind in (BadRequest, PayloadTooLarge)


async def test_a_dead_actors_bare_500_is_an_upstream_error_that_is_retried_elsewhere() -> None:
    request = InferRequest({"features": np.array([[1.0, 2.0, 3.0, 4.0]], dtype=np.float32)})
    async with upstream(b"500 Internal Server Error", RAY_500) as path:
        replica = RayServeReplica("iris-a", f"unix:{path}", 4, "iris", None)
        try:
            with pytest.raises(UpstreamError, match="Ray Serve answered 500") as caught:
                await replica.infer(request, call())
        finally:
            await replica.close()
    assert caught.value.upstream_status == 500


def ray_config(version: str) -> dict[str, object]:
    return {
        "models": {
            "iris": {
                "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}],
                "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]}],
                "versions": {"v1": {"backend": "ray", **yaml.safe_load(version)}},
            }
        }
    }


async def test_each_application_is_a_replica_named_after_it() -> None:
    config = parse_config(
        ray_config(
            "{address: 'http://127.0.0.1:8123/', applications: "
            "[iris-a, {name: iris-b, route_prefix: /models/b/}]}"
        )
    )
    version = config.models["iris"].versions["v1"]
    assert isinstance(version, RayBackend)
    assert version.urls == ["http://127.0.0.1:8123/iris-a", "http://127.0.0.1:8123/models/b"]
    built = build_replicas("iris", "v1", config.models["iris"], EventBus())
    try:
        assert [r.name for r in built.replicas] == ["iris-a", "iris-b"]
        assert all(isinstance(r, RayServeReplica) for r in built.replicas)
        assert [r.base_url for r in built.replicas] == version.urls  # type: ignore[attr-defined]
    finally:
        for replica in built.replicas:
            await replica.close()


def test_via_handle_builds_deployment_handle_replicas() -> None:
    config = parse_config(ray_config("{via: handle, applications: [iris-a, iris-b]}"))
    built = build_replicas("iris", "v1", config.models["iris"], EventBus())
    assert [type(r) for r in built.replicas] == [RayHandleReplica, RayHandleReplica]
    assert [r.name for r in built.replicas] == ["iris-a", "iris-b"]


@pytest.mark.parametrize(
    ("version", "problem"),
    [
        ("{applications: []}", "versions.v1.applications: List should have at least 1 item"),
        ("{applications: [a, a]}", "application names must be distinct"),
        (
            "{applications: [a, {name: b, route_prefix: /a}]}",
            "application route prefixes must be distinct",
        ),
        ("{address: 'https://x:1', applications: [a]}", "versions.v1.address"),
        ("{applications: [{name: a, route_prefix: no-slash}]}", "route_prefix"),
        ("{urls: [http://x], applications: [a]}", "versions.v1.urls"),
        ("{via: grpc, applications: [a]}", "versions.v1.via"),
    ],
)
def test_a_bad_ray_version_is_a_clear_error(version: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(ray_config(version))
    assert problem in str(caught.value)
