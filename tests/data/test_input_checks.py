"""Per-feature input checks: what they find, where they say it is, and the policy applied."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from failsoft.data.input_checks import DataViolated, DataViolation, InputChecks
from failsoft.observe.events import Event
from failsoft.protocol.spec import TensorSpec
from failsoft.protocol.types import InferRequest

COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def spec(**extra: Any) -> TensorSpec:
    data: dict[str, Any] = {"name": "features", "datatype": "FP32", "shape": [-1, 4]}
    data.update(extra)
    return TensorSpec.model_validate(data)


def iris(policy: str = "reject", **extra: Any) -> InputChecks:
    features = {
        "sepal_length": {"min": 4.0, "max": 8.0},
        "3": {"min": 0.0, "max": 2.6},
    }
    return InputChecks([spec(columns=COLUMNS, features=features, **extra)], policy)  # type: ignore[arg-type]


def request(rows: list[list[float]], dtype: Any = np.float32) -> InferRequest:
    return InferRequest({"features": np.array(rows, dtype=dtype)})


def test_rows_within_every_constraint_pass() -> None:
    checks = iris()
    assert checks.find(request([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]])) is None
    assert checks.judge(request([[4.0, 0.0, 0.0, 2.6]])) is None  # bounds are inclusive


def test_a_violation_names_the_tensor_row_column_bound_and_value() -> None:
    checks = iris()
    rows = [[5.1, 3.5, 1.4, 0.2], [5.0, 3.0, 1.0, 9.5], [3.0, 3.0, 1.0, 0.1]]
    found = checks.find(request(rows))
    assert found is not None
    assert found.rows == 2
    first, second = found.violations
    assert first.as_json() == {
        "tensor": "features",
        "row": 1,
        "column": "petal_width",
        "index": 3,
        "position": [1, 3],
        "constraint": "max",
        "value": 9.5,
        "limit": 2.6,
    }
    assert (second.row, second.column, second.constraint, second.limit) == (
        2,
        "sepal_length",
        "min",
        4.0,
    )
    assert found.message == (
        "input 'features' row 1 column 'petal_width': value 9.5 is above max 2.6 "
        "(and 1 more row(s))"
    )
    with pytest.raises(DataViolation) as refused:
        checks.judge(request(rows))
    assert refused.value.status == 422
    assert refused.value.failure_class.value == "data"
    assert refused.value.body()["violating_rows"] == 2


def test_flag_and_degrade_serve_and_say_why_and_count_once_per_request() -> None:
    seen: list[Event] = []
    for policy in ("flag", "degrade"):
        checks = InputChecks([_iris_spec()], policy, "iris", "v1", seen.append)  # type: ignore[arg-type]
        verdict = checks.judge(request([[9.0, 3.0, 1.0, 0.1], [9.0, 3.0, 1.0, 0.1]]))
        assert verdict is not None
        assert verdict.policy == policy
        header = verdict.violation.header().decode()
        assert header.startswith("2 row(s) break the input constraints; input 'features' row 0")
        assert checks.judge(request([[5.0, 3.0, 1.0, 0.1]])) is None
    assert seen == [
        DataViolated("iris", "v1", "features", "sepal_length", "flag"),
        DataViolated("iris", "v1", "features", "sepal_length", "degrade"),
    ]


def _iris_spec() -> TensorSpec:
    return spec(columns=COLUMNS, features={"sepal_length": {"min": 4.0, "max": 8.0}})


def test_categories_integers_nan_and_infinity() -> None:
    features = {
        "0": {"categories": [0, 1, 2]},
        "1": {"integer": True},
        "2": {"allow_nan": False},
        "3": {"allow_inf": True, "allow_nan": True},
    }
    checks = InputChecks([spec(allow_nan=True, features=features)], "reject")
    assert checks.find(request([[1, 7, 0.5, np.inf], [2, -3, 1.0, np.nan]])) is None
    found = checks.find(
        request([[3, 1, 1, 1], [0, 1.5, 1, 1], [0, 1, np.nan, 1], [0, 1, np.inf, -np.inf]])
    )
    assert found is not None
    assert [(v.row, v.column, v.constraint, v.value) for v in found.violations] == [
        (0, "0", "categories", 3.0),
        (1, "1", "integer", 1.5),
        (2, "2", "nan", "nan"),
        (3, "2", "inf", "inf"),  # column 2 allows neither; column 3 allows -inf
    ]
    assert found.rows == 4


def test_bytes_categories_and_integer_tensors() -> None:
    colour = TensorSpec(
        name="c",
        datatype="BYTES",
        shape=[-1, 1],
        columns=["colour"],
        features={"colour": {"categories": ["red", "green"]}},
    )
    count = TensorSpec(name="n", datatype="INT64", shape=[-1, 2], features={"1": {"max": 10}})
    checks = InputChecks([colour, count], "reject")
    ok = InferRequest(
        {
            "c": np.array([[b"red"], [b"green"]], dtype=object),
            "n": np.array([[0, 10], [99, 1]], dtype=np.int64),
        }
    )
    assert checks.find(ok) is None
    bad = InferRequest(
        {
            "c": np.array([[b"red"], [b"blue"]], dtype=object),
            "n": np.array([[0, 11], [0, 1]], dtype=np.int64),
        }
    )
    found = checks.find(bad)
    assert found is not None
    assert [(v.tensor, v.row, v.value) for v in found.violations] == [
        ("c", 1, "blue"),
        ("n", 0, 11),
    ]


def test_a_large_batch_is_checked_whole_and_the_report_is_bounded() -> None:
    rng = np.random.default_rng(0)
    rows = rng.uniform(4.5, 7.5, size=(100_000, 4)).astype(np.float32)
    rows[:, 3] = rng.uniform(0.0, 2.5, size=100_000)
    checks = iris()
    assert checks.find(request(rows.tolist())) is None
    rows[rng.choice(100_000, size=500, replace=False), 0] = 100.0
    found = checks.find(request(rows.tolist()))
    assert found is not None
    assert found.rows == 500
    assert len(found.violations) == 10  # the body stays small
    assert all(v.constraint == "max" and v.column == "sepal_length" for v in found.violations)


def test_a_deeper_tensor_reports_the_full_position() -> None:
    deep = TensorSpec(name="t", datatype="FP64", shape=[-1, 3, 2], features={"1": {"min": 0}})
    array = np.zeros((2, 3, 2))
    array[1, 2, 1] = -1.0
    found = InputChecks([deep], "reject").find(InferRequest({"t": array}))
    assert found is not None
    (violation,) = found.violations
    assert (violation.row, violation.position) == (5, (1, 2, 1))


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ({"features": {"speed": {"min": 0}}}, "features.speed: not a column"),
        ({"features": {"4": {"min": 0}}}, "an index 0..3"),
        ({"columns": ["a", "b"]}, "columns names 2 features"),
        ({"columns": ["a", "a", "b", "c"]}, "columns must be distinct"),
        ({"features": {"0": {"min": 2, "max": 1}}}, "min 2 is above max 1"),
        ({"features": {"0": {"categories": ["x"]}}}, "are numbers"),
        ({"features": {"0": {"allow_nan": True}}}, "need allow_nan on the tensor"),
        ({"shape": [-1, -1], "features": {"0": {"min": 0}}}, "need a fixed last axis"),
    ],
)
def test_constraints_that_cannot_apply_are_refused_at_load(
    extra: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ValidationError, match=problem):
        spec(**extra)


def test_bounds_are_judged_in_the_tensors_own_precision() -> None:
    checks = InputChecks([spec(features={"0": {"max": 0.1}, "1": {"min": 0.1}})], "reject")
    # FP32 0.1 is 0.100000001: above 0.1 in float64, equal to the bound as FP32.
    assert checks.find(request([[0.1, 0.1, 0, 0]])) is None
    assert checks.find(request([[0.1, 0.1, 0, 0]] * 100)) is None  # the vectorised path too
    assert checks.find(request([[0.1001, 0.1, 0, 0]])) is not None


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(
    rows=st.integers(1, 40),
    low=st.floats(-5, 5, width=32),
    width=st.floats(0, 5, width=32),
    seed=st.integers(0, 2**32 - 1),
)
def test_the_loop_and_the_vectorised_path_agree_with_a_plain_reference(
    rows: int, low: float, width: float, seed: int
) -> None:
    high = low + width
    checks = InputChecks([spec(features={"2": {"min": low, "max": high}})], "reject")
    values = np.random.default_rng(seed).uniform(-8, 8, size=(rows, 4)).astype(np.float32)
    column = values[:, 2]
    expected = (column < np.float32(low)) | (column > np.float32(high))
    found = checks.find(InferRequest({"features": values}))  # up to 16 rows: the loop
    wide = np.repeat(values, 3, axis=0)  # > 64 values: numpy
    found_wide = checks.find(InferRequest({"features": wide}))
    assert (found is None) == (not expected.any())
    assert (found_wide is None) == (not expected.any())
    if found is not None and found_wide is not None:
        assert found.rows == int(expected.sum())
        assert found_wide.rows == 3 * int(expected.sum())
        assert found.violations[0].row == int(np.flatnonzero(expected)[0])
