"""A drill's flag step: set a flag mid-load, clear it later, and what the gateway did meanwhile.

    flags:
      - at_s: 8                              # set it then (PUT /admin/flags/KEY)
        for_s: 8                             # clear it this much later (to the load's end if unset)
        key: failsoft.disable.iris.v1
        spec: {kind: boolean, value: true}

For a step that switches versions of the load's model off (``failsoft.halt.
MODEL``, ``failsoft.halt.MODEL.VERSION``, ``failsoft.disable.MODEL.VERSION``,
true, without targeting rules) the scorecard judges:

- time until effective: from the moment the drill sent the flag to the
  later of the gateway's answer (the switch is in force once it answers)
  and the last request sent after that moment which a switched version
  still answered;
- calls to switched versions: the inference calls on them (first tries,
  retries and hedges: ``failsoft_attempts`` in /metrics) from the gateway's
  answer to the clearing of the flag; health probes are not traffic and do
  not count;
- answers while switched: each request sent in that window must be answered
  by a fallback tier (200, degraded, not from a switched version) or a clean
  503 — never a silent answer from the switched version.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

import numpy as np
from pydantic import Field, ValidationError, model_validator

from failsoft._options import StrictModel, validation_problems
from failsoft.control.flags import KEY_PATTERN, PREFIX, FlagSpec


class FlagStep(StrictModel):
    """A flag set through the target's admin API mid-load, and cleared after ``for_s``."""

    at_s: Annotated[float, Field(ge=0)]
    for_s: Annotated[float, Field(gt=0)] | None = Field(
        default=None, description="how long it stays set (to the end of the load when unset)"
    )
    key: Annotated[str, Field(pattern=KEY_PATTERN)]
    spec: dict[str, Any] = Field(description="the flag as PUT /admin/flags/KEY takes it")

    @model_validator(mode="after")
    def _a_valid_spec(self) -> FlagStep:
        data = {k: v for k, v in self.spec.items() if k != "expires_in_s"}
        try:
            FlagSpec.model_validate(data)
        except ValidationError as error:
            problems = validation_problems(error, root="")
            raise ValueError("spec: " + "; ".join(p.removeprefix(": ") for p in problems)) from None
        return self


def switched_versions(
    key: str, spec: dict[str, Any], model: str, versions: Sequence[str]
) -> list[str]:
    """The versions of ``model`` a flag switches off for every request (none when targeted)."""
    if spec.get("kind") != "boolean" or spec.get("value") is not True or spec.get("rules"):
        return []
    if key == f"{PREFIX}halt.{model}":
        return list(versions)
    for kind in ("halt", "disable"):
        head = f"{PREFIX}{kind}.{model}."
        if key.startswith(head) and key[len(head) :] in versions:
            return [key[len(head) :]]
    return []


@dataclass(frozen=True)
class FlagOutcome:
    """One flag step as it ran; times in seconds since the load started."""

    number: int
    key: str
    start_s: float  # the flag was sent
    end_s: float  # the gateway answered
    status: int  # of the PUT (0: no answer)
    error: str  # the refusal's message ("" when set)
    cleared_start_s: float  # the clearing was sent (the load's end when it stayed)
    cleared_end_s: float
    switched: list[str] = field(default_factory=list)  # versions of the load's model
    calls: int | None = None  # failsoft_attempts on them while switched

    @property
    def label(self) -> str:
        return f"flag {self.number} ({self.key})"


@dataclass(frozen=True)
class FlagScore:
    """What the load saw of one flag step."""

    number: int
    key: str
    model: str
    switched: list[str]
    start_s: float
    end_s: float
    cleared_s: float
    status: int
    error: str
    set_ms: float  # the admin call's round trip
    effective_s: float | None  # None when the flag was not set
    calls: int | None
    answers: dict[str, int]  # while switched: fallback, clean 503, other

    @property
    def is_switch(self) -> bool:
        return bool(self.switched)


def _from_switched(served_by: str, model: str, switched: Sequence[str]) -> bool:
    """Did a switched version give this answer (``model/version/replica`` or a version tier)?"""
    parts = served_by.split("/", 2)
    if len(parts) < 3 or parts[0] != model:
        return False
    version, rest = parts[1], parts[2]
    if rest.startswith("fallback:"):
        tier = rest.removeprefix("fallback:")
        return tier.startswith("version:") and tier.removeprefix("version:") in switched
    return version in switched


def score_flag(
    outcome: FlagOutcome,
    model: str,
    offsets: np.ndarray,
    status: np.ndarray,
    degraded: np.ndarray,
    served_by: Sequence[str],
) -> FlagScore:
    switched = outcome.switched
    by_switched = (
        np.array([_from_switched(who, model, switched) for who in served_by], dtype=bool)
        if switched
        else np.zeros(len(offsets), dtype=bool)
    )
    answered = outcome.status == 200
    effective: float | None = None
    if answered:
        late = offsets[
            by_switched & (offsets >= outcome.start_s) & (offsets < outcome.cleared_start_s)
        ]
        last = float(late.max()) if late.size else outcome.start_s
        effective = max(outcome.end_s, last) - outcome.start_s
    window = (offsets >= outcome.end_s) & (offsets < outcome.cleared_start_s)
    answers = {"fallback": 0, "clean 503": 0, "other": 0}
    if switched and answered:
        fallback = window & (status == 200) & degraded & ~by_switched
        clean = window & (status == 503)
        answers = {
            "fallback": int(fallback.sum()),
            "clean 503": int(clean.sum()),
            "other": int((window & ~fallback & ~clean).sum()),
        }
    return FlagScore(
        outcome.number,
        outcome.key,
        model,
        list(switched),
        outcome.start_s,
        outcome.end_s,
        outcome.cleared_end_s,
        outcome.status,
        outcome.error,
        1000 * (outcome.end_s - outcome.start_s),
        effective,
        outcome.calls,
        answers,
    )
