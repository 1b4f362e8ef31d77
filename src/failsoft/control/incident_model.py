"""An incident as kept in memory and in the store: its state, times, impact and timeline.

Times are wall-clock epoch seconds. The measures are defined on them:
time to detect (MTTD) = first impacted request → opened (0 when failsoft
opened it before any request suffered); time to mitigate
(MTTM) = opened → impact ended (the last failed or degraded request);
time to resolve (MTTR) = opened → resolved.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Annotated, Any

from pydantic import Field

from failsoft._options import StrictModel
from failsoft.errors import FailureClass

__all__ = ["CAUSES", "STATES", "Incident", "IncidentOptions", "cause_of", "means"]

STATES = ("open", "acknowledged", "mitigated", "resolved")
CAUSES = ("infra", "data", "logic", "overload")
CAUSE_OF_CLASS = {
    FailureClass.REPLICA: "infra",
    FailureClass.DATA: "data",
    FailureClass.REQUEST: "logic",
    FailureClass.OVERLOAD: "overload",
}


def cause_of(classes: dict[str, int], default: str) -> str:
    """The cause class of the failure classes seen most (``default`` when none was)."""
    causes: dict[str, int] = {}
    for name, count in classes.items():
        try:
            cause = CAUSE_OF_CLASS.get(FailureClass(name))
        except ValueError:
            cause = None
        if cause is not None:
            causes[cause] = causes.get(cause, 0) + count
    if not causes:
        return default
    return max(sorted(causes), key=lambda cause: causes[cause])


class IncidentOptions(StrictModel):
    """How incidents open, join, end; how often SLO state and incidents are saved."""

    enabled: bool = Field(default=True, description="open incidents automatically")
    join_window_s: Annotated[float, Field(gt=0, le=7 * 86_400)] = Field(
        default=3600.0, description="a signal this soon after an incident's last one joins it"
    )
    quiet_s: Annotated[float, Field(gt=0, le=86_400)] = Field(
        default=60.0,
        description="impact has ended after this long with answers and no failed or "
        "degraded request",
    )
    auto_resolve_s: Annotated[float, Field(ge=0, le=30 * 86_400)] = Field(
        default=0.0, description="resolve a mitigated incident after this long (0: people do)"
    )
    timeline_max: Annotated[int, Field(ge=20, le=100_000)] = Field(
        default=1000, description="timeline entries kept per incident (first and latest)"
    )
    evaluate_every_s: Annotated[float, Field(gt=0, le=300)] = Field(
        default=5.0, description="how often burn rates and incident states are judged"
    )
    persist_every_s: Annotated[float, Field(gt=0, le=3600)] = Field(
        default=5.0, description="how often SLO buckets and incidents are saved to the store"
    )


@dataclass
class Incident:
    id: int
    model: str
    cause: str
    title: str
    opened_at: float
    state: str = "open"
    first_impact_at: float | None = None
    last_impact_at: float | None = None
    last_good_at: float | None = None
    impact_ended_at: float | None = None
    acknowledged_at: float | None = None
    mitigated_at: float | None = None
    resolved_at: float | None = None
    failed: int = 0  # requests failed (5xx) from the first impact on
    degraded: int = 0  # requests answered degraded
    good: int = 0  # requests answered well while the incident was not resolved
    failure_classes: dict[str, int] = field(default_factory=dict)
    signals: list[dict[str, Any]] = field(default_factory=list)
    timeline: list[dict[str, Any]] = field(default_factory=list)
    timeline_dropped: int = 0
    remediation: list[dict[str, Any]] = field(default_factory=list)
    budget_burned_pct: float | None = None  # of the availability budget, when last measured
    # Runbook gates waiting for approval (control/runbooks.py): kept here so the store
    # keeps them, and a restarted gateway re-arms them.
    pending_approvals: list[dict[str, Any]] = field(default_factory=list)
    last_signal_at: float = 0.0

    # -- measures ---------------------------------------------------------------------

    @property
    def mttd_s(self) -> float | None:
        if self.first_impact_at is None:
            return None
        return max(0.0, self.opened_at - self.first_impact_at)

    @property
    def mttm_s(self) -> float | None:
        if self.impact_ended_at is None or self.mitigated_at is None:
            return None
        return max(0.0, self.impact_ended_at - self.opened_at)

    @property
    def mttr_s(self) -> float | None:
        return None if self.resolved_at is None else max(0.0, self.resolved_at - self.opened_at)

    @property
    def active(self) -> bool:
        return self.state != "resolved"

    # -- the timeline ----------------------------------------------------------------

    def note(self, at: float, kind: str, text: str, limit: int, **detail: Any) -> None:
        """Add one timeline entry; past ``limit`` the middle goes (first and latest stay)."""
        entry: dict[str, Any] = {"at": at, "kind": kind, "text": text}
        if detail:
            entry["detail"] = detail
        self.timeline.append(entry)
        if len(self.timeline) > limit:
            keep_head = limit // 2
            del self.timeline[keep_head]
            self.timeline_dropped += 1

    # -- storage ----------------------------------------------------------------------

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["mttd_s"] = self.mttd_s
        data["mttm_s"] = self.mttm_s
        data["mttr_s"] = self.mttr_s
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Incident:
        known = {name for name in cls.__dataclass_fields__}
        return cls(**{key: value for key, value in data.items() if key in known})


def means(incidents: list[Incident]) -> dict[str, float | None]:
    """The mean time to detect, mitigate and resolve over the incidents that have each."""
    result: dict[str, float | None] = {}
    for name in ("mttd_s", "mttm_s", "mttr_s"):
        values = [v for v in (getattr(i, name) for i in incidents) if v is not None]
        result[name] = round(sum(values) / len(values), 3) if values else None
    return result
