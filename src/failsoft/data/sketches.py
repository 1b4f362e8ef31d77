"""Sketches of a model's outputs, updated in batches off the hot path.

``NumericSketch`` is an Apache DataSketches KLL sketch of doubles: quantiles,
CDF and PMF with a rank error of about 1.3% at the default ``k=200`` (exact
until the sketch first compacts, after about ``k`` values), mergeable, a few
kilobytes serialised. Non-finite values (NaN, ±inf) are counted beside it,
never sketched, so a quantile is always a number.

``CategoricalSketch`` is a DataSketches frequent-items sketch of strings:
integer labels are keyed by their decimal text, BYTES by their UTF-8 text.
Counts are exact while fewer than ``0.75 * 2**lg_max_k`` distinct items have
been seen (768 at the default), and within ``epsilon * count`` beyond that.

``OutputSketches`` holds one sketch per output tensor of a model: numeric for
floating-point tensors, categorical for integers, booleans and BYTES.

Every update takes a whole array: the numeric sketch gets it in one call,
the categorical sketch gets one call per *distinct* value (``np.unique``), so
the cost of a batch is a few numpy passes, not a Python loop per element.
KLL compaction is randomised by the library (it cannot be seeded), so two
sketches of the same stream may differ slightly once they compact; every
answer stays within the stated rank error.

The serialised forms carry a 4-byte tag and a version so a blob of another
kind, or from a later format, is refused with a clear error.
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from itertools import pairwise
from typing import Literal

import datasketches as ds
import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "CategoricalSketch",
    "NumericSketch",
    "OutputSketches",
    "SketchKind",
    "kind_for",
]

SketchKind = Literal["numeric", "categorical"]

_NUMERIC_TAG = b"FSN1"
_CATEGORICAL_TAG = b"FSC1"
_OUTPUTS_TAG = b"FSO1"
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
_U16 = struct.Struct("<H")
_HEADER = struct.Struct("<HBI")  # k, lg_max_k, number of outputs


def kind_for(dtype: np.dtype) -> SketchKind:
    """The sketch that fits an output of this dtype: floats are numeric,
    integers, booleans and text/bytes are categorical (labels)."""
    if dtype.kind == "f":
        return "numeric"
    if dtype.kind in "biuUSO":
        return "categorical"
    raise TypeError(f"no sketch for outputs of dtype {dtype}")


def _tagged(blob: bytes, tag: bytes, what: str) -> memoryview:
    if len(blob) < len(tag) or blob[: len(tag)] != tag:
        raise ValueError(f"not a serialised {what} (tag {bytes(blob[:4])!r}, expected {tag!r})")
    return memoryview(blob)[len(tag) :]


class NumericSketch:
    """A KLL quantile sketch of the finite values seen, and a count of the rest."""

    __slots__ = ("_kll", "_nonfinite")

    def __init__(self, k: int = 200) -> None:
        if not 8 <= k <= 65535:
            raise ValueError(f"k must be between 8 and 65535 (got {k})")
        self._kll = ds.kll_doubles_sketch(k)
        self._nonfinite = 0

    @classmethod
    def of(cls, values: ArrayLike, k: int = 200) -> NumericSketch:
        """A sketch of ``values`` (any shape)."""
        sketch = cls(k)
        sketch.update(values)
        return sketch

    # -- updating ---------------------------------------------------------

    def update(self, values: ArrayLike) -> None:
        """Add every element of ``values`` (any shape) in one call."""
        array = np.asarray(values, dtype=np.float64).reshape(-1)
        if array.size == 0:
            return
        finite = np.isfinite(array)
        if finite.all():
            self._kll.update(array)
            return
        self._nonfinite += int(array.size - np.count_nonzero(finite))
        kept = array[finite]
        if kept.size:
            self._kll.update(kept)

    def merge(self, other: NumericSketch) -> None:
        """Add everything ``other`` has seen (``other`` is unchanged)."""
        self._kll.merge(other._kll)
        self._nonfinite += other._nonfinite

    def copy(self) -> NumericSketch:
        return NumericSketch.from_bytes(self.to_bytes())

    # -- counts -----------------------------------------------------------

    @property
    def k(self) -> int:
        return int(self._kll.k)

    @property
    def count(self) -> int:
        """Every value seen, finite or not."""
        return int(self._kll.n) + self._nonfinite

    @property
    def finite_count(self) -> int:
        return int(self._kll.n)

    @property
    def nonfinite_count(self) -> int:
        return self._nonfinite

    @property
    def is_empty(self) -> bool:
        return self.count == 0

    @property
    def is_exact(self) -> bool:
        """True while the sketch still holds every finite value it was given."""
        return not self._kll.is_estimation_mode()

    @property
    def rank_error(self) -> float:
        """The normalised rank error of one quantile or rank (0 while exact);
        the library's bound holds with 99% confidence."""
        return 0.0 if self.is_exact else float(self._kll.normalized_rank_error(False))

    @property
    def pmf_error(self) -> float:
        """The error bound of a PMF or CDF value (0 while exact)."""
        return 0.0 if self.is_exact else float(self._kll.normalized_rank_error(True))

    # -- queries (over the finite values) ---------------------------------

    @property
    def min(self) -> float:
        return float(self._kll.get_min_value()) if self.finite_count else float("nan")

    @property
    def max(self) -> float:
        return float(self._kll.get_max_value()) if self.finite_count else float("nan")

    def quantile(self, rank: float) -> float:
        """The value at normalised ``rank`` in [0, 1]; NaN when empty."""
        if not 0.0 <= rank <= 1.0:
            raise ValueError(f"rank must be within [0, 1] (got {rank})")
        if not self.finite_count:
            return float("nan")
        return float(self._kll.get_quantile(rank))

    def quantiles(self, ranks: Sequence[float]) -> np.ndarray:
        """The values at several normalised ranks; NaNs when empty."""
        for rank in ranks:
            if not 0.0 <= rank <= 1.0:
                raise ValueError(f"rank must be within [0, 1] (got {rank})")
        if not self.finite_count:
            return np.full(len(ranks), np.nan)
        return np.asarray(self._kll.get_quantiles(list(ranks)), dtype=np.float64)

    def rank(self, value: float) -> float:
        """The share of finite values below ``value``; NaN when empty."""
        if not self.finite_count:
            return float("nan")
        return float(self._kll.get_rank(value))

    def cdf(self, split_points: Sequence[float]) -> np.ndarray:
        """Shares of finite values below each split point, then 1.0 (m + 1 values).

        ``split_points`` must be strictly increasing. Empty → an empty array."""
        return self._split(split_points, self._kll.get_cdf)

    def pmf(self, split_points: Sequence[float]) -> np.ndarray:
        """Shares of finite values in [-inf, s0), [s0, s1), ..., [s_last, +inf]."""
        return self._split(split_points, self._kll.get_pmf)

    def _split(
        self, split_points: Sequence[float], query: Callable[[list[float]], list[float]]
    ) -> np.ndarray:
        points = [float(p) for p in split_points]
        if any(not np.isfinite(p) for p in points) or any(b <= a for a, b in pairwise(points)):
            raise ValueError("split points must be finite and strictly increasing")
        if not self.finite_count:
            return np.empty(0)
        return np.asarray(query(points), dtype=np.float64)

    # -- bytes ------------------------------------------------------------

    def to_bytes(self) -> bytes:
        return _NUMERIC_TAG + _U64.pack(self._nonfinite) + bytes(self._kll.serialize())

    @classmethod
    def from_bytes(cls, blob: bytes) -> NumericSketch:
        body = _tagged(blob, _NUMERIC_TAG, "numeric sketch")
        if len(body) < _U64.size:
            raise ValueError("serialised numeric sketch is truncated")
        (nonfinite,) = _U64.unpack_from(body)
        try:
            kll = ds.kll_doubles_sketch.deserialize(bytes(body[_U64.size :]))
        except Exception as error:  # the library raises RuntimeError, ValueError, IndexError
            raise ValueError(f"serialised numeric sketch is corrupt: {error}") from None
        sketch = cls.__new__(cls)
        sketch._kll = kll
        sketch._nonfinite = int(nonfinite)
        return sketch

    def __repr__(self) -> str:
        if not self.finite_count:
            return f"NumericSketch(k={self.k}, count={self.count})"
        p50, p99 = self.quantiles([0.5, 0.99])
        return (
            f"NumericSketch(k={self.k}, count={self.count}, nonfinite={self._nonfinite}, "
            f"min={self.min:g}, p50={p50:g}, p99={p99:g}, max={self.max:g})"
        )


