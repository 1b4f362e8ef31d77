"""The public status page (``GET /status``, no token): what people outside need to know.

Each model's state (operational, degraded, down, halted: from the
dependency map, a switched-off default version reads as degraded), the
incidents not resolved with the status updates people posted (``failsoft
incident update N TEXT``), and the ones resolved in the last week. Nothing
internal is shown: no version, replica, signal, failure class or address;
only model names, states, times and the updates as written. Rendered by
Jinja2 with autoescaping.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import jinja2

from failsoft.control.incident_model import Incident
from failsoft.observe.depmap import DEGRADED, DOWN, HALTED, OPERATIONAL

__all__ = ["StatusPage"]

PUBLIC_STATES = (OPERATIONAL, DEGRADED, DOWN, HALTED)
RESOLVED_SHOWN_S = 7 * 86_400.0
RESOLVED_SHOWN = 10
UPDATES_SHOWN = 20


class StatusPage:
    def __init__(self, wall: Callable[[], float] = time.time) -> None:
        self._wall = wall
        env = jinja2.Environment(
            loader=jinja2.PackageLoader("failsoft.server.ui", "templates"), autoescape=True
        )
        env.filters["when"] = _when
        self._template = env.get_template("status.html")

    def data(self, models: list[dict[str, Any]], incidents: list[Incident]) -> dict[str, Any]:
        """What the page shows, from the map's model nodes and the incidents."""
        now = self._wall()
        shown = [
            {"name": node["name"], "state": _public(node["state"])}
            for node in sorted(models, key=lambda node: node["name"])
        ]
        active = sorted((i for i in incidents if i.active), key=lambda i: -i.opened_at)
        resolved = sorted(
            (
                i
                for i in incidents
                if not i.active and i.resolved_at and now - i.resolved_at <= RESOLVED_SHOWN_S
            ),
            key=lambda i: -(i.resolved_at or 0.0),
        )[:RESOLVED_SHOWN]
        worst = {s["state"] for s in shown}
        overall = next((state for state in (DOWN, HALTED, DEGRADED) if state in worst), OPERATIONAL)
        return {
            "overall": overall,
            "models": shown,
            "open": [_incident(i) for i in active],
            "resolved": [_incident(i) for i in resolved],
            "now": now,
        }

    def render(self, models: list[dict[str, Any]], incidents: list[Incident]) -> bytes:
        return self._template.render(**self.data(models, incidents)).encode()


def _public(state: str) -> str:
    return state if state in PUBLIC_STATES else DEGRADED


def _incident(incident: Incident) -> dict[str, Any]:
    updates = [
        {"at": entry["at"], "text": entry["text"]}
        for entry in incident.timeline
        if entry.get("kind") == "update"
    ]
    state = {"open": "investigating", "acknowledged": "identified"}.get(
        incident.state, incident.state
    )
    return {
        "id": incident.id,
        "model": incident.model,
        "state": state,
        "opened_at": incident.opened_at,
        "resolved_at": incident.resolved_at,
        "latest": updates[-1] if updates else None,
        "updates": list(reversed(updates[-UPDATES_SHOWN:])),
    }


def _when(at: float | None) -> str:
    if at is None:
        return "-"
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
