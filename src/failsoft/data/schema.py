"""Input schemas per version, and whether a new revision may change them.

A version takes the model's ``inputs`` unless it declares its own. When a
revision changes the inputs of a version that serves, the change is judged
against the model's ``compatibility`` mode, with the meanings of Confluent's
Schema Registry adapted to tensors. A schema *accepts* a set of requests:

``backward``  the new schema accepts every request the serving one accepted:
              clients keep working when the new revision comes (the default)
``forward``   the serving schema accepts every request written for the new
              one: clients may move first, and going back to the old
              revision keeps working
``full``      both
``none``      anything goes

Each difference breaks one direction or both:

- an input added or removed: both (a V2 request carries exactly the
  declared inputs; there is no optional input)
- datatype widened (the new type holds every value of the old, e.g. FP32 ->
  FP64, INT32 -> INT64): forward only; the gateway converts the old type to
  the new one losslessly, so old requests still pass. Narrowed: backward
  only. Any other datatype change: both
- shape: a fixed axis made free (4 -> -1) breaks forward; a free one fixed
  breaks backward; another size or rank, both
- a constraint (``range``, ``labels``, NaN, and per feature ``min``,
  ``max``, ``categories``, ``integer``, ``allow_nan``, ``allow_inf``)
  tightened breaks backward; loosened breaks forward. They count whatever
  the ``input_policy``: a flagged request is still one the schema refuses
- columns renamed or reordered: both (a position now means another feature)

The serving revision's mode is the one applied: a change of mode applies to
the revisions after it, as a subject's compatibility setting does.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from failsoft.data.constraints import Compatibility, FeatureConstraint
from failsoft.errors import FailsoftError, FailureClass
from failsoft.protocol.datatypes import DATATYPE_TO_DTYPE
from failsoft.protocol.spec import TensorSpec

if TYPE_CHECKING:
    from failsoft.config import Config, ModelConfig

__all__ = [
    "IncompatibleInputs",
    "SchemaChange",
    "check_model_inputs",
    "compare_inputs",
    "incompatible_changes",
    "version_inputs",
]

BACKWARD = frozenset({"backward"})
FORWARD = frozenset({"forward"})
BOTH = BACKWARD | FORWARD
_BROKEN_BY: dict[Compatibility, frozenset[str]] = {
    "backward": BACKWARD,
    "forward": FORWARD,
    "full": BOTH,
    "none": frozenset(),
}


class IncompatibleInputs(FailsoftError):
    """A revision that changes a serving version's inputs against its mode (409)."""

    status = 409
    failure_class = FailureClass.CLIENT


@dataclass(frozen=True)
class SchemaChange:
    path: str  # models.iris.versions.v1.inputs.features.shape[1]
    change: str  # what changed, as a person reads it
    breaks: frozenset[str]  # "backward", "forward"

    def render(self) -> str:
        return f"{self.path}: {self.change} (breaks {'+'.join(sorted(self.breaks))})"


def version_inputs(model: ModelConfig, version: str) -> list[TensorSpec]:
    """The inputs ``version`` takes: its own when it declares them, else the model's."""
    own: list[TensorSpec] | None = getattr(model.versions[version], "inputs", None)
    return own if own is not None else model.inputs


def check_model_inputs(model: ModelConfig) -> None:
    """ValueError when the inputs (the model's or a version's) do not fit the rest."""
    for index, spec in enumerate(model.outputs):
        if spec.features:
            raise ValueError(f"outputs[{index}]: features apply to inputs only")
    if model.input_policy == "degrade" and not model.fallback:
        raise ValueError("input_policy degrade needs a fallback chain (fallback: [...])")
    golden = model.health_check.inputs
    for version, backend in model.versions.items():
        own = getattr(backend, "inputs", None)
        if own is None:
            continue
        names = [spec.name for spec in own]
        if len(set(names)) != len(names):
            raise ValueError(f"versions.{version}.inputs: names must be distinct, got {names}")
        if golden is not None and set(golden) != set(names):
            raise ValueError(
                f"versions.{version}.inputs: health_check.inputs must give every input of "
                f"every version ({sorted(names)} here)"
            )


