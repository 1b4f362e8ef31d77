"""`failsoft serve` as a real process, driven by the real tritonclient and plain HTTP."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton
from sklearn.datasets import load_iris
from tritonclient.utils import InferenceServerException

from failsoft.drills.server import ServerProcess
from tests.integration.conftest import ADMIN_TOKEN, launch

pytestmark = pytest.mark.integration

IRIS_TENSORS = """
    inputs:  [{name: features, datatype: FP32, shape: [-1, 4]}]
    outputs:
      - {name: label, datatype: INT64, shape: [-1]}
      - {name: probabilities, datatype: FP32, shape: [-1, 3]}
"""


def config_text(demo_dir: Path) -> str:
    return f"""
server: {{max_body_bytes: 65536}}
models:
  iris:{IRIS_TENSORS}
    versions:
      v1: {{backend: onnx, path: {demo_dir}/iris-v1.onnx, replicas: 2}}
      v2: {{backend: onnx, path: {demo_dir}/iris-v2.onnx}}
    default_version: v1
  shout:
    inputs:  [{{name: text, datatype: BYTES, shape: [-1]}}]
    outputs: [{{name: upper, datatype: BYTES, shape: [-1]}}]
    versions:
      v1: {{backend: python, function: "tests.integration._models:shout"}}
  broken:{IRIS_TENSORS}
    versions:
      v1: {{backend: python, function: "tests.integration._models:broken"}}
    breaker: {{enabled: false}}
    ejection: {{enabled: false}}
