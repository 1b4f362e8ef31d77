"""The compiled gateway: configuration turned into running models and replicas.

``Runtime.build`` turns a validated ``Config`` into immutable runtime
objects; ``start`` loads every replica (failing loudly if one cannot load);
``close`` drains and releases them.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from dataclasses import dataclass

from failsoft.backends import BuiltReplicas, Replica, build_replicas
from failsoft.call import Call
from failsoft.config import Config, ModelConfig
from failsoft.errors import NotFound, NotReady
from failsoft.observe.events import EventBus
from failsoft.protocol.types import InferRequest, Tensors

log = logging.getLogger("failsoft.runtime")


class VersionRuntime:
    def __init__(self, model: str, name: str, built: BuiltReplicas) -> None:
        self.model = model
        self.name = name
        self.replicas: list[Replica] = built.replicas
        self._closers = built.closers
        self._turn = itertools.count()

    @property
    def ready(self) -> bool:
        return any(replica.available for replica in self.replicas)

    async def start(self) -> None:
        await asyncio.gather(*(replica.start() for replica in self.replicas))

    async def close(self) -> None:
        await asyncio.gather(
            *(replica.close() for replica in self.replicas), return_exceptions=True
        )
        for close in self._closers:
            await close()

    def pick(self) -> Replica:
        """Round robin over the replicas that can take work."""
        count = len(self.replicas)
        start = next(self._turn)
        for offset in range(count):
            replica = self.replicas[(start + offset) % count]
            if replica.available:
                return replica
        raise NotReady(f"no replica of {self.model}/{self.name} is available")

    async def infer(self, request: InferRequest, call: Call) -> tuple[Tensors, Replica]:
        # Each replica enforces call.deadline itself (a timer per request here
        # would cost more than a fast in-process model call).
        replica = self.pick()
        return await replica.infer(request, call), replica


@dataclass(frozen=True)
class ModelRuntime:
    name: str
    config: ModelConfig
    versions: dict[str, VersionRuntime]

    def version(self, name: str | None) -> VersionRuntime:
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


class Runtime:
    def __init__(self, config: Config, bus: EventBus) -> None:
        self.config = config
        self.bus = bus
        self.models: dict[str, ModelRuntime] = {
            name: ModelRuntime(
                name,
                model,
                {
                    version: VersionRuntime(
                        name, version, build_replicas(name, version, model, bus)
                    )
                    for version in model.versions
                },
            )
            for name, model in config.models.items()
        }
        self.started = False

    def model(self, name: str) -> ModelRuntime:
        found = self.models.get(name)
        if found is None:
            raise NotFound(f"unknown model {name!r} (models: {sorted(self.models)})")
        return found

    def all_versions(self) -> list[VersionRuntime]:
        return [v for model in self.models.values() for v in model.versions.values()]

    async def start(self) -> None:
        versions = self.all_versions()
        results = await asyncio.gather(*(v.start() for v in versions), return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            await self.close()
            raise failures[0]
        self.started = True
        log.info("models loaded", extra={"models": sorted(self.models)})

    async def close(self) -> None:
        self.started = False
        await asyncio.gather(*(v.close() for v in self.all_versions()), return_exceptions=True)

    @property
    def ready(self) -> bool:
        return self.started and all(model.ready for model in self.models.values())
