"""Per-feature input checks: compiled once per version, vectorised on every request.

A tensor's ``features`` (``data/constraints.py``) become a few numpy arrays:
the constrained columns and their bounds, which one comparison per bound
checks over the whole batch. Only when something is wrong is it worth
finding out what: then the first violations are located (tensor, row,
column, value, the bound broken) for the 422 body or the warning header.

A violation is a *data* failure: it is the input's fault, so it never
reaches a breaker, the ejection detector, the balancer, the limiter or
readiness. What the request gets is the model's ``input_policy``:

``reject``   422 naming the tensor, row and column (``DataViolation``)
``flag``     served as usual, with a ``Failsoft-Data-Warning`` header
``degrade``  answered by the fallback chain without the version it was
             routed to, marked degraded (and the warning header)

Rows and columns: the tensor is read as a table whose columns are its last
axis; a row is every other position, in row-major order (for ``[-1, 4]``
the batch row itself). ``position`` gives the full index.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from failsoft.data.constraints import FeatureConstraint, InputPolicy
from failsoft.errors import FailsoftError, FailureClass
from failsoft.observe.events import Event
from failsoft.protocol.spec import TensorSpec
from failsoft.protocol.types import InferRequest

__all__ = [
    "DataVerdict",
    "DataViolated",
    "DataViolation",
    "InputChecks",
    "TensorChecks",
    "Violation",
]

MAX_REPORTED = 10  # violations described in a 422 body
_SMALL = 64  # up to this many values a Python loop beats numpy's per-call cost
HEADER = b"failsoft-data-warning"
_HEADER_MAX = 300
_FLOATS = ("FP16", "FP32", "FP64")


@dataclass(frozen=True, slots=True)
class Violation:
    """One value that breaks one constraint."""

    tensor: str
    row: int
    column: str  # the column's name, or its index as text
    index: int  # the column's index on the last axis
    position: tuple[int, ...]
    constraint: str  # min, max, categories, integer, nan, inf
    value: Any  # JSON-safe
    limit: Any = None

    def describe(self) -> str:
        where = f"input {self.tensor!r} row {self.row} column {self.column!r}"
        value = _number(self.value)
        problem = {
            "min": f"value {value} is below min {_number(self.limit)}",
            "max": f"value {value} is above max {_number(self.limit)}",
            "categories": f"value {value!r} is not one of the allowed categories",
            "integer": f"value {value} is not a whole number",
            "nan": "NaN is not allowed",
            "inf": f"{value} is not allowed",
        }[self.constraint]
        return f"{where}: {problem}"

    def as_json(self) -> dict[str, Any]:
        found: dict[str, Any] = {
            "tensor": self.tensor,
            "row": self.row,
            "column": self.column,
            "index": self.index,
            "position": list(self.position),
            "constraint": self.constraint,
            "value": self.value,
        }
        if self.limit is not None:
            found["limit"] = self.limit
        return found


class DataViolation(FailsoftError):
    """A request that breaks its model's input constraints, under ``reject`` (422)."""

    status = 422
    failure_class = FailureClass.DATA

    def __init__(self, violations: list[Violation], rows: int) -> None:
        first = violations[0].describe()
        more = f" (and {rows - 1} more row(s))" if rows > 1 else ""
        super().__init__(f"{first}{more}")
        self.violations = violations
        self.rows = rows

    def body(self) -> dict[str, Any]:
        """The 422 body: the message, and each violation found (at most MAX_REPORTED)."""
        return {
            "error": self.message,
            "violations": [violation.as_json() for violation in self.violations],
            "violating_rows": self.rows,
        }

    def header(self) -> bytes:
        """The Failsoft-Data-Warning value: printable ASCII, bounded."""
        text = f"{self.rows} row(s) break the input constraints; {self.violations[0].describe()}"
        safe = "".join(c if " " <= c <= "~" else "?" for c in text)
        return safe[:_HEADER_MAX].encode("ascii")


@dataclass(slots=True)
class DataViolated(Event):
    """A request broke its model's input constraints (counted per request)."""

    model: str
    version: str
    tensor: str
    column: str  # of the first violation
    policy: str


@dataclass(frozen=True, slots=True)
class DataVerdict:
    """What to do with a request that broke a constraint (``flag`` or ``degrade``)."""

    policy: InputPolicy
    violation: DataViolation


def _number(value: Any) -> Any:
    return f"{value:g}" if isinstance(value, float) else value


