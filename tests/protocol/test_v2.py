from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest
import tritonclient.http as triton
from tritonclient.http._utils import _get_inference_request

from failsoft.config import TensorSpec
from failsoft.errors import BadRequest, ModelError
from failsoft.protocol.datatypes import DATATYPE_TO_DTYPE, DATATYPES
from failsoft.protocol.types import InferRequest, InferResponse, RequestedOutput
from failsoft.protocol.v2 import (
    decode_infer_request,
    decode_infer_response,
    encode_infer_request,
    encode_infer_response,
    model_metadata,
    server_metadata,
)

# Four elements of every datatype, including each type's extremes, as JSON sends them.
JSON_VALUES: dict[str, list[Any]] = {
    "BOOL": [True, False, False, True],
    "UINT8": [0, 1, 254, 255],
    "UINT16": [0, 1, 65534, 65535],
    "UINT32": [0, 1, 2**32 - 2, 2**32 - 1],
    "UINT64": [0, 1, 2**63, 2**64 - 1],
    "INT8": [-128, -1, 0, 127],
    "INT16": [-(2**15), -1, 0, 2**15 - 1],
    "INT32": [-(2**31), -1, 0, 2**31 - 1],
    "INT64": [-(2**63), -1, 0, 2**63 - 1],
    "FP16": [0.5, -1.25, 65504.0, 0.0],
    "FP32": [1.5, -2.25, 3.4e38, 1e-30],
    "FP64": [1.5, -2.25, 1e300, 5e-324],
    "BYTES": ["a", "héllo wörld", "", "日本"],
}


def expected_array(datatype: str, shape: list[int]) -> np.ndarray:
    values = JSON_VALUES[datatype]
    if datatype == "BYTES":
        values = [value.encode() for value in values]
    return np.array(values, dtype=DATATYPE_TO_DTYPE[datatype]).reshape(shape)


def request_body(*inputs: dict[str, Any], **extra: Any) -> bytes:
    return orjson.dumps({"inputs": list(inputs), **extra})


def tensor(
    name: str = "x", datatype: str = "FP32", shape: Any = None, data: Any = None, **extra: Any
) -> dict[str, Any]:
    found = {
        "name": name,
        "datatype": datatype,
        "shape": [1, 4] if shape is None else shape,
        "data": [1.0, 2.0, 3.0, 4.0] if data is None else data,
    }
    found.update(extra)
    return found


