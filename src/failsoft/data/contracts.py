"""Input and output contracts: requests and answers must match the declared tensors.

Input violations are the client's (``data``, 400) and name the tensor and
the problem. Output violations are the model's (``logic``): a 200 with the
wrong tensors, NaN, values outside the declared range or label set is a
failure, retried or fallen back, never a success.

Each declared tensor is compiled once into a ``TensorContract`` so the
per-request checks are a few comparisons.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from failsoft.errors import BadRequest, ContractViolation, FailsoftError
from failsoft.protocol.datatypes import DATATYPE_TO_DTYPE, datatype_of
from failsoft.protocol.types import InferRequest, Tensors

if TYPE_CHECKING:
    from failsoft.protocol.spec import TensorSpec

_SMALL = 64  # below this many elements a Python set beats np.isin


def _show(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


class TensorContract:
    __slots__ = (
        "_finite",
        "_fixed",
        "_labels",
        "_labels_array",
        "_range",
        "_rank",
        "batched",
        "dtype",
        "spec",
    )

    def __init__(self, spec: TensorSpec) -> None:
        self.spec = spec
        self.dtype = DATATYPE_TO_DTYPE[spec.datatype]
        self._fixed = tuple((axis, size) for axis, size in enumerate(spec.shape) if size != -1)
        self._rank = len(spec.shape)
        self.batched = bool(spec.shape) and spec.shape[0] == -1
        self._finite = spec.datatype in ("FP16", "FP32", "FP64") and not spec.allow_nan
        self._range = spec.range
        self._labels: frozenset[object] | None = None
        self._labels_array: np.ndarray | None = None
        if spec.labels is not None:
            if spec.datatype == "BYTES":
                values: list[object] = [
                    v.encode() if isinstance(v, str) else str(v).encode() for v in spec.labels
                ]
            else:
                values = [int(v) for v in spec.labels if not isinstance(v, str)]
            self._labels = frozenset(values)
            self._labels_array = np.array(
                values, dtype=object if spec.datatype == "BYTES" else None
            )

    def shape_ok(self, shape: tuple[int, ...]) -> bool:
        if len(shape) != self._rank:
            return False
        for axis, size in self._fixed:  # noqa: SIM110 - a plain loop beats all() on a genexpr here
            if shape[axis] != size:
                return False
        return True

    def value_problem(self, array: np.ndarray) -> str | None:
        """What is wrong with the values, or None."""
        size = array.size
        if size == 0:
            return None
        if self._finite and not _all_finite(array, size):
            return "contains NaN or infinity"
        if self._range is not None:
            low, high = self._range
            smallest, largest = array.min(), array.max()
            if smallest < low or largest > high:
                bad = (smallest if smallest < low else largest).item()
                return f"value {bad} is outside the declared range [{low:g}, {high:g}]"
        if self._labels is not None:
            return self._label_problem(array)
        return None

    def _label_problem(self, array: np.ndarray) -> str | None:
        assert self._labels is not None
        assert self._labels_array is not None
        if array.size <= _SMALL:
            for value in array.ravel().tolist():
                if value not in self._labels:
                    return f"value {value!r} is not one of the declared labels"
            return None
        known = np.isin(array, self._labels_array)
        if not known.all():
            unknown = array.ravel()[~known.ravel()][0]
            return f"value {unknown.item()!r} is not one of the declared labels"
        return None


class ModelContract:
    """The declared inputs and outputs of one model, compiled."""

    def __init__(
        self, inputs: list[TensorSpec], outputs: list[TensorSpec], max_batch: int | None = None
    ) -> None:
        self.max_batch = max_batch
        self.inputs = {spec.name: TensorContract(spec) for spec in inputs}
        self.outputs = [TensorContract(spec) for spec in outputs]
        self._output_names = frozenset(spec.name for spec in outputs)
        self._batch_first = all(contract.batched for contract in self.inputs.values())

    def batch_rows(self, request: InferRequest) -> int | None:
        """The request's batch size, when every declared input is batch-first (shape [-1, ...])."""
        if self._batch_first:
            for array in request.inputs.values():
                return int(array.shape[0]) if array.ndim else None
        return None

    def check_request(self, request: InferRequest) -> int:
        """The request's rows (its batch size); BadRequest unless it carries the declared inputs.

        Every batch-first input (declared shape [-1, ...]) must have the same
        number of rows: they are what tenant quotas charge. A model with no
        batch-first input takes one row per request.
        """
        rows: int | None = None
        batched_name = ""
        for name, array in request.inputs.items():
            contract = self.inputs.get(name)
            if contract is None:
                raise BadRequest(f"unknown input {name!r} (the model takes {sorted(self.inputs)})")
            if array.dtype != contract.dtype and _widens(array.dtype, contract.dtype):
                # An older client's narrower type (schema evolution): converted exactly.
                array = request.inputs[name] = array.astype(contract.dtype)
                request.raw = None  # a proxy must not forward the old body
            _check(contract, array, "input", BadRequest, "the model's")
            if not (contract.batched and array.ndim):
                continue
            size = int(array.shape[0])
            if self.max_batch is not None and size > self.max_batch:
                raise BadRequest(
                    f"input {name!r}: a batch of {size} rows is over the model's "
                    f"max_batch_size of {self.max_batch}; split it"
                )
            if rows is None:
                rows, batched_name = size, name
            elif size != rows:
                raise BadRequest(
                    f"inputs {batched_name!r} and {name!r} have {rows} and {size} rows: "
                    "every input of a request has the same batch size"
                )
        if len(request.inputs) != len(self.inputs):
            missing = [name for name in self.inputs if name not in request.inputs]
            raise BadRequest(f"missing input(s) {missing}")
        if request.outputs is not None:
            for requested in request.outputs:
                if requested.name not in self._output_names:
                    raise BadRequest(
                        f"unknown output {requested.name!r} requested "
                        f"(the model has {sorted(self._output_names)})"
                    )
        return 1 if rows is None else rows

    def check_outputs(self, outputs: Tensors, rows: int | None = None) -> Tensors:
        """The declared outputs, in declared order; ContractViolation if any is missing or bad.

        With ``rows`` (the request's batch size), an output whose first axis is
        the batch (declared -1) must have exactly one row per input row.
        """
        checked: Tensors = {}
        for contract in self.outputs:
            name = contract.spec.name
            array = outputs.get(name)
            if array is None:
                raise ContractViolation(f"the model did not return output {name!r}")
            _check(contract, array, "output", ContractViolation, "the declared")
            if rows is not None and contract.batched and array.shape[0] != rows:
                raise ContractViolation(
                    f"output {name!r}: {array.shape[0]} rows for a request of {rows} rows"
                )
            checked[name] = array
        return checked


