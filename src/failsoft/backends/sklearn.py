"""The sklearn backend: a joblib file, loaded only when its sha256 is pinned.

A joblib file is a pickle and unpickling runs code, so the configuration
must pin the exact file (config validation refuses an unpinned one) and the
bytes are checked before they are unpickled.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from failsoft.backends._files import read_pinned
from failsoft.backends.local import Predict
from failsoft.config import SklearnBackend, TensorSpec
from failsoft.errors import BackendLoadError
from failsoft.protocol.datatypes import DATATYPE_TO_DTYPE
from failsoft.protocol.types import Tensors


def load_sklearn(
    config: SklearnBackend, inputs: list[TensorSpec], outputs: list[TensorSpec]
) -> Predict:
    import joblib

    if config.sha256 is None:  # config validation already refuses this; never unpickle unpinned
        raise BackendLoadError(f"{config.file}: refusing to unpickle a file without a sha256 pin")
    data = read_pinned(config.file, config.sha256)
    try:
        estimator: Any = joblib.load(io.BytesIO(data))
    except Exception as error:
        raise BackendLoadError(f"{config.file}: not a loadable joblib file: {error}") from None
    if len(inputs) != 1:
        raise BackendLoadError("the sklearn backend takes exactly one declared input")
    methods = dict(config.methods) or {outputs[0].name: "predict"}
    declared = {spec.name: spec for spec in outputs}
    for output, method in methods.items():
        if output not in declared:
            raise BackendLoadError(
                f"methods names output {output!r}, which the model does not declare"
            )
        if not callable(getattr(estimator, method, None)):
            raise BackendLoadError(f"{config.file}: the estimator has no method {method!r}")
    missing = [name for name in declared if name not in methods]
    if missing:
        raise BackendLoadError(f"declared outputs {missing} have no method in `methods`")
    input_name = inputs[0].name
    dtypes = {spec.name: DATATYPE_TO_DTYPE[spec.datatype] for spec in outputs}

    def predict(tensors: Tensors) -> Tensors:
        features = tensors[input_name]
        return {
            name: np.asarray(getattr(estimator, method)(features)).astype(dtypes[name], copy=False)
            for name, method in methods.items()
        }

    return predict
