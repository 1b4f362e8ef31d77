"""A chaos experiment, as written in a drill file (YAML).

    name: replica-crash
    target: {config: ../failsoft.yaml}       # or {url: http://host:8000, admin_token_env: TOKEN}
    load:
      model: iris
      rate: 100                              # requests per second, open loop
      duration_s: 12
      requests:                              # cycled; `expect` makes correctness checkable
        - inputs: [{name: features, datatype: FP32, shape: [1, 4], data: [5.1, 3.5, 1.4, 0.2]}]
          expect: {label: [0]}
    hypothesis: {availability_pct: 99, p99_ms: 100}
    faults:
      - {at_s: 3, for_s: 4, kind: kill, model: iris, version: v1, replica: w0}
    expect: {max_detect_s: 2, max_recover_s: 3, max_lost: 0}

The steady-state hypothesis must hold before, during and after the faults;
the expectations bound how the gateway got through them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from failsoft._options import StrictModel, validation_problems
from failsoft.control.faults import FaultSpec

Priority = Literal["critical", "default", "sheddable"]
MAX_REQUESTS = 200_000


class Target(StrictModel):
    config: Path | None = Field(default=None, description="a configuration to start")
    url: Annotated[str, Field(pattern=r"^http://[^\s/]+/?$")] | None = None
    admin_token_env: str = Field(
        default="FAILSOFT_ADMIN_TOKEN", description="the variable holding the admin token"
    )

    @model_validator(mode="after")
    def _one_target(self) -> Target:
        if (self.config is None) == (self.url is None):
            raise ValueError("give exactly one of config (a file to start) or url (running)")
        return self


class RequestSpec(StrictModel):
    inputs: Annotated[list[dict[str, Any]], Field(min_length=1)]
    expect: dict[str, list[Any]] | None = Field(
        default=None, description="outputs a correct answer has (floats within 1e-4)"
    )


class TenantLoad(StrictModel):
    key_env: str = Field(description="the variable holding the tenant's API key")
    weight: Annotated[float, Field(gt=0)] = 1.0


def _default_mix() -> dict[Priority, float]:
    return {"default": 1.0}


class Load(StrictModel):
    model: str
    version: str | None = None
    rate: Annotated[float, Field(gt=0, le=20_000)]
    duration_s: Annotated[float, Field(gt=0, le=3600)]
    timeout_ms: Annotated[int, Field(ge=1, le=600_000)] = 1000
    requests: Annotated[list[RequestSpec], Field(min_length=1, max_length=1000)]
    priorities: dict[Priority, Annotated[float, Field(gt=0)]] = Field(
        default_factory=_default_mix, description="weights of the priority mix"
    )
    tenants: dict[str, TenantLoad] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _bounded(self) -> Load:
        if self.rate * self.duration_s > MAX_REQUESTS:
            raise ValueError(
                f"{self.rate:g} req/s for {self.duration_s:g} s is over {MAX_REQUESTS} requests"
            )
        return self


class Hypothesis(StrictModel):
    availability_pct: Annotated[float, Field(ge=0, le=100)] = 99.0
    p99_ms: Annotated[float, Field(gt=0)] | None = None
    correctness: bool = Field(default=True, description="answers must match `expect`")
    priorities: list[Priority] | None = Field(
        default=None, description="judge only requests of these priorities (all when unset)"
    )


class ScheduledFault(FaultSpec):
    at_s: Annotated[float, Field(ge=0)]
    for_s: Annotated[float, Field(gt=0)]
    duration_s: Annotated[float, Field(gt=0)] = 1.0  # set from for_s when scheduled

    def spec(self, scale: float = 1.0) -> dict[str, Any]:
        """The fault as the admin API takes it, lasting ``for_s`` (scaled)."""
        data = self.model_dump(exclude={"at_s", "for_s"}, exclude_none=True)
        data["duration_s"] = self.for_s * scale
        return data


class Expectations(StrictModel):
    max_detect_s: Annotated[float, Field(gt=0)] | None = None
    max_recover_s: Annotated[float, Field(ge=0)] | None = None
    max_lost: Annotated[int, Field(ge=0)] | None = None
    max_degraded_pct: Annotated[float, Field(ge=0, le=100)] | None = None
    max_retry_amplification: Annotated[float, Field(ge=1)] | None = None
    max_failed_after_heal: Annotated[int, Field(ge=0)] | None = Field(
        default=None,
        description="requests scheduled after the last fault ended that failed or were degraded",
    )
    sheddable_first: bool = Field(
        default=False, description="sheddable requests succeed least, critical ones most"
    )


class Experiment(StrictModel):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")]
    description: str = ""
    target: Target | None = None
    load: Load
    hypothesis: Hypothesis = Field(default_factory=Hypothesis)
    faults: list[ScheduledFault] = Field(default_factory=list, max_length=64)
    expect: Expectations = Field(default_factory=Expectations)

    @model_validator(mode="after")
    def _faults_fit_the_run(self) -> Experiment:
        for index, fault in enumerate(self.faults):
            if fault.at_s + fault.for_s > self.load.duration_s:
                raise ValueError(
                    f"faults[{index}] ends at {fault.at_s + fault.for_s:g} s, after the load "
                    f"({self.load.duration_s:g} s): leave time to see the recovery"
                )
        if self.expect.max_failed_after_heal is not None and not self.faults:
            raise ValueError("expect.max_failed_after_heal needs a fault to heal from")
        return self


class ExperimentError(Exception):
    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


def load_experiment(path: Path) -> Experiment:
    """Read and validate a drill file; ExperimentError names every problem."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ExperimentError(str(path), [f"cannot read: {error.strerror or error}"]) from None
    except yaml.YAMLError as error:
        raise ExperimentError(str(path), [f"invalid YAML: {error}"]) from None
    if not isinstance(data, dict):
        raise ExperimentError(str(path), ["(top level): expected a mapping with name and load"])
    try:
        experiment = Experiment.model_validate(data)
    except ValidationError as error:
        raise ExperimentError(str(path), validation_problems(error)) from None
    target = experiment.target
    if target is not None and target.config is not None and not target.config.is_absolute():
        resolved = (path.parent / target.config).resolve()
        experiment = experiment.model_copy(
            update={"target": target.model_copy(update={"config": resolved})}
        )
    return experiment