def assert_same(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.dtype == expected.dtype
    assert actual.shape == expected.shape
    assert actual.tolist() == expected.tolist()


def triton_request(
    inputs: list[Any], outputs: list[Any] | None = None, request_id: str = ""
) -> tuple[bytes, int | None]:
    body, header_length = _get_inference_request(
        inputs=inputs,
        request_id=request_id,
        outputs=outputs,
        sequence_id=0,
        sequence_start=False,
        sequence_end=False,
        priority=0,
        timeout=None,
        custom_parameters=None,
    )
    return body if isinstance(body, bytes) else body.encode(), header_length


def triton_input(name: str, array: np.ndarray, binary: bool) -> triton.InferInput:
    datatype = "BYTES" if array.dtype == np.object_ else None
    found = triton.InferInput(name, list(array.shape), datatype or _datatype(array))
    found.set_data_from_numpy(array, binary_data=binary)
    return found


def _datatype(array: np.ndarray) -> str:
    return next(name for name, dtype in DATATYPE_TO_DTYPE.items() if dtype == array.dtype)


# --- decoding requests -------------------------------------------------------------------


@pytest.mark.parametrize("datatype", DATATYPES)
def test_json_request_every_datatype(datatype: str) -> None:
    body = request_body(tensor(datatype=datatype, shape=[2, 2], data=JSON_VALUES[datatype]))
    request = decode_infer_request(body)
    assert_same(request.inputs["x"], expected_array(datatype, [2, 2]))


@pytest.mark.parametrize("datatype", DATATYPES)
def test_nested_data_equals_flat_data(datatype: str) -> None:
    values = JSON_VALUES[datatype]
    nested = [values[:2], values[2:]]
    flat = decode_infer_request(request_body(tensor(datatype=datatype, shape=[2, 2], data=values)))
    deep = decode_infer_request(request_body(tensor(datatype=datatype, shape=[2, 2], data=nested)))
    assert_same(deep.inputs["x"], flat.inputs["x"])


def test_nested_data_is_taken_in_row_major_order_whatever_the_nesting() -> None:
    body = request_body(tensor(shape=[4, 1], data=[[1, 2], [3, 4]]))
    assert decode_infer_request(body).inputs["x"].tolist() == [[1], [2], [3], [4]]


def test_integral_floats_are_accepted_for_integer_types() -> None:
    body = request_body(tensor(datatype="INT64", shape=[2], data=[3.0, -2]))
    assert_same(decode_infer_request(body).inputs["x"], np.array([3, -2], dtype=np.int64))


def test_scalar_and_empty_tensors() -> None:
    body = request_body(tensor("s", "FP64", [], [2.5]), tensor("e", "INT32", [0, 3], []))
    inputs = decode_infer_request(body).inputs
    assert_same(inputs["s"], np.array(2.5))
    assert_same(inputs["e"], np.empty((0, 3), dtype=np.int32))


def test_request_fields() -> None:
    body = request_body(
        tensor(),
        id="req-1",
        parameters={"binary_data_output": True, "priority": 2},
        outputs=[{"name": "b", "parameters": {"binary_data": False}}, {"name": "a"}],
    )
    request = decode_infer_request(body)
    assert request.id == "req-1"
    assert request.parameters == {"priority": 2}
    assert request.binary_output is True
    # binary_data falls back to the request-wide binary_data_output
    assert request.outputs == [RequestedOutput("b", False), RequestedOutput("a", True)]


def test_absent_or_empty_outputs_mean_all_outputs() -> None:
    assert decode_infer_request(request_body(tensor())).outputs is None
    assert decode_infer_request(request_body(tensor(), outputs=[])).outputs is None


def test_binary_request_with_json_header() -> None:
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "a",
                    "datatype": "FP32",
                    "shape": [2],
                    "parameters": {"binary_data_size": 8},
                },
                {"name": "b", "datatype": "INT8", "shape": [1], "data": [7]},
                {
                    "name": "c",
                    "datatype": "BYTES",
                    "shape": [2],
                    "parameters": {"binary_data_size": 11},
                },
            ]
        }
    )
    tail = np.array([1.5, -2], dtype=np.float32).tobytes() + b"\x02\0\0\0hi\x01\0\0\0\xff"
    request = decode_infer_request(header + tail, len(header))
    assert_same(request.inputs["a"], np.array([1.5, -2], dtype=np.float32))
    assert_same(request.inputs["b"], np.array([7], dtype=np.int8))
    assert_same(request.inputs["c"], np.array([b"hi", b"\xff"], dtype=object))


# --- tritonclient builds the requests --------------------------------------------------


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("datatype", DATATYPES)
def test_tritonclient_requests_decode(datatype: str, binary: bool) -> None:
    array = expected_array(datatype, [2, 2])
    body, header_length = triton_request(
        [triton_input("x", array, binary), triton_input("y", array[:1], binary)]
    )
    assert (header_length is not None) == binary
    request = decode_infer_request(body, header_length)
    assert_same(request.inputs["x"], array)
    assert_same(request.inputs["y"], array[:1])
    assert request.binary_output is True  # tritonclient asks for binary when naming no outputs
    assert request.outputs is None


def test_tritonclient_requested_outputs_and_id() -> None:
    array = np.arange(4, dtype=np.float32).reshape(1, 4)
    body, header_length = triton_request(
        [triton_input("x", array, True)],
        outputs=[
            triton.InferRequestedOutput("p", binary_data=False),
            triton.InferRequestedOutput("q"),
        ],
        request_id="abc",
    )
    request = decode_infer_request(body, header_length)
    assert request.id == "abc"
    assert request.binary_output is False
    assert request.outputs == [RequestedOutput("p", False), RequestedOutput("q", True)]


# --- encoding responses ------------------------------------------------------------------


def response_with(outputs: dict[str, np.ndarray], **extra: Any) -> InferResponse:
    return InferResponse(model_name="m", model_version="2", outputs=outputs, **extra)


