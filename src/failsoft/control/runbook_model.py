"""What a runbook is: a trigger (an incident opened, an event) and steps, validated.

Runbooks come from the ``runbooks:`` section of the configuration and from
the YAML files (each holding ``runbooks: [...]``) of ``runbooks.dir``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from failsoft._options import StrictModel, validation_problems
from failsoft.control.incident_model import CAUSES

__all__ = ["ACTIONS", "RunbookSpec", "RunbooksOptions", "StepSpec", "TriggerSpec", "load_dir"]

ACTIONS = (
    "webhook",
    "kill_switch",
    "safe_halt",
    "disable_version",
    "rollout_abort",
    "config_rollback",
    "eject",
    "restart_workers",
    "wait",
)
Cause = Literal["infra", "data", "logic", "overload"]
assert set(CAUSES) == {"infra", "data", "logic", "overload"}


class TriggerSpec(StrictModel):
    """An incident opened (with a cause class, model, signal source) or a bus event."""

    incident: Literal["opened"] | None = None
    cause: list[Cause] = Field(default_factory=list, description="any of these (empty: any)")
    model: list[str] = Field(default_factory=list, description="any of these (empty: any)")
    signal: list[str] = Field(
        default_factory=list,
        description="the source of the opening signal: replicas, burn, halt, rollback, ...",
    )
    event: str | None = Field(default=None, description="an event's class name on the bus")

    @model_validator(mode="after")
    def _one(self) -> TriggerSpec:
        if (self.incident is None) == (self.event is None):
            raise ValueError("give exactly one of incident: opened or event: NAME")
        return self


class StepSpec(StrictModel):
    """One action. ``{model}``, ``{version}`` and ``{incident}`` in its texts are filled in."""

    action: Literal[
        "webhook",
        "kill_switch",
        "safe_halt",
        "disable_version",
        "rollout_abort",
        "config_rollback",
        "eject",
        "restart_workers",
        "wait",
    ]
    approve: bool = Field(default=False, description="wait for `failsoft incident approve N`")
    webhook: str | None = Field(default=None, description="webhook: a name in runbooks.webhooks")
    text: str = Field(default="", max_length=2000, description="webhook: the message")
    format: Literal["json", "slack"] = Field(
        default="json", description="webhook: generic JSON, or Slack's text and blocks"
    )
    key: str | None = Field(default=None, description="kill_switch: the flag key")
    model: str = "{model}"
    version: str = "{version}"
    rollout: str | None = Field(default=None, description="rollout_abort: the model (key)")
    revision: int | None = Field(default=None, description="config_rollback: target (None: prev)")
    replica: str | None = Field(
        default=None, description="eject: the replica (None: the one faring worst)"
    )
    for_s: Annotated[float, Field(gt=0, le=7 * 86_400)] | None = Field(
        default=None,
        description="switches: in force this long, then cleared by expiry; eject: how long "
        "(default 30 s)",
    )
    until: Literal["mitigated", "resolved"] = "mitigated"
    within_s: Annotated[float, Field(gt=0, le=86_400)] = 300.0

    @model_validator(mode="after")
    def _needs(self) -> StepSpec:
        if self.action == "webhook" and not self.webhook:
            raise ValueError("webhook: a webhook step names a webhook of runbooks.webhooks")
        if self.action == "kill_switch" and not self.key:
            raise ValueError("key: a kill_switch step names the flag key")
        return self


class RunbookSpec(StrictModel):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")]
    mode: Literal["dry-run", "act"] = Field(
        default="dry-run", description="dry-run says what would be done; act does it"
    )
    trigger: TriggerSpec
    steps: Annotated[list[StepSpec], Field(min_length=1, max_length=50)]
    cooldown_s: Annotated[float, Field(ge=0, le=7 * 86_400)] = Field(
        default=600.0, description="a trigger this soon after the last run starts none"
    )
    approve_within_s: Annotated[float, Field(gt=0, le=7 * 86_400)] = 3600.0


class WebhookOptions(StrictModel):
    queue_max: Annotated[int, Field(ge=1, le=10_000)] = 100
    retries: Annotated[int, Field(ge=0, le=20)] = 3
    backoff_s: Annotated[float, Field(ge=0, le=600)] = 1.0
    timeout_s: Annotated[float, Field(gt=0, le=120)] = 5.0


class RunbooksOptions(StrictModel):
    """Runbooks: incident or event → steps, dry-run unless ``mode: act``."""

    enabled: bool = True
    runbooks: Annotated[list[RunbookSpec], Field(max_length=1000)] = Field(default_factory=list)
    dir: str | None = Field(
        default=None,
        description="a directory of runbook YAML files (relative to the configuration file)",
    )
    webhooks: dict[str, str] = Field(default_factory=dict, description="name -> URL")
    public_url: Annotated[str, Field(pattern=r"^https?://\S+$", max_length=500)] | None = Field(
        default=None, description="where people reach this gateway: notices link its /status"
    )
    webhook: WebhookOptions = Field(default_factory=WebhookOptions)
    action_cooldown_s: Annotated[float, Field(ge=0, le=86_400)] = Field(
        default=60.0, description="the same action on the same target at most this often"
    )
    max_actions_per_hour: Annotated[int, Field(ge=1, le=10_000)] = 20

    @field_validator("dir")
    @classmethod
    def _beside_the_file(cls, value: str | None, info: ValidationInfo) -> str | None:
        base = (info.context or {}).get("base_dir")
        if value and base is not None and not Path(value).is_absolute():
            return str((Path(base) / value).resolve())
        return value

    @model_validator(mode="after")
    def _files_and_names(self) -> RunbooksOptions:
        try:
            names = [spec.name for spec in (*self.runbooks, *load_dir(self.dir))]
        except RunbookFileError as error:
            raise ValueError(f"dir: {error}") from None
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"runbooks: the name {twice[0]!r} is used twice")
        for spec in self.runbooks:
            for step in spec.steps:
                if step.webhook and step.webhook not in self.webhooks:
                    raise ValueError(
                        f"runbooks: {spec.name}: webhook {step.webhook!r} is not in "
                        "runbooks.webhooks"
                    )
        return self


class RunbookFileError(ValueError):
    pass


def load_dir(folder: str | None) -> list[RunbookSpec]:
    """The runbooks of every ``*.yaml``/``*.yml`` in ``folder`` (sorted by file name)."""
    if not folder:
        return []
    found: list[RunbookSpec] = []
    for path in sorted([*Path(folder).glob("*.yaml"), *Path(folder).glob("*.yml")]):
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as error:
            raise RunbookFileError(f"{path.name}: not readable YAML ({error})") from None
        items = data.get("runbooks") if isinstance(data, dict) else None
        if not isinstance(items, list):
            raise RunbookFileError(f"{path.name}: runbooks: a list of runbooks is expected")
        for index, item in enumerate(items):
            try:
                found.append(RunbookSpec.model_validate(item))
            except ValidationError as error:
                problems = validation_problems(error, root="")
                raise RunbookFileError(
                    f"{path.name}: runbooks[{index}]: {'; '.join(problems)}"
                ) from None
    return found
