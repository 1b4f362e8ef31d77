"""One malformed or out-of-bounds value in an otherwise good request, on a real `failsoft serve`:
the answer is a 400 (malformed) or 422 (breaks a feature constraint) naming the tensor and the
value's row and column, never a 500 and never a model call."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from failsoft.drills.server import ServerProcess
from tests.integration.conftest import launch

pytestmark = pytest.mark.integration

CONFIG = """
models:
  m:
    inputs:
      - name: x
        datatype: FP32
        shape: [-1, 3]
        columns: [a, b, c]
        features: {b: {min: -10, max: 10}}
      - {name: k, datatype: INT64, shape: [-1, 2]}
    outputs:
      - {name: label, datatype: INT64, shape: [-1]}
    versions:
      v1: {backend: python, function: "tests.integration._models:first_label", execution: inline}
    health_check: {enabled: false}
    input_policy: reject
"""

# What each corruption puts in place of one value, and the status it must get.
CORRUPTIONS: dict[str, tuple[Any, int]] = {
    "string": ("abc", 400),
    "null": (None, 400),
    "boolean": (True, 400),
    "object": ({"v": 1}, 400),
    "huge": (1.0e39, 400),  # over FP32's range; beyond INT64's too
    "fraction": (1.5, 400),  # not an integer (INT64 only; a fine FP32 value)
    "constraint": (99.0, 422),  # column b of x is bounded to [-10, 10]
}


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    server: ServerProcess = launch(tmp_path_factory.mktemp("malformed"), CONFIG)
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            yield client
    finally:
        server.stop()


def body(x: list[list[float]], k: list[list[Any]]) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": [len(x), 3], "data": x},
            {"name": "k", "datatype": "INT64", "shape": [len(k), 2], "data": k},
        ]
    }


rows = st.integers(1, 6)
good_x = st.floats(-10, 10, allow_nan=False, width=32)
good_k = st.integers(-(2**40), 2**40)


@st.composite
def malformed(draw: st.DrawFn) -> tuple[dict[str, Any], str, int, int, str]:
    count = draw(rows)
    x = [[draw(good_x) for _ in range(3)] for _ in range(count)]
    k = [[draw(good_k) for _ in range(2)] for _ in range(count)]
    kind = draw(st.sampled_from(sorted(CORRUPTIONS)))
    tensor = "x" if kind == "constraint" else draw(st.sampled_from(["x", "k"]))
    if kind == "fraction":
        tensor = "k"
    row = draw(st.integers(0, count - 1))
    column = 1 if kind == "constraint" else draw(st.integers(0, 2 if tensor == "x" else 1))
    value = CORRUPTIONS[kind][0]
    (x if tensor == "x" else k)[row][column] = value
    return body(x, k), tensor, row, column, kind


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(case=malformed())
def test_one_bad_value_is_named_by_tensor_row_and_column(
    http: httpx.Client, case: tuple[dict[str, Any], str, int, int, str]
) -> None:
    payload, tensor, row, column, kind = case
    answer = http.post("/v2/models/m/infer", content=json.dumps(payload))
    expected = CORRUPTIONS[kind][1]
    assert answer.status_code == expected, (kind, answer.text)
    found = answer.json()
    assert found["error"].startswith(f"input '{tensor}'"), found
    if expected == 422:
        (violation,) = found["violations"]
        assert (violation["tensor"], violation["row"], violation["column"]) == (tensor, row, "b")
        assert found["error"].startswith(f"input 'x' row {row} column 'b'")
    else:
        assert f"(row {row}, column {column})" in found["error"], found


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(count=rows, missing=st.integers(1, 3))
def test_a_wrong_element_count_is_named(http: httpx.Client, count: int, missing: int) -> None:
    x = [0.5] * (3 * count - missing)  # flat data, a few elements short of the shape
    payload = {
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": [count, 3], "data": x},
            {"name": "k", "datatype": "INT64", "shape": [count, 2], "data": [0] * (2 * count)},
        ]
    }
    answer = http.post("/v2/models/m/infer", json=payload)
    assert answer.status_code == 400
    assert answer.json()["error"] == (
        f"input 'x': shape [{count}, 3] needs {3 * count} elements, got {3 * count - missing}"
    )


def test_the_model_still_answers(http: httpx.Client) -> None:
    answer = http.post("/v2/models/m/infer", json=body([[1, 2, 3]], [[4, 5]]))
    assert answer.status_code == 200
    assert answer.json()["outputs"][0]["data"] == [1]
