"""A rollout: what was asked (``RolloutSpec``), where it is (``RolloutState``), what comes next.

Pure: no I/O and no clock. The controller (``rollout_controller.py``) feeds
it analyses and times and carries out the decisions; the store keeps the
spec and the state (``store/live.py``), each change with an audit entry.

A rollout is a list of *stages*, each a candidate weight (percent of the
model's default traffic, sticky by ``Failsoft-Key``) and a shadow share
(the part of the stable version's requests mirrored to the candidate):

    canary      10% -> 50% -> 100%              (``steps``; each but the last analysed)
    shadow      shadow -> 10% -> 50% -> 100%    (the shadow phase first, then canary)
    ab          50% for a step, then 100%       (``weights``/``steps``: the split held)
    blue-green  shadow -> 100% at once          (the candidate warmed and checked on
                                                 shadow traffic, then switched)

Every stage but the last (100%) is analysed: at the end of its ``step_s``
a pass moves on, an inconclusive analysis extends the stage by another
``step_s`` (at most ``max_extensions`` times) and then does what
``on_inconclusive`` says (``hold``: paused; ``rollback``). A failed analysis
rolls back at once, whenever it comes (the checks run every
``check_every_s`` within a stage). Reaching the last stage is promotion.

States: ``pending`` (stored, its first stage not in force yet),
``progressing``, ``paused`` (held: the current split stays, no analysis
moves it), and the ends ``promoted``, ``aborted`` (by an operator) and
``rolled-back`` (by the analysis or an operator's ``abort`` after a fail).
"""

from __future__ import annotations

import itertools
import re
import secrets
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from failsoft._options import StrictModel
from failsoft.control.analysis import Analysis, AnalysisOptions, Verdict

__all__ = [
    "ACTIVE",
    "ENDED",
    "Decision",
    "RolloutSpec",
    "RolloutState",
    "Stage",
    "Status",
    "decide",
    "new_rollout_id",
]

Strategy = Literal["canary", "shadow", "ab", "blue-green"]
HISTORY_KEPT = 100  # decisions kept in a rollout's state (the audit log keeps them all)


class Status(StrEnum):
    PENDING = "pending"
    PROGRESSING = "progressing"
    PAUSED = "paused"
    PROMOTED = "promoted"
    ABORTED = "aborted"
    ROLLED_BACK = "rolled-back"


ACTIVE = (Status.PENDING, Status.PROGRESSING, Status.PAUSED)
ENDED = (Status.PROMOTED, Status.ABORTED, Status.ROLLED_BACK)
_DEFAULT_STEPS: dict[str, tuple[int, ...]] = {
    "canary": (10, 50, 100),
    "shadow": (10, 50, 100),
    "ab": (50,),
    "blue-green": (100,),
}


def new_rollout_id(model: str) -> str:
    """``iris-3f9a0c``: the model's name (made id-safe) and 6 random hex digits."""
    stem = re.sub(r"[^a-z0-9]+", "-", model.lower()).strip("-")[:40] or "rollout"
    return f"{stem}-{secrets.token_hex(3)}"


@dataclass(frozen=True, slots=True)
class Stage:
    weight_pct: int  # of the default traffic sent to the candidate
    shadow: float  # share of the stable's requests mirrored to the candidate

    @property
    def label(self) -> str:
        if self.weight_pct == 0:
            return f"shadow {self.shadow:.0%}"
        return f"{self.weight_pct}%"


