"""The compiled gateway: configuration turned into running models and replicas.

``Runtime`` turns a validated ``Config`` into runtime objects: per model a
compiled contract, a cache and a fallback chain; per version a
``VersionUnit``: its replicas, the ``VersionPipeline`` over them and the
``Prober`` that watches them. ``start`` loads every replica (failing loudly
if one cannot load); ``close`` drains and releases them.

``apply`` moves a running gateway to a new configuration without a restart
(a reconciler): what did not change is kept as it is, state and all; a
version whose backend changed gets new replicas, which must load and pass a
probe before the swap; the swap itself is one assignment on the event loop,
so a request sees either the old models or the new ones; versions that left
drain (their calls in flight finish) and close. If a new replica cannot come
up within the timeout, nothing is swapped and the error says why.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial

import orjson

from failsoft.backends import BuiltReplicas, Replica, build_replicas
from failsoft.backends.autoscale import Autoscaler, limiter_sample
from failsoft.call import Call
from failsoft.clock import Clock, SystemClock
from failsoft.config import Config, ModelConfig, ProcessBackend
from failsoft.control.faults import FaultRegistry, Killable, Target
from failsoft.control.flags import NO_SWITCHES, FlagSpec, Switches, switches_for
from failsoft.data.contracts import ModelContract
from failsoft.data.input_checks import InputChecks
from failsoft.data.schema import version_inputs
from failsoft.errors import FailsoftError, FailureClass, NotFound
from failsoft.observe.events import EventBus
from failsoft.pipeline.autoscale import Sample
from failsoft.pipeline.cache import CacheKey, CacheOptions, ResponseCache, request_digest
from failsoft.pipeline.chaos import ChaosReplica
from failsoft.pipeline.fallback import FallbackChain, Infer, StaleCacheTier
from failsoft.pipeline.limiter import AdaptiveLimiter
from failsoft.pipeline.shadow import Mirror
from failsoft.pipeline.version import ResilienceOptions, VersionPipeline
from failsoft.protocol.types import InferRequest, Tensors
from failsoft.routing.probes import Prober, golden_request
from failsoft.routing.split import Split
from failsoft.waiting import wait_at_most

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


class Halted(FailsoftError):
    """A model or version an operator halted (safe halt): no call reaches it (503)."""

    status = 503
    failure_class = FailureClass.OVERLOAD


class ApplyFailed(FailsoftError):
    """A configuration that cannot come up: the gateway stays on the one it serves."""

    status = 409
    failure_class = FailureClass.CLIENT


@dataclass(eq=False)
class VersionUnit:
    """One version: its replicas, the pipeline over them, and their prober.

    ``replica_key`` and ``pipeline_key`` say what each was built from, so a
    new configuration can keep them when they would come out the same.
    """

    replica_key: str
    pipeline_key: str
    built: BuiltReplicas
    pipeline: VersionPipeline
    prober: Prober
    replicas_started: bool = False
    autoscaler: Autoscaler | None = None  # a process backend with autoscale

    def watch(self) -> None:
        """Start probing (and autoscaling) the version."""
        self.prober.start()
        if self.autoscaler is not None:
            self.autoscaler.start()

    async def unwatch(self) -> None:
        await self.prober.close()
        if self.autoscaler is not None:
            await self.autoscaler.close()


# The model settings a version's pipeline and prober are built from; the others
# (timeouts, limiter, cache, fallback) apply without touching the pipeline.
_PIPELINE_SETTINGS = {
    "inputs",
    "outputs",
    "max_batch_size",
    "per_try_timeout_ms",
    "retry",
    "hedge",
    "breaker",
    "ejection",
    "balancer",
    "bulkhead",
    "throttle",
    "attribution",
    "health_check",
}


# Per-feature constraints are checked before a version is called: changing them
# rebuilds neither replicas nor pipelines (breakers and the rest keep their state).
_FEATURES = {"columns", "features"}


def _canonical(value: object) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def _keys(name: str, version: str, config: ModelConfig, runtime: Runtime) -> tuple[str, str]:
    # What a version's replicas are built from: its backend, the declared tensors
    # (loaders check them), the server limits workers take, and whether chaos wraps them.
    replicas = _canonical(
        {
            "backend": config.versions[version].model_dump(mode="json"),
            "inputs": [spec.model_dump(mode="json", exclude=_FEATURES) for spec in config.inputs],
            "outputs": [spec.model_dump(mode="json") for spec in config.outputs],
            "server": runtime.config.server.model_dump(mode="json", exclude={"host", "port"}),
            "chaos": runtime.config.chaos.enabled,
        }
    )
    pipeline = _canonical(
        {
            "replicas": replicas,
            "model": config.model_dump(
                mode="json", include=_PIPELINE_SETTINGS, exclude={"inputs": {"__all__": _FEATURES}}
            ),
        }
    )
    return replicas, pipeline


class ModelRuntime:
    def __init__(
        self,
        name: str,
        config: ModelConfig,
        runtime: Runtime,
        clock: Clock,
        rng: random.Random,
        previous: ModelRuntime | None = None,
        warm: Mapping[str, list[VersionUnit]] | None = None,
    ) -> None:
        """``previous``: this model as it serves now; ``warm``: versions retired lately whose
        replicas are still loaded, by version name. Whatever would come out the same is
        reused from them rather than built again."""
        self.name = name
        self.config = config
        self.contract = ModelContract(config.inputs, config.outputs, config.max_batch_size)
        self.units: dict[str, VersionUnit] = {}
        # Per version: its contract and feature checks (a version may declare its own inputs).
        self.contracts: dict[str, ModelContract] = {}
        self.checks: dict[str, InputChecks] = {}
        options = resilience_options(config)
        model_config = config
        for version in model_config.versions:
            inputs = version_inputs(model_config, version)
            config = model_config
            contract = self.contract
            if inputs is not model_config.inputs:
                config = model_config.model_copy(update={"inputs": inputs})
                contract = ModelContract(inputs, config.outputs, config.max_batch_size)
            self.contracts[version] = contract
            self.checks[version] = InputChecks(
                inputs, config.input_policy, name, version, runtime.bus.emit
            )
            golden = golden_request(config.health_check, inputs)
            replica_key, pipeline_key = _keys(name, version, config, runtime)
            current = previous.units.get(version) if previous is not None else None
            candidates = [unit for unit in (current, *(warm or {}).get(version, ())) if unit]
            same = next((u for u in candidates if u.pipeline_key == pipeline_key), None)
            if same is not None:
                self.units[version] = same  # nothing about it changed: state and all
                continue
            loaded = next((u for u in candidates if u.replica_key == replica_key), None)
            if loaded is not None:
                built, started = loaded.built, loaded.replicas_started  # same replicas
            else:
                built = build_replicas(name, version, config, runtime.bus, runtime.config.server)
                started = False
            replicas: list[Replica] = built.replicas
            if runtime.config.chaos.enabled:
                replicas = [
                    ChaosReplica(replica, name, version, runtime.faults, clock, rng)
                    for replica in replicas
                ]
            pipeline = VersionPipeline(
                name, version, replicas, options, contract, runtime.bus, clock, rng
            )
            prober = Prober(
                pipeline, config.health_check, contract, golden, runtime.bus, clock, rng
            )
            backend = config.versions[version]
            scaler = None
            if isinstance(backend, ProcessBackend) and backend.autoscale is not None:
                scaler = Autoscaler(
                    name,
                    version,
                    built.replicas,
                    prober,
                    backend.autoscale,
                    partial(_sample, runtime, name),
                    runtime.bus,
                    clock,
                )
            self.units[version] = VersionUnit(
                replica_key, pipeline_key, built, pipeline, prober, started, scaler
            )
        config = model_config
        self.versions = {version: unit.pipeline for version, unit in self.units.items()}
        output_types = {spec.name: spec.datatype for spec in config.outputs}
        # Stale-if-error needs answers stored even when fresh hits are not served.
        stale = any(isinstance(tier, StaleCacheTier) for tier in config.fallback)
        store = config.cache.model_copy(update={"enabled": True}) if stale else config.cache
        self.cache_options: CacheOptions = store
        self.cache: ResponseCache = (
            previous.cache
            if previous is not None and previous.cache_options == store
            else ResponseCache(store, clock)
        )
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
        self.limiter: AdaptiveLimiter = (
            previous.limiter
            if previous is not None and previous.config.limiter == config.limiter
            else AdaptiveLimiter(config.limiter, clock, runtime.bus.emit, name, rng)
        )
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

    async def serve(
        self,
        request: InferRequest,
        call: Call,
        pipeline: VersionPipeline,
        switches: Switches = NO_SWITCHES,
    ) -> Served:
        """Answer from ``pipeline`` (one of this model's versions), or its fallback chain.

        ``switches``: what an operator switched for this model. A halted or
        disabled version is not called: the fallback chain answers (marked
        degraded, and never from a halted version), else a clean 503.
        """
        version = pipeline.version
        caching = self._caching
        without: frozenset[str] = frozenset()
        if not switches.quiet:
            blocked = self._blocked(switches)
            if version in blocked:
                halted = switches.halted or version in switches.halted_versions
                what = "halted" if halted else "switched off"
                stop = Halted(f"{self.name}/{version} is {what} by an operator; retry later")
                key = (self.name, version, request_digest(request)) if caching else None
                return await self._fall_back(request, call, version, stop, key, blocked=blocked)
            without = switches.features_off
            caching = caching and "caching" not in without
        key = (self.name, version, request_digest(request)) if caching else None
        if key is not None and self.config.cache.enabled:
            cached = self.cache.get_fresh(key)
            if cached is not None:
                return Served(cached, version, f"{self.name}/{version}/cache", False)
        try:
            outputs, replica = await pipeline.infer(request, call, without)
        except FailsoftError as error:
            if error.failure_class not in _FALLBACK_CLASSES or not self.fallback:
                raise
            sample = call.sample  # the limiter judges the model's own call, not the fallback's
            try:
                blocked = self._blocked(switches) if not switches.quiet else frozenset()
                return await self._fall_back(request, call, version, error, key, blocked=blocked)
            finally:
                call.sample = sample
        if key is not None:
            self.cache.put(key, outputs)
        return Served(outputs, version, f"{self.name}/{version}/{replica.name}", False)

    def _blocked(self, switches: Switches) -> frozenset[str]:
        """The versions no call may reach."""
        if switches.halted:
            return frozenset(self.versions)
        return switches.halted_versions | switches.disabled_versions

    async def degrade(
        self,
        request: InferRequest,
        call: Call,
        version: str,
        error: FailsoftError,
        switches: Switches = NO_SWITCHES,
    ) -> Served:
        """A request that broke its input constraints under ``degrade``: the fallback chain
        answers without the version it was routed to, which never sees it."""
        blocked = frozenset({version})
        if not switches.quiet:
            blocked |= self._blocked(switches)
        sample = call.sample  # no limiter sample: the model's own replicas were not called
        try:
            return await self._fall_back(request, call, version, error, None, blocked=blocked)
        finally:
            call.sample = sample

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
        blocked: frozenset[str] = frozenset(),
    ) -> Served:
        if not self.fallback:
            raise error
        found = await self.fallback.answer(
            request, call, version, error, key, local_only=local_only, blocked=blocked
        )
        return Served(
            found.outputs, found.version, f"{self.name}/{version}/fallback:{found.tier}", True
        )

    async def start(self) -> None:
        """Load the replicas not loaded yet (every one, on a fresh gateway)."""
        await _all(_load(unit) for unit in self.units.values())

    def start_probes(self) -> None:
        for unit in self.units.values():
            unit.watch()

    async def close(self) -> None:
        for unit in self.units.values():
            await _close(unit, close_replicas=True)


async def _load(unit: VersionUnit) -> None:
    if not unit.replicas_started:
        await unit.pipeline.start()
        unit.replicas_started = True


async def _close(unit: VersionUnit, *, close_replicas: bool) -> None:
    await unit.unwatch()
    if close_replicas:
        await unit.pipeline.close()
        for close in unit.built.closers:
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
        self._rng = rng
        self.faults = FaultRegistry(config.chaos, clock, bus.emit, self._fault_targets)
        self.models: dict[str, ModelRuntime] = {
            name: ModelRuntime(name, model, self, clock, rng)
            for name, model in config.models.items()
        }
        self.started = False
        self._applying = asyncio.Lock()
        # Versions an apply retired, replicas still loaded, until a deadline: a rollback
        # to the revision before finds them ready (replica keys tell them apart).
        # What operators and rollouts set, read by every request of a model: its
        # switches (compiled flags) and its traffic split. Swapped, never mutated.
        self.switches: dict[str, Switches] = {}
        self.splits: dict[str, Split] = {}
        self.mirrors: dict[str, Mirror] = {}
        self._warm: list[tuple[float, str, str, VersionUnit]] = []  # (until, model, version, unit)
        self._sweeps: set[asyncio.Task[None]] = set()

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
            target = self.model(model)
            pipeline = target.version(version)
            switches = self.switches.get(model, NO_SWITCHES)
            if not switches.quiet and pipeline.version in target._blocked(switches):
                raise Halted(f"{model}/{pipeline.version} is halted or switched off")
            outputs, _ = await pipeline.infer(request, call, switches.features_off)
            return outputs

        return infer

    def set_flags(self, flags: Mapping[str, FlagSpec], now: float) -> None:
        """Compile the switches of every model from the flags in force at ``now`` (epoch s)."""
        compiled = {name: switches_for(name, flags, now) for name in self.models}
        self.switches = {name: found for name, found in compiled.items() if not found.quiet}
        self._mark_switched_off()

    def _mark_switched_off(self) -> None:
        """Tell each version pipeline whether it is halted or switched off now."""
        for name, target in self.models.items():
            switches = self.switches.get(name, NO_SWITCHES)
            blocked = frozenset() if switches.quiet else target._blocked(switches)
            for version, pipeline in target.versions.items():
                pipeline.switched_off = version in blocked

    def set_split(self, model: str, split: Split | None) -> None:
        """Divide ``model``'s default traffic (a rollout), or stop dividing it."""
        splits = dict(self.splits)
        if split is None:
            splits.pop(model, None)
        else:
            splits[model] = split
        self.splits = splits

    def mirror(self, model: str) -> Mirror:
        found = self.mirrors.get(model)
        if found is None:
            found = self.mirrors[model] = Mirror(self.bus, self.clock)
        return found

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
        for model in self.models.values():
            model.start_probes()
        self.started = True
        log.info("models loaded", extra={"models": sorted(self.models)})

    async def apply(
        self,
        config: Config,
        *,
        timeout_s: float = 120.0,
        drain_s: float = 10.0,
        keep_warm_s: float = 0.0,
    ) -> None:
        """Move to ``config``: load and probe what is new, swap, then retire what left.

        Raises ``ApplyFailed`` (and changes nothing) when a new replica does not
        load or pass a probe within ``timeout_s``.
        """
        async with self._applying:  # one change at a time
            old_config, old_models = self.config, self.models
            self.config = config  # the keys of new versions depend on the server settings
            await self._close_cold()
            warm = self._warm_by_model()
            try:
                models = {
                    name: ModelRuntime(
                        name,
                        model,
                        self,
                        self.clock,
                        self._rng,
                        old_models.get(name),
                        warm.get(name),
                    )
                    for name, model in config.models.items()
                }
            except FailsoftError as error:  # a model that cannot be built (a bad file)
                self.config = old_config
                raise ApplyFailed(f"the configuration cannot be built: {error.message}") from None
            except BaseException:
                self.config = old_config
                raise
            kept = {id(unit) for model in old_models.values() for unit in model.units.values()}
            rewarmed = {id(unit) for _, _, _, unit in self._warm}
            fresh = [
                unit
                for model in models.values()
                for unit in model.units.values()
                if id(unit) not in kept and id(unit) not in rewarmed
            ]
            try:
                await wait_at_most(_all(_bring_up(unit) for unit in fresh), timeout_s)
            except BaseException as error:
                self.config = old_config
                await self._discard(fresh, old_models)
                if isinstance(error, TimeoutError):
                    raise ApplyFailed(
                        f"the new replicas did not come up within {timeout_s:g} s"
                    ) from None
                if isinstance(error, FailsoftError):
                    raise ApplyFailed(error.message) from None
                raise
            self.faults.options = config.chaos
            self.models = models  # the swap: from the next request on, the new models serve
            self._mark_switched_off()
            live = {id(unit) for model in models.values() for unit in model.units.values()}
            for unit in fresh:
                unit.watch()
            for _, _, _, unit in self._warm:
                if id(unit) in live:  # back from the warm pool
                    unit.watch()
            self._warm = [entry for entry in self._warm if id(entry[3]) not in live]
            in_use = {id(u.built) for model in models.values() for u in model.units.values()}
            retired = [
                (name, version, unit)
                for name, model in old_models.items()
                for version, unit in model.units.items()
                if id(unit) not in live
            ]
            for _, _, unit in retired:
                await unit.unwatch()
            until = self.clock.now() + keep_warm_s
            for name, version, unit in retired:
                if keep_warm_s > 0 and id(unit.built) not in in_use:
                    self._warm.append((until, name, version, unit))
            if keep_warm_s > 0 and retired:
                self.clock.call_later(keep_warm_s, self._sweep_later)
        closing = [unit for _, _, unit in retired if keep_warm_s <= 0]
        await _retire(closing, in_use, drain_s, self.clock)

    def _sweep_later(self) -> None:
        task = asyncio.ensure_future(self._close_cold())
        self._sweeps.add(task)
        task.add_done_callback(self._sweeps.discard)

    def _warm_by_model(self) -> dict[str, dict[str, list[VersionUnit]]]:
        found: dict[str, dict[str, list[VersionUnit]]] = {}
        for _, name, version, unit in self._warm:
            found.setdefault(name, {}).setdefault(version, []).append(unit)
        return found

    async def _close_cold(self, *, everything: bool = False) -> None:
        """Close the warm versions whose time is up (all of them on ``everything``)."""
        now = self.clock.now()
        cold = [entry for entry in self._warm if everything or entry[0] <= now]
        self._warm = [entry for entry in self._warm if entry not in cold]
        in_use = {id(u.built) for model in self.models.values() for u in model.units.values()}
        for _, _, _, unit in cold:
            if id(unit.built) not in in_use:
                await _close(unit, close_replicas=True)

    async def _discard(self, fresh: list[VersionUnit], old_models: dict[str, ModelRuntime]) -> None:
        """Close what an apply built before it failed, but no replica the old models use."""
        serving = {id(unit.built) for model in old_models.values() for unit in model.units.values()}
        for unit in fresh:
            await _close(unit, close_replicas=id(unit.built) not in serving)

    async def close(self) -> None:
        self.started = False
        self.faults.clear()
        for mirror in self.mirrors.values():
            await mirror.close()
        await self._close_cold(everything=True)
        for model in self.models.values():
            await model.close()

    @property
    def ready(self) -> bool:
        return self.started and all(model.ready for model in self.models.values())


async def _bring_up(unit: VersionUnit) -> None:
    """Load a unit's new replicas and require each to pass one probe."""
    await _load(unit)
    problems = await unit.prober.probe_now()
    bad = {name: problem for name, problem in problems.items() if problem is not None}
    if bad:
        detail = "; ".join(f"{name}: {problem}" for name, problem in bad.items())
        where = f"{unit.pipeline.model}/{unit.pipeline.version}"
        raise ApplyFailed(f"{where} failed its probe ({detail})")


async def _retire(units: list[VersionUnit], reused: set[int], drain_s: float, clock: Clock) -> None:
    """Stop probing units that left, let their calls in flight finish, then close them."""
    for unit in units:
        await unit.unwatch()
    deadline = clock.now() + drain_s
    while any(unit.pipeline.in_flight for unit in units) and clock.now() < deadline:
        await clock.sleep(0.05)
    for unit in units:
        if id(unit.built) not in reused:
            await _close(unit, close_replicas=True)


def _sample(runtime: Runtime, model: str) -> Sample | None:
    """The limiter of ``model`` as it serves now (an apply may have replaced it)."""
    found = runtime.models.get(model)
    return limiter_sample(found.limiter) if found is not None else None


async def _all(starts: Iterable[Awaitable[None]]) -> None:
    """Run all concurrently; when any fails, raise the first failure after all finished."""
    results = await asyncio.gather(*starts, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