def test_json_response_layout() -> None:
    response = response_with(
        {"y": np.array([[0.5, 1.5]], dtype=np.float32)}, id="r", parameters={"k": 1}
    )
    body, header_length = encode_infer_response(response)
    assert header_length is None
    assert orjson.loads(body) == {
        "model_name": "m",
        "model_version": "2",
        "id": "r",
        "parameters": {"k": 1},
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [1, 2], "data": [0.5, 1.5]}],
    }


def test_no_id_and_no_parameters_are_left_out() -> None:
    body, _ = encode_infer_response(response_with({"y": np.zeros(1, dtype=np.int32)}))
    assert set(orjson.loads(body)) == {"model_name", "model_version", "outputs"}


def test_fp16_is_written_as_json_numbers() -> None:
    response = response_with({"h": np.array([0.5, 65504], dtype=np.float16)})
    body, _ = encode_infer_response(response)
    assert orjson.loads(body)["outputs"][0]["data"] == [0.5, 65504.0]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("datatype", DATATYPES)
def test_response_round_trips_through_tritonclient_and_back(datatype: str, binary: bool) -> None:
    array = expected_array(datatype, [2, 2])
    response = response_with({"y": array, "z": array[1:]})
    body, header_length = encode_infer_response(response, InferRequest({}, binary_output=binary))
    assert (header_length is not None) == binary
    result = triton.InferResult.from_response_body(body, header_length=header_length)
    for name, expected in response.outputs.items():
        if datatype == "BYTES" and not binary:  # tritonclient leaves JSON strings as str
            expected = np.array([item.decode() for item in expected.ravel()], dtype=object).reshape(
                expected.shape
            )
        assert_same(result.as_numpy(name), expected)
    back = decode_infer_response(body, header_length)
    assert (back.model_name, back.model_version) == ("m", "2")
    for name, expected in response.outputs.items():
        assert_same(back.outputs[name], expected)


def test_requested_outputs_select_and_order_with_per_output_binary() -> None:
    outputs = {
        "a": np.array([1, 2], dtype=np.int32),
        "b": np.array([b"x"], dtype=object),
        "c": np.array([0.5], dtype=np.float64),
    }
    request = InferRequest({}, outputs=[RequestedOutput("c", True), RequestedOutput("a")])
    body, header_length = encode_infer_response(response_with(outputs), request)
    assert header_length is not None
    header = orjson.loads(body[:header_length])
    assert [entry["name"] for entry in header["outputs"]] == ["c", "a"]
    assert header["outputs"][0]["parameters"] == {"binary_data_size": 8}
    assert "data" not in header["outputs"][0]
    assert header["outputs"][1]["data"] == [1, 2]
    assert body[header_length:] == np.array([0.5]).tobytes()
    result = triton.InferResult.from_response_body(body, header_length=header_length)
    assert result.as_numpy("c").tolist() == [0.5]
    assert result.as_numpy("b") is None


def test_unknown_requested_output_is_named() -> None:
    request = InferRequest({}, outputs=[RequestedOutput("nope")])
    with pytest.raises(BadRequest, match="requested output 'nope' is not an output of model 'm'"):
        encode_infer_response(response_with({"y": np.zeros(1)}), request)


def test_non_utf8_bytes_need_binary_output() -> None:
    response = response_with({"raw": np.array([b"\xff\xfe"], dtype=object)})
    with pytest.raises(ModelError, match=r"output 'raw'.*binary_data"):
        encode_infer_response(response)
    body, header_length = encode_infer_response(
        response, InferRequest({}, outputs=[RequestedOutput("raw", binary=True)])
    )
    result = triton.InferResult.from_response_body(body, header_length=header_length)
    assert result.as_numpy("raw").tolist() == [b"\xff\xfe"]


def test_str_and_unicode_arrays_are_bytes_outputs() -> None:
    response = response_with({"u": np.array(["ä", "b"]), "o": np.array(["c"], dtype=object)})
    body, _ = encode_infer_response(response)
    outputs = orjson.loads(body)["outputs"]
    assert [(o["datatype"], o["data"]) for o in outputs] == [
        ("BYTES", ["ä", "b"]),
        ("BYTES", ["c"]),
    ]


def test_unsupported_output_dtype_is_a_model_error() -> None:
    response = response_with({"c": np.array([1j])})
    with pytest.raises(ModelError, match="output 'c'"):
        encode_infer_response(response)


