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

A hostile client is an ``attack``: a second open-loop load on the same model,
alongside the good one, of requests that must be contained without hurting
the good traffic:

    attack:
      rate: 30
      at_s: 2
      for_s: 6
      requests:                              # cycled
        - {kind: poison, inputs: [...]}      # drives the model to NaN: 422 or a fallback
        - {kind: deadline, timeout_ms: 1, inputs: [...]}   # Failsoft-Timeout-Ms: 1
        - {kind: outputs, outputs: [label], inputs: [...]} # asks for one output only
        - {kind: oversize, body_bytes: 9437184}            # a body over the server's limit

A bad deploy is a ``deploys`` step: at ``at_s`` the drill reads the target's
configuration (GET /admin/config), applies ``change`` to it as a JSON merge
patch (RFC 7386: mappings merge, null removes a key, anything else replaces)
and proposes the result (POST /admin/config); ``expect`` says whether the
gateway must refuse it (and keep serving the revision it served) or apply it:

    deploys:
      - at_s: 6
        change: {models: {iris: {versions: {v2: {sha256: "0000...0000"}}}}}
        expect: refused
        reason: sha256                       # text the refusal must contain

An operator's switch is a ``flags`` step (drills/flagstep.py): a flag set
through the admin API at ``at_s`` and cleared ``for_s`` later:

    flags:
      - {at_s: 8, for_s: 8, key: failsoft.halt.iris.v1, spec: {kind: boolean, value: true}}

A rollout is a ``rollouts`` step (drills/rolloutstep.py): started through the
admin API at ``at_s`` and followed to its end, with what it must come to:

    rollouts:
      - {at_s: 2, spec: {model: iris, to: v2, step_s: 15}, expect: {outcome: promoted}}

The steady-state hypothesis must hold before, during and after the faults
(and the attack, the deploys and the flags); the expectations bound how the
gateway got through them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from failsoft._options import StrictModel, validation_problems
from failsoft.config import Config
from failsoft.control.faults import FaultSpec
from failsoft.drills.datastep import DataStep
from failsoft.drills.flagstep import FlagStep
from failsoft.drills.incidentstep import IncidentExpect
from failsoft.drills.rolloutstep import RolloutStep

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


def _check_numbers(inputs: list[dict[str, Any]] | None) -> None:
    """Refuse a number YAML read as text: ``3e38`` (no dot, no sign) is a string to it."""
    for index, tensor in enumerate(inputs or []):
        if str(tensor.get("datatype", "")).upper() == "BYTES":
            continue
        pending = [tensor.get("data")]
        while pending:
            value = pending.pop()
            if isinstance(value, list):
                pending += value
            elif isinstance(value, str):
                try:
                    float(value)
                except ValueError:
                    continue
                raise ValueError(
                    f"inputs[{index}].data: {value!r} is text (YAML reads 3e38 as a string); "
                    "write it as 3.0e+38"
                )


class RequestSpec(StrictModel):
    inputs: Annotated[list[dict[str, Any]], Field(min_length=1)]
    expect: dict[str, list[Any]] | None = Field(
        default=None, description="outputs a correct answer has (floats within 1e-4)"
    )
    degraded: bool | None = Field(
        default=None,
        description="true: must be answered degraded with a Failsoft-Data-Warning (it breaks "
        "an input constraint under input_policy: degrade); false: neither (drills/marked.py)",
    )

    @model_validator(mode="after")
    def _numbers(self) -> RequestSpec:
        _check_numbers(self.inputs)
        return self


class TenantLoad(StrictModel):
    """A tenant sending part of the load.

    When the drill starts its own target, it adds the tenant to the target's
    configuration with a fresh key and ``priority`` (the most its requests may
    ask for). Against a running gateway the key comes from ``key_env``.
    """

    key_env: str | None = Field(
        default=None, description="the variable holding the tenant's API key (running targets)"
    )
    priority: Priority = Field(
        default="default", description="the tenant's priority ceiling, when the drill adds it"
    )
    weight: Annotated[float, Field(gt=0)] = 1.0


def _default_mix() -> dict[Priority, float]:
    return {"default": 1.0}


