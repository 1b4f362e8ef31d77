from __future__ import annotations

import numpy as np
import pytest

from failsoft.config import TensorSpec
from failsoft.data.contracts import check_outputs, check_request
from failsoft.errors import BadRequest, ModelError
from failsoft.protocol.types import InferRequest, RequestedOutput

INPUTS = [TensorSpec(name="x", datatype="FP32", shape=[-1, 4])]
OUTPUTS = [
    TensorSpec(name="label", datatype="INT64", shape=[-1]),
    TensorSpec(name="text", datatype="BYTES", shape=[-1]),
]


def request(**inputs: np.ndarray) -> InferRequest:
    return InferRequest(dict(inputs))


def test_matching_request_passes() -> None:
    check_request(request(x=np.zeros((3, 4), np.float32)), INPUTS, OUTPUTS)


@pytest.mark.parametrize(
    ("req", "message"),
    [
        (request(y=np.zeros((1, 4), np.float32)), "unknown input 'y'"),
        (
            request(x=np.zeros((1, 4), np.float64)),
            "input 'x': datatype FP64 does not match the model's FP32",
        ),
        (
            request(x=np.zeros((1, 5), np.float32)),
            "input 'x': shape [1, 5] does not match the model's [-1, 4]",
        ),
        (request(x=np.zeros(4, np.float32)), "input 'x': shape [4] does not match"),
        (request(), "missing input(s) ['x']"),
    ],
)
def test_request_violations_name_the_input(req: InferRequest, message: str) -> None:
    with pytest.raises(BadRequest) as caught:
        check_request(req, INPUTS, OUTPUTS)
    assert message in caught.value.message


def test_unknown_requested_output() -> None:
    req = request(x=np.zeros((1, 4), np.float32))
    req.outputs = [RequestedOutput("scores")]
    with pytest.raises(BadRequest, match="unknown output 'scores' requested"):
        check_request(req, INPUTS, OUTPUTS)


def test_outputs_are_returned_in_declared_order_and_extras_dropped() -> None:
    outputs = {
        "extra": np.zeros(1),
        "text": np.array([b"a"], dtype=object),
        "label": np.array([1], dtype=np.int64),
    }
    assert list(check_outputs(outputs, OUTPUTS)) == ["label", "text"]


@pytest.mark.parametrize(
    ("outputs", "message"),
    [
        ({"text": np.array([b"a"], dtype=object)}, "did not return output 'label'"),
        (
            {"label": np.array([1], np.int32), "text": np.array([b"a"], dtype=object)},
            "output 'label': datatype int32 does not match the declared INT64",
        ),
        (
            {"label": np.array([[1]], np.int64), "text": np.array([b"a"], dtype=object)},
            "output 'label': shape [1, 1] does not match the declared [-1]",
        ),
    ],
)
def test_output_violations_are_model_errors(outputs: dict[str, np.ndarray], message: str) -> None:
    with pytest.raises(ModelError) as caught:
        check_outputs(outputs, OUTPUTS)
    assert message in caught.value.message
