"""The fallback chain: who answers when a version cannot.

Tiers are tried in order, each with what is left of the deadline: another
version of the model, another model with the same inputs, a Python
heuristic, a static answer, or the last good answer for the same input
(stale-if-error). Every fallback answer still passes the model's output
contract and is marked degraded.

``FallbackChain`` runs the tiers of one model. It knows the model's versions
and is handed a ``resolve`` function for other models, so it never reaches up
into the runtime that owns it. A request shed by admission control runs only
the local tiers (heuristic, static, stale cache): its model's replicas must
not see it.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
from pydantic import Discriminator, Field, Tag

from failsoft._options import StrictModel
from failsoft.call import Call
from failsoft.data.contracts import ModelContract
from failsoft.errors import BackendLoadError, FailsoftError, ModelError
from failsoft.observe import tracing
from failsoft.observe.events import Event, EventBus
from failsoft.pipeline.cache import CacheKey, ResponseCache
from failsoft.protocol.datatypes import DATATYPE_TO_DTYPE
from failsoft.protocol.types import InferRequest, Tensors


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


# (model, version or None for its default) -> a coroutine running that version's pipeline
Infer = Callable[[InferRequest, Call], Awaitable[Tensors]]
Resolve = Callable[[str, str | None], Infer]


@dataclass(slots=True)
class FallbackAnswer:
    outputs: Tensors
    version: str  # the version that answered (the failed one for local tiers)
    tier: str


class FallbackChain:
    """The fallback tiers of one model, tried in order."""

    def __init__(
        self,
        model: str,
        tiers: list[FallbackTier],
        contract: ModelContract,
        output_types: Mapping[str, str],
        cache: ResponseCache,
        resolve: Resolve,
        bus: EventBus,
    ) -> None:
        self._model = model
        self._tiers = tiers
        self._contract = contract
        self._output_types = output_types
        self._cache = cache
        self._resolve = resolve
        self._bus = bus
        self._heuristics = {
            index: load_heuristic(tier)
            for index, tier in enumerate(tiers)
            if isinstance(tier, PythonTier)
        }
        self.uses_stale_cache = any(isinstance(tier, StaleCacheTier) for tier in tiers)

    def __bool__(self) -> bool:
        return bool(self._tiers)

    async def answer(
        self,
        request: InferRequest,
        call: Call,
        version: str,
        error: FailsoftError,
        key: CacheKey | None,
        *,
        local_only: bool = False,
        blocked: frozenset[str] = frozenset(),
    ) -> FallbackAnswer:
        """The first tier's answer; ``error`` again when none can give one.

        ``blocked``: versions of this model no tier may call (halted or switched off).
        """
        for index, tier in enumerate(self._tiers):
            if local_only and isinstance(tier, VersionTier | ModelTier):
                continue
            if isinstance(tier, VersionTier) and tier.version in blocked:
                continue
            name = tier_name(tier)
            try:
                work = self._run(index, tier, request, call, version, key)
                outputs = await tracing.tier(work, self._model, name)
            except FailsoftError as failure:
                self._bus.emit(FallbackTierFailed(self._model, name, failure.message))
                continue
            if outputs is None:
                continue
            self._bus.emit(FallbackUsed(self._model, version, name, error.message))
            answered = tier.version if isinstance(tier, VersionTier) else version
            return FallbackAnswer(outputs, answered, name)
        raise error

    async def _run(
        self,
        index: int,
        tier: StrictModel,
        request: InferRequest,
        call: Call,
        version: str,
        key: CacheKey | None,
    ) -> Tensors | None:
        if isinstance(tier, VersionTier):
            if tier.version == version:
                return None
            return await self._resolve(self._model, tier.version)(request, call)
        if isinstance(tier, ModelTier):
            outputs = await self._resolve(tier.model, tier.version)(request, call)
            return self._contract.check_outputs(outputs)
        if isinstance(tier, PythonTier):
            return self._contract.check_outputs(
                run_heuristic(self._heuristics[index], request.inputs)
            )
        if isinstance(tier, StaticTier):
            rows = len(next(iter(request.inputs.values()))) if request.inputs else 1
            outputs = static_outputs(tier.static, self._output_types, rows)
            return self._contract.check_outputs(outputs)
        if isinstance(tier, StaleCacheTier) and key is not None:
            found = self._cache.get_stale(key)
            return found[0] if found is not None else None
        return None
