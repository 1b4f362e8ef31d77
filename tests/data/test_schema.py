"""Input schema evolution: which changes break which direction, and what each mode refuses."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from failsoft.config import parse_config
from failsoft.data.contracts import ModelContract
from failsoft.data.schema import (
    BACKWARD,
    BOTH,
    FORWARD,
    IncompatibleInputs,
    compare_inputs,
    incompatible_changes,
    refuse_incompatible,
    version_inputs,
)
from failsoft.protocol.spec import TensorSpec
from failsoft.protocol.types import InferRequest

BASE: dict[str, Any] = {
    "name": "x",
    "datatype": "FP32",
    "shape": [-1, 4],
    "columns": ["a", "b", "c", "d"],
    "features": {"a": {"min": 0, "max": 10}, "b": {"categories": [1, 2, 3]}},
}


def changed(**update: Any) -> TensorSpec:
    data = copy.deepcopy(BASE)
    data.update(update)
    return TensorSpec.model_validate(data)


def breaks(new: TensorSpec | None, extra: list[TensorSpec] | None = None) -> list[tuple[str, Any]]:
    old = [TensorSpec.model_validate(BASE)]
    now = ([new] if new is not None else []) + (extra or [])
    return [(change.path, change.breaks) for change in compare_inputs(old, now)]


FEATURES = BASE["features"]


@pytest.mark.parametrize(
    ("new", "expected"),
    [
        (changed(), []),
        (changed(datatype="FP64"), [("inputs.x.datatype", FORWARD)]),  # widened
        (changed(datatype="FP16"), [("inputs.x.datatype", BACKWARD)]),  # narrowed
        (changed(datatype="INT64", features={"a": {"min": 0, "max": 10}}), None),
        (changed(shape=[4, 4]), [("inputs.x.shape[0]", BACKWARD)]),
        (changed(columns=["a", "b", "c", "d"]), []),
        (
            changed(features={"a": {"min": -5, "max": 10}, "b": FEATURES["b"]}),
            [("inputs.x.features.a.min", FORWARD)],
        ),
        (
            changed(features={"a": {"min": 0, "max": 5}, "b": FEATURES["b"]}),
            [("inputs.x.features.a.max", BACKWARD)],
        ),
        (
            changed(features={"a": FEATURES["a"], "b": {"categories": [1, 2, 3, 4]}}),
            [("inputs.x.features.b.categories", FORWARD)],
        ),
        (
            changed(features={"a": FEATURES["a"], "b": {"categories": [1, 2, 4]}}),
            [("inputs.x.features.b.categories", BOTH)],
        ),
        (changed(features={"a": FEATURES["a"]}), [("inputs.x.features.b.categories", FORWARD)]),
        (
            changed(features={**FEATURES, "c": {"integer": True}}),
            [("inputs.x.features.c.integer", BACKWARD)],
        ),
        (
            changed(range=[0, 100]),
            [("inputs.x.range.min", BACKWARD), ("inputs.x.range.max", BACKWARD)],
        ),
        (changed(columns=["b", "a", "c", "d"], features={}), None),
    ],
)
def test_each_difference_breaks_the_direction_it_should(
    new: TensorSpec, expected: list[tuple[str, Any]] | None
) -> None:
    found = breaks(new)
    if expected is None:  # several changes, one of them breaking both ways
        assert any(direction == BOTH for _, direction in found), found
    else:
        assert found == expected


def test_shape_loosened_and_other_sizes() -> None:
    old = [TensorSpec(name="x", datatype="FP32", shape=[1, 4])]
    free = [TensorSpec(name="x", datatype="FP32", shape=[-1, 4])]
    other = [TensorSpec(name="x", datatype="FP32", shape=[1, 5])]
    deeper = [TensorSpec(name="x", datatype="FP32", shape=[1, 4, 1])]
    assert [c.breaks for c in compare_inputs(old, free)] == [FORWARD]
    assert [c.breaks for c in compare_inputs(old, other)] == [BOTH]
    assert [c.breaks for c in compare_inputs(old, deeper)] == [BOTH]


def test_inputs_added_or_removed_break_both_ways() -> None:
    extra = TensorSpec(name="y", datatype="INT64", shape=[-1])
    base = TensorSpec.model_validate(BASE)
    assert breaks(base, [extra]) == [("inputs.y", BOTH)]
    assert breaks(None, [extra]) == [("inputs.x", BOTH), ("inputs.y", BOTH)]


def model(
    model_inputs: list[dict[str, Any]], compatibility: str = "backward", **v2: Any
) -> dict[str, Any]:
    return {
        "models": {
            "m": {
                "inputs": model_inputs,
                "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1]}],
                "versions": {
                    "v1": {"backend": "python", "function": "tests._runtime_models:healthy"},
                    "v2": {"backend": "python", "function": "tests._runtime_models:healthy", **v2},
                },
                "default_version": "v1",
                "compatibility": compatibility,
            }
        }
    }


X = {"name": "x", "datatype": "FP32", "shape": [-1, 2]}
WIDE = {"name": "x", "datatype": "FP64", "shape": [-1, 2]}


@pytest.mark.parametrize(
    ("mode", "refused"),
    [("backward", False), ("forward", True), ("full", True), ("none", False)],
)
def test_each_mode_refuses_what_breaks_its_directions(mode: str, refused: bool) -> None:
    served = parse_config(model([X], mode))
    widened = parse_config(model([WIDE], mode))
    found = incompatible_changes(served, widened)
    assert bool(found) is refused
    if refused:
        assert [c.path for c in found] == [
            "models.m.versions.v1.inputs.x.datatype",
            "models.m.versions.v2.inputs.x.datatype",
        ]


def test_a_version_declares_its_own_inputs_and_is_judged_on_them() -> None:
    served = parse_config(model([X]))
    assert version_inputs(served.models["m"], "v2")[0].datatype == "FP32"
    # v2 declares narrower inputs of its own: only v2 changes, and backward refuses it.
    narrowed = parse_config(model([X], inputs=[{**X, "datatype": "FP16"}]))
    assert version_inputs(narrowed.models["m"], "v2")[0].datatype == "FP16"
    assert version_inputs(narrowed.models["m"], "v1")[0].datatype == "FP32"
    with pytest.raises(IncompatibleInputs) as refused:
        refuse_incompatible(served, narrowed)
    message = refused.value.message
    assert refused.value.status == 409
    assert "compatibility m: backward" in message
    assert "models.m.versions.v2.inputs.x.datatype: FP32 -> FP16 (breaks backward)" in message
    assert "versions.v1" not in message
    # A version that does not serve yet may take any inputs.
    added = model([X])
    added["models"]["m"]["versions"]["v3"] = {
        "backend": "python",
        "function": "tests._runtime_models:healthy",
        "inputs": [{"name": "z", "datatype": "BYTES", "shape": [-1]}],
    }
    refuse_incompatible(served, parse_config(added))


def test_the_serving_mode_applies_not_the_proposed_one() -> None:
    served = parse_config(model([X], "full"))
    relaxed = parse_config(model([WIDE], "none"))
    with pytest.raises(IncompatibleInputs, match="compatibility m: full"):
        refuse_incompatible(served, relaxed)
    refuse_incompatible(served, parse_config(model([X], "none")))  # the mode alone: fine
    refuse_incompatible(parse_config(model([X], "none")), relaxed)


def test_a_widened_input_still_takes_the_old_datatype_exactly() -> None:
    contract = ModelContract(
        [TensorSpec(name="x", datatype="FP64", shape=[-1, 2])],
        [TensorSpec(name="y", datatype="FP32", shape=[-1])],
    )
    request = InferRequest({"x": np.array([[0.1, 2.5]], dtype=np.float32)}, raw=b"old body")
    assert contract.check_request(request) == 1
    assert request.inputs["x"].dtype == np.float64
    assert request.inputs["x"].tolist() == np.array([[0.1, 2.5]], dtype=np.float32).tolist()
    assert request.raw is None  # a proxy must send the converted tensor, not the old body


def accepts(spec: TensorSpec, array: np.ndarray) -> bool:
    """Does a gateway with this input take ``array`` (contract and feature constraints)?"""
    from failsoft.data.input_checks import InputChecks
    from failsoft.errors import BadRequest

    outputs = [TensorSpec(name="y", datatype="FP32", shape=[-1])]
    request = InferRequest({"x": array})
    try:
        ModelContract([spec], outputs).check_request(request)
    except BadRequest:
        return False
    return InputChecks([spec], "reject").find(request) is None


bounds = st.one_of(st.none(), st.integers(-4, 4).map(float))


@st.composite
def schemas(draw: st.DrawFn) -> TensorSpec:
    low, high = draw(bounds), draw(bounds)
    if low is not None and high is not None and low > high:
        low, high = high, low
    feature = {"min": low, "max": high} if low is not None or high is not None else {}
    return TensorSpec.model_validate(
        {
            "name": "x",
            "datatype": draw(st.sampled_from(["FP16", "FP32", "FP64"])),
            "shape": [draw(st.sampled_from([-1, 2])), 2],
            "features": {"1": feature} if feature else None,
        }
    )


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(
    old=schemas(),
    new=schemas(),
    rows=st.integers(1, 3),
    dtype=st.sampled_from(["FP16", "FP32", "FP64"]),
    values=st.lists(st.integers(-6, 6), min_size=6, max_size=6),
)
def test_a_change_that_breaks_no_direction_keeps_requests_accepted(
    old: TensorSpec, new: TensorSpec, rows: int, dtype: str, values: list[int]
) -> None:
    """The claims, checked against the gateway's own checks: without a backward break, every
    request the old schema takes the new one takes; without a forward break, the reverse."""
    from failsoft.protocol.datatypes import DATATYPE_TO_DTYPE

    array = np.array(values[: rows * 2], dtype=DATATYPE_TO_DTYPE[dtype]).reshape(rows, 2)
    breaks = set().union(*(c.breaks for c in compare_inputs([old], [new])))
    if "backward" not in breaks and accepts(old, array):
        assert accepts(new, array.copy()), (old, new, array)
    if "forward" not in breaks and accepts(new, array):
        assert accepts(old, array.copy()), (old, new, array)
