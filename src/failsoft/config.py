"""Configuration: YAML loaded into validated, immutable models.

Unknown keys are rejected and every error names the key path, so a typo is a
clear message at load time rather than a surprise in production. Relative
file paths are resolved against the configuration file's folder.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import yaml
from pydantic import (
    AfterValidator,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from failsoft._options import StrictModel, validation_problems
from failsoft.control.artifact_ref import ArtifactRef
from failsoft.control.faults import ChaosOptions
from failsoft.control.incident_model import IncidentOptions
from failsoft.control.quota_options import QuotaOptions
from failsoft.control.runbook_model import RunbooksOptions
from failsoft.control.slo import SloOptions
from failsoft.control.tenants import TenantConfig
from failsoft.data.constraints import Compatibility, InputPolicy
from failsoft.data.drift_options import DriftOptions
from failsoft.data.prediction_options import PredictionLogOptions
from failsoft.data.schema import check_model_inputs
from failsoft.errors import BackendLoadError
from failsoft.jobs.options import JobsOptions
from failsoft.observe.tracing import TracingOptions
from failsoft.pipeline.attribution import AttributionOptions
from failsoft.pipeline.autoscale import AutoscaleOptions
from failsoft.pipeline.breaker import BreakerOptions
from failsoft.pipeline.bulkhead import BulkheadOptions
from failsoft.pipeline.cache import CacheOptions
from failsoft.pipeline.fallback import FallbackTier, ModelTier, StaticTier, VersionTier
from failsoft.pipeline.hedge import HedgeOptions
from failsoft.pipeline.limiter import LimiterOptions
from failsoft.pipeline.retry import RetryOptions
from failsoft.pipeline.throttle import ThrottleOptions
from failsoft.protocol.datatypes import DATATYPE_TO_DTYPE
from failsoft.protocol.spec import Datatype, TensorSpec
from failsoft.routing.balancer import BalancerOptions
from failsoft.routing.ejection import EjectionOptions
from failsoft.routing.probes import HealthCheckOptions

__all__ = ["Config", "ConfigError", "Datatype", "ModelConfig", "ServerConfig", "TensorSpec"]

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"
Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=128)]


def _resolve_path(value: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base_dir")
    if base is not None and not value.is_absolute():
        return (Path(base) / value).resolve()
    return value


ConfigPath = Annotated[Path, AfterValidator(_resolve_path)]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$")]


_Strict = StrictModel


MIN_ADMIN_TOKEN_CHARS = 16
_SHORT_TOKEN = (
    f"must be at least {MIN_ADMIN_TOKEN_CHARS} characters; make one with "
    "`python3 -c 'import secrets; print(secrets.token_urlsafe(24))'`"
)


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8000
    max_body_bytes: Annotated[int, Field(ge=1024, le=1 << 30)] = 8 * 1024 * 1024
    admin_token: str | None = Field(
        default=None, description="bearer token for /admin; falls back to $FAILSOFT_ADMIN_TOKEN"
    )
    require_keys: bool = Field(
        default=False, description="refuse requests without a tenant key (401)"
    )
    access_log: bool = False
    drain_s: Annotated[float, Field(gt=0, le=3600)] = 10.0
    max_connections: Annotated[int, Field(ge=16, le=1_000_000)] = 8192
    header_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 10.0
    keep_alive_s: Annotated[float, Field(gt=0, le=3600)] = 5.0
    max_header_bytes: Annotated[int, Field(ge=1024, le=1 << 24)] = 64 * 1024
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @model_validator(mode="after")
    def _long_admin_token(self) -> ServerConfig:
        # Checked here rather than with min_length so the error never echoes the token.
        if self.admin_token is not None and len(self.admin_token) < MIN_ADMIN_TOKEN_CHARS:
            raise ValueError(f"admin_token {_SHORT_TOKEN}")
        return self

    def resolved_admin_token(self) -> str | None:
        """The admin token; raises ConfigError when $FAILSOFT_ADMIN_TOKEN is too short."""
        if self.admin_token:
            return self.admin_token
        token = os.environ.get("FAILSOFT_ADMIN_TOKEN") or None
        if token is not None and len(token) < MIN_ADMIN_TOKEN_CHARS:
            raise ConfigError("FAILSOFT_ADMIN_TOKEN", [_SHORT_TOKEN])
        return token


Execution = Literal["auto", "thread", "inline"]


class _Version(_Strict):
    inputs: Annotated[list[TensorSpec], Field(min_length=1)] | None = Field(
        default=None, description="this version's inputs, where they differ from the model's"
    )


def _artifact(value: str | None) -> str | None:
    if value is not None:
        ArtifactRef.parse(value)  # ArtifactRefError is a ValueError: reported at the key
    return value


ArtifactName = Annotated[str | None, AfterValidator(_artifact)]


class _FileBackend(_Version):
    """A model file: a ``path``, or an ``artifact`` from the registry (``iris@v3`` or a sha256).

    An artifact is resolved to a verified local copy, with ``path`` and ``sha256``
    filled in, before the configuration is applied.
    """

    path: ConfigPath | None = None
    artifact: ArtifactName = None
    sha256: Sha256 | None = None

    @model_validator(mode="after")
    def _one_source(self) -> _FileBackend:
        if self.artifact is None and self.path is None:
            raise ValueError("give the model file: path (a file) or artifact (iris@v3 or a sha256)")
        return self

    @property
    def file(self) -> Path:
        """The file to load: a resolved artifact must have been given its path."""
        if self.path is None:
            raise BackendLoadError(
                f"artifact {self.artifact} was not resolved to a file (is the store reachable?)"
            )
        return self.path


class OnnxBackend(_FileBackend):
    backend: Literal["onnx"]
    replicas: Annotated[int, Field(ge=1, le=64)] = 1
    threads: Annotated[int, Field(ge=1, le=64)] = 1
    execution: Execution = "auto"


class SklearnBackend(_FileBackend):
    backend: Literal["sklearn"]
    replicas: Annotated[int, Field(ge=1, le=64)] = 1
    methods: dict[str, Literal["predict", "predict_proba", "decision_function", "transform"]] = (
        Field(default_factory=dict)
    )
    execution: Execution = "auto"

    @model_validator(mode="after")
    def _pinned(self) -> SklearnBackend:
        if self.sha256 is None and self.artifact is None:
            raise ValueError(
                "sha256 is required: an sklearn model is a pickle, and loading a pickle runs "
                f"code; pin the file with `sha256: <hex>` (sha256sum {self.path}), or load it "
                "from the registry (artifact: name@version), whose copies are pinned"
            )
        return self


class PythonBackend(_Version):
    backend: Literal["python"]
    function: Annotated[
        str, Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$", description="module:function")
    ]
    replicas: Annotated[int, Field(ge=1, le=64)] = 1
    execution: Execution = "auto"


class HttpBackend(_Version):
    backend: Literal["http"]
    urls: Annotated[
        list[Annotated[str, Field(pattern=r"^http://[^\s/]+(/[^\s]*)?$")]],
        Field(min_length=1, max_length=256),
    ]
    remote_model: Name | None = None
    remote_version: Name | None = None
    pool_size: Annotated[int, Field(ge=1, le=4096)] = 128

    @field_validator("urls")
    @classmethod
    def _unique(cls, urls: list[str]) -> list[str]:
        stripped = [u.rstrip("/") for u in urls]
        if len(set(stripped)) != len(stripped):
            raise ValueError("urls must be distinct")
        return stripped


class RayApplication(_Strict):
    name: Name
    route_prefix: Annotated[str, Field(pattern=r"^/[^\s?#]*$")] | None = Field(
        default=None, description="where the Serve proxy routes it; /<name> when not given"
    )

    @property
    def prefix(self) -> str:
        return (self.route_prefix or f"/{self.name}").rstrip("/")


class RayBackend(_Version):
    """Ray Serve applications behind its HTTP proxy, one replica each (backends/ray_serve.py)."""

    backend: Literal["ray"]
    address: Annotated[str, Field(pattern=r"^http://[^\s/]+/?$")] = "http://127.0.0.1:8000"
    applications: Annotated[list[RayApplication], Field(min_length=1, max_length=256)]
    via: Literal["proxy", "handle"] = Field(
        default="proxy", description="handle: deployment handles, for a gateway inside Ray"
    )
    remote_model: Name | None = None
    remote_version: Name | None = None
    pool_size: Annotated[int, Field(ge=1, le=4096)] = 128

    @field_validator("applications", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:  # a bare string is an application's name
        return (
            [{"name": a} if isinstance(a, str) else a for a in value]
            if isinstance(value, list)
            else value
        )

    @field_validator("applications")
    @classmethod
    def _distinct(cls, applications: list[RayApplication]) -> list[RayApplication]:
        for kind, values in (
            ("names", [a.name for a in applications]),
            ("route prefixes", [a.prefix for a in applications]),
        ):
            if len(set(values)) != len(values):
                raise ValueError(f"application {kind} must be distinct")
        return applications

    @property
    def urls(self) -> list[str]:
        return [self.address.rstrip("/") + app.prefix for app in self.applications]


LocalBackend = Annotated[
    OnnxBackend | SklearnBackend | PythonBackend, Field(discriminator="backend")
]


class ProcessBackend(_Version):
    """N supervised worker processes, each serving ``worker`` over V2 on loopback."""

    backend: Literal["process"]
    worker: LocalBackend
    replicas: Annotated[int, Field(ge=1, le=64)] = 2
    startup_timeout_s: Annotated[float, Field(gt=0, le=600)] = 60.0
    probe_interval_s: Annotated[float, Field(gt=0, le=60)] = 1.0
    probe_timeout_s: Annotated[float, Field(gt=0, le=60)] = 1.0
    probe_failures: Annotated[int, Field(ge=1, le=100)] = 3
    restart_backoff_s: Annotated[float, Field(gt=0, le=60)] = 0.2
    restart_backoff_max_s: Annotated[float, Field(gt=0, le=600)] = 10.0
    drain_timeout_s: Annotated[float, Field(gt=0, le=600)] = 10.0
    # Workers between min_replicas and max_replicas (then ``replicas`` is not used).
    autoscale: AutoscaleOptions | None = None

    @field_validator("worker")
    @classmethod
    def _one_replica_per_worker(cls, worker: Any) -> Any:
        if worker.replicas != 1:
            raise ValueError("set replicas on the process backend, not on its worker")
        if worker.inputs is not None:
            raise ValueError("set inputs on the process backend, not on its worker")
        return worker


VersionConfig = Annotated[
    OnnxBackend | SklearnBackend | PythonBackend | HttpBackend | ProcessBackend | RayBackend,
    Field(discriminator="backend"),
]
BACKEND_NAMES = ("onnx", "sklearn", "python", "http", "process", "ray")


class ModelConfig(_Strict):
    inputs: Annotated[list[TensorSpec], Field(min_length=1)]
    outputs: Annotated[list[TensorSpec], Field(min_length=1)]
    versions: Annotated[dict[Name, VersionConfig], Field(min_length=1)]
    default_version: Name | None = None
    timeout_ms: Annotated[int, Field(ge=1, le=600_000)] = 5_000
    max_timeout_ms: Annotated[int, Field(ge=1, le=600_000)] | None = None
    per_try_timeout_ms: Annotated[int, Field(ge=1, le=600_000)] | None = None
    max_batch_size: Annotated[int, Field(ge=1, le=100_000_000)] = 65_536
    platform: str = "failsoft"
    objective_pct: Annotated[float, Field(gt=0, lt=100)] = Field(
        default=99.9,
        description="availability objective (SLO); 100 minus it is the error budget",
    )
    retry: RetryOptions = Field(default_factory=RetryOptions)
    hedge: HedgeOptions = Field(default_factory=HedgeOptions)
    breaker: BreakerOptions = Field(default_factory=BreakerOptions)
    ejection: EjectionOptions = Field(default_factory=EjectionOptions)
    balancer: BalancerOptions = Field(default_factory=BalancerOptions)
    health_check: HealthCheckOptions = Field(default_factory=HealthCheckOptions)
    cache: CacheOptions = Field(default_factory=CacheOptions)
    limiter: LimiterOptions = Field(default_factory=LimiterOptions)
    bulkhead: BulkheadOptions = Field(default_factory=BulkheadOptions)
    throttle: ThrottleOptions = Field(default_factory=ThrottleOptions)
    attribution: AttributionOptions = Field(default_factory=AttributionOptions)
    fallback: Annotated[list[FallbackTier], Field(max_length=16)] = Field(default_factory=list)
    drift: DriftOptions = Field(default_factory=DriftOptions)
    input_policy: InputPolicy = Field(
        default="reject",
        description="a request breaking an input's features: reject (422), flag (served, "
        "with Failsoft-Data-Warning) or degrade (answered by the fallback chain)",
    )
    compatibility: Compatibility = Field(
        default="backward",
        description="how a new revision may change the inputs of a version that serves: "
        "backward, forward, full or none (data/schema.py)",
    )
    slo: SloOptions = Field(default_factory=SloOptions)

    @property
    def timeout_cap_ms(self) -> int:
        """The longest deadline a request may ask for with Failsoft-Timeout-Ms."""
        return self.max_timeout_ms or self.timeout_ms

    @model_validator(mode="after")
    def _consistent(self) -> ModelConfig:
        for kind, specs in (("inputs", self.inputs), ("outputs", self.outputs)):
            names = [s.name for s in specs]
            if len(set(names)) != len(names):
                raise ValueError(f"{kind} names must be distinct, got {names}")
        if self.default_version is None:
            if len(self.versions) > 1:
                raise ValueError(
                    "default_version is required when a model has several versions "
                    f"(one of {sorted(self.versions)})"
                )
        elif self.default_version not in self.versions:
            raise ValueError(
                f"default_version {self.default_version!r} is not one of the versions "
                f"{sorted(self.versions)}"
            )
        self._check_fallback()
        self._check_health_check()
        check_model_inputs(self)
        return self

    def _check_fallback(self) -> None:
        declared = {spec.name for spec in self.outputs}
        for index, tier in enumerate(self.fallback):
            if isinstance(tier, VersionTier) and tier.version not in self.versions:
                raise ValueError(
                    f"fallback[{index}]: version {tier.version!r} is not one of "
                    f"{sorted(self.versions)}"
                )
            if isinstance(tier, StaticTier) and set(tier.static) != declared:
                raise ValueError(
                    f"fallback[{index}]: static must give exactly the outputs {sorted(declared)}"
                )

    def _check_health_check(self) -> None:
        golden = self.health_check.inputs
        if golden is not None and set(golden) != {spec.name for spec in self.inputs}:
            raise ValueError(
                "health_check.inputs must give every declared input "
                f"{sorted(spec.name for spec in self.inputs)}"
            )
        expect = self.health_check.expect
        if expect is not None and golden is None:
            raise ValueError("health_check.expect needs health_check.inputs")
        outputs = {spec.name: spec for spec in self.outputs}
        for name, value in (expect or {}).items():
            spec = outputs.get(name)
            if spec is None:
                raise ValueError(
                    f"health_check.expect names {name!r}, not one of the outputs {sorted(outputs)}"
                )
            try:
                np.asarray(value, dtype=DATATYPE_TO_DTYPE[spec.datatype])
            except (TypeError, ValueError):
                raise ValueError(
                    f"health_check.expect.{name} is not {spec.datatype} data like the output"
                ) from None

    @property
    def default(self) -> str:
        return self.default_version or next(iter(self.versions))


class StoreOptions(_Strict):
    """Where the control store lives; read at start-up only (a change needs a restart)."""

    url: str | None = Field(
        default=None,
        description="sqlite:///… or postgresql+psycopg://…; default: SQLite in data_dir",
    )
    data_dir: ConfigPath | None = Field(
        default=None,
        description="the store's SQLite file, audit key and checkpoints, artifact cache, "
        "backups; relative to the configuration file. Default: <file name>-data next to it",
    )
    poll_s: Annotated[float, Field(gt=0, le=3600)] = Field(
        default=2.0, description="how often to look for revisions other gateways applied"
    )
    keep_warm_s: Annotated[float, Field(ge=0, le=86_400)] = Field(
        default=120.0,
        description="a version a change removed keeps its replicas loaded this long, so a "
        "rollback to the revision before is instant (0: close them at once)",
    )
    backup_every_s: Annotated[float, Field(ge=0, le=30 * 86_400)] = Field(
        default=0.0, description="a backup into data_dir/backups this often (0: off)"
    )
    backup_keep: Annotated[int, Field(ge=1, le=10_000)] = Field(
        default=7, description="scheduled backups kept; older ones are removed"
    )
    listen: bool = Field(
        default=True,
        description="PostgreSQL: LISTEN for changes other gateways make, so they apply "
        "within a second (polling every poll_s stays the backstop)",
    )
    listen_url: str | None = Field(
        default=None,
        description="PostgreSQL: where to LISTEN, if not the store URL (e.g. the server "
        "itself when url goes through a transaction-pooling PgBouncer); same database",
    )
    heartbeat_s: Annotated[float, Field(gt=0, le=300)] = Field(
        default=2.0, description="how often this gateway renews its row in `failsoft instances`"
    )
    instance_expire_s: Annotated[float, Field(gt=0, le=30 * 86_400)] = Field(
        default=600.0,
        description="the row of a gateway that stopped beating is removed after this long "
        "(it shows as stale after 3 missed beats)",
    )


class ArtifactOptions(_Strict):
    locations: list[str] = Field(
        default_factory=list,
        description="directories or fsspec URLs holding a copy of every artifact; "
        "default: data_dir/artifacts",
    )


class Config(_Strict):
    server: ServerConfig = Field(default_factory=ServerConfig)
    store: StoreOptions = Field(default_factory=StoreOptions)
    artifacts: ArtifactOptions = Field(default_factory=ArtifactOptions)
    models: Annotated[dict[Name, ModelConfig], Field(min_length=1)]
    tenants: Annotated[dict[Name, TenantConfig], Field(max_length=100_000)] = Field(
        default_factory=dict
    )
    quotas: QuotaOptions = Field(default_factory=QuotaOptions)
    chaos: ChaosOptions = Field(default_factory=ChaosOptions)
    jobs: JobsOptions = Field(default_factory=JobsOptions)
    predictions: PredictionLogOptions = Field(default_factory=PredictionLogOptions)
    tracing: TracingOptions = Field(default_factory=TracingOptions)
    incidents: IncidentOptions = Field(default_factory=IncidentOptions)
    runbooks: RunbooksOptions = Field(default_factory=RunbooksOptions)

    @model_validator(mode="after")
    def _keys_can_be_met(self) -> Config:
        if self.server.require_keys and not self.tenants:
            raise ValueError(
                "server.require_keys is true but no tenants are configured: every request would "
                "get 401 (add one with `failsoft keys add NAME`)"
            )
        digests: dict[str, str] = {}
        for name, tenant in self.tenants.items():
            other = digests.setdefault(tenant.key_sha256, name)
            if other != name:
                raise ValueError(f"tenants {other!r} and {name!r} have the same key_sha256")
        return self

    @model_validator(mode="after")
    def _fallback_models_exist(self) -> Config:
        for name, model in self.models.items():
            for index, tier in enumerate(model.fallback):
                if not isinstance(tier, ModelTier):
                    continue
                other = self.models.get(tier.model)
                if other is None or tier.model == name:
                    raise ValueError(
                        f"models.{name}.fallback[{index}]: model {tier.model!r} must be another "
                        f"configured model ({sorted(set(self.models) - {name})})"
                    )
                if tier.version is not None and tier.version not in other.versions:
                    raise ValueError(
                        f"models.{name}.fallback[{index}]: model {tier.model!r} has no version "
                        f"{tier.version!r}"
                    )
        return self


class ConfigError(Exception):
    """A configuration that cannot be used; ``problems`` holds one line per error."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


