"""The python backend: a `module:function` taking and returning dicts of arrays."""

from __future__ import annotations

import importlib

from failsoft.backends.local import Predict
from failsoft.config import PythonBackend
from failsoft.errors import BackendLoadError


def load_python(config: PythonBackend) -> Predict:
    module_name, _, attribute = config.function.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:
        raise BackendLoadError(f"cannot import {module_name!r}: {error}") from None
    function = getattr(module, attribute, None)
    if not callable(function):
        raise BackendLoadError(f"{config.function}: no callable {attribute!r} in {module_name}")
    predict: Predict = function
    return predict