class Load(StrictModel):
    model: str
    version: str | None = None
    rate: Annotated[float, Field(gt=0, le=20_000)]
    duration_s: Annotated[float, Field(gt=0, le=3600)]
    timeout_ms: Annotated[int, Field(ge=1, le=600_000)] = 1000
    requests: Annotated[list[RequestSpec], Field(max_length=1000)] = Field(
        default_factory=list, description="cycled; may be left out when the drill has data"
    )
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


AttackKind = Literal["poison", "deadline", "outputs", "oversize"]
MAX_ATTACK_BODY_BYTES = 32 * 1024 * 1024
# Set by the load driver itself, or by a kind of attack request.
_RESERVED_HEADERS = ("host", "content-length", "transfer-encoding", "failsoft-timeout-ms")


class AttackRequest(StrictModel):
    """One hostile request, of a kind that says what it tries and how it is judged."""

    kind: AttackKind = Field(
        description="poison: inputs that drive the model to NaN (judged: 422 or a degraded "
        "200); deadline: a client deadline of timeout_ms; outputs: asks for some outputs only; "
        "oversize: a generated body of body_bytes"
    )
    inputs: Annotated[list[dict[str, Any]], Field(min_length=1)] | None = None
    outputs: Annotated[list[str], Field(min_length=1)] | None = Field(
        default=None, description="outputs: the output names asked for"
    )
    timeout_ms: Annotated[int, Field(ge=1, le=600_000)] | None = Field(
        default=None, description="deadline: sent as Failsoft-Timeout-Ms"
    )
    body_bytes: Annotated[int, Field(ge=1024, le=MAX_ATTACK_BODY_BYTES)] | None = Field(
        default=None, description="oversize: the size of the body sent"
    )
    headers: dict[str, str] = Field(default_factory=dict, description="extra request headers")

    @model_validator(mode="after")
    def _fields_fit_kind(self) -> AttackRequest:
        _check_numbers(self.inputs)
        kind = self.kind
        if kind == "oversize":
            if self.body_bytes is None:
                raise ValueError("an oversize request needs body_bytes (its body is generated)")
            if self.inputs is not None:
                raise ValueError("an oversize request has no inputs: its body is generated")
        else:
            if self.inputs is None:
                raise ValueError(f"a {kind} request needs inputs")
            if self.body_bytes is not None:
                raise ValueError("body_bytes applies to oversize requests only")
        if kind == "deadline" and self.timeout_ms is None:
            raise ValueError("a deadline request needs timeout_ms (sent as Failsoft-Timeout-Ms)")
        if kind != "deadline" and self.timeout_ms is not None:
            raise ValueError("timeout_ms applies to deadline requests only")
        if kind == "outputs" and self.outputs is None:
            raise ValueError("an outputs request needs outputs (the names asked for)")
        if kind != "outputs" and self.outputs is not None:
            raise ValueError("outputs applies to outputs requests only")
        for name, value in self.headers.items():
            if name.lower() in _RESERVED_HEADERS:
                raise ValueError(f"header {name!r} is set by the drill (use kind: deadline)")
            if not name or any(char in name + value for char in "\r\n") or ":" in name:
                raise ValueError(f"header {name!r}: not a valid header")
        return self


class Attack(StrictModel):
    """A hostile client: a second open-loop load, alongside the good one."""

    rate: Annotated[float, Field(gt=0, le=5000)]
    at_s: Annotated[float, Field(ge=0)] = 0.0
    for_s: Annotated[float, Field(gt=0)] | None = Field(
        default=None, description="how long it lasts (to the end of the load when unset)"
    )
    requests: Annotated[list[AttackRequest], Field(min_length=1, max_length=100)]


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


# What a deploy's change may patch: the keys of a configuration.
CONFIG_KEYS = tuple(Config.model_fields)


