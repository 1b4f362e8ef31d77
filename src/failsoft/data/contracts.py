"""Input and output contracts: requests and answers must match the declared tensors.

Input violations are the client's (``data``, 400) and name the tensor and
the problem. Output violations are the model's (``logic``): a 200 with the
wrong tensors is a failure, never a success.
"""

from __future__ import annotations

from collections.abc import Sequence

from failsoft.config import TensorSpec
from failsoft.errors import BadRequest, ModelError
from failsoft.protocol.datatypes import DATATYPE_TO_DTYPE, datatype_of
from failsoft.protocol.types import InferRequest, Tensors


def _shape_matches(shape: tuple[int, ...], declared: Sequence[int]) -> bool:
    return len(shape) == len(declared) and all(
        want in (-1, got) for got, want in zip(shape, declared, strict=True)
    )


def _show(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def check_request(
    request: InferRequest, inputs: list[TensorSpec], outputs: list[TensorSpec]
) -> None:
    """Raise BadRequest unless the request carries exactly the declared inputs."""
    declared = {spec.name: spec for spec in inputs}
    for name, array in request.inputs.items():
        spec = declared.get(name)
        if spec is None:
            raise BadRequest(f"unknown input {name!r} (the model takes {sorted(declared)})")
        datatype = datatype_of(array)
        if datatype != spec.datatype:
            raise BadRequest(
                f"input {name!r}: datatype {datatype} does not match the model's {spec.datatype}"
            )
        if not _shape_matches(array.shape, spec.shape):
            raise BadRequest(
                f"input {name!r}: shape {_show(array.shape)} does not match the model's "
                f"{_show(spec.shape)} (-1 means any size)"
            )
    missing = [name for name in declared if name not in request.inputs]
    if missing:
        raise BadRequest(f"missing input(s) {missing}")
    if request.outputs is not None:
        known = {spec.name for spec in outputs}
        for requested in request.outputs:
            if requested.name not in known:
                raise BadRequest(
                    f"unknown output {requested.name!r} requested (the model has {sorted(known)})"
                )


def check_outputs(outputs: Tensors, declared: list[TensorSpec]) -> Tensors:
    """The declared outputs, in declared order; ModelError if any is missing or malformed."""
    checked: Tensors = {}
    for spec in declared:
        array = outputs.get(spec.name)
        if array is None:
            raise ModelError(f"the model did not return output {spec.name!r}")
        if array.dtype != DATATYPE_TO_DTYPE[spec.datatype] and not (
            spec.datatype == "BYTES" and array.dtype.kind in ("U", "S", "O")
        ):
            raise ModelError(
                f"output {spec.name!r}: datatype {array.dtype} does not match the declared "
                f"{spec.datatype}"
            )
        if not _shape_matches(array.shape, spec.shape):
            raise ModelError(
                f"output {spec.name!r}: shape {_show(array.shape)} does not match the declared "
                f"{_show(spec.shape)}"
            )
        checked[spec.name] = array
    return checked


__all__ = ["check_outputs", "check_request"]