def _label(value: object) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            return value.decode(errors="backslashreplace")
    if isinstance(value, np.generic):
        value = value.item()
    return str(value)


class CategoricalSketch:
    """A frequent-items sketch of labels: counts per label, exact while the
    distinct labels fit (768 at the default ``lg_max_k=10``)."""

    __slots__ = ("_items", "_lg_max_k")

    def __init__(self, lg_max_k: int = 10) -> None:
        if not 3 <= lg_max_k <= 21:
            raise ValueError(f"lg_max_k must be between 3 and 21 (got {lg_max_k})")
        self._items = ds.frequent_strings_sketch(lg_max_k)
        self._lg_max_k = lg_max_k

    @classmethod
    def of(cls, values: ArrayLike, lg_max_k: int = 10) -> CategoricalSketch:
        sketch = cls(lg_max_k)
        sketch.update(values)
        return sketch

    def update(self, values: ArrayLike) -> None:
        """Count every element of ``values`` (any shape): one sketch update per
        distinct value, weighted by its count."""
        array = np.asarray(values).reshape(-1)
        if array.size == 0:
            return
        if array.dtype.kind == "O":
            # Python objects (BYTES): hashing them in C beats sorting them.
            counted: Mapping[object, int] = Counter(array.tolist())
            pairs: Iterator[tuple[object, int]] = iter(counted.items())
        else:
            distinct, counts = np.unique(array, return_counts=True)
            pairs = zip(distinct.tolist(), counts.tolist(), strict=True)
        update = self._items.update
        for value, count in pairs:
            update(_label(value), int(count))

    def merge(self, other: CategoricalSketch) -> None:
        self._items.merge(other._items)

    def copy(self) -> CategoricalSketch:
        return CategoricalSketch.from_bytes(self.to_bytes())

    @property
    def lg_max_k(self) -> int:
        return self._lg_max_k

    @property
    def count(self) -> int:
        return int(self._items.total_weight)

    @property
    def is_empty(self) -> bool:
        return self.count == 0

    @property
    def distinct_retained(self) -> int:
        return int(self._items.num_active_items)

    @property
    def max_error(self) -> int:
        """The most any estimated count can be off by (0 while exact)."""
        rows = self._rows()
        return int(rows[0][3] - rows[0][2]) if rows else 0

    @property
    def is_exact(self) -> bool:
        return self.max_error == 0

    def estimate(self, label: object) -> int:
        return int(self._items.get_estimate(_label(label)))

    def _rows(self) -> list[tuple[str, int, int, int]]:
        rows: list[tuple[str, int, int, int]] = self._items.get_frequent_items(
            ds.frequent_items_error_type.NO_FALSE_NEGATIVES, 0
        )
        return rows

    def counts(self) -> dict[str, int]:
        """Every retained label with its estimated count, most frequent first."""
        rows = sorted(self._rows(), key=lambda row: (-row[1], row[0]))
        return {label: int(estimate) for label, estimate, _, _ in rows}

    def top(self, n: int | None = None) -> list[tuple[str, int]]:
        """The ``n`` most frequent labels (all retained when None) with counts."""
        items = list(self.counts().items())
        return items if n is None else items[:n]

    @property
    def other_count(self) -> int:
        """What the retained labels do not account for (0 while exact)."""
        return max(self.count - sum(self.counts().values()), 0)

    def to_bytes(self) -> bytes:
        return _CATEGORICAL_TAG + bytes([self._lg_max_k]) + bytes(self._items.serialize())

    @classmethod
    def from_bytes(cls, blob: bytes) -> CategoricalSketch:
        body = _tagged(blob, _CATEGORICAL_TAG, "categorical sketch")
        if not body:
            raise ValueError("serialised categorical sketch is truncated")
        try:
            items = ds.frequent_strings_sketch.deserialize(bytes(body[1:]))
        except Exception as error:  # the library raises RuntimeError, ValueError, IndexError
            raise ValueError(f"serialised categorical sketch is corrupt: {error}") from None
        sketch = cls.__new__(cls)
        sketch._items = items
        sketch._lg_max_k = int(body[0])
        return sketch

    def __repr__(self) -> str:
        shown = ", ".join(f"{label!r}: {count}" for label, count in self.top(5))
        more = " ..." if self.distinct_retained > 5 else ""
        return f"CategoricalSketch(count={self.count}, {{{shown}{more}}})"


