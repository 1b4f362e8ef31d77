"""The python backend: a `module:function` taking and returning dicts of arrays."""

from __future__ import annotations

import importlib

import numpy as np

from failsoft.backends.local import Predict
from failsoft.config import PythonBackend
from failsoft.errors import BackendLoadError, ModelError
from failsoft.protocol.types import Tensors


def load_python(config: PythonBackend) -> Predict:
    module_name, _, attribute = config.function.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:
        raise BackendLoadError(f"cannot import {module_name!r}: {error}") from None
    function = getattr(module, attribute, None)
    if not callable(function):
        raise BackendLoadError(f"{config.function}: no callable {attribute!r} in {module_name}")

    def predict(inputs: Tensors) -> Tensors:
        outputs = function(inputs)
        if not isinstance(outputs, dict) or not all(
            isinstance(k, str) and isinstance(v, np.ndarray) for k, v in outputs.items()
        ):
            raise ModelError(
                f"{config.function} must return a dict of output name -> numpy array, "
                f"got {type(outputs).__name__}"
            )
        return outputs

    return predict
