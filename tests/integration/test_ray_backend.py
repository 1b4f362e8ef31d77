"""backend: ray against a real local Ray Serve: an application's replica actor killed under load.

One local Ray per module (``num_cpus=2``, everything on 127.0.0.1, Serve's
HTTP proxy on an ephemeral port) serves the demo's iris model as two Serve
applications, ``iris-a`` and ``iris-b`` (failsoft.backends.ray_app); a real
failsoft gateway sees them as the two replicas of one version. The replica
actor of ``iris-a`` is killed with ``ray.kill`` mid-load: every answer must
still be a 200 with the label onnxruntime gives for that row. The same run at
a larger size, with the baseline of a client talking to Ray directly, is
``benchmarks/ray_failover.py``. Without ray installed the tests skip, and
fail in CI.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from benchmarks.ray_failover import APPS, Load, RayServe, gateway, iris_rows, measure

from failsoft.backends.ray_serve import RayHandleReplica, RayServeReplica
from failsoft.call import Call
from failsoft.clock import SystemClock
from failsoft.errors import BadRequest, ModelError, UpstreamError
from failsoft.observe.events import EventBus
from failsoft.protocol.types import InferRequest

pytestmark = pytest.mark.integration

IN_CI = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")
RATE = 25.0  # well under what Ray's one proxy takes on 2 shared cores (about 60/s)
SECONDS = 8.0
KILL_AT_S = 1.5


@pytest.fixture(scope="module")
def ray_serve(demo_dir: Path) -> Iterator[RayServe]:
    try:
        import ray.serve  # noqa: F401
    except ImportError as error:
        reason = f"ray[serve] is not installed ({error}): pip install -e '.[ray]'"
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    serve = RayServe(demo_dir / "iris-v1.onnx")
    try:
        yield serve
    finally:
        serve.shutdown()


def test_a_killed_replica_actor_costs_no_answer(
    ray_serve: RayServe, demo_dir: Path, tmp_path: Path
) -> None:
    load = Load(*iris_rows(demo_dir / "iris-v1.onnx"), RATE, SECONDS, KILL_AT_S)
    with gateway(ray_serve.address, tmp_path) as server:
        measured = measure(ray_serve, f"{server.url}/v2/models/iris/infer", load)
        metrics = httpx.get(f"{server.url}/metrics", timeout=5).text
    records = measured.records
    print(f"\nkilled {measured.victim} at {measured.killed_at:.2f} s")
    for phase in measured.phases():
        print(phase.line())

    assert len(records) == int(RATE * SECONDS)
    wrong = [r for r in records if not r.correct]
    assert not wrong, f"{len(wrong)} of {len(records)} wrong or failed: {wrong[:5]}"
    # The kill happened mid-load, and requests were sent while iris-a had no replica.
    assert KILL_AT_S <= measured.killed_at < SECONDS
    assert ray_serve.replica_actor(APPS[0]) != measured.victim
    outage = [r for r in records if measured.killed_at <= r.sent < measured.back_at]
    assert len(outage) >= 5, (measured.killed_at, measured.back_at)
    # Both applications served before the kill (the gateway balanced over both).
    assert 'replica="iris-a"' in metrics
    assert 'replica="iris-b"' in metrics


ROW = np.array([[6.7, 3.0, 5.2, 2.3]], dtype=np.float32)


def call() -> Call:
    return Call("req-1", "iris", "v1", time.monotonic() + 10.0, EventBus(), SystemClock())


async def test_the_proxys_answers_are_charged_to_who_caused_them(ray_serve: RayServe) -> None:
    """Against the real proxy: the app's own errors, and a route with no application."""
    row = ROW
    good = RayServeReplica("iris-b", f"{ray_serve.address}/iris-b", 4, "iris", None)
    missing = RayServeReplica("gone", f"{ray_serve.address}/no-such-app", 4, "iris", None)
    try:
        assert await good.health()
        outputs = await good.infer(InferRequest({"features": row}), call())
        assert outputs["label"].tolist() == [2]
        assert outputs["probabilities"].shape == (1, 3)
        # The model raising on this input answers a V2 error object: a ModelError,
        # which attribution may find to be the input's fault.
        with pytest.raises(ModelError, match="the model failed"):
            await good.infer(InferRequest({"features": row[:, :3]}), call())
        with pytest.raises(BadRequest):
            await good.infer(InferRequest({}, raw=b'{"inputs": 5}'), call())
        # No application at the route: the replica is missing, not the request wrong.
        assert not await missing.health()
        with pytest.raises(UpstreamError, match="no application at this route"):
            await missing.infer(InferRequest({"features": row}), call())
    finally:
        await asyncio.gather(good.close(), missing.close())


async def test_the_deployment_handle_path_answers_and_charges_like_the_proxy(
    ray_serve: RayServe,
) -> None:
    """via: handle, from this process (a driver of the test's Ray, as a gateway inside it is)."""
    good, missing = RayHandleReplica("iris-b", "iris-b"), RayHandleReplica("gone", "no-such-app")
    await good.start()
    # The first call sets up the handle's router (over a second here): not a health probe's.
    outputs = await good.infer(InferRequest({"features": ROW}), call())
    assert outputs["label"].tolist() == [2]
    assert outputs["probabilities"].shape == (1, 3)
    assert await good.health()
    with pytest.raises(ModelError, match="the model failed"):
        await good.infer(InferRequest({"features": ROW[:, :3]}), call())
    assert not await missing.health()
    with pytest.raises(UpstreamError, match="gone"):
        await missing.infer(InferRequest({"features": ROW}), call())
