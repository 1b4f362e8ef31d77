"""KServe V1 (``:predict``) codec: rows of instances in, rows of predictions out.

``{"instances": [row, ...]}`` (or ``{"inputs": [row, ...]}``). With one declared
input a row is that input's value for one instance; otherwise (or when rows
are objects) a row is ``{input_name: value}``. Each input becomes an array of
its declared datatype and shape ``[n_instances, *row_shape]``, with the same
strict rules as V2.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from failsoft.errors import BadRequest, ModelError
from failsoft.protocol._arrays import (
    build_array,
    json_kind,
    load_json_object,
    output_datatype,
    to_json,
    utf8_strings,
)
from failsoft.protocol.spec import TensorSpec
from failsoft.protocol.types import InferRequest, InferResponse

__all__ = ["decode_predict_request", "encode_predict_response"]


def decode_predict_request(body: bytes, inputs: list[TensorSpec]) -> InferRequest:
    """Parse a V1 predict request against the model's declared inputs; raises BadRequest."""
    instances = _instances(load_json_object(body, "request"))
    if len(inputs) == 1 and type(instances[0]) is not dict:
        columns = {inputs[0].name: instances}
    else:
        columns = _columns(instances, [spec.name for spec in inputs])
    return InferRequest(
        inputs={
            spec.name: build_array(f"input '{spec.name}'", spec.datatype, None, columns[spec.name])
            for spec in inputs
        }
    )


def encode_predict_response(response: InferResponse) -> bytes:
    """``{"predictions": [...]}``: one value per row, or ``{output_name: value}`` per row."""
    if not response.outputs:
        raise ModelError(f"model '{response.model_name}' returned no outputs")
    if len(response.outputs) == 1:
        ((name, array),) = response.outputs.items()
        predictions = _rows(name, array)
    else:
        predictions = _row_objects(response.outputs)
    return orjson.dumps({"predictions": predictions}, option=orjson.OPT_SERIALIZE_NUMPY)


def _instances(request: dict[str, Any]) -> list[Any]:
    keys = [key for key in ("instances", "inputs") if key in request]
    if not keys:
        raise BadRequest("the request needs 'instances': a list with one row per instance")
    if len(keys) > 1:
        raise BadRequest("the request has both 'instances' and 'inputs'; send one of them")
    key = keys[0]
    instances = request[key]
    if type(instances) is dict and key == "inputs":
        raise BadRequest(
            "columnar 'inputs' (an object of columns) is not supported; send "
            "'instances' as a list of rows"
        )
    if type(instances) is not list:
        raise BadRequest(f"'{key}' must be a list of rows, got {json_kind(instances)}")
    if not instances:
        raise BadRequest(f"'{key}' is empty: send at least one instance")
    return instances


def _columns(instances: list[Any], names: list[str]) -> dict[str, list[Any]]:
    columns: dict[str, list[Any]] = {name: [] for name in names}
    for index, instance in enumerate(instances):
        if type(instance) is not dict:
            raise BadRequest(
                f"instance {index} must be an object with the inputs "
                f"{', '.join(names)}; got {json_kind(instance)}"
            )
        if instance.keys() != columns.keys():
            _explain_keys(index, instance, names)
        for name, column in columns.items():
            column.append(instance[name])
    return columns


def _explain_keys(index: int, instance: dict[str, Any], names: list[str]) -> None:
    missing = [name for name in names if name not in instance]
    if missing:
        raise BadRequest(f"instance {index}: missing input '{missing[0]}'")
    unknown = next(key for key in instance if key not in names)
    raise BadRequest(f"instance {index}: unknown input '{unknown}' (inputs: {', '.join(names)})")


def _rows(name: str, array: np.ndarray) -> Any:
    """An output as JSON rows: a numpy array orjson serializes, or nested lists of str."""
    where = f"output '{name}'"
    if array.ndim == 0:
        array = array.reshape(1)
    if output_datatype(where, array) != "BYTES":
        return to_json(array, flat=False)
    strings = utf8_strings(where, array)
    if strings is None:
        raise ModelError(
            f"{where} holds BYTES that are not valid UTF-8, which V1 JSON cannot "
            "carry; call the model over V2 and request the output as binary data"
        )
    return np.array(strings, dtype=np.object_).reshape(array.shape).tolist()


def _row_objects(outputs: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    columns: dict[str, list[Any]] = {}
    for name, array in outputs.items():
        rows = _rows(name, array)
        columns[name] = rows.tolist() if isinstance(rows, np.ndarray) else rows
    lengths = {name: len(rows) for name, rows in columns.items()}
    if len(set(lengths.values())) > 1:
        raise ModelError(
            f"outputs have different numbers of rows {lengths}, so they cannot be "
            "returned as V1 predictions"
        )
    return [
        dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)
    ]