def _check(
    contract: TensorContract,
    array: np.ndarray,
    kind: str,
    error: type[FailsoftError],
    whose: str,
) -> None:
    spec = contract.spec
    if array.dtype != contract.dtype:
        datatype = _datatype_name(array)
        if not (spec.datatype == "BYTES" and datatype == "BYTES"):
            raise error(
                f"{kind} {spec.name!r}: datatype {datatype} does not match {whose} {spec.datatype}"
            )
    if not contract.shape_ok(array.shape):
        raise error(
            f"{kind} {spec.name!r}: shape {_show(array.shape)} does not match {whose} "
            f"{_show(spec.shape)} (-1 means any size)"
        )
    problem = contract.value_problem(array)
    if problem is not None:
        raise error(f"{kind} {spec.name!r}: {problem}")


def _widens(given: np.dtype, declared: np.dtype) -> bool:
    return given.kind in "iuf" and declared.kind in "iuf" and np.can_cast(given, declared, "safe")


def _all_finite(array: np.ndarray, size: int) -> bool:
    if size <= _SMALL:  # two ufunc calls cost more than a loop over a few floats
        return all(map(math.isfinite, array.ravel().tolist()))
    return bool(np.isfinite(array).all())


def _datatype_name(array: np.ndarray) -> str:
    try:
        return datatype_of(array)
    except TypeError:
        return str(array.dtype)
