"""The onnx backend: an onnxruntime session per replica."""

from __future__ import annotations

import numpy as np

from failsoft.backends._files import read_pinned
from failsoft.backends.local import Predict
from failsoft.config import OnnxBackend, TensorSpec
from failsoft.errors import BackendLoadError
from failsoft.protocol.types import Tensors


def load_onnx(config: OnnxBackend, inputs: list[TensorSpec], outputs: list[TensorSpec]) -> Predict:
    import onnxruntime as ort

    data = read_pinned(config.file, config.sha256)
    options = ort.SessionOptions()
    options.intra_op_num_threads = config.threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    try:
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as error:
        raise BackendLoadError(f"{config.file}: not a loadable ONNX model: {error}") from None
    model_inputs = {i.name for i in session.get_inputs()}
    model_outputs = {o.name for o in session.get_outputs()}
    for kind, declared, actual in (
        ("input", inputs, model_inputs),
        ("output", outputs, model_outputs),
    ):
        unknown = [spec.name for spec in declared if spec.name not in actual]
        if unknown:
            raise BackendLoadError(
                f"{config.file}: declared {kind}s {unknown} are not in the model, "
                f"which has {sorted(actual)}"
            )
    output_names = [spec.name for spec in outputs]

    def predict(tensors: Tensors) -> Tensors:
        results = session.run(output_names, tensors)
        return {name: np.asarray(value) for name, value in zip(output_names, results, strict=True)}

    return predict
