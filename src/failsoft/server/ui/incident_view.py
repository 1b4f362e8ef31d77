"""What the console shows of SLOs and incidents: budget bars, durations, waiting approvals.

The data comes from the admin API's answers (``/admin/slo``, ``/admin/incidents``);
the runbook runs waiting for an approval come from the runbooks' own public
listing, the same runs ``failsoft incident approve N`` releases.
"""

from __future__ import annotations

from typing import Any

__all__ = ["INCIDENT_ACTIONS", "budget_bars", "duration", "pending_approvals", "times", "updates"]

INCIDENT_ACTIONS = ("ack", "approve", "resolve", "update")
DONE_AS = {
    "ack": "acknowledged",
    "approve": "approved",
    "resolve": "resolved",
    "update": "updated",
}
TEXT_LIMIT = 2000


def budget_bars(slos: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Each model's objectives (whole model first, then per tenant) with the budget
    left as a share for a ``<meter>`` (clamped to 0..1; the text shows the real value)."""
    by_model: dict[str, list[dict[str, Any]]] = {}
    for row in sorted(slos, key=lambda r: (r["model"], bool(r.get("tenant")), r.get("tenant"))):
        left = float(row.get("budget_left", 1.0))
        by_model.setdefault(row["model"], []).append(
            {
                **row,
                "meter": min(1.0, max(0.0, left)),
                "overspent": times(1.0 - left) if left < 0 else None,
                "level": "good" if left >= 0.5 else ("mid" if left > 0 else "bad"),
            }
        )
    return by_model


def times(value: float) -> str:
    """How many budgets were spent: ``1.4 times``, ``200 times``."""
    return f"{value:.1f} times" if value < 10 else f"{value:,.0f} times"


def duration(value: Any) -> str:
    """Seconds as a short text (``850ms``, ``4.2s``, ``3.5m``, ``2.1h``); ``-`` when unknown."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-"
    if value < 1:
        return f"{value * 1000:.0f}ms"
    if value < 120:
        return f"{value:.1f}s"
    if value < 7200:
        return f"{value / 60:.1f}m"
    return f"{value / 3600:.1f}h"


def updates(incident: dict[str, Any]) -> list[dict[str, Any]]:
    """The status updates people posted, newest first."""
    return [e for e in reversed(incident.get("timeline", [])) if e.get("kind") == "update"]


def pending_approvals(operate: Any, incident_id: int) -> list[dict[str, Any]]:
    """The runbook runs of ``incident_id`` waiting for an approval (none without runbooks)."""
    runbooks = getattr(operate, "runbooks", None) if operate is not None else None
    listed = getattr(runbooks, "listed", None)
    if listed is None:
        return []
    runs = listed().get("runs", [])
    return [
        run
        for run in runs
        if run.get("incident") == incident_id and run.get("state") == "awaiting-approval"
    ]
