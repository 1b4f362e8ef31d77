"""The compiled gateway: configuration turned into running models and replicas.

``Runtime`` turns a validated ``Config`` into runtime objects: per model a
compiled contract, a cache and a fallback chain; per version a
``VersionPipeline`` over its replicas, probed by a ``Prober``. ``start``
loads every replica (failing loudly if one cannot load); ``close`` drains
and releases them.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass

from failsoft.backends import BuiltReplicas, Replica, build_replicas
from failsoft.call import Call
from failsoft.clock import Clock, SystemClock
from failsoft.config import Config, ModelConfig
from failsoft.control.faults import FaultRegistry, Killable, Target
from failsoft.data.contracts import ModelContract
from failsoft.errors import FailsoftError, FailureClass, NotFound
from failsoft.observe.events import EventBus
from failsoft.pipeline.cache import ResponseCache, input_digest
from failsoft.pipeline.chaos import ChaosReplica
from failsoft.pipeline.fallback import (
    FallbackTierFailed,
    FallbackUsed,
    ModelTier,
    PythonTier,
    StaleCacheTier,
    StaticTier,
    VersionTier,
    load_heuristic,
    run_heuristic,
    static_outputs,
    tier_name,
)
from failsoft.pipeline.limiter import AdaptiveLimiter
from failsoft.pipeline.version import ResilienceOptions, VersionPipeline
from failsoft.protocol.types import InferRequest, Tensors
from failsoft.routing.probes import Prober, golden_request

log = logging.getLogger("failsoft.runtime")


@dataclass(slots=True)
class Served:
    """An answer and who gave it."""

    outputs: Tensors
    version: str
    served_by: str
    degraded: bool


def resilience_options(config: ModelConfig) -> ResilienceOptions:
    per_try = config.per_try_timeout_ms
    return ResilienceOptions(
        retry=config.retry,
        hedge=config.hedge,
        breaker=config.breaker,
        ejection=config.ejection,
        balancer=config.balancer,
        per_try_timeout_s=per_try / 1000 if per_try is not None else None,
        bulkhead=config.bulkhead,
        throttle=config.throttle,
    )


class ModelRuntime:
    def __init__(
        self, name: str, config: ModelConfig, runtime: Runtime, clock: Clock, rng: random.Random
    ) -> None:
        self.name = name
        self.config = config
        self.contract = ModelContract(config.inputs, config.outputs, config.max_batch_size)
        self._runtime = runtime
        self.built: dict[str, BuiltReplicas] = {}
        self.versions: dict[str, VersionPipeline] = {}
        self.probers: list[Prober] = []
        options = resilience_options(config)
        golden = golden_request(config.health_check, config.inputs)
        for version in config.versions:
            built = build_replicas(name, version, config, runtime.bus, runtime.config.server)
            replicas: list[Replica] = built.replicas
            if runtime.config.chaos.enabled:
                replicas = [
                    ChaosReplica(replica, name, version, runtime.faults, clock, rng)
                    for replica in replicas
                ]
            pipeline = VersionPipeline(
                name, version, replicas, options, self.contract, runtime.bus, clock, rng
            )
            self.built[version] = built
            self.versions[version] = pipeline
            self.probers.append(
                Prober(pipeline, config.health_check, self.contract, golden, runtime.bus, clock)
            )
        self._stale = any(isinstance(tier, StaleCacheTier) for tier in config.fallback)
        # Stale-if-error needs answers stored even when fresh hits are not served.
        store = config.cache.model_copy(update={"enabled": True}) if self._stale else config.cache
        self.cache = ResponseCache(store, clock)
        self._caching = config.cache.enabled or self._stale
        self._heuristics = {
            index: load_heuristic(tier)
            for index, tier in enumerate(config.fallback)
            if isinstance(tier, PythonTier)
        }
        self._output_types = {spec.name: spec.datatype for spec in config.outputs}
        self.limiter = AdaptiveLimiter(config.limiter, clock, runtime.bus.emit, name, rng)

    def version(self, name: str | None) -> VersionPipeline:
        if name is None:
            return self.versions[self.config.default]
        found = self.versions.get(name)
        if found is None:
            raise NotFound(
                f"model {self.name!r} has no version {name!r} (versions: {sorted(self.versions)})"
            )
        return found

    @property
    def ready(self) -> bool:
        return self.versions[self.config.default].ready

    async def serve(self, request: InferRequest, call: Call, version_name: str | None) -> Served:
        pipeline = self.version(version_name)
        version = pipeline.version
        key = (self.name, version, input_digest(request.inputs)) if self._caching else None
        if key is not None and self.config.cache.enabled:
            cached = self.cache.get_fresh(key)
            if cached is not None:
                return Served(cached, version, f"{self.name}/{version}/cache", False)
        try:
            outputs, replica = await pipeline.infer(request, call)
        except FailsoftError as error:
            if error.failure_class is FailureClass.DATA or not self.config.fallback:
                raise
            return await self._fall_back(request, call, version, error, key)
        if key is not None:
            self.cache.put(key, outputs)
        return Served(outputs, version, f"{self.name}/{version}/{replica.name}", False)

    async def shed(self, request: InferRequest, call: Call, error: FailsoftError) -> Served:
        """A request the limiter refused: answered by the local fallback tiers if any can.

        Only tiers that cost next to nothing run here (a heuristic, a static
        answer, a stale cached one): a degraded answer beats a 503, but the
        model's replicas must not see this request.
        """
        version = self.version(call.version).version
        key = (self.name, version, input_digest(request.inputs)) if self._stale else None
        return await self._fall_back(request, call, version, error, key, local_only=True)

    async def _fall_back(
        self,
        request: InferRequest,
        call: Call,
        version: str,
        error: FailsoftError,
        key: tuple[str, str, bytes] | None,
        *,
        local_only: bool = False,
    ) -> Served:
        bus = self._runtime.bus
        for index, tier in enumerate(self.config.fallback):
            if local_only and isinstance(tier, VersionTier | ModelTier):
                continue
            name = tier_name(tier)
            try:
                outputs = await self._run_tier(index, tier, request, call, version, key)
            except FailsoftError as failure:
                bus.emit(FallbackTierFailed(self.name, name, failure.message))
                continue
            if outputs is None:
                continue
            bus.emit(FallbackUsed(self.name, version, name, error.message))
            # The answer's model_version says which version answered, when one did.
            answered = tier.version if isinstance(tier, VersionTier) else version
            return Served(outputs, answered, f"{self.name}/{version}/fallback:{name}", True)
        raise error

    async def _run_tier(
        self,
        index: int,
        tier: object,
        request: InferRequest,
        call: Call,
        version: str,
        key: tuple[str, str, bytes] | None,
    ) -> Tensors | None:
        if isinstance(tier, VersionTier):
            if tier.version == version:
                return None
            outputs, _ = await self.versions[tier.version].infer(request, call)
            return outputs
        if isinstance(tier, ModelTier):
            other = self._runtime.model(tier.model)
            outputs, _ = await other.version(tier.version).infer(request, call)
            return self.contract.check_outputs(outputs)
        if isinstance(tier, PythonTier):
            return self.contract.check_outputs(
                run_heuristic(self._heuristics[index], request.inputs)
            )
        if isinstance(tier, StaticTier):
            rows = len(next(iter(request.inputs.values()))) if request.inputs else 1
            outputs = static_outputs(tier.static, self._output_types, rows)
            return self.contract.check_outputs(outputs)
        if isinstance(tier, StaleCacheTier) and key is not None:
            found = self.cache.get_stale(key)
            return found[0] if found is not None else None
        return None

    async def start(self) -> None:
        await _all(pipeline.start() for pipeline in self.versions.values())
        for prober in self.probers:
            prober.start()

    async def close(self) -> None:
        for prober in self.probers:
            await prober.close()
        for version, pipeline in self.versions.items():
            await pipeline.close()
            for close in self.built[version].closers:
                await close()


class Runtime:
    def __init__(
        self,
        config: Config,
        bus: EventBus,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.bus = bus
        clock = clock or SystemClock()
        rng = rng or random.Random()
        self.clock = clock
        self.faults = FaultRegistry(config.chaos, clock, bus.emit, self._fault_targets)
        self.models: dict[str, ModelRuntime] = {
            name: ModelRuntime(name, model, self, clock, rng)
            for name, model in config.models.items()
        }
        self.started = False

    def _fault_targets(self) -> list[Target]:
        return [
            Target(name, version, replica.name, replica if isinstance(replica, Killable) else None)
            for name, model in self.models.items()
            for version, pipeline in model.versions.items()
            for replica in pipeline.replicas
        ]

    def model(self, name: str) -> ModelRuntime:
        found = self.models.get(name)
        if found is None:
            raise NotFound(f"unknown model {name!r} (models: {sorted(self.models)})")
        return found

    async def start(self) -> None:
        try:
            await _all(model.start() for model in self.models.values())
        except BaseException:
            await self.close()
            raise
        self.started = True
        log.info("models loaded", extra={"models": sorted(self.models)})

    async def close(self) -> None:
        self.started = False
        self.faults.clear()
        for model in self.models.values():
            await model.close()

    @property
    def ready(self) -> bool:
        return self.started and all(model.ready for model in self.models.values())


async def _all(starts: Iterable[Awaitable[None]]) -> None:
    """Run all concurrently; when any fails, raise the first failure after all finished."""
    results = await asyncio.gather(*starts, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
