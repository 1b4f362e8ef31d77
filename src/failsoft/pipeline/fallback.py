"""The fallback chain: who answers when a version cannot.

Tiers are tried in order, each with what is left of the deadline: another
version of the model, another model with the same inputs, a Python
heuristic, a static answer, or the last good answer for the same input
(stale-if-error). Every fallback answer still passes the model's output
contract and is marked degraded.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
from pydantic import Discriminator, Field, Tag

from failsoft._options import StrictModel
from failsoft.errors import BackendLoadError, FailsoftError, ModelError
from failsoft.observe.events import Event
from failsoft.protocol.datatypes import DATATYPE_TO_DTYPE
from failsoft.protocol.types import Tensors


class VersionTier(StrictModel):
    version: str = Field(description="another version of the same model")


class ModelTier(StrictModel):
    model: str = Field(description="another model taking the same inputs")
    version: str | None = None


class PythonTier(StrictModel):
    python: Annotated[str, Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")]


class StaticTier(StrictModel):
    static: dict[str, Any] = Field(description="output name -> one row of values, repeated per row")


class StaleCacheTier(StrictModel):
    stale_cache: bool = True


_TIER_KEYS = ("version", "model", "python", "static", "stale_cache")


def _tier_kind(value: Any) -> str | None:
    """Which tier a value is: the first tier key it has (dicts) or its class."""
    if isinstance(value, dict):
        return next((key for key in _TIER_KEYS if key in value), None)
    return _TIER_OF_CLASS.get(type(value).__name__)


FallbackTier = Annotated[
    Annotated[VersionTier, Tag("version")]
    | Annotated[ModelTier, Tag("model")]
    | Annotated[PythonTier, Tag("python")]
    | Annotated[StaticTier, Tag("static")]
    | Annotated[StaleCacheTier, Tag("stale_cache")],
    Discriminator(
        _tier_kind,
        custom_error_type="fallback_tier",
        custom_error_message="a fallback tier has one of the keys " + ", ".join(_TIER_KEYS),
    ),
]
_TIER_OF_CLASS = {
    "VersionTier": "version",
    "ModelTier": "model",
    "PythonTier": "python",
    "StaticTier": "static",
    "StaleCacheTier": "stale_cache",
}


def tier_name(tier: StrictModel) -> str:
    """How a tier is named in Failsoft-Served-By and metrics."""
    if isinstance(tier, VersionTier):
        return f"version:{tier.version}"
    if isinstance(tier, ModelTier):
        return f"model:{tier.model}"
    if isinstance(tier, PythonTier):
        return "heuristic"
    if isinstance(tier, StaticTier):
        return "static"
    return "stale_cache"


@dataclass(slots=True)
class FallbackUsed(Event):
    model: str
    version: str
    tier: str
    reason: str  # the failure that sent the request down the chain


@dataclass(slots=True)
class FallbackTierFailed(Event):
    model: str
    tier: str
    message: str


Heuristic = Callable[[Tensors], Tensors]


def load_heuristic(tier: PythonTier) -> Heuristic:
    module_name, _, attribute = tier.python.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise BackendLoadError(f"fallback {tier.python}: {error}") from None
    if not callable(function):
        raise BackendLoadError(f"fallback {tier.python} is not callable")
    heuristic: Heuristic = function
    return heuristic


def static_outputs(static: dict[str, Any], datatypes: Mapping[str, str], rows: int) -> Tensors:
    """The static answer, one copy of each configured row per request row."""
    outputs: Tensors = {}
    for name, row in static.items():
        dtype = DATATYPE_TO_DTYPE[datatypes[name]]
        value = np.asarray(row, dtype=dtype)
        outputs[name] = np.repeat(value[np.newaxis, ...], rows, axis=0)
    return outputs


def run_heuristic(heuristic: Heuristic, inputs: Tensors) -> Tensors:
    try:
        outputs = heuristic(inputs)
    except FailsoftError:
        raise
    except Exception as error:
        raise ModelError(f"heuristic raised {type(error).__name__}: {error}") from error
    if not isinstance(outputs, dict):
        raise ModelError("a heuristic must return a dict of output name -> numpy array")
    return {name: np.asarray(value) for name, value in outputs.items()}
