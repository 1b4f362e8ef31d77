"""Fuzz the running server's decoder: no body crashes it; each gets a 400 or an answer."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from failsoft.drills.server import ServerProcess
from tests.integration.conftest import launch

pytestmark = pytest.mark.integration

DATATYPES = ["BOOL", "UINT8", "INT8", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES", "FP33", 7]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5),
)
data_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=6), max_leaves=24)
tensor = st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from(["features", "x", "", 3]),
        "datatype": st.sampled_from(DATATYPES),
        "shape": st.one_of(st.lists(st.integers(-2, 6), max_size=3), scalars),
        "data": data_values,
        "parameters": st.one_of(
            st.just({}), st.fixed_dictionaries({"binary_data_size": st.integers(-4, 64)}), scalars
        ),
    },
)
near_valid = st.fixed_dictionaries(
    {"inputs": st.one_of(st.lists(tensor, max_size=3), scalars)},
    optional={
        "id": scalars,
        "outputs": st.one_of(
            st.lists(
                st.fixed_dictionaries({"name": st.sampled_from(["label", "nope", 1])}), max_size=2
            ),
            scalars,
        ),
        "parameters": st.one_of(st.dictionaries(st.text(max_size=4), scalars, max_size=2), scalars),
    },
)
bodies = st.one_of(
    st.binary(max_size=200),
    near_valid.map(lambda value: json.dumps(value).encode()),  # big ints and NaN included
)


@pytest.fixture(scope="module")
def server(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = launch(
        tmp_path_factory.mktemp("fuzz"),
        f"""
models:
  iris:
    inputs:  [{{name: features, datatype: FP32, shape: [-1, 4]}}]
    outputs: [{{name: label, datatype: INT64, shape: [-1]}}]
    versions:
      v1: {{backend: onnx, path: {demo_dir}/iris-v1.onnx}}
""",
    )
    yield process
    process.stop()


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        yield client


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=bodies, header_length=st.one_of(st.none(), st.integers(-5, 300)))
def test_no_body_crashes_the_server(
    http: httpx.Client, body: bytes, header_length: int | None
) -> None:
    headers = (
        {} if header_length is None else {"Inference-Header-Content-Length": str(header_length)}
    )
    for path in ("/v2/models/iris/infer", "/v1/models/iris:predict"):
        answer = http.post(path, content=body, headers=headers)
        assert answer.status_code in (200, 400), (path, body, answer.text)
        if answer.status_code == 400:
            assert set(answer.json()) == {"error"}
        elif path.startswith("/v2"):
            label = answer.json()["outputs"][0]
            assert label["name"] == "label"
            assert label["datatype"] == "INT64"


def test_server_still_answers_after_fuzzing(http: httpx.Client) -> None:
    body = {
        "inputs": [
            {"name": "features", "datatype": "FP32", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}
        ]
    }
    assert http.post("/v2/models/iris/infer", json=body).json()["outputs"][0]["data"] == [0]
