"""The Ray Serve app's replica class, called directly with real ASGI requests (no Ray cluster)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from starlette.requests import Request  # comes with ray[serve], in the test extra

from failsoft.backends.ray_app import V2Model, app
from failsoft.config import ModelConfig

ROW = {"name": "features", "datatype": "FP32", "shape": [1, 4], "data": [6.7, 3.0, 5.2, 2.3]}


def model_config(demo_dir: Path) -> dict[str, Any]:
    return ModelConfig.model_validate(
        {
            "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}],
            "outputs": [
                {"name": "label", "datatype": "INT64", "shape": [-1]},
                {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]},
            ],
            "versions": {"v1": {"backend": "onnx", "path": str(demo_dir / "iris-v1.onnx")}},
        }
    ).model_dump(mode="json")


def request(method: str, path: str, body: bytes = b"") -> Request:
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "root_path": "/iris-a",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json")],
    }
    return Request(scope, receive)


async def test_the_replica_answers_v2_under_its_route_prefix(demo_dir: Path) -> None:
    replica = V2Model("iris", "v1", model_config(demo_dir))
    ready = await replica(request("GET", "/iris-a/v2/models/iris/ready"))
    assert ready.status_code == 200
    for path in ("/iris-a/v2/models/iris/infer", "/iris-a/v2/models/iris/versions/v1/infer"):
        body = orjson.dumps({"id": "x1", "inputs": [ROW]})
        answer = await replica(request("POST", path, body))
        assert answer.status_code == 200
        decoded = orjson.loads(answer.body)
        assert decoded["id"] == "x1"
        assert decoded["model_version"] == "v1"
        outputs = {o["name"]: o["data"] for o in decoded["outputs"]}
        assert outputs["label"] == [2]
        assert len(outputs["probabilities"]) == 3
    # The deployment-handle path (via: handle): numpy in, numpy out.
    assert replica.ready()
    direct = replica.infer({"features": np.array([ROW["data"]], dtype=np.float32)})
    assert direct["label"].tolist() == [2]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "says"),
    [
        ("POST", "/iris-a/v2/models/iris/infer", b'{"inputs": 5}', 400, "'inputs' must be"),
        ("POST", "/iris-a/v2/models/iris/infer", b"not json", 400, ""),
        (
            "POST",
            "/iris-a/v2/models/iris/infer",
            orjson.dumps({"inputs": [{**ROW, "shape": [1, 3], "data": [1.0, 2.0, 3.0]}]}),
            500,
            "the model failed",
        ),
        ("POST", "/iris-a/v2/models/other/infer", b"{}", 404, "no route"),
        ("GET", "/iris-a/v2/models/iris/infer", b"", 404, "no route"),
    ],
)
async def test_every_error_is_a_v2_error_object(
    demo_dir: Path, method: str, path: str, body: bytes, status: int, says: str
) -> None:
    replica = V2Model("iris", "v1", model_config(demo_dir))
    answer = await replica(request(method, path, body))
    assert answer.status_code == status
    assert says in orjson.loads(answer.body)["error"]


def test_the_serve_run_builder_reads_a_failsoft_configuration(demo_dir: Path) -> None:
    path = demo_dir / "ray-app.yaml"
    path.write_text(
        "models:\n  iris:\n"
        "    inputs: [{name: features, datatype: FP32, shape: [-1, 4]}]\n"
        "    outputs: [{name: label, datatype: INT64, shape: [-1]}]\n"
        "    versions: {v1: {backend: onnx, path: iris-v1.onnx}}\n"
    )
    built = app({"config": str(path), "model": "iris", "num_cpus": "0.5"})
    assert type(built).__name__ == "Application"
    with pytest.raises(ValueError, match="not a local model"):
        V2Model(
            "iris",
            "v1",
            {
                **model_config(demo_dir),
                "versions": {"v1": {"backend": "http", "urls": ["http://127.0.0.1:1"]}},
            },
        )
