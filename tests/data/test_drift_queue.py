"""Drift's queue: answers' tensors joined by their bytes as they come, not held."""

from __future__ import annotations

import gc
import weakref

import numpy as np

from failsoft.data.drift_queue import PendingAnswers


def test_rows_are_joined_in_order_and_the_answers_arrays_are_let_go() -> None:
    pending = PendingAnswers(["features"], ["label"])
    rng = np.random.default_rng(3)
    rows = rng.normal(size=(50, 4)).astype(np.float32)
    gc.disable()  # only reference counts may free them
    try:
        refs = []
        for i in range(50):
            features, label = rows[i : i + 1].copy(), np.array([i], dtype=np.int64)
            refs.append(weakref.ref(features))
            pending.add({"features": features, "label": label}, {"label": label})
            del features, label
        assert all(ref() is None for ref in refs)
    finally:
        gc.enable()
    inputs, outputs = pending.tensors()
    np.testing.assert_array_equal(inputs["features"], rows)
    np.testing.assert_array_equal(outputs["label"], np.arange(50))
    assert (pending.answers, pending.unlike) == (50, 0)


def test_a_tensor_unlike_the_first_is_left_out_and_counted() -> None:
    pending = PendingAnswers(["features"], ["label"])
    pending.add({"features": np.ones((2, 4), np.float32)}, {"label": np.zeros(2, np.int64)})
    pending.add({"features": np.ones((1, 5), np.float32)}, {"label": np.zeros(1, np.int64)})
    pending.add({"features": np.ones((1, 4), np.float64)}, None)  # another dtype
    pending.add({"features": np.full((1, 4), 7, np.float32)}, None)  # degraded: no outputs
    pending.add({"other": np.ones((1, 4), np.float32)}, {"label": np.ones(1, np.int64)})
    inputs, outputs = pending.tensors()
    assert inputs["features"].shape == (3, 4)
    assert inputs["features"][2].tolist() == [7, 7, 7, 7]
    assert outputs["label"].tolist() == [0, 0, 0, 1]
    assert (pending.answers, pending.unlike) == (5, 2)
    assert pending.fresh().tensors() == ({}, {})


def test_strided_views_scalars_and_strings_are_joined_by_value() -> None:
    pending = PendingAnswers(["x", "colour"], [])
    table = np.arange(24, dtype=np.float32).reshape(4, 6)
    for i in range(4):
        strided = table[i : i + 1, ::2]  # not one contiguous block
        colour = np.array([["red", "blue"][i % 2]], dtype=object)
        pending.add({"x": strided, "colour": colour}, None)
    inputs, _ = pending.tensors()
    np.testing.assert_array_equal(inputs["x"], table[:, ::2])
    assert inputs["colour"].tolist() == ["red", "blue", "red", "blue"]

    scalars = PendingAnswers(["t"], [])
    for value in (1.5, 2.5):
        scalars.add({"t": np.array(value)}, None)
    assert scalars.tensors()[0]["t"].tolist() == [1.5, 2.5]