def incompatible_changes(served: Config, proposed: Config) -> list[SchemaChange]:
    """Changes to the inputs of versions that serve that their model's mode forbids."""
    found: list[SchemaChange] = []
    for name, before in served.models.items():
        after = proposed.models.get(name)
        if after is None:
            continue
        forbidden = _BROKEN_BY[before.compatibility]
        if not forbidden:
            continue
        for version in before.versions:
            if version not in after.versions:
                continue
            where = f"models.{name}.versions.{version}.inputs"
            for change in compare_inputs(
                version_inputs(before, version), version_inputs(after, version), where
            ):
                if change.breaks & forbidden:
                    found.append(change)
    return found


def refuse_incompatible(served: Config, proposed: Config) -> None:
    """IncompatibleInputs naming every forbidden change, with the mode that forbids it."""
    changes = incompatible_changes(served, proposed)
    if not changes:
        return
    modes = {
        name: model.compatibility
        for name, model in served.models.items()
        if any(change.path.startswith(f"models.{name}.") for change in changes)
    }
    shown = ", ".join(f"{name}: {mode}" for name, mode in sorted(modes.items()))
    raise IncompatibleInputs(
        f"incompatible change to the inputs of a serving version (compatibility {shown}): "
        + "; ".join(change.render() for change in changes)
        + ". Nothing was changed: add a new version for the new inputs, or set the model's "
        "compatibility (none allows anything) in a revision of its own first"
    )


def compare_inputs(
    old: list[TensorSpec], new: list[TensorSpec], where: str = "inputs"
) -> Iterator[SchemaChange]:
    """Every difference between two input schemas, with the directions it breaks."""
    before = {spec.name: spec for spec in old}
    after = {spec.name: spec for spec in new}
    for name in before.keys() - after.keys():
        yield SchemaChange(f"{where}.{name}", "input removed", BOTH)
    for name in after.keys() - before.keys():
        yield SchemaChange(f"{where}.{name}", "input added", BOTH)
    for name in sorted(before.keys() & after.keys()):
        yield from _tensor_changes(before[name], after[name], f"{where}.{name}")


def _tensor_changes(old: TensorSpec, new: TensorSpec, where: str) -> Iterator[SchemaChange]:
    if old.datatype != new.datatype:
        yield SchemaChange(
            f"{where}.datatype",
            f"{old.datatype} -> {new.datatype}",
            _datatype_breaks(old.datatype, new.datatype),
        )
    yield from _shape_changes(old.shape, new.shape, f"{where}.shape")
    if old.columns and new.columns and old.columns != new.columns:
        yield SchemaChange(f"{where}.columns", "columns renamed or reordered", BOTH)
    yield from _bound(f"{where}.range", _low(old.range), _low(new.range), lower=True)
    yield from _bound(f"{where}.range", _high(old.range), _high(new.range), lower=False)
    yield from _set_change(f"{where}.labels", old.labels, new.labels)
    if old.allow_nan != new.allow_nan:
        yield SchemaChange(
            f"{where}.allow_nan", f"{old.allow_nan} -> {new.allow_nan}", _loosened(new.allow_nan)
        )
    old_features, new_features = _by_index(old), _by_index(new)
    for index in sorted(old_features.keys() | new_features.keys()):
        name = _column_name(new, index) or _column_name(old, index)
        yield from _feature_changes(
            old_features.get(index, FeatureConstraint()),
            new_features.get(index, FeatureConstraint()),
            f"{where}.features.{name}",
        )


def _datatype_breaks(old: str, new: str) -> frozenset[str]:
    widening = widens(old, new)
    narrowing = widens(new, old)
    if widening:
        return FORWARD
    if narrowing:
        return BACKWARD
    return BOTH


def widens(old: str, new: str) -> bool:
    """``new`` holds every value of ``old`` exactly (a cast the gateway makes)."""
    if old == new or "BYTES" in (old, new) or "BOOL" in (old, new):
        return False
    return bool(np.can_cast(DATATYPE_TO_DTYPE[old], DATATYPE_TO_DTYPE[new], "safe"))