"""


@pytest.fixture(scope="module")
def server(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = launch(tmp_path_factory.mktemp("serve"), config_text(demo_dir))
    yield process
    assert process.stop() == 0, "SIGTERM must end the server cleanly"


@pytest.fixture
def client(server: ServerProcess) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(server.url.removeprefix("http://"))


def expected_labels(demo_dir: Path, version: str, rows: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(demo_dir / f"iris-{version}.onnx"))
    return session.run(["label"], {"features": rows})[0]


ROWS = load_iris().data[::10].astype(np.float32)


def test_health_and_metadata_through_tritonclient(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("iris")
    assert client.is_model_ready("iris", "v2")
    assert client.get_server_metadata()["name"] == "failsoft"
    meta = client.get_model_metadata("iris")
    assert meta["name"] == "iris"
    assert meta["versions"] == ["v1", "v2"]
    assert meta["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}]
    assert [o["name"] for o in meta["outputs"]] == ["label", "probabilities"]
    assert client.get_model_metadata("iris", "v2")["versions"] == ["v2"]


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_infer_through_tritonclient(
    client: triton.InferenceServerClient, demo_dir: Path, binary: bool, version: str
) -> None:
    features = triton.InferInput("features", list(ROWS.shape), "FP32")
    features.set_data_from_numpy(ROWS, binary_data=binary)
    outputs = [
        triton.InferRequestedOutput("label", binary_data=binary),
        triton.InferRequestedOutput("probabilities", binary_data=binary),
    ]
    result = client.infer(
        "iris", [features], model_version=version, outputs=outputs, request_id="req-42"
    )
    labels = result.as_numpy("label")
    np.testing.assert_array_equal(labels, expected_labels(demo_dir, version, ROWS))
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (len(ROWS), 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-4)
    assert result.get_response()["id"] == "req-42"
    assert result.get_response()["model_version"] == version


def test_infer_default_outputs_come_back_binary(client: triton.InferenceServerClient) -> None:
    features = triton.InferInput("features", [1, 4], "FP32")
    features.set_data_from_numpy(ROWS[:1])
    result = client.infer("iris", [features])  # no outputs named: all, as binary
    assert result.as_numpy("label").shape == (1,)
    assert result.as_numpy("probabilities").shape == (1, 3)


def test_bytes_tensors_round_trip(client: triton.InferenceServerClient) -> None:
    words = np.array([b"resilient", "grüße".encode(), b""], dtype=object)
    for binary in (True, False):
        text = triton.InferInput("text", [3], "BYTES")
        text.set_data_from_numpy(words, binary_data=binary)
        result = client.infer(
            "shout", [text], outputs=[triton.InferRequestedOutput("upper", binary_data=binary)]
        )
        # tritonclient hands JSON BYTES back as str, binary ones as bytes
        upper = [x if isinstance(x, bytes) else x.encode() for x in result.as_numpy("upper")]
        assert upper == [b"RESILIENT", "GRüßE".encode(), b""]


def test_triton_errors_are_clear(client: triton.InferenceServerClient) -> None:
    features = triton.InferInput("features", [1, 4], "FP64")
    features.set_data_from_numpy(ROWS[:1].astype(np.float64))
    with pytest.raises(InferenceServerException, match="datatype FP64 does not match"):
        client.infer("iris", [features])
    with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
        client.get_model_metadata("nope")


Post = Callable[..., httpx.Response]


def test_v1_predict(server: ServerProcess, demo_dir: Path) -> None:
    with httpx.Client(base_url=server.url) as http:
        assert http.get("/v1/models/iris").json() == {"name": "iris", "ready": True}
        answer = http.post("/v1/models/iris:predict", json={"instances": ROWS.tolist()})
        assert answer.status_code == 200, answer.text
        predictions = answer.json()["predictions"]
        assert [p["label"] for p in predictions] == expected_labels(demo_dir, "v1", ROWS).tolist()
        bad = http.post("/v1/models/iris:predict", json={"instances": [[1, 2, 3]]})
        assert bad.status_code == 400
        assert "features" in bad.json()["error"]


def infer_body(
    data: object, shape: list[int], datatype: str = "FP32", name: str = "features"
) -> dict[str, object]:
    return {"inputs": [{"name": name, "datatype": datatype, "shape": shape, "data": data}]}


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/v2/models/nope/infer", infer_body([1, 2, 3, 4], [1, 4]), 404, "unknown model 'nope'"),
        (
            "/v2/models/iris/versions/v9/infer",
            infer_body([1, 2, 3, 4], [1, 4]),
            404,
            "no version 'v9'",
        ),
        ("/v2/models/iris/infer", infer_body([1, 2, 3], [1, 4]), 400, "features"),
        (
            "/v2/models/iris/infer",
            infer_body([1, 2, 3, 4], [1, 4], name="x"),
            400,
            "unknown input 'x'",
        ),
        ("/v2/models/iris/infer", infer_body([1, 2, 3, 4], [1, 4], "INT64"), 400, "datatype INT64"),
        ("/v2/models/iris/infer", infer_body([1, 2, 3, 4], [4]), 400, "shape [4] does not match"),
        ("/v2/models/iris/infer", infer_body(["a", "b", "c", "d"], [1, 4]), 400, "features"),
        (
            "/v2/models/broken/infer",
            infer_body([1, 2, 3, 4], [1, 4]),
            500,
            "the model failed on this request (request id ",
        ),
    ],
)
def test_errors_are_json_with_the_right_status(
    server: ServerProcess, path: str, body: dict[str, object], status: int, message: str
) -> None:
    answer = httpx.post(server.url + path, json=body)
    assert answer.status_code == status, answer.text
    assert message in answer.json()["error"]
    assert "Traceback" not in answer.text
    assert "always fails" not in answer.text  # a model's exception text stays in the log


def test_malformed_and_oversized_bodies(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.url) as http:
        answer = http.post("/v2/models/iris/infer", content=b"{not json")
        assert answer.status_code == 400
        assert "error" in answer.json()
        big = http.post("/v2/models/iris/infer", content=b"[" + b"1," * 40_000 + b"1]")
        assert big.status_code == 413
        assert "65536-byte limit" in big.json()["error"]
        wrong_method = http.get("/v2/models/iris/infer")
        assert wrong_method.status_code == 405
        assert wrong_method.headers["allow"] == "POST"
        assert http.get("/v2/nothing/here").status_code == 404


def test_request_id_is_echoed_or_generated(server: ServerProcess) -> None:
    body = infer_body([5.1, 3.5, 1.4, 0.2], [1, 4])
    with httpx.Client(base_url=server.url) as http:
        echoed = http.post("/v2/models/iris/infer", json=body, headers={"X-Request-Id": "abc-123"})
        assert echoed.headers["x-request-id"] == "abc-123"
        assert echoed.headers["failsoft-served-by"].startswith("iris/v1/r")
        assert echoed.headers["failsoft-degraded"] == "false"
        generated = http.post("/v2/models/iris/infer", json=body)
        assert len(generated.headers["x-request-id"]) == 32


def test_metrics_count_requests_and_failures(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.url) as http:
        http.post("/v2/models/iris/infer", json=infer_body([5.1, 3.5, 1.4, 0.2], [1, 4]))
        http.post("/v2/models/broken/infer", json=infer_body([5.1, 3.5, 1.4, 0.2], [1, 4]))
        text = http.get("/metrics").text
    assert 'failsoft_requests_total{code="200",model="iris",version="v1"}' in text
    assert 'failsoft_request_failures_total{class="replica",model="broken",version="v1"}' in text
    assert "failsoft_request_duration_seconds_bucket" in text


def test_error_logs_are_json_with_the_request_id(server: ServerProcess) -> None:
    httpx.post(
        server.url + "/v2/models/broken/infer",
        json=infer_body([5.1, 3.5, 1.4, 0.2], [1, 4]),
        headers={"X-Request-Id": "trace-me"},
    )
    raised = server.wait_for(
        lambda line: line.get("request_id") == "trace-me" and line["msg"] == "model raised",
        timeout=10,
    )
    assert "this model always fails" in raised["error"]
    # Failed requests are folded into one line per model per second, with their counts.
    folded = server.wait_for(
        lambda line: line["msg"] == "inference failed" and line.get("model") == "broken",
        timeout=10,
    )
    assert folded["level"] == "warning"
    assert folded["counts"]["500 replica"] >= 1
    assert folded["last_request_id"]


def test_admin_requires_the_token(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.url) as http:
        assert http.get("/admin/status").status_code == 401
        assert (
            http.get("/admin/status", headers={"Authorization": "Bearer wrong"}).status_code == 401
        )
        status = http.get("/admin/status", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert status.status_code == 200
        replicas = status.json()["models"]["iris"]["versions"]["v1"]["replicas"]
        assert [r["name"] for r in replicas] == ["r0", "r1"]
