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
from failsoft.pipeline.cache import CacheKey, ResponseCache, request_digest
from failsoft.pipeline.chaos import ChaosReplica
from failsoft.pipeline.fallback import FallbackChain, Infer, StaleCacheTier
from failsoft.pipeline.limiter import AdaptiveLimiter
from failsoft.pipeline.version import ResilienceOptions, VersionPipeline
from failsoft.protocol.types import InferRequest, Tensors
from failsoft.routing.probes import Prober, golden_request

log = logging.getLogger("failsoft.runtime")

# A failure of these classes goes down the fallback chain; a client that spent its
# own deadline, or sent data the contract refuses, gets its error.
_FALLBACK_CLASSES = frozenset({FailureClass.REPLICA, FailureClass.REQUEST, FailureClass.OVERLOAD})


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
        attribution=config.attribution,
    )


class ModelRuntime:
    def __init__(
        self, name: str, config: ModelConfig, runtime: Runtime, clock: Clock, rng: random.Random
    ) -> None:
        self.name = name
        self.config = config
        self.contract = ModelContract(config.inputs, config.outputs, config.max_batch_size)
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
                Prober(
                    pipeline, config.health_check, self.contract, golden, runtime.bus, clock, rng
                )
            )
        output_types = {spec.name: spec.datatype for spec in config.outputs}
        # Stale-if-error needs answers stored even when fresh hits are not served.
        stale = any(isinstance(tier, StaleCacheTier) for tier in config.fallback)
        store = config.cache.model_copy(update={"enabled": True}) if stale else config.cache
        self.cache = ResponseCache(store, clock)
        self.fallback = FallbackChain(
            name,
            config.fallback,
            self.contract,
            output_types,
            self.cache,
            runtime.resolve,
            runtime.bus,
        )
        self._caching = config.cache.enabled or stale
        self.limiter = AdaptiveLimiter(config.limiter, clock, runtime.bus.emit, name, rng)
        self.default = self.versions[config.default]

    def version(self, name: str | None) -> VersionPipeline:
        if name is None:
            return self.default
        found = self.versions.get(name)
        if found is None:
            raise NotFound(
                f"model {self.name!r} has no version {name!r} (versions: {sorted(self.versions)})"
            )
        return found

    @property
    def ready(self) -> bool:
        return self.default.ready

    async def serve(self, request: InferRequest, call: Call, pipeline: VersionPipeline) -> Served:
        """Answer from ``pipeline`` (one of this model's versions), or its fallback chain."""
        version = pipeline.version
        key = (self.name, version, request_digest(request)) if self._caching else None
        if key is not None and self.config.cache.enabled:
            cached = self.cache.get_fresh(key)
            if cached is not None:
                return Served(cached, version, f"{self.name}/{version}/cache", False)
        try:
            outputs, replica = await pipeline.infer(request, call)
        except FailsoftError as error:
            if error.failure_class not in _FALLBACK_CLASSES or not self.fallback:
                raise
            sample = call.sample  # the limiter judges the model's own call, not the fallback's
            try:
                return await self._fall_back(request, call, version, error, key)
            finally:
                call.sample = sample
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
        stale = self.fallback.uses_stale_cache
        key = (self.name, version, request_digest(request)) if stale else None
        return await self._fall_back(request, call, version, error, key, local_only=True)

    async def _fall_back(
        self,
        request: InferRequest,
        call: Call,
        version: str,
        error: FailsoftError,
        key: CacheKey | None,
        *,
        local_only: bool = False,
    ) -> Served:
        found = await self.fallback.answer(
            request, call, version, error, key, local_only=local_only
        )
        return Served(
            found.outputs, found.version, f"{self.name}/{version}/fallback:{found.tier}", True
        )

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

    def resolve(self, model: str, version: str | None) -> Infer:
        """A fallback tier's way into another version or model (looked up at call time)."""

        async def infer(request: InferRequest, call: Call) -> Tensors:
            outputs, _ = await self.model(model).version(version).infer(request, call)
            return outputs

        return infer

    def model(self, name: str) -> ModelRuntime:
        found = self.models.get(name)
        if found is None:
            # No list of the models: the caller may not be entitled to know them.
            raise NotFound(f"unknown model {name!r}")
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