def test_non_contiguous_output_is_written_row_major() -> None:
    array = np.arange(6, dtype=np.int16).reshape(2, 3).T
    for binary in (False, True):
        body, header_length = encode_infer_response(
            response_with({"t": array}), InferRequest({}, binary_output=binary)
        )
        assert_same(decode_infer_response(body, header_length).outputs["t"], array)


# --- the client side ---------------------------------------------------------------------


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_request_round_trip(binary: bool) -> None:
    inputs = {datatype: expected_array(datatype, [2, 2]) for datatype in DATATYPES}
    request = InferRequest(
        inputs,
        id="7",
        parameters={"p": "v"},
        binary_output=True,
        outputs=[RequestedOutput("o", False)],
    )
    body, header_length = encode_infer_request(request, binary=binary)
    assert (header_length is not None) == binary
    back = decode_infer_request(body, header_length)
    for name, array in inputs.items():
        assert_same(back.inputs[name], array)
    assert (back.id, back.parameters, back.binary_output) == ("7", {"p": "v"}, True)
    assert back.outputs == [RequestedOutput("o", False)]


def test_non_utf8_input_goes_binary_even_in_json_mode() -> None:
    request = InferRequest({"t": np.array([b"\xff"], dtype=object), "n": np.ones(2)})
    body, header_length = encode_infer_request(request)
    assert header_length is not None
    header = orjson.loads(body[:header_length])
    assert header["inputs"][0]["parameters"] == {"binary_data_size": 5}
    assert "data" in header["inputs"][1]
    assert_same(decode_infer_request(body, header_length).inputs["t"], request.inputs["t"])


def test_response_null_is_nan_for_floats() -> None:
    body, _ = encode_infer_response(response_with({"f": np.array([np.nan, 1], np.float32)}))
    assert orjson.loads(body)["outputs"][0]["data"] == [None, 1.0]
    decoded = decode_infer_response(body).outputs["f"]
    assert np.isnan(decoded[0])
    assert decoded[1] == 1


def test_response_defaults_and_errors() -> None:
    body = orjson.dumps({"outputs": []})
    response = decode_infer_response(body, model_name="m", model_version="3")
    assert (response.model_name, response.model_version, response.outputs) == ("m", "3", {})
    with pytest.raises(BadRequest, match="the response is an error: 'boom'"):
        decode_infer_response(b'{"error": "boom"}')
    with pytest.raises(BadRequest, match="not valid JSON"):
        decode_infer_response(b"<html>")
    with pytest.raises(BadRequest, match="output 'y': missing 'data'"):
        decode_infer_response(b'{"outputs": [{"name": "y", "datatype": "FP32", "shape": [1]}]}')


def test_metadata() -> None:
    assert server_metadata("1.2") == {
        "name": "failsoft",
        "version": "1.2",
        "extensions": ["binary_tensor_data"],
    }
    spec = TensorSpec(name="x", datatype="FP32", shape=[-1, 4])
    assert model_metadata("m", ["1", "2"], "onnx", [spec], [spec]) == {
        "name": "m",
        "versions": ["1", "2"],
        "platform": "onnx",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
    }


# --- malformed requests ------------------------------------------------------------------