class Deploy(StrictModel):
    """A change to the target's configuration, proposed mid-load through its admin API."""

    at_s: Annotated[float, Field(ge=0)]
    change: dict[str, Any] = Field(
        description="a JSON merge patch (RFC 7386) of the target's current configuration: "
        "mappings merge, null removes a key, anything else replaces"
    )
    expect: Literal["refused", "applied"] = Field(
        description="refused: the gateway must refuse it and keep serving its revision; "
        "applied: it must become the revision served"
    )
    reason: Annotated[str, Field(min_length=1)] | None = Field(
        default=None, description="refused: text the refusal's reason must contain"
    )

    @model_validator(mode="after")
    def _a_real_change(self) -> Deploy:
        if not self.change:
            raise ValueError("change is empty: give the configuration keys to change")
        unknown = sorted(key for key in self.change if key not in CONFIG_KEYS)
        if unknown:
            raise ValueError(
                f"change: {', '.join(map(repr, unknown))} not a configuration key "
                f"(one of {', '.join(CONFIG_KEYS)})"
            )
        if self.reason is not None and self.expect != "refused":
            raise ValueError("reason applies to a deploy expected to be refused")
        return self


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
    max_not_ready: Annotated[int, Field(ge=0)] | None = Field(
        default=None,
        description="readiness answers other than 200 (polled every 100 ms through the run)",
    )
    max_poison_uncontained: Annotated[int, Field(ge=0)] | None = Field(
        default=None,
        description="poison attack requests answered other than 422 or a degraded 200",
    )
    max_replicas_penalised: Annotated[int, Field(ge=0)] | None = Field(
        default=None,
        description="breaker openings, ejections and failed health probes of the load's "
        "model during the run (what a hostile client must never cause)",
    )
    max_switch_effective_s: Annotated[float, Field(gt=0)] | None = Field(
        default=None,
        description="a flag step that switches versions off: from sending it to the last "
        "answer a switched version gave (at least the admin call's round trip)",
    )
    max_drift_detect_s: Annotated[float, Field(gt=0)] | None = Field(
        default=None, description="data.shift: from the shift to DriftDetected naming its feature"
    )
    max_calls_to_switched: Annotated[int, Field(ge=0)] | None = Field(
        default=None,
        description="inference calls (failsoft_attempts) on switched versions while switched",
    )
    max_not_as_marked: Annotated[int, Field(ge=0)] | None = Field(
        default=None,
        description="requests marked degraded: true/false answered otherwise (drills/marked.py)",
    )
    incident: IncidentExpect | None = Field(
        default=None,
        description="the incident the gateway opens, its runbook and timeline (incidentstep.py)",
    )


