from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest

from failsoft.config import TensorSpec
from failsoft.errors import BadRequest, ModelError
from failsoft.protocol.datatypes import DATATYPE_TO_DTYPE, DATATYPES
from failsoft.protocol.types import InferResponse
from failsoft.protocol.v1 import decode_predict_request, encode_predict_response

ROW_VALUES: dict[str, list[Any]] = {
    "BOOL": [True, False],
    "UINT8": [0, 255],
    "UINT16": [0, 65535],
    "UINT32": [0, 2**32 - 1],
    "UINT64": [0, 2**64 - 1],
    "INT8": [-128, 127],
    "INT16": [-(2**15), 2**15 - 1],
    "INT32": [-(2**31), 2**31 - 1],
    "INT64": [-(2**63), 2**63 - 1],
    "FP16": [0.5, -1.25],
    "FP32": [1.5, -2.25],
    "FP64": [1.5, 1e300],
    "BYTES": ["a", "héllo"],
}

FEATURES = TensorSpec(name="features", datatype="FP32", shape=[-1, 3])
TEXT = TensorSpec(name="text", datatype="BYTES", shape=[-1])


def body(**fields: Any) -> bytes:
    return orjson.dumps(fields)


def response_with(outputs: dict[str, np.ndarray]) -> InferResponse:
    return InferResponse(model_name="m", model_version="1", outputs=outputs)


@pytest.mark.parametrize("datatype", DATATYPES)
def test_one_input_rows_every_datatype(datatype: str) -> None:
    spec = TensorSpec(name="x", datatype=datatype, shape=[-1, 2])
    rows = [ROW_VALUES[datatype], ROW_VALUES[datatype][::-1]]
    array = decode_predict_request(body(instances=rows), [spec]).inputs["x"]
    values = [[v.encode() if isinstance(v, str) else v for v in row] for row in rows]
    assert array.dtype == DATATYPE_TO_DTYPE[datatype]
    assert array.shape == (2, 2)
    assert array.tolist() == values


def test_scalar_rows_make_a_vector() -> None:
    spec = TensorSpec(name="x", datatype="INT64", shape=[-1])
    array = decode_predict_request(body(instances=[3, 4, 5]), [spec]).inputs["x"]
    assert array.shape == (3,)
    assert array.dtype == np.int64


def test_nested_rows_keep_their_shape() -> None:
    spec = TensorSpec(name="img", datatype="UINT8", shape=[-1, 2, 2])
    instances = [[[1, 2], [3, 4]], [[5, 6], [7, 8]]]
    array = decode_predict_request(body(instances=instances), [spec]).inputs["img"]
    assert array.shape == (2, 2, 2)
    assert array.tolist() == instances


def test_inputs_key_means_the_same_as_instances() -> None:
    rows = [[1, 2, 3]]
    by_inputs = decode_predict_request(body(inputs=rows), [FEATURES]).inputs["features"]
    by_instances = decode_predict_request(body(instances=rows), [FEATURES]).inputs["features"]
    assert by_inputs.tolist() == by_instances.tolist() == [[1.0, 2.0, 3.0]]


def test_several_inputs_use_objects_per_instance() -> None:
    instances = [{"features": [1, 2, 3], "text": "a"}, {"text": "b", "features": [4, 5, 6]}]
    inputs = decode_predict_request(body(instances=instances), [FEATURES, TEXT]).inputs
    assert inputs["features"].shape == (2, 3)
    assert inputs["features"].dtype == np.float32
    assert inputs["text"].tolist() == [b"a", b"b"]
    assert inputs["text"].dtype == np.object_


def test_one_input_may_also_use_objects() -> None:
    instances = [{"features": [1, 2, 3]}]
    array = decode_predict_request(body(instances=instances), [FEATURES]).inputs["features"]
    assert array.tolist() == [[1.0, 2.0, 3.0]]