BAD_JSON_REQUESTS: list[tuple[bytes, str]] = [
    (b"{", "the request is not valid JSON"),
    (b"[1]", "the request must be a JSON object, got a list"),
    (b"{}", "the request has no 'inputs'"),
    (b'{"inputs": {}}', "'inputs' must be a non-empty list of tensors, got an object"),
    (b'{"inputs": []}', "'inputs' must be a non-empty list"),
    (request_body(5), r"inputs\[0\] must be an object, got a number"),
    (request_body({"datatype": "FP32"}), r"inputs\[0\] needs a 'name'"),
    (request_body({"name": "x", "shape": [1], "data": [1]}), "input 'x': missing 'datatype'"),
    (request_body({"name": "x", "datatype": "FP32", "data": [1]}), "input 'x': missing 'shape'"),
    (request_body({"name": "x", "datatype": "FP32", "shape": [1]}), "input 'x': missing 'data'"),
    (
        request_body(tensor(datatype="FP33")),
        r"input 'x': unknown datatype 'FP33' \(expected one of BOOL, UINT8, .*BYTES\)",
    ),
    (request_body(tensor(datatype=["FP32"])), "input 'x': unknown datatype"),
    (request_body(tensor(), tensor()), "input 'x' appears more than once"),
    (request_body(tensor(shape=[1, -4])), "input 'x': shape must be a list of non-negative"),
    (request_body(tensor(shape=[1.0, 4])), "input 'x': shape must be a list of non-negative"),
    (request_body(tensor(shape=[True, 4])), "input 'x': shape must be a list of non-negative"),
    (request_body(tensor(shape="1,4")), "input 'x': shape must be a list of non-negative"),
    (request_body(tensor(shape=[1] * 33, data=[1])), "input 'x': shape has 33 dimensions"),
    (
        request_body(tensor(shape=[2, 4], data=[1, 2, 3, 4, 5, 6])),
        r"input 'x': shape \[2, 4\] needs 8 elements, got 6",
    ),
    (request_body(tensor(shape=[2, 2], data=[[1, 2], [3]])), "input 'x': ragged data"),
    (request_body(tensor(shape=[3], data=[1, [2, 3]])), "input 'x': ragged data"),
    (
        request_body(tensor(shape=[1], data=["1.5"])),
        "input 'x': FP32 data must be numbers, got a string '1.5' at index 0",
    ),
    (
        request_body(tensor(shape=[2], data=[1, None])),
        "input 'x': FP32 data must be numbers, got null",
    ),
    (request_body(tensor(shape=[2], data=[1, True])), "FP32 data must be numbers, got a boolean"),
    (
        request_body(tensor(shape=[1], data=[1e39])),
        r"input 'x': value 1e\+39 at index 0 is out of range for FP32",
    ),
    (request_body(tensor(datatype="FP16", shape=[1], data=[70000])), "out of range for FP16"),
    (
        request_body(tensor(datatype="INT32", shape=[2], data=[1, 1.7])),
        "input 'x': INT32 data must be integers, got 1.7 at index 1",
    ),
    (request_body(tensor(datatype="INT8", shape=[1], data=["1"])), "INT8 data must be integers"),
    (
        request_body(tensor(datatype="UINT8", shape=[2], data=[1, 300])),
        r"input 'x': value 300 is out of range for UINT8 \(0..255\)",
    ),
    (request_body(tensor(datatype="UINT8", shape=[1], data=[-1])), "value -1 is out of range"),
    (
        request_body(tensor(datatype="INT64", shape=[1], data=[2**64 - 1])),
        "value 18446744073709551615 is out of range for INT64",
    ),
    (
        request_body(tensor(datatype="UINT64", shape=[2], data=[2**64 - 1, -1])),
        "value -1 is out of range for UINT64",
    ),
    (request_body(tensor(datatype="INT16", shape=[1], data=[1e20])), "out of range for INT16"),
    (
        request_body(tensor(datatype="BOOL", shape=[1], data=[1])),
        "input 'x': BOOL data must be true or false, got a number 1",
    ),
    (
        request_body(tensor(datatype="BYTES", shape=[1], data=[1])),
        "input 'x': BYTES data must be strings, got a number",
    ),
    (
        request_body(tensor(datatype="BYTES", shape=[1], data=[{"b64": "AA=="}])),
        "BYTES data must be strings, got an object",
    ),
    (request_body(tensor(), id=5), "'id' must be a string, got a number"),
    (request_body(tensor(), parameters=[]), "the request: 'parameters' must be an object"),
    (request_body(tensor(parameters="p")), "input 'x': 'parameters' must be an object"),
    (
        request_body(tensor(), parameters={"binary_data_output": 1}),
        "binary_data_output must be true or false",
    ),
    (request_body(tensor(), outputs={"name": "y"}), "'outputs' must be a list"),
    (request_body(tensor(), outputs=["y"]), r"outputs\[0\] must be an object with a 'name'"),
    (
        request_body(tensor(), outputs=[{"name": "y", "parameters": {"binary_data": "yes"}}]),
        "requested output 'y': binary_data must be true or false",
    ),
    (
        request_body(tensor(), outputs=[{"name": "y"}, {"name": "y"}]),
        "requested output 'y' appears more than once",
    ),
    (
        request_body(tensor(), outputs=[{"name": "y", "parameters": {"classification": 2}}]),
        "requested output 'y': parameter 'classification'",
    ),
    (
        request_body(tensor(parameters={"shared_memory_region": "r"})),
        "input 'x': parameter 'shared_memory_region'",
    ),
    (
        request_body(tensor(parameters={"binary_data_size": 16})),
        "input 'x': has both 'data' and parameters.binary_data_size",
    ),
]