def _json_value(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # "nan", "inf", "-inf": JSON has no such numbers
    return value


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


class _Bounds:
    """The min/max bounds in a tensor's own dtype: FP32 data is judged against FP32
    bounds, so ``max: 0.1`` takes the 0.1 a client sends as FP32."""

    __slots__ = ("high", "low", "ranges")

    def __init__(self, columns: list[int], low: list[float], high: list[float], dtype: Any):
        kind = np.dtype(dtype)
        cast = kind if kind.kind == "f" else np.dtype(np.float64)
        self.low = np.array(low, dtype=np.float64).astype(cast)
        self.high = np.array(high, dtype=np.float64).astype(cast)
        self.ranges = list(zip(columns, self.low.tolist(), self.high.tolist(), strict=True))


class TensorChecks:
    """The constraints of one tensor's columns: Python loops for a few values (cheaper
    than any numpy call), vectorised comparisons for batches."""

    def __init__(self, spec: TensorSpec) -> None:
        assert spec.features
        self.name = spec.name
        width = spec.shape[-1]
        self.width = width
        names = spec.columns or [str(i) for i in range(width)]
        self.names = names
        by_index: dict[int, FeatureConstraint] = {}
        for key, constraint in spec.features.items():
            index = names.index(key) if spec.columns and key in spec.columns else int(key)
            by_index[index] = constraint
        self._floats = spec.datatype in _FLOATS
        self._bytes = spec.datatype == "BYTES"
        ranged = sorted(i for i, c in by_index.items() if c.min is not None or c.max is not None)
        self._range_cols = np.array(ranged, dtype=np.intp)
        self._all_ranged = ranged == list(range(width))
        self._low = [_or(by_index[i].min, -math.inf) for i in ranged]
        self._high = [_or(by_index[i].max, math.inf) for i in ranged]
        self._bounds: dict[Any, _Bounds] = {}
        self._integer = sorted(i for i, c in by_index.items() if c.integer)
        # NaN and infinity reach here only when the tensor allows them (else its own
        # check refused them first): then a constrained column refuses them unless it allows.
        nan_free: list[int] = []
        inf_free: list[int] = []
        if self._floats and spec.allow_nan:
            nan_free = sorted(i for i, c in by_index.items() if not c.allow_nan)
            inf_free = sorted(i for i, c in by_index.items() if not c.allow_inf)
        self._nan_free, self._inf_free = nan_free, inf_free
        self._categories: list[tuple[int, frozenset[Any], np.ndarray]] = []
        for index, constraint in sorted(by_index.items()):
            if constraint.categories is None:
                continue
            values: list[Any] = (
                [str(v).encode() for v in constraint.categories]
                if self._bytes
                else [v for v in constraint.categories if not isinstance(v, str)]
            )
            array = np.array(values, dtype=object if self._bytes else None)
            self._categories.append((index, frozenset(values), array))
        self._others = bool(self._integer or nan_free or inf_free or self._categories)

    def _bounds_for(self, dtype: Any) -> _Bounds:
        found = self._bounds.get(dtype)
        if found is None:
            found = self._bounds[dtype] = _Bounds(
                self._range_cols.tolist(), self._low, self._high, dtype
            )
        return found

    def _table(self, array: np.ndarray) -> np.ndarray:
        return array.reshape(-1, self.width)

    def broken(self, array: np.ndarray) -> bool:
        """Does any value break a constraint? (The hot path: no allocation when all is well.)"""
        size = array.size
        if size == 0:
            return False
        ranged = bool(self._range_cols.size)
        if size <= _SMALL:
            ranges = self._bounds_for(array.dtype).ranges if ranged else []
            others = self._others
            for row in self._table(array).tolist():
                for index, low, high in ranges:
                    value = row[index]
                    if value < low or value > high:
                        return True
                if others and self._row_problems(row):
                    return True
            return False
        table = self._table(array)
        if ranged:
            bounds = self._bounds_for(array.dtype)
            values = table if self._all_ranged else table[:, self._range_cols]
            if (values < bounds.low).any() or (values > bounds.high).any():
                return True
        return any(mask.any() for mask in self._other_masks(table))

    def bad_rows(self, array: np.ndarray) -> np.ndarray:
        """A boolean per row: True where a value breaks a constraint (off the hot path)."""
        table = self._table(array)
        bad = np.zeros(len(table), dtype=bool)
        if self._range_cols.size:
            bounds = self._bounds_for(array.dtype)
            values = table if self._all_ranged else table[:, self._range_cols]
            bad |= ((values < bounds.low) | (values > bounds.high)).any(axis=1)
        for mask in self._other_masks(table):
            bad |= mask.any(axis=1)
        return bad

    def _other_masks(self, table: np.ndarray) -> Iterable[np.ndarray]:
        if self._integer:
            values = table[:, self._integer]
            with np.errstate(invalid="ignore"):
                yield (values != np.trunc(values)) & np.isfinite(values)
        if self._nan_free:
            yield np.isnan(table[:, self._nan_free])
        if self._inf_free:
            yield np.isinf(table[:, self._inf_free])
        for index, allowed, allowed_array in self._categories:
            column = table[:, index]
            if column.size <= _SMALL:
                yield np.array([[v not in allowed] for v in column.tolist()], dtype=bool)
            else:
                yield ~np.isin(column, allowed_array)[:, np.newaxis]

    def describe(self, array: np.ndarray, bad: np.ndarray, limit: int) -> list[Violation]:
        """The violations in the first rows ``bad`` marks."""
        table = self._table(array)
        bounds = self._bounds_for(array.dtype)
        found: list[Violation] = []
        for row in np.flatnonzero(bad)[:limit].tolist():
            values = table[row].tolist()
            for index, kind, value in self._row_problems(values):
                found.append(self._violation(array.shape, row, index, kind, value))
            for (index, low, high), shown_low, shown_high in zip(
                bounds.ranges, self._low, self._high, strict=True
            ):
                value = values[index]
                if value < low:
                    found.append(self._violation(array.shape, row, index, "min", value, shown_low))
                elif value > high:
                    found.append(self._violation(array.shape, row, index, "max", value, shown_high))
            if len(found) >= limit:
                break
        return found[:limit]

    def _row_problems(self, values: list[Any]) -> list[tuple[int, str, Any]]:
        """(column, constraint, value) for each non-range problem of one row."""
        found = []
        for index in self._nan_free:
            if values[index] != values[index]:
                found.append((index, "nan", values[index]))
        for index in self._inf_free:
            if values[index] in (math.inf, -math.inf):
                found.append((index, "inf", values[index]))
        for index in self._integer:
            value = values[index]
            if math.isfinite(value) and not float(value).is_integer():
                found.append((index, "integer", value))
        for index, allowed, _ in self._categories:
            if values[index] not in allowed:
                found.append((index, "categories", values[index]))
        return found

    def _violation(
        self,
        shape: tuple[int, ...],
        row: int,
        index: int,
        kind: str,
        value: Any,
        limit: float | None = None,
    ) -> Violation:
        outer = [int(p) for p in np.unravel_index(row, shape[:-1])] if shape[:-1] else []
        return Violation(
            self.name,
            row,
            self.names[index],
            index,
            (*outer, index),
            kind,
            _json_value(value),
            None if limit is None else _json_value(limit),
        )


class InputChecks:
    """The per-feature checks of one version's inputs, and the model's policy."""

    def __init__(
        self,
        inputs: Iterable[TensorSpec],
        policy: InputPolicy,
        model: str = "",
        version: str = "",
        emit: Callable[[Event], None] | None = None,
    ) -> None:
        self.policy = policy
        self._model, self._version, self._emit = model, version, emit
        self.tensors = {spec.name: TensorChecks(spec) for spec in inputs if spec.features}

    def __bool__(self) -> bool:
        return bool(self.tensors)

    def find(self, request: InferRequest) -> DataViolation | None:
        """The request's violations (the first MAX_REPORTED), or None; never raises for data."""
        found: list[Violation] = []
        rows = 0
        for name, checks in self.tensors.items():
            array = request.inputs.get(name)
            if array is None or not checks.broken(array):
                continue
            bad = checks.bad_rows(array)
            rows = max(rows, int(bad.sum()))
            if len(found) < MAX_REPORTED:
                found += checks.describe(array, bad, MAX_REPORTED - len(found))
        return DataViolation(found, rows) if found else None

    def judge(self, request: InferRequest) -> DataVerdict | None:
        """None when the request is fine; raises DataViolation under ``reject``."""
        violation = self.find(request)
        if violation is None:
            return None
        if self._emit is not None:
            first = violation.violations[0]
            self._emit(
                DataViolated(self._model, self._version, first.tensor, first.column, self.policy)
            )
        if self.policy == "reject":
            raise violation
        return DataVerdict(self.policy, violation)


NO_CHECKS = InputChecks((), "reject")