BAD_REQUESTS: list[tuple[bytes, list[TensorSpec], str]] = [
    (b"nope", [FEATURES], "the request is not valid JSON"),
    (b"[]", [FEATURES], "the request must be a JSON object, got a list"),
    (body(rows=[]), [FEATURES], "the request needs 'instances'"),
    (body(instances=[], inputs=[]), [FEATURES], "both 'instances' and 'inputs'"),
    (body(instances=[]), [FEATURES], "'instances' is empty"),
    (
        body(instances={"features": [1, 2, 3]}),
        [FEATURES],
        "'instances' must be a list of rows, got an object",
    ),
    (body(inputs={"features": [[1, 2, 3]]}), [FEATURES], "columnar 'inputs'"),
    (
        body(instances=[[1, 2, 3], [4, 5]]),
        [FEATURES],
        r"input 'features': ragged data: lists at depth 1 have different lengths \[2, 3\]",
    ),
    (body(instances=[[1, 2, 3], 4]), [FEATURES], "input 'features': ragged data"),
    (
        body(instances=[[1, "2", 3]]),
        [FEATURES],
        "input 'features': FP32 data must be numbers, got a string '2'",
    ),
    (
        body(instances=[[1, 2, 3]]),
        [FEATURES, TEXT],
        "instance 0 must be an object with the inputs features, text; got a list",
    ),
    (
        body(instances=[{"features": [1, 2, 3], "text": "a"}, {"features": [1, 2, 3]}]),
        [FEATURES, TEXT],
        "instance 1: missing input 'text'",
    ),
    (
        body(instances=[{"features": [1, 2, 3], "text": "a", "extra": 1}]),
        [FEATURES, TEXT],
        r"instance 0: unknown input 'extra' \(inputs: features, text\)",
    ),
    (
        body(instances=[{"features": [1, 2, 3], "text": 5}]),
        [FEATURES, TEXT],
        "input 'text': BYTES data must be strings, got a number",
    ),
    (
        body(instances=[300]),
        [TensorSpec(name="b", datatype="UINT8", shape=[-1])],
        "input 'b': value 300 is out of range for UINT8",
    ),
    (
        body(instances=[1.5]),
        [TensorSpec(name="i", datatype="INT32", shape=[-1])],
        "input 'i': INT32 data must be integers, got 1.5",
    ),
    (
        body(instances=[1]),
        [TensorSpec(name="f", datatype="BOOL", shape=[-1])],
        "input 'f': BOOL data must be true or false",
    ),
]


@pytest.mark.parametrize(("raw", "specs", "message"), BAD_REQUESTS)
def test_bad_requests_are_named(raw: bytes, specs: list[TensorSpec], message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        decode_predict_request(raw, specs)


def test_one_output_is_a_list_of_row_values() -> None:
    response = response_with({"p": np.array([[0.25, 0.75], [1, 0]], dtype=np.float32)})
    assert orjson.loads(encode_predict_response(response)) == {
        "predictions": [[0.25, 0.75], [1.0, 0.0]]
    }


def test_one_output_of_labels() -> None:
    response = response_with({"label": np.array([b"cat", b"dog"], dtype=object)})
    assert orjson.loads(encode_predict_response(response)) == {"predictions": ["cat", "dog"]}


def test_several_outputs_are_objects_per_row() -> None:
    response = response_with(
        {
            "label": np.array([1, 0], dtype=np.int64),
            "proba": np.array([[0.25, 0.75], [0.5, 0.5]], dtype=np.float16),
            "name": np.array([["a"], ["b"]], dtype=object),
        }
    )
    assert orjson.loads(encode_predict_response(response)) == {
        "predictions": [
            {"label": 1, "proba": [0.25, 0.75], "name": ["a"]},
            {"label": 0, "proba": [0.5, 0.5], "name": ["b"]},
        ]
    }


def test_scalar_output_is_one_prediction() -> None:
    response = response_with({"score": np.array(0.5)})
    assert orjson.loads(encode_predict_response(response)) == {"predictions": [0.5]}


def test_fortran_ordered_output() -> None:
    array = np.asfortranarray(np.arange(6, dtype=np.int32).reshape(2, 3))
    assert orjson.loads(encode_predict_response(response_with({"y": array}))) == {
        "predictions": array.tolist()
    }


def test_output_errors() -> None:
    with pytest.raises(ModelError, match="returned no outputs"):
        encode_predict_response(response_with({}))
    with pytest.raises(ModelError, match="different numbers of rows"):
        encode_predict_response(response_with({"a": np.zeros(2), "b": np.zeros(3)}))
    with pytest.raises(ModelError, match="output 'raw' holds BYTES that are not valid UTF-8"):
        encode_predict_response(response_with({"raw": np.array([b"\xff"], dtype=object)}))
