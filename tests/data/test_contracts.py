from __future__ import annotations

import numpy as np
import pytest

from failsoft.config import TensorSpec
from failsoft.data.contracts import ModelContract
from failsoft.errors import BadRequest, ModelError
from failsoft.protocol.types import InferRequest, RequestedOutput

INPUTS = [TensorSpec(name="x", datatype="FP32", shape=[-1, 4])]
OUTPUTS = [
    TensorSpec(name="label", datatype="INT64", shape=[-1]),
    TensorSpec(name="text", datatype="BYTES", shape=[-1]),
]


def check_request(req: InferRequest, inputs: list[TensorSpec], outputs: list[TensorSpec]) -> None:
    ModelContract(inputs, outputs).check_request(req)


def check_outputs(
    outputs: dict[str, np.ndarray], declared: list[TensorSpec]
) -> dict[str, np.ndarray]:
    return ModelContract([], declared).check_outputs(outputs)


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
            "output 'label': datatype INT32 does not match the declared INT64",
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


RANGED = [
    TensorSpec(name="p", datatype="FP32", shape=[-1], range=(0.0, 1.0)),
    TensorSpec(name="label", datatype="INT64", shape=[-1], labels=[0, 1, 2]),
    TensorSpec(name="word", datatype="BYTES", shape=[-1], labels=["yes", "no"]),
]


def ranged_outputs(p: list[float], label: list[int], word: list[bytes]) -> dict[str, np.ndarray]:
    return {
        "p": np.array(p, np.float32),
        "label": np.array(label, np.int64),
        "word": np.array(word, dtype=object),
    }


def test_values_inside_the_contract_pass() -> None:
    check_outputs(ranged_outputs([0.0, 0.5, 1.0], [0, 2, 1], [b"yes", b"no", b"no"]), RANGED)


@pytest.mark.parametrize(
    ("outputs", "message"),
    [
        (
            ranged_outputs([0.5, float("nan")], [0, 1], [b"no", b"no"]),
            "'p': contains NaN or infinity",
        ),
        (
            ranged_outputs([0.5, float("inf")], [0, 1], [b"no", b"no"]),
            "'p': contains NaN or infinity",
        ),
        (
            ranged_outputs([1.5], [0], [b"no"]),
            "'p': value 1.5 is outside the declared range [0, 1]",
        ),
        (ranged_outputs([0.5], [7], [b"no"]), "'label': value 7 is not one of the declared labels"),
        (
            ranged_outputs([0.5], [1], [b"maybe"]),
            "'word': value b'maybe' is not one of the declared",
        ),
        (ranged_outputs([0.5] * 100, [1] * 99 + [3], [b"no"] * 100), "value 3 is not one of"),
    ],
)
def test_value_contract_violations(outputs: dict[str, np.ndarray], message: str) -> None:
    with pytest.raises(ModelError) as caught:
        check_outputs(outputs, RANGED)
    assert message in caught.value.message


def test_nan_allowed_when_declared() -> None:
    spec = [TensorSpec(name="p", datatype="FP64", shape=[-1], allow_nan=True)]
    check_outputs({"p": np.array([np.nan])}, spec)


def test_input_value_contract_is_a_bad_request() -> None:
    spec = [TensorSpec(name="x", datatype="FP32", shape=[-1], range=(0, 10))]
    with pytest.raises(BadRequest, match=r"input 'x': value 11\.0 is outside the declared range"):
        check_request(request(x=np.array([1, 11], np.float32)), spec, OUTPUTS)


def test_contract_options_are_validated() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="range does not apply to BYTES"):
        TensorSpec(name="x", datatype="BYTES", shape=[-1], range=(0, 1))
    with pytest.raises(ValidationError, match="labels apply to integer"):
        TensorSpec(name="x", datatype="FP32", shape=[-1], labels=[1])
    with pytest.raises(ValidationError, match="allow_nan applies to"):
        TensorSpec(name="x", datatype="INT32", shape=[-1], allow_nan=True)
    with pytest.raises(ValidationError, match=r"minimum 2\.0 is above"):
        TensorSpec(name="x", datatype="FP32", shape=[-1], range=(2, 1))


def test_batches_over_the_limit_are_refused() -> None:
    contract = ModelContract(INPUTS, OUTPUTS, max_batch=2)
    contract.check_request(request(x=np.zeros((2, 4), np.float32)))
    with pytest.raises(
        BadRequest, match="a batch of 3 rows is over the model's max_batch_size of 2"
    ):
        contract.check_request(request(x=np.zeros((3, 4), np.float32)))
