"""The decoders either return well-formed tensors or raise BadRequest, whatever they are fed."""

from __future__ import annotations

import contextlib
import math
import struct
from typing import Any

import numpy as np
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from failsoft.config import TensorSpec
from failsoft.errors import BadRequest
from failsoft.protocol.datatypes import DATATYPE_TO_DTYPE, DATATYPES
from failsoft.protocol.v1 import decode_predict_request
from failsoft.protocol.v2 import decode_infer_request, decode_infer_response

FUZZ = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

INT64_MIN, UINT64_MAX = -(2**63), 2**64 - 1
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(INT64_MIN, UINT64_MAX)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=12,
)


# True about one time in ten. Not 0 or 9: hypothesis favours the bounds of a range.
rarely = st.integers(0, 9).map(lambda roll: roll == 5)


def mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``good`` nine times in ten, so that near-valid input reaches the deep checks."""
    return rarely.flatmap(lambda bad_now: bad if bad_now else good)


names = mostly(st.sampled_from(["x", "y", "z"]), st.text(max_size=3) | json_scalars)
datatypes = mostly(st.sampled_from(DATATYPES), st.sampled_from(["FP33", "fp32", ""]) | json_scalars)


def elements_of(datatype: Any) -> st.SearchStrategy[Any]:
    """Mostly plausible values for the datatype, sometimes any JSON value."""
    plausible: st.SearchStrategy[Any]
    if datatype == "BOOL":
        plausible = st.booleans()
    elif datatype == "BYTES":
        plausible = st.text(max_size=6)
    elif datatype in ("FP16", "FP32", "FP64"):
        plausible = st.floats(allow_nan=False, allow_infinity=False) | st.integers(-9, 9)
    else:
        plausible = (
            st.integers(-300, 300)
            | st.integers(INT64_MIN, UINT64_MAX)
            | st.floats(-1e20, 1e20).map(float.__floor__).map(float)
        )
    return mostly(plausible, json_scalars)


@st.composite
def binary_chunks(draw: st.DrawFn, datatype: Any, count: int) -> bytes:
    if datatype == "BYTES":
        items = draw(st.lists(st.binary(max_size=5), min_size=count, max_size=count))
        chunk = b"".join(struct.pack("<I", len(item)) + item for item in items)
    else:
        dtype = DATATYPE_TO_DTYPE.get(datatype) if isinstance(datatype, str) else None
        itemsize = dtype.itemsize if dtype is not None else 4
        chunk = draw(st.binary(min_size=count * itemsize, max_size=count * itemsize))
    cut = draw(st.sampled_from([0, 0, 0, 1, 3]))  # sometimes a truncated chunk
    return chunk[: len(chunk) - cut] if cut <= len(chunk) else chunk


@st.composite
def tensors(draw: st.DrawFn, tail: list[bytes]) -> Any:
    """A near-valid tensor; binary data is appended to ``tail``."""
    datatype = draw(datatypes)
    shape = draw(
        mostly(
            st.lists(st.integers(0, 3), max_size=3),
            st.lists(st.integers(-2, 3) | json_scalars, max_size=3) | json_values,
        )
    )
    valid_shape = isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)
    count = math.prod(shape) if valid_shape else 0
    if not valid_shape or count > 64:  # a shape like [2**63] gets a few elements only
        count = draw(st.integers(0, 4))
    count = max(0, count + draw(st.sampled_from([0, 0, 0, 0, -1, 1])))
    entry: dict[str, Any] = {"name": draw(names), "datatype": datatype, "shape": shape}
    if draw(st.booleans()):
        chunk = draw(binary_chunks(datatype, count))
        tail.append(chunk)
        size = len(chunk) + draw(st.sampled_from([0, 0, 0, 0, -1, 2]))
        entry["parameters"] = {"binary_data_size": draw(mostly(st.just(size), json_scalars))}
    else:
        data = draw(st.lists(elements_of(datatype), min_size=count, max_size=count))
        nestable = valid_shape and len(shape) > 1 and shape[-1] and count == math.prod(shape)
        if nestable and draw(st.booleans()):
            data = [data[i : i + shape[-1]] for i in range(0, count, shape[-1])]
        entry["data"] = draw(mostly(st.just(data), json_values))
    for key in draw(mostly(st.just([]), st.lists(st.sampled_from(list(entry)), max_size=1))):
        del entry[key]
    return entry


@st.composite
def v2_bodies(draw: st.DrawFn, key: str = "inputs") -> tuple[bytes, int | None]:
    """A near-valid request, or with ``key="outputs"`` a near-valid response."""
    tail: list[bytes] = []
    message: dict[str, Any] = {key: draw(st.lists(tensors(tail), min_size=1, max_size=3))}
    if key == "inputs" and draw(st.booleans()):
        message["outputs"] = draw(
            mostly(
                st.lists(
                    st.fixed_dictionaries(
                        {"name": names},
                        optional={
                            "parameters": st.fixed_dictionaries(
                                {}, optional={"binary_data": mostly(st.booleans(), json_scalars)}
                            )
                        },
                    ),
                    max_size=2,
                ),
                json_values,
            )
        )
    if draw(st.booleans()):
        message["id"] = draw(mostly(st.text(max_size=4), json_scalars))
    if draw(st.booleans()):
        message["parameters"] = draw(
            mostly(
                st.fixed_dictionaries({}, optional={"binary_data_output": st.booleans()}),
                json_values,
            )
        )
    header = orjson.dumps(message)
    header_length = len(header) if tail else None
    if draw(rarely):
        header_length = draw(st.none() | st.integers(-1, len(header) + 4))
    return header + b"".join(tail), header_length


def declared_tensors(body: bytes, header_length: int | None, key: str) -> dict[Any, Any]:
    header = orjson.loads(body[:header_length] if header_length else body)
    return {entry["name"]: entry for entry in header[key]}


def assert_well_formed(tensors: dict[str, np.ndarray], declared: dict[Any, Any]) -> None:
    for name, array in tensors.items():
        entry = declared[name]
        assert isinstance(array, np.ndarray)
        assert array.dtype == DATATYPE_TO_DTYPE[entry["datatype"]]
        assert list(array.shape) == entry["shape"]
        if entry["datatype"] == "BYTES":
            assert all(type(item) is bytes for item in array.ravel())


def check_v2_request(body: bytes, header_length: int | None) -> None:
    try:
        request = decode_infer_request(body, header_length)
    except BadRequest:
        return
    assert_well_formed(request.inputs, declared_tensors(body, header_length, "inputs"))


def check_v2_response(body: bytes, header_length: int | None) -> None:
    try:
        response = decode_infer_response(body, header_length)
    except BadRequest:
        return
    assert_well_formed(response.outputs, declared_tensors(body, header_length, "outputs"))


@FUZZ
@given(st.binary(max_size=200), st.none() | st.integers(-2, 210))
def test_v2_arbitrary_bytes(body: bytes, header_length: int | None) -> None:
    check_v2_request(body, header_length)


@FUZZ
@given(v2_bodies())
def test_v2_near_valid_requests(body_and_length: tuple[bytes, int | None]) -> None:
    check_v2_request(*body_and_length)


@FUZZ
@given(v2_bodies(key="outputs"))
def test_v2_near_valid_responses(body_and_length: tuple[bytes, int | None]) -> None:
    check_v2_response(*body_and_length)


@FUZZ
@given(st.binary(max_size=200))
def test_v1_arbitrary_bytes(body: bytes) -> None:
    spec = TensorSpec(name="x", datatype="FP32", shape=[-1])
    with contextlib.suppress(BadRequest):
        decode_predict_request(body, [spec])


specs = st.lists(
    st.builds(
        TensorSpec,
        name=st.sampled_from(["a", "b", "c"]),
        datatype=st.sampled_from(DATATYPES),
        shape=st.just([-1]),
    ),
    min_size=1,
    max_size=3,
    unique_by=lambda spec: spec.name,
)


@st.composite
def v1_requests(draw: st.DrawFn) -> tuple[bytes, list[TensorSpec]]:
    inputs = draw(specs)
    rows = st.lists(elements_of(inputs[0].datatype), min_size=2, max_size=2)
    row = mostly(elements_of(inputs[0].datatype) | rows, json_values)
    if len(inputs) > 1 or draw(st.booleans()):
        row = mostly(
            st.fixed_dictionaries({spec.name: elements_of(spec.datatype) for spec in inputs}),
            st.fixed_dictionaries({}, optional={"extra": json_values, "a": json_values}),
        )
    instances = draw(mostly(st.lists(row, min_size=1, max_size=3), json_values))
    key = draw(mostly(st.sampled_from(["instances", "inputs"]), st.just("rows")))
    return orjson.dumps({key: instances}), inputs


@FUZZ
@given(v1_requests())
def test_v1_near_valid_requests(request_and_inputs: tuple[bytes, list[TensorSpec]]) -> None:
    body, inputs = request_and_inputs
    try:
        request = decode_predict_request(body, inputs)
    except BadRequest:
        return
    rows = next(iter(orjson.loads(body).values()))
    assert set(request.inputs) == {spec.name for spec in inputs}
    for spec in inputs:
        array = request.inputs[spec.name]
        assert array.dtype == DATATYPE_TO_DTYPE[spec.datatype]
        assert array.shape[0] == len(rows)