def _shape_changes(old: list[int], new: list[int], where: str) -> Iterator[SchemaChange]:
    if len(old) != len(new):
        yield SchemaChange(where, f"rank {len(old)} -> {len(new)} ({old} -> {new})", BOTH)
        return
    for axis, (was, now) in enumerate(zip(old, new, strict=True)):
        if was == now:
            continue
        if now == -1:
            breaks = FORWARD  # any size now: more requests pass
        elif was == -1:
            breaks = BACKWARD
        else:
            breaks = BOTH
        yield SchemaChange(f"{where}[{axis}]", f"{_size(was)} -> {_size(now)}", breaks)


def _size(size: int) -> str:
    return "any size" if size == -1 else str(size)


def _low(bounds: tuple[float, float] | None) -> float | None:
    return bounds[0] if bounds is not None else None


def _high(bounds: tuple[float, float] | None) -> float | None:
    return bounds[1] if bounds is not None else None


def _bound(
    where: str, old: float | None, new: float | None, *, lower: bool
) -> Iterator[SchemaChange]:
    """A lower (``lower``) or upper bound changed; None is no bound."""
    if old == new:
        return
    was = -math.inf if old is None else old
    now = -math.inf if new is None else new
    if not lower:
        was = math.inf if old is None else old
        now = math.inf if new is None else new
    looser = now < was if lower else now > was
    what = "min" if lower else "max"
    yield SchemaChange(
        f"{where}.{what}" if where.endswith(".range") else where,
        f"{what} {_shown(old)} -> {_shown(new)}",
        FORWARD if looser else BACKWARD,
    )


def _shown(value: float | None) -> str:
    return "none" if value is None else f"{value:g}"


def _set_change(where: str, old: list[Any] | None, new: list[Any] | None) -> Iterator[SchemaChange]:
    if old == new:
        return
    if new is None:
        yield SchemaChange(where, "no longer restricted", FORWARD)
        return
    if old is None:
        yield SchemaChange(where, f"restricted to {len(new)} value(s)", BACKWARD)
        return
    before, after = set(map(str, old)), set(map(str, new))
    if before == after:
        return
    if before < after:
        yield SchemaChange(where, f"added {sorted(after - before)}", FORWARD)
    elif after < before:
        yield SchemaChange(where, f"removed {sorted(before - after)}", BACKWARD)
    else:
        yield SchemaChange(
            where, f"added {sorted(after - before)}, removed {sorted(before - after)}", BOTH
        )


def _loosened(allowed_now: bool) -> frozenset[str]:
    return FORWARD if allowed_now else BACKWARD


def _feature_changes(
    old: FeatureConstraint, new: FeatureConstraint, where: str
) -> Iterator[SchemaChange]:
    yield from _bound(f"{where}.min", old.min, new.min, lower=True)
    yield from _bound(f"{where}.max", old.max, new.max, lower=False)
    yield from _set_change(f"{where}.categories", old.categories, new.categories)
    if old.integer != new.integer:
        yield SchemaChange(
            f"{where}.integer", f"{old.integer} -> {new.integer}", _loosened(not new.integer)
        )
    for flag in ("allow_nan", "allow_inf"):
        was, now = getattr(old, flag), getattr(new, flag)
        if was != now:
            yield SchemaChange(f"{where}.{flag}", f"{was} -> {now}", _loosened(now))


def _by_index(spec: TensorSpec) -> dict[int, FeatureConstraint]:
    found = {}
    for key, constraint in (spec.features or {}).items():
        if spec.columns and key in spec.columns:
            found[spec.columns.index(key)] = constraint
        else:
            found[int(key)] = constraint
    return found


def _column_name(spec: TensorSpec, index: int) -> str | None:
    if spec.columns and index < len(spec.columns):
        return spec.columns[index]
    return str(index) if spec.shape and index < spec.shape[-1] else None
