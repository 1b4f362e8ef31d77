"""Open Inference Protocol (KServe V2) REST codec, with Triton's binary tensor data extension.

A body is either pure JSON, or a JSON header of ``Inference-Header-Content-Length``
bytes followed by the raw data of every tensor whose ``parameters`` carry a
``binary_data_size``, in the order the tensors are listed. Numbers are raw
little-endian values; a BYTES element is a 4-byte little-endian length and
its bytes.

Requests are decoded strictly (see ``_arrays``): every error is a
``BadRequest`` that names the tensor and the problem.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from failsoft.errors import BadRequest, ModelError
from failsoft.protocol._arrays import (
    build_array,
    from_binary,
    json_kind,
    load_json_object,
    output_datatype,
    parse_datatype,
    parse_shape,
    to_binary,
    to_json,
    utf8_strings,
)
from failsoft.protocol.spec import TensorSpec
from failsoft.protocol.types import InferRequest, InferResponse, RequestedOutput, Tensors

__all__ = [
    "decode_infer_request",
    "decode_infer_response",
    "encode_infer_request",
    "encode_infer_response",
    "model_metadata",
    "server_metadata",
]

_UNSUPPORTED_PARAMETERS = {
    "shared_memory_region": "the shared memory extension is not supported",
    "classification": "the classification extension is not supported",
}


class _BinaryTail:
    """The binary data after the JSON header, handed out tensor by tensor."""

    __slots__ = ("data", "position")

    def __init__(self, data: memoryview | None) -> None:
        self.data = data
        self.position = 0

    def take(self, where: str, size: Any) -> memoryview:
        if type(size) is not int or size < 0:
            raise BadRequest(
                f"{where}: binary_data_size must be a non-negative integer, got {size!r}"
            )
        if self.data is None:
            raise BadRequest(
                f"{where}: has binary_data_size but there is no binary data "
                "after the JSON (Inference-Header-Content-Length is missing)"
            )
        left = len(self.data) - self.position
        if size > left:
            raise BadRequest(
                f"{where}: binary_data_size {size} is more than the {left} "
                "bytes of binary data left in the body"
            )
        chunk = self.data[self.position : self.position + size]
        self.position += size
        return chunk

    def finish(self) -> None:
        if self.data is not None and self.position != len(self.data):
            raise BadRequest(
                f"the body has {len(self.data)} bytes of binary data after the "
                f"JSON, but the binary_data_size values add up to {self.position}"
            )


def decode_infer_request(body: bytes, header_length: int | None = None) -> InferRequest:
    """Parse a V2 inference request into numpy inputs; raises BadRequest."""
    header, tail = _split_body(body, header_length)
    request = load_json_object(header, "request")
    if "inputs" not in request:
        raise BadRequest("the request has no 'inputs'")
    inputs = request["inputs"]
    if type(inputs) is not list or not inputs:
        raise BadRequest(f"'inputs' must be a non-empty list of tensors, got {json_kind(inputs)}")
    tensors = _decode_tensors("input", inputs, tail, null_as_nan=False)
    parameters = _parameters(request.get("parameters"), "the request")
    binary_output = parameters.pop("binary_data_output", False)
    if type(binary_output) is not bool:
        raise BadRequest(
            f"parameters.binary_data_output must be true or false, got {binary_output!r}"
        )
    return InferRequest(
        inputs=tensors,
        id=_id(request),
        parameters=parameters,
        outputs=_requested_outputs(request.get("outputs"), binary_output),
        binary_output=binary_output,
    )


def encode_infer_response(
    response: InferResponse, request: InferRequest | None = None
) -> tuple[bytes, int | None]:
    """The V2 body for a response and its header length (None when the body is pure JSON).

    Only the outputs ``request`` names are written, in its order; a BYTES output
    that is not UTF-8 can only travel as binary data (ModelError otherwise).
    """
    entries, chunks = [], []
    for name, array, binary in _selected_outputs(response, request):
        entry, chunk = _encode_tensor("output", name, array, binary, utf8_fallback=False)
        entries.append(entry)
        if chunk is not None:
            chunks.append(chunk)
    header: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
    }
    if response.id is not None:
        header["id"] = response.id
    if response.parameters:
        header["parameters"] = response.parameters
    header["outputs"] = entries
    return _join(header, chunks)


def encode_infer_request(request: InferRequest, binary: bool = False) -> tuple[bytes, int | None]:
    """The V2 body for a request (client side); with ``binary`` all inputs go as binary data.

    In JSON mode a BYTES input that is not UTF-8 still goes as binary data,
    since JSON cannot carry it.
    """
    entries, chunks = [], []
    for name, array in request.inputs.items():
        entry, chunk = _encode_tensor("input", name, array, binary, utf8_fallback=True)
        entries.append(entry)
        if chunk is not None:
            chunks.append(chunk)
    header: dict[str, Any] = {}
    if request.id is not None:
        header["id"] = request.id
    parameters = dict(request.parameters)
    if request.binary_output:
        parameters["binary_data_output"] = True
    if parameters:
        header["parameters"] = parameters
    header["inputs"] = entries
    if request.outputs is not None:
        header["outputs"] = [
            {"name": output.name, "parameters": {"binary_data": output.binary}}
            for output in request.outputs
        ]
    return _join(header, chunks)


def decode_infer_response(
    body: bytes, header_length: int | None = None, model_name: str = "", model_version: str = ""
) -> InferResponse:
    """Parse a V2 response (client side); raises BadRequest on anything malformed.

    ``model_name`` and ``model_version`` are used when the response omits them.
    A null in float data is read as NaN: JSON encoders write NaN that way.
    """
    header, tail = _split_body(body, header_length)
    response = load_json_object(header, "response")
    outputs = response.get("outputs")
    if type(outputs) is not list:
        if "error" in response:
            raise BadRequest(f"the response is an error: {response['error']!r}")
        raise BadRequest(
            f"the response needs 'outputs', a list of tensors; got {json_kind(outputs)}"
        )
    return InferResponse(
        model_name=_optional_str(response, "model_name") or model_name,
        model_version=_optional_str(response, "model_version") or model_version,
        outputs=_decode_tensors("output", outputs, tail, null_as_nan=True),
        id=_id(response),
        parameters=_parameters(response.get("parameters"), "the response"),
    )


def server_metadata(version: str) -> dict[str, Any]:
    return {"name": "failsoft", "version": version, "extensions": ["binary_tensor_data"]}


def model_metadata(
    name: str,
    versions: list[str],
    platform: str,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
) -> dict[str, Any]:
    return {
        "name": name,
        "versions": list(versions),
        "platform": platform,
        "inputs": [_spec_metadata(spec) for spec in inputs],
        "outputs": [_spec_metadata(spec) for spec in outputs],
    }


def _spec_metadata(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}


def _split_body(body: bytes, header_length: int | None) -> tuple[memoryview, _BinaryTail]:
    view = memoryview(body)
    if header_length is None:
        return view, _BinaryTail(None)
    if type(header_length) is not int or not 0 < header_length <= len(body):
        raise BadRequest(
            f"Inference-Header-Content-Length {header_length!r} must be between 1 "
            f"and the body size {len(body)}"
        )
    return view[:header_length], _BinaryTail(view[header_length:])


def _decode_tensors(kind: str, items: list[Any], tail: _BinaryTail, null_as_nan: bool) -> Tensors:
    tensors: Tensors = {}
    for index, item in enumerate(items):
        name, array = _decode_tensor(kind, index, item, tail, null_as_nan)
        if name in tensors:
            raise BadRequest(f"{kind} '{name}' appears more than once")
        tensors[name] = array
    tail.finish()
    return tensors


def _decode_tensor(
    kind: str, index: int, item: Any, tail: _BinaryTail, null_as_nan: bool
) -> tuple[str, np.ndarray]:
    if type(item) is not dict:
        raise BadRequest(f"{kind}s[{index}] must be an object, got {json_kind(item)}")
    name = item.get("name")
    if type(name) is not str or not name:
        raise BadRequest(f"{kind}s[{index}] needs a 'name' (a non-empty string)")
    where = f"{kind} '{name}'"
    for key in ("datatype", "shape"):
        if key not in item:
            raise BadRequest(f"{where}: missing '{key}'")
    datatype = parse_datatype(where, item["datatype"])
    shape = parse_shape(where, item["shape"])
    parameters = _parameters(item.get("parameters"), where)
    if "binary_data_size" in parameters:
        if "data" in item:
            raise BadRequest(f"{where}: has both 'data' and parameters.binary_data_size")
        chunk = tail.take(where, parameters["binary_data_size"])
        return name, from_binary(where, datatype, shape, chunk)
    if "data" not in item:
        raise BadRequest(
            f"{where}: missing 'data' (or parameters.binary_data_size for binary data)"
        )
    return name, build_array(where, datatype, shape, item["data"], null_as_nan=null_as_nan)


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if type(value) is not dict:
        raise BadRequest(f"{where}: 'parameters' must be an object, got {json_kind(value)}")
    for key, problem in _UNSUPPORTED_PARAMETERS.items():
        if key in value:
            raise BadRequest(f"{where}: parameter '{key}': {problem}")
    return value


def _requested_outputs(value: Any, default_binary: bool) -> list[RequestedOutput] | None:
    """The named outputs, each with ``binary_data`` resolved against the request default.

    An absent, null or empty 'outputs' means all outputs.
    """
    if value is None or value == []:
        return None
    if type(value) is not list:
        raise BadRequest(
            f"'outputs' must be a list of {{name, parameters}} objects, got {json_kind(value)}"
        )
    requested: dict[str, RequestedOutput] = {}
    for index, item in enumerate(value):
        name = item.get("name") if type(item) is dict else None
        if type(name) is not str or not name:
            raise BadRequest(
                f"outputs[{index}] must be an object with a 'name' (a non-empty string)"
            )
        where = f"requested output '{name}'"
        binary = _parameters(item.get("parameters"), where).get("binary_data", default_binary)
        if type(binary) is not bool:
            raise BadRequest(f"{where}: binary_data must be true or false, got {binary!r}")
        if name in requested:
            raise BadRequest(f"{where} appears more than once")
        requested[name] = RequestedOutput(name, binary)
    return list(requested.values())


def _id(message: dict[str, Any]) -> str | None:
    value = message.get("id")
    if value is not None and type(value) is not str:
        raise BadRequest(f"'id' must be a string, got {json_kind(value)}")
    return value


def _optional_str(message: dict[str, Any], key: str) -> str | None:
    value = message.get(key)
    if value is not None and type(value) is not str:
        raise BadRequest(f"'{key}' must be a string, got {json_kind(value)}")
    return value


def _selected_outputs(
    response: InferResponse, request: InferRequest | None
) -> list[tuple[str, np.ndarray, bool]]:
    if request is None or request.outputs is None:
        binary = request is not None and request.binary_output
        return [(name, array, binary) for name, array in response.outputs.items()]
    selected = []
    for requested in request.outputs:
        array = response.outputs.get(requested.name)
        if array is None:
            raise BadRequest(
                f"requested output '{requested.name}' is not an output of model "
                f"'{response.model_name}' (outputs: {', '.join(response.outputs)})"
            )
        selected.append((requested.name, array, requested.binary))
    return selected


def _encode_tensor(
    kind: str, name: str, array: np.ndarray, binary: bool, utf8_fallback: bool
) -> tuple[dict[str, Any], bytes | None]:
    where = f"{kind} '{name}'"
    datatype = output_datatype(where, array)
    entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
    if not binary:
        data = utf8_strings(where, array) if datatype == "BYTES" else to_json(array, flat=True)
        if data is not None:
            entry["data"] = data
            return entry, None
        if not utf8_fallback:
            raise ModelError(
                f"{where} holds BYTES that are not valid UTF-8, which JSON cannot "
                'carry; request it with parameters {"binary_data": true}'
            )
    chunk = to_binary(where, array, datatype)
    entry["parameters"] = {"binary_data_size": len(chunk)}
    return entry, chunk


def _join(header: dict[str, Any], chunks: list[bytes]) -> tuple[bytes, int | None]:
    try:
        encoded = orjson.dumps(header, option=orjson.OPT_SERIALIZE_NUMPY)
    except orjson.JSONEncodeError as error:
        raise ModelError(f"cannot encode the message as JSON: {error}") from None
    if not chunks:
        return encoded, None
    return b"".join([encoded, *chunks]), len(encoded)
