"""Backends: how a model version's replicas are built from its configuration."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from failsoft.backends.base import Replica
from failsoft.backends.http import HttpReplica
from failsoft.backends.local import InProcessReplica, Predict
from failsoft.backends.onnx import load_onnx
from failsoft.backends.process import WorkerReplica, worker_spec
from failsoft.backends.python import load_python
from failsoft.backends.ray_serve import RayHandleReplica, RayServeReplica
from failsoft.backends.sklearn import load_sklearn
from failsoft.config import (
    HttpBackend,
    ModelConfig,
    OnnxBackend,
    ProcessBackend,
    PythonBackend,
    RayBackend,
    ServerConfig,
    SklearnBackend,
)
from failsoft.observe.events import EventBus

__all__ = ["BuiltReplicas", "Replica", "build_replicas"]


@dataclass
class BuiltReplicas:
    replicas: list[Replica]
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


def _local_loader(
    config: OnnxBackend | SklearnBackend | PythonBackend, model: ModelConfig
) -> Callable[[], Predict]:
    if isinstance(config, OnnxBackend):
        return lambda: load_onnx(config, model.inputs, model.outputs)
    if isinstance(config, SklearnBackend):
        return lambda: load_sklearn(config, model.inputs, model.outputs)
    return lambda: load_python(config)


def build_replicas(
    model_name: str,
    version_name: str,
    model: ModelConfig,
    bus: EventBus,
    server: ServerConfig | None = None,
) -> BuiltReplicas:
    """The replicas of one version; ``server`` (the gateway's settings) shapes workers'."""
    config = model.versions[version_name]
    if isinstance(config, HttpBackend):
        replicas: list[Replica] = [
            HttpReplica(
                f"r{i}",
                url,
                config.pool_size,
                config.remote_model or model_name,
                config.remote_version,
            )
            for i, url in enumerate(config.urls)
        ]
        return BuiltReplicas(replicas)
    if isinstance(config, RayBackend):  # one replica per Serve application, named after it
        if config.via == "handle":
            return BuiltReplicas(
                [RayHandleReplica(app.name, app.name) for app in config.applications]
            )
        remote = config.remote_model or model_name
        return BuiltReplicas(
            [
                RayServeReplica(app.name, url, config.pool_size, remote, config.remote_version)
                for app, url in zip(config.applications, config.urls, strict=True)
            ]
        )
    if isinstance(config, ProcessBackend):
        spec = worker_spec(model_name, version_name, model, config, server)
        scale = config.autoscale
        count = scale.max_replicas if scale is not None else config.replicas
        running = scale.min_replicas if scale is not None else count
        workers: list[Replica] = [
            WorkerReplica(f"w{i}", model_name, version_name, spec, config, bus, parked=i >= running)
            for i in range(count)
        ]
        return BuiltReplicas(workers)
    load = _local_loader(config, model)
    return BuiltReplicas(
        [InProcessReplica(f"r{i}", load, config.execution) for i in range(config.replicas)]
    )