class RolloutSpec(StrictModel):
    """What an operator asked for (``POST /admin/rollouts``, or ``failsoft rollout start``)."""

    model: Annotated[str, Field(min_length=1, max_length=128)]
    to: Annotated[str, Field(min_length=1, max_length=128)] = Field(
        description="the candidate version (loaded, not the default one)"
    )
    strategy: Strategy = "canary"
    steps: Annotated[list[int], Field(min_length=1, max_length=20)] | None = Field(
        default=None,
        description="candidate weights in percent, increasing; canary/shadow end at 100 "
        "(default 10,50,100; ab: one weight below 100, default 50)",
    )
    weights: dict[str, int] | None = Field(
        default=None,
        description="ab: the split as {STABLE: percent, CANDIDATE: percent}, adding up to 100",
    )
    step_s: Annotated[float, Field(gt=0, le=86_400)] = 60.0
    check_every_s: Annotated[float, Field(gt=0, le=3600)] | None = Field(
        default=None,
        description="how often the checks run within a step (a fail rolls back at once); "
        "default min(step_s, 5)",
    )
    shadow: Annotated[float, Field(gt=0, le=1)] = Field(
        1.0, description="the share of the stable's requests mirrored in a shadow phase"
    )
    tenants: Annotated[list[str], Field(min_length=1, max_length=1000)] | None = Field(
        default=None, description="only these tenants take part (default: everyone)"
    )
    max_extensions: Annotated[int, Field(ge=0, le=100)] = Field(
        3, description="times an inconclusive step is extended by step_s before on_inconclusive"
    )
    on_inconclusive: Literal["hold", "rollback"] = Field(
        "hold", description="after the last extension: hold (pause) or roll back"
    )
    outputs: Annotated[list[str], Field(min_length=1)] | None = Field(
        default=None,
        description="outputs whose answers are compared (default: those with labels "
        "declared in the output contract, else all)",
    )
    analysis: AnalysisOptions = Field(default_factory=lambda: AnalysisOptions.model_validate({}))

    @model_validator(mode="after")
    def _steps_fit_the_strategy(self) -> RolloutSpec:
        steps = self.steps
        if steps is not None:
            for index, weight in enumerate(steps):
                if not 0 < weight <= 100:
                    raise ValueError(f"steps[{index}]: {weight} is not a percent in 1..100")
            if any(b <= a for a, b in itertools.pairwise(steps)):
                raise ValueError(f"steps: {steps} must increase")
        if self.strategy in ("canary", "shadow") and steps is not None and steps[-1] != 100:
            raise ValueError(
                f"steps: the last step is {steps[-1]}, it must be 100 (the candidate takes all)"
            )
        if self.strategy == "ab" and steps is not None and (len(steps) != 1 or steps[0] == 100):
            raise ValueError("steps: an ab rollout holds one split: give one weight below 100")
        if self.strategy == "blue-green" and steps is not None and steps != [100]:
            raise ValueError("steps: a blue-green rollout switches 100% at once; leave it out")
        if self.weights is not None:
            if self.strategy != "ab":
                raise ValueError("weights: only an ab rollout takes weights (use steps)")
            if steps is not None:
                raise ValueError("weights: give weights or steps, not both")
            total = sum(self.weights.values())
            if total != 100:
                shown = " + ".join(f"{name} {pct}" for name, pct in self.weights.items())
                raise ValueError(f"weights: {shown} = {total}, they must add up to 100")
            if any(pct < 0 for pct in self.weights.values()):
                raise ValueError("weights: a weight must not be negative")
        if self.check_every_s is not None and self.check_every_s > self.step_s:
            raise ValueError(
                f"check_every_s: {self.check_every_s:g} is longer than step_s ({self.step_s:g})"
            )
        return self

    @property
    def check_s(self) -> float:
        return self.check_every_s if self.check_every_s is not None else min(self.step_s, 5.0)

    def stages(self, stable: str) -> list[Stage]:
        """The stages in order; the last is the candidate at 100% (promotion)."""
        steps = list(self.steps or _DEFAULT_STEPS[self.strategy])
        if self.strategy == "ab":
            weight = steps[0]
            if self.weights is not None:
                weight = self.weights.get(self.to, 0)
            return [Stage(weight, 0.0), Stage(100, 0.0)]
        canary = [Stage(weight, 0.0) for weight in steps]
        if self.strategy in ("shadow", "blue-green"):
            return [Stage(0, self.shadow), *canary]
        return canary

    def problems(self, stable: str, versions: list[str]) -> list[str]:
        """What is wrong with this rollout for a model serving ``versions`` (default
        ``stable``): the fields named; empty when it can start."""
        problems = []
        if self.to not in versions:
            problems.append(
                f"to: version {self.to!r} of {self.model!r} is not loaded "
                f"(versions: {', '.join(versions)}); apply a configuration with it first"
            )
        elif self.to == stable:
            problems.append(
                f"to: {self.to!r} is already the default version of {self.model!r}: "
                "nothing to roll out"
            )
        if self.weights is not None:
            unknown = sorted(set(self.weights) - {stable, self.to})
            if unknown or set(self.weights) != {stable, self.to}:
                problems.append(
                    f"weights: name the stable version {stable!r} and the candidate "
                    f"{self.to!r}, got {', '.join(sorted(self.weights)) or 'nothing'}"
                )
            elif self.weights[self.to] in (0, 100):
                problems.append("weights: an ab split gives each version some traffic")
        return problems