@pytest.mark.parametrize(("body", "message"), BAD_JSON_REQUESTS)
def test_bad_requests_are_named(body: bytes, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        decode_infer_request(body)


def binary_body(tail: bytes, *inputs: dict[str, Any]) -> tuple[bytes, int]:
    header = orjson.dumps({"inputs": list(inputs)})
    return header + tail, len(header)


def binary_tensor(
    name: str = "x", datatype: str = "FP32", shape: Any = None, size: Any = 16
) -> dict[str, Any]:
    return {
        "name": name,
        "datatype": datatype,
        "shape": [1, 4] if shape is None else shape,
        "parameters": {"binary_data_size": size},
    }


BAD_BINARY_REQUESTS: list[tuple[tuple[bytes, Any], str]] = [
    ((b"{}", 0), "Inference-Header-Content-Length 0 must be between 1 and the body size 2"),
    ((b"{}", 3), "Inference-Header-Content-Length 3"),
    ((b"{}", -1), "Inference-Header-Content-Length -1"),
    ((b"{}", "2"), "Inference-Header-Content-Length '2'"),
    (
        (request_body(binary_tensor()), None),
        "input 'x': has binary_data_size but there is no binary data",
    ),
    (
        binary_body(b"\0" * 16, binary_tensor(size=None)),
        "input 'x': binary_data_size must be a non-negative integer, got None",
    ),
    (binary_body(b"\0" * 16, binary_tensor(size=-16)), "binary_data_size must be a non-negative"),
    (
        binary_body(b"\0" * 8, binary_tensor()),
        "input 'x': binary_data_size 16 is more than the 8 bytes of binary data left",
    ),
    (
        binary_body(b"\0" * 20, binary_tensor()),
        "20 bytes of binary data after the JSON, but the binary_data_size values add up to 16",
    ),
    (binary_body(b"\0" * 4, tensor()), "4 bytes of binary data .* add up to 0"),
    (
        binary_body(b"\0" * 10, binary_tensor(size=10)),
        r"input 'x': binary_data_size 10 is not a multiple of 4 \(FP32 element size\)",
    ),
    (
        binary_body(b"\0" * 12, binary_tensor(size=12)),
        r"input 'x': shape \[1, 4\] needs 4 elements, got 3 \(12 bytes\)",
    ),
    (
        binary_body(b"\0\2", binary_tensor(datatype="BOOL", shape=[2], size=2)),
        "input 'x': BOOL binary data must hold only bytes 0 and 1",
    ),
    (
        binary_body(b"\3\0\0\0ab", binary_tensor(datatype="BYTES", shape=[1], size=6)),
        "input 'x': malformed BYTES binary data: element 0 declares 3 bytes, 2 left",
    ),
    (
        binary_body(b"\1\0\0\0a\0\0", binary_tensor(datatype="BYTES", shape=[2], size=7)),
        "input 'x': malformed BYTES binary data: 2 trailing bytes",
    ),
    (
        binary_body(b"\1\0\0\0a", binary_tensor(datatype="BYTES", shape=[2], size=5)),
        "input 'x': shape needs 2 elements, the BYTES binary data holds 1",
    ),
]


@pytest.mark.parametrize(("body_and_length", "message"), BAD_BINARY_REQUESTS)
def test_bad_binary_requests_are_named(body_and_length: tuple[bytes, Any], message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        decode_infer_request(*body_and_length)


def test_zero_size_tensor_with_huge_dimension_is_a_bad_request() -> None:
    with pytest.raises(BadRequest, match="input 'x': shape"):
        decode_infer_request(request_body(tensor(shape=[0, 2**62, 2**62], data=[])))


def test_binary_inputs_are_read_only_views() -> None:
    body, header_length = binary_body(np.ones(4, np.float32).tobytes(), binary_tensor())
    array = decode_infer_request(body, header_length).inputs["x"]
    assert not array.flags.writeable
