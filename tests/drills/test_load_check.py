"""Correctness of a drill's answers (is_correct) and its request bodies (prepare)."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest

from failsoft.drills.experiment import RequestSpec
from failsoft.drills.load import NO_ANSWER, NOT_SENT, is_correct, prepare

FEATURES: list[dict[str, Any]] = [
    {"name": "features", "datatype": "FP32", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}
]


def _answer(**outputs: list[Any]) -> bytes:
    """A V2 inference response with the given outputs."""
    return orjson.dumps(
        {
            "model_name": "iris",
            "outputs": [
                {"name": name, "datatype": "FP32", "shape": [len(data)], "data": data}
                for name, data in outputs.items()
            ],
        }
    )


def _expect(**outputs: list[Any]) -> dict[str, np.ndarray] | None:
    return prepare(RequestSpec(inputs=FEATURES, expect=outputs)).expect


def test_exact_int_label_is_correct() -> None:
    assert is_correct(_answer(label=[1]), _expect(label=[1]))


def test_different_int_label_is_wrong() -> None:
    assert not is_correct(_answer(label=[2]), _expect(label=[1]))


def test_int_labels_of_a_batch_must_all_match() -> None:
    assert is_correct(_answer(label=[0, 1, 2]), _expect(label=[0, 1, 2]))
    assert not is_correct(_answer(label=[0, 2, 1]), _expect(label=[0, 1, 2]))


def test_floats_within_tolerance_are_correct() -> None:
    answer = _answer(probabilities=[0.10005, 0.79995, 0.1])

    assert is_correct(answer, _expect(probabilities=[0.1, 0.8, 0.1]))


def test_floats_beyond_tolerance_are_wrong() -> None:
    answer = _answer(probabilities=[0.1003, 0.7997, 0.1])

    assert not is_correct(answer, _expect(probabilities=[0.1, 0.8, 0.1]))


def test_large_floats_beyond_tolerance_are_wrong() -> None:
    assert not is_correct(_answer(value=[1000.005]), _expect(value=[1000.0]))


def test_float_answer_to_an_int_label_is_compared_within_tolerance() -> None:
    assert is_correct(_answer(label=[1.0]), _expect(label=[1]))
    assert not is_correct(_answer(label=[1.5]), _expect(label=[1]))


def test_wrong_size_is_wrong() -> None:
    assert not is_correct(_answer(label=[0, 0]), _expect(label=[0]))
    assert not is_correct(_answer(label=[]), _expect(label=[0]))


def test_shape_is_not_checked_only_the_values_in_order() -> None:
    assert is_correct(_answer(probabilities=[0.2, 0.8]), _expect(probabilities=[[0.2, 0.8]]))


def test_missing_output_is_wrong() -> None:
    assert not is_correct(_answer(probabilities=[0.2, 0.8]), _expect(label=[0]))


def test_every_expected_output_must_match() -> None:
    expect = _expect(label=[1], probabilities=[0.2, 0.8])

    assert is_correct(_answer(label=[1], probabilities=[0.2, 0.8]), expect)
    assert not is_correct(_answer(label=[1], probabilities=[0.8, 0.2]), expect)


def test_outputs_not_expected_are_ignored() -> None:
    assert is_correct(_answer(label=[1], probabilities=[0.2, 0.8]), _expect(label=[1]))


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"{not json",
        b'{"outputs": [{"name": "label", "data": [1]}',
        b"[]",
        b'"label"',
        b"{}",
        b'{"outputs": null}',
        b'{"outputs": [{"name": "label"}]}',
        b'{"outputs": [{"data": [1]}]}',
        b'{"outputs": [{"name": "label", "data": [[1], [1, 2]]}]}',
    ],
    ids=[
        "empty",
        "not-json",
        "truncated",
        "array",
        "string",
        "no-outputs",
        "null-outputs",
        "no-data",
        "no-name",
        "ragged-data",
    ],
)
def test_malformed_answer_is_wrong(payload: bytes) -> None:
    assert not is_correct(payload, _expect(label=[1]))


def test_anything_is_correct_without_expectations() -> None:
    assert is_correct(b"{not json", None)


def test_prepare_builds_a_v2_json_body_with_the_inputs() -> None:
    prepared = prepare(RequestSpec(inputs=FEATURES, expect={"label": [0]}))

    assert orjson.loads(prepared.body) == {"inputs": FEATURES}
    assert prepared.expect is not None
    assert list(prepared.expect) == ["label"]
    np.testing.assert_array_equal(prepared.expect["label"], np.asarray([0]))


def test_prepare_keeps_float_and_int_expectations_apart() -> None:
    prepared = prepare(RequestSpec(inputs=FEATURES, expect={"label": [0], "p": [0.5, 0.5]}))

    assert prepared.expect is not None
    assert prepared.expect["label"].dtype.kind == "i"
    assert prepared.expect["p"].dtype.kind == "f"


def test_prepare_without_expectations_checks_nothing() -> None:
    prepared = prepare(RequestSpec(inputs=FEATURES))

    assert prepared.expect is None
    assert orjson.loads(prepared.body) == {"inputs": FEATURES}


def test_lost_request_statuses_are_not_http_statuses() -> None:
    assert NOT_SENT < 100
    assert NO_ANSWER < 100
    assert NOT_SENT != NO_ANSWER
