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

import yaml
from pydantic import (
    AfterValidator,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from failsoft._options import StrictModel
from failsoft.protocol.datatypes import DATATYPES

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"
Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=128)]
Datatype = Literal[
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
]
assert set(Datatype.__args__) == set(DATATYPES)  # type: ignore[attr-defined]


def _resolve_path(value: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base_dir")
    if base is not None and not value.is_absolute():
        return (Path(base) / value).resolve()
    return value


ConfigPath = Annotated[Path, AfterValidator(_resolve_path)]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$")]


_Strict = StrictModel


class TensorSpec(_Strict):
    """A declared input or output: its name, V2 datatype and shape (-1: any size)."""

    name: Annotated[str, Field(min_length=1, max_length=256)]
    datatype: Datatype
    shape: list[Annotated[int, Field(ge=-1)]]


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8000
    max_body_bytes: Annotated[int, Field(ge=1024, le=1 << 30)] = 8 * 1024 * 1024
    admin_token: str | None = Field(
        default=None, description="bearer token for /admin; falls back to $FAILSOFT_ADMIN_TOKEN"
    )
    access_log: bool = False
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    def resolved_admin_token(self) -> str | None:
        return self.admin_token or os.environ.get("FAILSOFT_ADMIN_TOKEN") or None


Execution = Literal["auto", "thread", "inline"]


class OnnxBackend(_Strict):
    backend: Literal["onnx"]
    path: ConfigPath
    sha256: Sha256 | None = None
    replicas: Annotated[int, Field(ge=1, le=64)] = 1
    threads: Annotated[int, Field(ge=1, le=64)] = 1
    execution: Execution = "auto"


class SklearnBackend(_Strict):
    backend: Literal["sklearn"]
    path: ConfigPath
    sha256: Sha256 | None = None
    replicas: Annotated[int, Field(ge=1, le=64)] = 1
    methods: dict[str, Literal["predict", "predict_proba", "decision_function", "transform"]] = (
        Field(default_factory=dict)
    )
    execution: Execution = "auto"

    @model_validator(mode="after")
    def _pinned(self) -> SklearnBackend:
        if self.sha256 is None:
            raise ValueError(
                "sha256 is required: an sklearn model is a pickle, and loading a pickle runs "
                f"code; pin the file with `sha256: <hex>` (sha256sum {self.path})"
            )
        return self


class PythonBackend(_Strict):
    backend: Literal["python"]
    function: Annotated[
        str, Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$", description="module:function")
    ]
    replicas: Annotated[int, Field(ge=1, le=64)] = 1
    execution: Execution = "auto"


class HttpBackend(_Strict):
    backend: Literal["http"]
    urls: Annotated[
        list[Annotated[str, Field(pattern=r"^https?://[^\s/]+(/[^\s]*)?$")]],
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


LocalBackend = Annotated[
    OnnxBackend | SklearnBackend | PythonBackend, Field(discriminator="backend")
]


class ProcessBackend(_Strict):
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

    @field_validator("worker")
    @classmethod
    def _one_replica_per_worker(cls, worker: Any) -> Any:
        if worker.replicas != 1:
            raise ValueError("set replicas on the process backend, not on its worker")
        return worker


VersionConfig = Annotated[
    OnnxBackend | SklearnBackend | PythonBackend | HttpBackend | ProcessBackend,
    Field(discriminator="backend"),
]
BACKEND_NAMES = ("onnx", "sklearn", "python", "http", "process")


class ModelConfig(_Strict):
    inputs: Annotated[list[TensorSpec], Field(min_length=1)]
    outputs: Annotated[list[TensorSpec], Field(min_length=1)]
    versions: Annotated[dict[Name, VersionConfig], Field(min_length=1)]
    default_version: Name | None = None
    timeout_ms: Annotated[int, Field(ge=1, le=600_000)] = 5_000
    platform: str = "failsoft"

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
        return self

    @property
    def default(self) -> str:
        return self.default_version or next(iter(self.versions))


class Config(_Strict):
    server: ServerConfig = Field(default_factory=ServerConfig)
    models: Annotated[dict[Name, ModelConfig], Field(min_length=1)]


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
        is_tag = item in BACKEND_NAMES and (
            (i >= 2 and loc[i - 2] == "versions") or (i >= 1 and loc[i - 1] == "worker")
        )
        if not is_tag:
            parts.append(f"[{item}]" if isinstance(item, int) else str(item))
    return ".".join(parts).replace(".[", "[") or "(top level)"


def _format_errors(error: ValidationError) -> list[str]:
    problems = []
    for item in error.errors(include_url=False):
        message = item["msg"].removeprefix("Value error, ")
        where = _format_location(tuple(item["loc"]))
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        elif item["type"] == "union_tag_invalid":
            message = f"backend must be one of {', '.join(BACKEND_NAMES)}"
        elif item["type"] == "union_tag_not_found":
            message = f"missing key 'backend' (one of {', '.join(BACKEND_NAMES)})"
        elif "input" in item and not isinstance(item["input"], dict | list):
            shown = repr(item["input"])
            message += f" (got {shown[:60] + '...' if len(shown) > 60 else shown})"
        problems.append(f"{where}: {message}")
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