class Experiment(StrictModel):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")]
    description: str = ""
    target: Target | None = None
    load: Load
    hypothesis: Hypothesis = Field(default_factory=Hypothesis)
    faults: list[ScheduledFault] = Field(default_factory=list, max_length=64)
    attack: Attack | None = None
    deploys: list[Deploy] = Field(default_factory=list, max_length=16)
    flags: list[FlagStep] = Field(default_factory=list, max_length=16)
    data: DataStep | None = Field(
        default=None, description="requests drawn from a data set, and a shift of one feature"
    )
    short_min_s: Annotated[float, Field(gt=0)] | None = Field(
        default=None, description="the short form's load lasts at least this long"
    )
    setup: Annotated[list[dict[str, Any]], Field(max_length=8)] = Field(
        default_factory=list,
        description="merge patches of the target's configuration applied, in order, before "
        "the load and undone after it (drills/setup.py)",
    )
    rollouts: list[RolloutStep] = Field(default_factory=list, max_length=4)
    webhooks: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=100)]], Field(max_length=8)
    ] = Field(
        default_factory=list,
        description="runbook webhooks the drill receives itself (a local receiver each, set "
        "as runbooks.webhooks.NAME for the run)",
    )
    expect: Expectations = Field(default_factory=Expectations)

    def scale_for(self, short_s: float | None) -> float:
        """How much the short form (a load of ``short_s``) shrinks this drill's times."""
        if short_s is None:
            return 1.0
        return min(1.0, max(short_s, self.short_min_s or 0.0) / self.load.duration_s)

    def with_noise_margin(self) -> Experiment:
        """This drill as its short form judges it. A short phase's p99 is one of its
        three or four slowest calls, so a single scheduler stall on a shared machine
        decides it: the p99 hypothesis gets the noise margin for latency, max(2x, +20 ms).
        Availability, losses and reaction times stay as written."""
        p99 = self.hypothesis.p99_ms
        if p99 is None:
            return self
        widened = self.hypothesis.model_copy(update={"p99_ms": max(2 * p99, p99 + 20)})
        return self.model_copy(update={"hypothesis": widened})

    @model_validator(mode="after")
    def _faults_fit_the_run(self) -> Experiment:
        if not self.load.requests and self.data is None:
            raise ValueError("load.requests: give at least one request (or data: a data set)")
        if self.data is not None and self.data.shift is not None:
            if self.data.shift.at_s >= self.load.duration_s:
                raise ValueError("data.shift.at_s is after the load's end")
        elif self.expect.max_drift_detect_s is not None:
            raise ValueError("expect.max_drift_detect_s needs data.shift")
        for index, fault in enumerate(self.faults):
            if fault.at_s + fault.for_s > self.load.duration_s:
                raise ValueError(
                    f"faults[{index}] ends at {fault.at_s + fault.for_s:g} s, after the load "
                    f"({self.load.duration_s:g} s): leave time to see the recovery"
                )
        if self.expect.max_failed_after_heal is not None and not self.faults:
            raise ValueError("expect.max_failed_after_heal needs a fault to heal from")
        for index, deploy in enumerate(self.deploys):
            if deploy.at_s >= self.load.duration_s:
                raise ValueError(
                    f"deploys[{index}] is at {deploy.at_s:g} s, when the load "
                    f"({self.load.duration_s:g} s) is over"
                )
        for index, step in enumerate(self.flags):
            end = step.at_s + (step.for_s or 0.0)
            if step.at_s >= self.load.duration_s or end > self.load.duration_s:
                raise ValueError(
                    f"flags[{index}] runs to {end:g} s, after the load ({self.load.duration_s:g} s)"
                )
        for index, change in enumerate(self.setup):
            unknown = sorted(key for key in change if key not in CONFIG_KEYS)
            if not change or unknown:
                raise ValueError(
                    f"setup[{index}]: give configuration keys to change "
                    f"(one of {', '.join(CONFIG_KEYS)})"
                )
        marked = any(request.degraded is not None for request in self.load.requests)
        if self.expect.max_not_as_marked is not None and not marked:
            raise ValueError("expect.max_not_as_marked needs load requests with degraded: ...")
        for index, rollout in enumerate(self.rollouts):
            if rollout.at_s >= self.load.duration_s:
                raise ValueError(
                    f"rollouts[{index}] is at {rollout.at_s:g} s, when the load "
                    f"({self.load.duration_s:g} s) is over"
                )
        if self.webhooks and self.expect.incident is None:
            raise ValueError("webhooks: the drill receives them for expect.incident")
        switches = self.expect.max_switch_effective_s, self.expect.max_calls_to_switched
        if any(bound is not None for bound in switches) and not self.flags:
            raise ValueError("expect.max_switch_effective_s and max_calls_to_switched need flags")
        return self

    @model_validator(mode="after")
    def _attack_fits_the_run(self) -> Experiment:
        attack = self.attack
        if attack is None:
            if self.expect.max_poison_uncontained is not None:
                raise ValueError("expect.max_poison_uncontained needs an attack with poison")
            return self
        start, end = self.attack_window_s()
        if start >= self.load.duration_s:
            raise ValueError(
                f"attack starts at {start:g} s, when the load ({self.load.duration_s:g} s) is over"
            )
        if end > self.load.duration_s:
            raise ValueError(
                f"attack ends at {end:g} s, after the load ({self.load.duration_s:g} s)"
            )
        if attack.rate * (end - start) > MAX_REQUESTS:
            raise ValueError(
                f"attack: {attack.rate:g} req/s for {end - start:g} s is over "
                f"{MAX_REQUESTS} requests"
            )
        poison = any(request.kind == "poison" for request in attack.requests)
        if self.expect.max_poison_uncontained is not None and not poison:
            raise ValueError("expect.max_poison_uncontained needs a poison request in the attack")
        return self

    def attack_window_s(self, scale: float = 1.0) -> tuple[float, float]:
        """When the attack starts and ends (scaled), in seconds since the load started."""
        if self.attack is None:
            raise ValueError("this experiment has no attack")
        start = self.attack.at_s
        length = (
            self.attack.for_s if self.attack.for_s is not None else self.load.duration_s - start
        )
        return start * scale, (start + length) * scale


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
