"""Reference profiles: what a model's inputs and outputs looked like on known-good data.

A profile holds one sketch per *column*: every input tensor of a model is cut
into columns (a ``[-1]`` or ``[-1, 1]`` tensor is one column, a ``[-1, k]``
tensor is ``k`` columns named ``name[0]`` .. ``name[k-1]``), and so is every
output the model gave on the same rows. Float columns get a KLL quantile
sketch (their NaN/inf rate is counted beside it), integer, boolean and text
columns a frequent-items sketch (empty text counts as null). A column may
also carry the label it had in the data file (a CSV or Parquet header).

The file is JSON: the model's name, version and file sha256, the input specs
it was built for, and each column's sketch in base64. ``check_fits`` refuses
a profile built for another model, or one that lacks a column the model
takes, with a message that names what is wrong.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from failsoft.data.sketches import CategoricalSketch, NumericSketch, SketchKind
from failsoft.protocol.datatypes import DATATYPE_TO_DTYPE
from failsoft.protocol.spec import TensorSpec

__all__ = [
    "Column",
    "ColumnProfile",
    "Profile",
    "ProfileError",
    "build_profile",
    "check_fits",
    "column_values",
    "columns_for",
    "read_data",
]

FORMAT = "failsoft-profile"
FORMAT_VERSION = 1
PREDICT_BATCH_ROWS = 4096
MAX_PROFILE_BYTES = 64 * 1024 * 1024
# A reference is sketched finer than a window (k=200): exact up to ~1000 rows,
# a rank error of about 0.3% beyond.
PROFILE_K = 1000

Predict = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


class ProfileError(ValueError):
    """A profile or a data file that cannot be used; the message says why."""


@dataclass(frozen=True, slots=True)
class Column:
    """One column of a tensor: ``index`` is None when the tensor is one column."""

    tensor: str
    index: int | None
    kind: SketchKind

    @property
    def name(self) -> str:
        return self.tensor if self.index is None else f"{self.tensor}[{self.index}]"


def _kind(datatype: str) -> SketchKind:
    return "numeric" if datatype in ("FP16", "FP32", "FP64") else "categorical"


def columns_for(specs: Iterable[TensorSpec], what: str = "input") -> list[Column]:
    """The columns of each tensor: ``[-1]``/``[-1, 1]`` → one, ``[-1, k]`` → k."""
    columns: list[Column] = []
    for spec in specs:
        kind = _kind(spec.datatype)
        rest = spec.shape[1:]
        if not rest or rest == [1]:
            columns.append(Column(spec.name, None, kind))
        elif len(rest) == 1 and rest[0] > 1:
            columns += [Column(spec.name, i, kind) for i in range(rest[0])]
        else:
            raise ProfileError(
                f"{what} {spec.name!r} has shape {spec.shape}: a profile needs rows of a fixed "
                "number of columns ([-1], [-1, 1] or [-1, k])"
            )
    return columns


def column_values(tensors: Mapping[str, np.ndarray], column: Column) -> np.ndarray | None:
    """The column's values from a batch of tensors (rows first); None when it is absent
    or of another shape."""
    array = tensors.get(column.tensor)
    if array is None or array.ndim == 0:
        return None
    if column.index is None:
        return array.reshape(-1) if array.ndim == 1 or array.shape[1:] == (1,) else None
    if array.ndim != 2 or array.shape[1] <= column.index:
        return None
    return array[:, column.index]


def _new_sketch(kind: SketchKind) -> NumericSketch | CategoricalSketch:
    return NumericSketch(PROFILE_K) if kind == "numeric" else CategoricalSketch()


def null_count(sketch: NumericSketch | CategoricalSketch) -> int:
    if isinstance(sketch, NumericSketch):
        return sketch.nonfinite_count
    return sketch.estimate("") + sketch.estimate("None")


@dataclass(slots=True)
class ColumnProfile:
    column: Column
    sketch: NumericSketch | CategoricalSketch
    label: str = ""  # the data file's name for it, when it had one

    @property
    def name(self) -> str:
        return self.column.name

    @property
    def display(self) -> str:
        return (
            f"{self.name} ({self.label})" if self.label and self.label != self.name else self.name
        )

    @property
    def null_rate(self) -> float:
        count = self.sketch.count
        return null_count(self.sketch) / count if count else 0.0

    def summary(self) -> dict[str, Any]:
        sketch = self.sketch
        data: dict[str, Any] = {
            "name": self.name,
            "label": self.label,
            "kind": self.column.kind,
            "count": sketch.count,
            "null_rate": round(self.null_rate, 6),
        }
        if isinstance(sketch, NumericSketch):
            p01, p50, p99 = sketch.quantiles([0.01, 0.5, 0.99])
            data.update(
                min=sketch.min, p01=float(p01), p50=float(p50), p99=float(p99), max=sketch.max
            )
        else:
            data["top"] = sketch.top(5)
            data["distinct"] = sketch.distinct_retained
        return data

    def to_json(self) -> dict[str, Any]:
        return {
            "tensor": self.column.tensor,
            "index": self.column.index,
            "kind": self.column.kind,
            "label": self.label,
            "sketch": base64.b64encode(self.sketch.to_bytes()).decode("ascii"),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str) -> ColumnProfile:
        try:
            kind = data["kind"]
            if kind not in ("numeric", "categorical"):
                raise ProfileError(f"{where}.kind: {kind!r} is not numeric or categorical")
            index = data["index"]
            if index is not None and (type(index) is not int or index < 0):
                raise ProfileError(f"{where}.index: {index!r} is not a column number")
            column = Column(str(data["tensor"]), index, kind)
            blob = base64.b64decode(data["sketch"], validate=True)
            sketch: NumericSketch | CategoricalSketch = (
                NumericSketch.from_bytes(blob)
                if kind == "numeric"
                else CategoricalSketch.from_bytes(blob)
            )
            return cls(column, sketch, str(data.get("label", "")))
        except KeyError as missing:
            raise ProfileError(f"{where}: missing key {missing}") from None
        except (TypeError, ValueError) as error:
            if isinstance(error, ProfileError):
                raise
            raise ProfileError(f"{where}: {error}") from None


@dataclass(slots=True)
class Profile:
    """A model's reference: its input and output columns' sketches on known-good data."""

    model: str
    version: str | None
    model_sha256: str | None
    input_specs: list[TensorSpec]
    inputs: list[ColumnProfile]
    outputs: list[ColumnProfile]
    rows: int
    source: str = ""
    created_at: str = field(
        default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    )
    # The sha256 of the bytes it was read from or saved as. Fixed then: a KLL sketch
    # sorts itself when first queried, which changes its serialised form, not its content.
    digest: str = ""

    def column(self, name: str) -> ColumnProfile | None:
        for item in (*self.inputs, *self.outputs):
            if item.name == name:
                return item
        return None

    def to_bytes(self) -> bytes:
        data = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model": self.model,
            "version": self.version,
            "model_sha256": self.model_sha256,
            "rows": self.rows,
            "source": self.source,
            "created_at": self.created_at,
            "input_specs": [spec.model_dump(exclude_defaults=True) for spec in self.input_specs],
            "inputs": [item.to_json() for item in self.inputs],
            "outputs": [item.to_json() for item in self.outputs],
        }
        return orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n"

    @property
    def sha256(self) -> str:
        return self.digest or hashlib.sha256(self.to_bytes()).hexdigest()

    @classmethod
    def from_bytes(cls, blob: bytes, source: str = "profile") -> Profile:
        try:
            data = orjson.loads(blob)
        except orjson.JSONDecodeError:
            raise ProfileError(f"{source}: not a failsoft profile (not JSON)") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ProfileError(f"{source}: not a failsoft profile (no format: {FORMAT})")
        if data.get("format_version") != FORMAT_VERSION:
            raise ProfileError(
                f"{source}: profile format version {data.get('format_version')!r} is not "
                f"{FORMAT_VERSION} (rebuild it with this failsoft)"
            )
        try:
            specs = [TensorSpec.model_validate(spec) for spec in data["input_specs"]]
            inputs = [
                ColumnProfile.from_json(item, f"{source}: inputs[{i}]")
                for i, item in enumerate(data["inputs"])
            ]
            outputs = [
                ColumnProfile.from_json(item, f"{source}: outputs[{i}]")
                for i, item in enumerate(data["outputs"])
            ]
            return cls(
                str(data["model"]),
                data.get("version"),
                data.get("model_sha256"),
                specs,
                inputs,
                outputs,
                int(data["rows"]),
                str(data.get("source", "")),
                str(data.get("created_at", "")),
                hashlib.sha256(blob).hexdigest(),
            )
        except KeyError as missing:
            raise ProfileError(f"{source}: missing key {missing}") from None
        except (TypeError, ValueError) as error:
            if isinstance(error, ProfileError):
                raise
            raise ProfileError(f"{source}: {str(error).splitlines()[0]}") from None

    def save(self, path: Path) -> None:
        blob = self.to_bytes()
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(blob)
        tmp.replace(path)
        self.digest = hashlib.sha256(blob).hexdigest()

    @classmethod
    def load(cls, path: Path) -> Profile:
        try:
            with open(path, "rb") as handle:
                blob = handle.read(MAX_PROFILE_BYTES + 1)
        except OSError as error:
            raise ProfileError(f"{path}: cannot read: {error.strerror or error}") from None
        if len(blob) > MAX_PROFILE_BYTES:
            raise ProfileError(f"{path}: over {MAX_PROFILE_BYTES >> 20} MiB, not a profile")
        return cls.from_bytes(blob, str(path))

    def summary(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "model_sha256": self.model_sha256,
            "rows": self.rows,
            "source": self.source,
            "created_at": self.created_at,
            "sha256": self.sha256,
            "inputs": [item.summary() for item in self.inputs],
            "outputs": [item.summary() for item in self.outputs],
        }


def check_fits(profile: Profile, model: str, inputs: Sequence[TensorSpec], where: str) -> None:
    """ProfileError unless ``profile`` was built for ``model`` and covers every input column."""
    if profile.model != model:
        raise ProfileError(
            f"{where}: the profile is of model {profile.model!r}, not {model!r} "
            "(build one with `failsoft profile build`)"
        )
    wanted = {column.name: column for column in columns_for(inputs)}
    have = {item.name: item.column for item in profile.inputs}
    missing = [name for name in wanted if name not in have]
    if missing:
        raise ProfileError(
            f"{where}: the profile lacks the input feature(s) {', '.join(missing)} "
            f"(it has {', '.join(have) or 'none'})"
        )
    for name, column in wanted.items():
        if have[name].kind != column.kind:
            raise ProfileError(
                f"{where}: input feature {name} is {column.kind} in the model but "
                f"{have[name].kind} in the profile"
            )


# -- building ----------------------------------------------------------------------


def build_profile(
    model: str,
    version: str | None,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    data: Mapping[str, np.ndarray],
    predict: Predict,
    *,
    labels: Mapping[str, str] | None = None,
    model_sha256: str | None = None,
    source: str = "",
) -> Profile:
    """Sketch every input column of ``data`` and every output column of the model on it.

    ``data``: the input tensors, rows first, already of the declared dtypes.
    ``predict`` runs in batches of ``PREDICT_BATCH_ROWS`` rows."""
    in_columns = columns_for(inputs)
    out_columns = columns_for(outputs, "output")
    rows = {len(array) for array in data.values()}
    if len(rows) != 1:
        raise ProfileError(f"the input tensors have different numbers of rows: {sorted(rows)}")
    (count,) = rows
    if count == 0:
        raise ProfileError("the data has no rows")
    sketches_in = [
        ColumnProfile(c, _new_sketch(c.kind), (labels or {}).get(c.name, "")) for c in in_columns
    ]
    sketches_out = [ColumnProfile(c, _new_sketch(c.kind)) for c in out_columns]
    for start in range(0, count, PREDICT_BATCH_ROWS):
        batch = {name: array[start : start + PREDICT_BATCH_ROWS] for name, array in data.items()}
        try:
            answer = predict(batch)
        except Exception as error:
            raise ProfileError(
                f"the model failed on rows {start}-{start + len(next(iter(batch.values()))) - 1}: "
                f"{str(error).splitlines()[0] if str(error) else type(error).__name__}"
            ) from None
        _update(sketches_in, batch, "input")
        _update(sketches_out, answer, "output")
    return Profile(
        model, version, model_sha256, list(inputs), sketches_in, sketches_out, count, source
    )


def _update(profiles: list[ColumnProfile], tensors: Mapping[str, np.ndarray], what: str) -> None:
    for item in profiles:
        values = column_values(tensors, item.column)
        if values is None:
            raise ProfileError(f"the model's {what} {item.name} is missing or of another shape")
        item.sketch.update(values)


# -- data files ----------------------------------------------------------------------


def read_data(
    path: Path, inputs: Sequence[TensorSpec], drop: Sequence[str] = ()
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The input tensors in a data file (.csv, .parquet, .npy), and the file's names for
    the columns (column name -> header), for ``build_profile``.

    A CSV or Parquet file names its columns: a one-column input is the column of its
    name; a ``[-1, k]`` input is the columns ``name[0]`` .. ``name[k-1]``, or, when the
    model has one input, every column of the file (less ``drop``) in order. A .npy
    file is the rows of a model's single input."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return _read_npy(path, inputs), {}
    if suffix == ".csv":
        table = _read_table(path, "csv")
    elif suffix in (".parquet", ".pq"):
        table = _read_table(path, "parquet")
    else:
        raise ProfileError(
            f"{path}: give a .csv, .parquet or .npy file (not {suffix or 'no suffix'})"
        )
    unknown = [name for name in drop if name not in table]
    if unknown:
        raise ProfileError(f"{path}: --drop names columns it does not have: {', '.join(unknown)}")
    table = {name: values for name, values in table.items() if name not in drop}
    return _tensors_from_table(path, table, inputs)


def _read_npy(path: Path, inputs: Sequence[TensorSpec]) -> dict[str, np.ndarray]:
    if len(inputs) != 1:
        raise ProfileError(
            f"{path}: a .npy file holds one array, the model takes {len(inputs)} inputs "
            "(use a CSV or Parquet file with named columns)"
        )
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ProfileError(f"{path}: not a readable .npy file: {error}") from None
    (spec,) = inputs
    return {spec.name: _as_input(path, array, spec)}


def _as_input(path: Path, array: np.ndarray, spec: TensorSpec) -> np.ndarray:
    columns = columns_for([spec])
    width = 1 if columns[0].index is None else len(columns)
    if array.ndim == 1 and width == 1:
        array = array.reshape(-1, 1) if spec.shape[1:] == [1] else array
    elif array.ndim != 2 or array.shape[1] != width:
        raise ProfileError(
            f"{path}: array of shape {list(array.shape)} does not fit input {spec.name!r} "
            f"of shape {spec.shape} (rows of {width} values)"
        )
    return _cast(path, array, spec, spec.name)


def _cast(path: Path, array: np.ndarray, spec: TensorSpec, what: str) -> np.ndarray:
    dtype = DATATYPE_TO_DTYPE[spec.datatype]
    if dtype.kind == "O":
        return np.array(
            ["" if v is None else str(v) for v in array.reshape(-1)], dtype=object
        ).reshape(array.shape)
    try:
        return np.asarray(array).astype(dtype)
    except (TypeError, ValueError):
        pass
    width = array.shape[1] if array.ndim == 2 else 1
    for at, value in enumerate(np.asarray(array, dtype=object).reshape(-1)):
        try:
            np.asarray(value).astype(dtype)
        except (TypeError, ValueError):
            raise ProfileError(
                f"{path}: input {what}: value {str(value)[:40]!r} in data row {at // width + 1} "
                f"is not {spec.datatype}"
            ) from None
    raise ProfileError(f"{path}: column {what} is not {spec.datatype}")


def _read_table(path: Path, kind: str) -> dict[str, np.ndarray]:
    try:
        import pyarrow as pa
        import pyarrow.csv as pacsv
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - a declared dependency
        raise ProfileError("reading CSV or Parquet needs pyarrow (pip install pyarrow)") from None
    try:
        table = pacsv.read_csv(path) if kind == "csv" else pq.read_table(path)
    except FileNotFoundError:
        raise ProfileError(f"{path}: no such file") from None
    except (OSError, pa.ArrowException) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ProfileError(f"{path}: not a readable {kind.upper()} file: {message}") from None
    result: dict[str, np.ndarray] = {}
    for name, chunked in zip(table.column_names, table.columns, strict=True):
        if pa.types.is_integer(chunked.type) and chunked.null_count:
            chunked = chunked.cast(pa.float64())
        result[name] = np.asarray(chunked.to_numpy(zero_copy_only=False))
    if not result:
        raise ProfileError(f"{path}: the file has no columns")
    return result


def _tensors_from_table(
    path: Path, table: dict[str, np.ndarray], inputs: Sequence[TensorSpec]
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    tensors: dict[str, np.ndarray] = {}
    labels: dict[str, str] = {}
    missing: list[str] = []
    for spec in inputs:
        columns = columns_for([spec])
        if columns[0].index is None:
            if spec.name in table:
                values = table[spec.name]
                shaped = values.reshape(-1, 1) if spec.shape[1:] == [1] else values
                tensors[spec.name] = _cast(path, shaped, spec, spec.name)
            else:
                missing.append(spec.name)
            continue
        named = [column.name for column in columns]
        if all(name in table for name in named):
            chosen = named
        elif len(inputs) == 1 and len(table) == len(columns):
            chosen = list(table)
        else:
            have = [name for name in named if name not in table]
            if len(inputs) == 1:
                missing.append(
                    f"{spec.name} needs {len(columns)} columns (the file has {len(table)}: "
                    f"{', '.join(list(table)[:12])}; drop the others with --drop)"
                )
            else:
                missing += have
            continue
        stacked = np.column_stack([table[name] for name in chosen])
        tensors[spec.name] = _cast(path, stacked, spec, spec.name)
        for column, header in zip(columns, chosen, strict=True):
            labels[column.name] = header
    if missing:
        raise ProfileError(f"{path}: missing input feature(s): {'; '.join(missing)}")
    return tensors, labels