Sketch = NumericSketch | CategoricalSketch


class OutputSketches:
    """One sketch per output tensor of a model.

    The kind of each output is fixed when it is first seen (``kind_for`` its
    dtype) unless ``kinds`` names it: pass ``{"score": "numeric"}`` for an
    integer output that is a quantity rather than a label.
    """

    __slots__ = ("_kinds", "_sketches", "k", "lg_max_k")

    def __init__(
        self,
        kinds: Mapping[str, SketchKind] | None = None,
        *,
        k: int = 200,
        lg_max_k: int = 10,
    ) -> None:
        self._kinds: dict[str, SketchKind] = dict(kinds or {})
        self._sketches: dict[str, Sketch] = {}
        self.k = k
        self.lg_max_k = lg_max_k

    def update(self, outputs: Mapping[str, np.ndarray]) -> None:
        """Add one batch of outputs (one request's, or many concatenated)."""
        for name, array in outputs.items():
            self._sketch_for(name, array.dtype).update(array)

    def _sketch_for(self, name: str, dtype: np.dtype) -> Sketch:
        sketch = self._sketches.get(name)
        if sketch is None:
            kind = self._kinds.get(name) or kind_for(dtype)
            self._kinds[name] = kind
            sketch = self._new(kind)
            self._sketches[name] = sketch
        return sketch

    def _new(self, kind: SketchKind) -> Sketch:
        return NumericSketch(self.k) if kind == "numeric" else CategoricalSketch(self.lg_max_k)

    def merge(self, other: OutputSketches) -> None:
        """Add everything ``other`` holds; an output's kind must agree."""
        for name, theirs in other._sketches.items():
            mine = self._sketches.get(name)
            if mine is None:
                self._kinds[name] = other.kind(name)
                self._sketches[name] = theirs.copy()
            elif isinstance(mine, NumericSketch) and isinstance(theirs, NumericSketch):  # noqa: SIM114 - two branches so mypy narrows both
                mine.merge(theirs)
            elif isinstance(mine, CategoricalSketch) and isinstance(theirs, CategoricalSketch):
                mine.merge(theirs)
            else:
                raise ValueError(
                    f"output {name!r} is {self.kind(name)} here and {other.kind(name)} there"
                )

    def kind(self, name: str) -> SketchKind:
        return "numeric" if isinstance(self._sketches[name], NumericSketch) else "categorical"

    def __getitem__(self, name: str) -> Sketch:
        return self._sketches[name]

    def get(self, name: str) -> Sketch | None:
        return self._sketches.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._sketches

    def __iter__(self) -> Iterator[str]:
        return iter(self._sketches)

    def __len__(self) -> int:
        return len(self._sketches)

    def names(self) -> list[str]:
        return list(self._sketches)

    def numeric(self, name: str) -> NumericSketch:
        sketch = self._sketches[name]
        if not isinstance(sketch, NumericSketch):
            raise TypeError(f"output {name!r} has a categorical sketch")
        return sketch

    def categorical(self, name: str) -> CategoricalSketch:
        sketch = self._sketches[name]
        if not isinstance(sketch, CategoricalSketch):
            raise TypeError(f"output {name!r} has a numeric sketch")
        return sketch

    def to_bytes(self) -> bytes:
        """The tag, k, lg_max_k and the number of outputs, then per output its
        name, a kind byte (N or C) and its sketch, each length-prefixed."""
        parts = [_OUTPUTS_TAG, _HEADER.pack(self.k, self.lg_max_k, len(self._sketches))]
        for name, sketch in self._sketches.items():
            encoded = name.encode()
            blob = sketch.to_bytes()
            kind = b"N" if isinstance(sketch, NumericSketch) else b"C"
            parts += [_U16.pack(len(encoded)), encoded, kind, _U32.pack(len(blob)), blob]
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, blob: bytes) -> OutputSketches:
        body = _tagged(blob, _OUTPUTS_TAG, "set of output sketches")
        try:
            k, lg_max_k, count = _HEADER.unpack_from(body)
            result = cls(k=k, lg_max_k=lg_max_k)
            at = _HEADER.size
            for _ in range(count):
                (size,) = _U16.unpack_from(body, at)
                at += _U16.size
                name = bytes(body[at : at + size]).decode()
                at += size
                kind = bytes(body[at : at + 1])
                at += 1
                (size,) = _U32.unpack_from(body, at)
                at += _U32.size
                chunk = bytes(body[at : at + size])
                if len(chunk) != size:
                    raise ValueError("truncated")
                at += size
                if kind == b"N":
                    result._sketches[name] = NumericSketch.from_bytes(chunk)
                    result._kinds[name] = "numeric"
                elif kind == b"C":
                    result._sketches[name] = CategoricalSketch.from_bytes(chunk)
                    result._kinds[name] = "categorical"
                else:
                    raise ValueError(f"unknown sketch kind {kind!r}")
        except (struct.error, UnicodeDecodeError, ValueError) as error:
            raise ValueError(f"serialised output sketches are corrupt: {error}") from None
        if at != len(body):
            raise ValueError("serialised output sketches have trailing bytes")
        return result

    def __repr__(self) -> str:
        inner = ", ".join(f"{name}: {sketch!r}" for name, sketch in self._sketches.items())
        return f"OutputSketches({inner})"