@dataclass(frozen=True, slots=True)
class Decision:
    """What happens next: ``wait`` (the step goes on), ``advance`` (next stage),
    ``extend`` (the step gets another step_s), ``promote``, ``rollback`` or ``hold``."""

    action: Literal["wait", "advance", "extend", "promote", "rollback", "hold"]
    reason: str


@dataclass(frozen=True)
class RolloutState:
    """Where a rollout is; stored as JSON (``as_json`` / ``from_json``)."""

    id: str
    model: str
    stable: str
    candidate: str
    status: Status
    stage: int  # index into the spec's stages
    stage_started_at: float  # epoch seconds
    extensions: int = 0
    reason: str = ""
    analysis: dict[str, Any] | None = None  # the latest, with every check
    history: tuple[dict[str, Any], ...] = field(default_factory=tuple)
    verified: dict[str, Any] | None = None  # a rollback's verification

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    def with_decision(self, entry: dict[str, Any], **changes: Any) -> RolloutState:
        history = (*self.history, entry)[-HISTORY_KEPT:]
        return replace(self, history=history, **changes)

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "model": self.model,
            "stable": self.stable,
            "candidate": self.candidate,
            "status": self.status.value,
            "stage": self.stage,
            "stage_started_at": self.stage_started_at,
            "extensions": self.extensions,
            "reason": self.reason,
            "analysis": self.analysis,
            "history": list(self.history),
            "verified": self.verified,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RolloutState:
        return cls(
            id=str(data["id"]),
            model=str(data["model"]),
            stable=str(data["stable"]),
            candidate=str(data["candidate"]),
            status=Status(data["status"]),
            stage=int(data["stage"]),
            stage_started_at=float(data["stage_started_at"]),
            extensions=int(data.get("extensions", 0)),
            reason=str(data.get("reason", "")),
            analysis=data.get("analysis"),
            history=tuple(data.get("history", ())),
            verified=data.get("verified"),
        )


def decide(
    spec: RolloutSpec, state: RolloutState, analysis: Analysis, elapsed_s: float, due_s: float
) -> Decision:
    """The next move of a progressing rollout, ``elapsed_s`` into the window of its current
    stage, which ends at ``due_s`` (``step_s``, plus ``step_s`` per extension)."""
    stages = spec.stages(state.stable)
    stage = stages[state.stage]
    if analysis.verdict is Verdict.FAIL:
        failed = [check.name for check in analysis.checks if check.verdict is Verdict.FAIL]
        return Decision("rollback", f"{stage.label}: failed {', '.join(failed)}")
    due = due_s
    if elapsed_s < due:
        return Decision("wait", f"{stage.label}: {elapsed_s:.0f} of {due:g} s")
    if analysis.verdict is Verdict.PASS:
        if state.stage + 1 >= len(stages) - 1:
            return Decision("promote", f"{stage.label}: every check passed")
        return Decision(
            "advance", f"{stage.label}: every check passed; on to {stages[state.stage + 1].label}"
        )
    waiting = [check.name for check in analysis.checks if check.verdict is Verdict.INCONCLUSIVE]
    what = ", ".join(waiting) or "no check"
    if state.extensions < spec.max_extensions:
        return Decision(
            "extend",
            f"{stage.label}: inconclusive ({what}); extension {state.extensions + 1} of "
            f"{spec.max_extensions}",
        )
    verb = "holding" if spec.on_inconclusive == "hold" else "rolling back"
    return Decision(
        "hold" if spec.on_inconclusive == "hold" else "rollback",
        f"{stage.label}: still inconclusive ({what}) after {state.extensions} extension(s); "
        f"{verb} as on_inconclusive says",
    )
