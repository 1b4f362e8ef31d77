"""In-process backends, with real models and an injected clock (no sleeping)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from failsoft.backends.local import (
    FAST_STREAK,
    INLINE_BELOW_S,
    LEAVE_AT_ONCE_S,
    SLOW_STREAK,
    InProcessReplica,
)
from failsoft.backends.onnx import load_onnx
from failsoft.backends.python import load_python
from failsoft.backends.sklearn import load_sklearn
from failsoft.call import Call
from failsoft.clock import SystemClock
from failsoft.config import OnnxBackend, PythonBackend, SklearnBackend, TensorSpec
from failsoft.errors import BackendLoadError, DeadlineExceeded, ModelError
from failsoft.observe.events import EventBus
from failsoft.protocol.types import InferRequest, Tensors

FEATURES = [TensorSpec(name="features", datatype="FP32", shape=[-1, 4])]
LABEL = [TensorSpec(name="label", datatype="INT64", shape=[-1])]
ROW = np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32)
REQUEST = InferRequest({"features": ROW})


class StepClock:
    """Each call returns the previous value plus the next step (set by the test)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.step = 0.0

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def call(seconds: float = 10.0) -> Call:
    return Call("test", "m", "v1", time.monotonic() + seconds, EventBus(), SystemClock())


def identity(inputs: Tensors) -> Tensors:
    return {"label": np.zeros(len(inputs["features"]), dtype=np.int64)}


@pytest.fixture
async def inline() -> AsyncIterator[tuple[InProcessReplica, StepClock]]:
    """An auto-mode replica that has gone inline after a streak of fast calls, and its clock."""
    clock = StepClock()
    replica = InProcessReplica("r0", lambda: identity, "auto", clock, clock)
    await replica.start()
    try:
        clock.step = INLINE_BELOW_S / 4  # a call lasts one step: a quarter of the line
        for _ in range(FAST_STREAK - 1):
            await replica.infer(REQUEST, call())
        assert not replica.inline
        await replica.infer(REQUEST, call())
        assert replica.inline
        yield replica, clock
    finally:
        await replica.close()


async def test_auto_mode_goes_inline_after_a_fast_streak_and_back_after_slow_ones(
    inline: tuple[InProcessReplica, StepClock],
) -> None:
    replica, clock = inline
    clock.step = 2 * INLINE_BELOW_S  # calls of twice the line
    for _ in range(SLOW_STREAK - 1):
        await replica.infer(REQUEST, call())
        assert replica.inline  # a preempted call or two: stay
    await replica.infer(REQUEST, call())
    assert not replica.inline


async def test_a_fast_call_between_slow_ones_keeps_the_replica_inline(
    inline: tuple[InProcessReplica, StepClock],
) -> None:
    replica, clock = inline
    for _ in range(3):
        clock.step = 2 * INLINE_BELOW_S
        for _ in range(SLOW_STREAK - 1):
            await replica.infer(REQUEST, call())
        clock.step = INLINE_BELOW_S / 4
        await replica.infer(REQUEST, call())
    assert replica.inline


async def test_one_call_that_stalls_the_loop_leaves_it_at_once(
    inline: tuple[InProcessReplica, StepClock],
) -> None:
    replica, clock = inline
    clock.step = 2 * LEAVE_AT_ONCE_S  # one call of 2x the stall that leaves at once
    await replica.infer(REQUEST, call())
    assert not replica.inline


async def test_thread_mode_never_goes_inline() -> None:
    clock = StepClock()
    replica = InProcessReplica("r0", lambda: identity, "thread", clock, clock)
    await replica.start()
    try:
        for _ in range(FAST_STREAK + 1):
            await replica.infer(InferRequest({"features": ROW}), call())
        assert not replica.inline
    finally:
        await replica.close()


async def test_past_deadline_is_refused_before_calling_the_model() -> None:
    replica = InProcessReplica("r0", lambda: identity, "inline")
    await replica.start()
    with pytest.raises(DeadlineExceeded):
        await replica.infer(InferRequest({"features": ROW}), call(-1.0))
    await replica.close()


async def test_a_raising_model_is_a_model_error() -> None:
    def broken(inputs: Tensors) -> Tensors:
        raise ValueError("bad weights")

    replica = InProcessReplica("r0", lambda: broken, "inline")
    await replica.start()
    with pytest.raises(ModelError, match="ValueError: bad weights"):
        await replica.infer(InferRequest({"features": ROW}), call())
    await replica.close()


def test_onnx_backend_runs_the_demo_model(demo_dir: Path) -> None:
    predict = load_onnx(
        OnnxBackend(backend="onnx", path=demo_dir / "iris-v1.onnx"), FEATURES, LABEL
    )
    assert predict({"features": ROW})["label"].tolist() == [0]


def test_onnx_backend_names_inputs_the_model_lacks(demo_dir: Path) -> None:
    wrong = [TensorSpec(name="x", datatype="FP32", shape=[-1, 4])]
    with pytest.raises(BackendLoadError, match=r"declared inputs \['x'\] are not in the model"):
        load_onnx(OnnxBackend(backend="onnx", path=demo_dir / "iris-v1.onnx"), wrong, LABEL)


def test_onnx_backend_checks_a_pinned_digest(demo_dir: Path) -> None:
    config = OnnxBackend(backend="onnx", path=demo_dir / "iris-v1.onnx", sha256="0" * 64)
    with pytest.raises(BackendLoadError, match="sha256 is"):
        load_onnx(config, FEATURES, LABEL)


@pytest.fixture
def joblib_model(tmp_path: Path) -> tuple[Path, str]:
    iris = load_iris()
    model = LogisticRegression(max_iter=1000).fit(iris.data, iris.target)
    path = tmp_path / "iris.joblib"
    joblib.dump(model, path)
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def test_sklearn_backend_loads_a_pinned_file(joblib_model: tuple[Path, str]) -> None:
    path, digest = joblib_model
    outputs = [*LABEL, TensorSpec(name="probabilities", datatype="FP32", shape=[-1, 3])]
    config = SklearnBackend(
        backend="sklearn",
        path=path,
        sha256=digest,
        methods={"label": "predict", "probabilities": "predict_proba"},
    )
    result = load_sklearn(config, FEATURES, outputs)({"features": ROW})
    assert result["label"].tolist() == [0]
    assert result["label"].dtype == np.int64
    assert result["probabilities"].dtype == np.float32


def test_sklearn_backend_refuses_a_file_that_changed(joblib_model: tuple[Path, str]) -> None:
    path, digest = joblib_model
    path.write_bytes(path.read_bytes() + b"tampered")
    config = SklearnBackend(backend="sklearn", path=path, sha256=digest)
    with pytest.raises(BackendLoadError, match="but the configuration pins"):
        load_sklearn(config, FEATURES, LABEL)


def test_python_backend_checks_what_the_function_returns() -> None:
    predict = load_python(PythonBackend(backend="python", function="builtins:dict"))
    assert predict({"a": ROW}) == {"a": ROW}
    bad = load_python(PythonBackend(backend="python", function="builtins:list"))
    with pytest.raises(ModelError, match="must return a dict"):
        bad({"a": ROW})


def test_python_backend_import_errors_are_clear() -> None:
    with pytest.raises(BackendLoadError, match="cannot import 'no_such_module'"):
        load_python(PythonBackend(backend="python", function="no_such_module:f"))
    with pytest.raises(BackendLoadError, match="no callable 'nope'"):
        load_python(PythonBackend(backend="python", function="math:nope"))