def _format_location(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for i, item in enumerate(loc):
        # Tagged unions put the tag ("onnx", ...) in the location; a reader
        # thinks of versions.v1.path, not versions.v1.onnx.path.
        is_tag = (
            item in BACKEND_NAMES
            and ((i >= 2 and loc[i - 2] == "versions") or (i >= 1 and loc[i - 1] == "worker"))
        ) or (i >= 2 and loc[i - 2] == "fallback" and isinstance(loc[i - 1], int))
        if not is_tag:
            parts.append(f"[{item}]" if isinstance(item, int) else str(item))
    return ".".join(parts).replace(".[", "[") or "(top level)"


def _format_errors(error: ValidationError) -> list[str]:
    problems = validation_problems(error, _format_location)
    for index, item in enumerate(error.errors(include_url=False)):
        where = problems[index].partition(": ")[0]
        if item["type"] == "union_tag_invalid":
            problems[index] = f"{where}: backend must be one of {', '.join(BACKEND_NAMES)}"
        elif item["type"] == "union_tag_not_found":
            problems[index] = f"{where}: missing key 'backend' (one of {', '.join(BACKEND_NAMES)})"
    return problems


def parse_config(data: Any, source: str = "<config>", base_dir: Path | None = None) -> Config:
    """Validate already-parsed YAML/JSON data; raises ConfigError."""
    if not isinstance(data, Mapping):
        raise ConfigError(source, ["(top level): expected a mapping with a 'models' key"])
    try:
        return Config.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as error:
        raise ConfigError(source, _format_errors(error)) from None


def load_config(path: str | Path) -> Config:
    """Read and validate a YAML configuration file; raises ConfigError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(str(path), [f"cannot read: {error.strerror or error}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(error, "problem", None) or str(error)
        raise ConfigError(str(path), [f"{where}invalid YAML: {problem}"]) from None
    return parse_config(data, str(path), path.parent.resolve())


def missing_files(config: Config) -> list[str]:
    """Model files the configuration names that do not exist (warnings for check-config)."""
    found = []
    for model_name, model in config.models.items():
        for version_name, version in model.versions.items():
            local = version.worker if isinstance(version, ProcessBackend) else version
            path = getattr(local, "path", None)
            if path is not None and not Path(path).is_file():
                found.append(f"models.{model_name}.versions.{version_name}: file not found: {path}")
    return found
