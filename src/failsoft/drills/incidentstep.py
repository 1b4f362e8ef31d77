"""A drill's incident expectations: the incident the gateway opened, its runbook, its timeline.

    expect:
      incident:
        cause: infra                   # the incident's cause class
        runbook: all-replicas-out      # this runbook ran on it ...
        acted: [webhook]               # ... and did these (a webhook counts once delivered)
        approve: false                 # true: the drill approves each gate as it waits
        max_mttd_s: 5                  # first impacted request -> incident opened
        timeline: [impact, breaker|ejection|probe|replica, opened, runbook, mitigated]

The incident judged is the first one opened on the load's model after the
load started. MTTD is measured from the drill's side: from the send time of
the first request that was not answered correctly or came back degraded
(answered, or timed out, after the first fault began), to the incident's
opening (the gateway's own figure, from the first impacted
request it saw, is shown beside it). A timeline entry matches an item when
its kind is one of the item's ``|``-separated kinds; ``opened`` and
``mitigated`` are the incident's state rows. After the load the drill waits
up to ``settle_s`` for the incident to be mitigated when the timeline needs it.

``webhooks`` at the top of a drill names runbook webhooks the drill receives
itself: a local HTTP receiver (loopback, ephemeral port) per name, set as
``runbooks.webhooks.NAME`` for the run through the drill's setup.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
import orjson
from pydantic import Field

from failsoft._options import StrictModel
from failsoft.control.runbook_model import ACTIONS
from failsoft.drills.target import AdminClient, TargetError
from failsoft.waiting import wait_at_most

if TYPE_CHECKING:  # load.py imports the experiment, which imports this
    from failsoft.drills.load import Outcomes

COMPLETE = ["impact", "breaker|ejection|probe|replica", "opened", "runbook", "mitigated"]
POLL_S = 0.2
KEPT_BODIES = 100


class IncidentExpect(StrictModel):
    cause: Literal["infra", "data", "logic", "overload"] | None = None
    runbook: str | None = Field(default=None, description="a runbook that must run on it")
    acted: list[str] = Field(
        default_factory=list,
        description="the runbook's actions that must be done (webhook: delivered)",
    )
    approve: bool = Field(
        default=False, description="the drill approves each runbook gate as soon as it waits"
    )
    max_mttd_s: Annotated[float, Field(gt=0)] | None = Field(
        default=None, description="first impacted request (sent) -> incident opened"
    )
    timeline: list[str] = Field(
        default_factory=lambda: list(COMPLETE),
        description="kinds the timeline must hold (a|b: either); opened, mitigated: states",
    )
    settle_s: Annotated[float, Field(ge=0, le=300)] = Field(
        default=15.0, description="after the load, wait this long at most for mitigation"
    )


@dataclass
class IncidentScore:
    id: int | None = None
    cause: str | None = None
    state: str | None = None
    opened_at_s: float | None = None  # since the load started
    first_impact_s: float | None = None  # the drill's first impacted request (sent)
    mttd_s: float | None = None  # the drill's measure
    gateway_mttd_s: float | None = None
    mttm_s: float | None = None
    runbook: list[dict[str, Any]] = field(default_factory=list)  # its rows: at_s, action, text
    acted: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # timeline items not found
    approvals: list[float] = field(default_factory=list)  # when the drill approved (at_s)
    received: dict[str, int] = field(default_factory=dict)  # webhook name -> bodies


class Receiver:
    """A webhook receiver on a real socket: keeps (a bounded number of) JSON bodies."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.count = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = min(int(self.headers.get("Content-Length") or 0), 1 << 20)
                try:
                    body = json.loads(self.rfile.read(length))
                except ValueError:
                    body = {}
                receiver.count += 1
                if len(receiver.bodies) < KEPT_BODIES:
                    receiver.bodies.append(body)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hook"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


async def approver(
    admin: AdminClient, model: str, started: float, stop: asyncio.Event
) -> list[float]:
    """Approve each runbook gate on the model's incidents as it waits; when (at_s)."""
    approved: list[float] = []
    given: set[tuple[int, int]] = set()  # (incident, gate row) approved already
    while not stop.is_set():
        try:
            for incident in await _incidents(admin, model, started):
                rows = incident.get("timeline", [])
                waiting = [
                    index
                    for index, row in enumerate(rows)
                    if row.get("kind") == "runbook"
                    and (row.get("detail") or {}).get("action") == "awaiting-approval"
                ]
                if waiting and (incident["id"], waiting[-1]) not in given:
                    status, _ = await request_json(
                        admin, "POST", f"/admin/incidents/{incident['id']}/approve"
                    )
                    given.add((incident["id"], waiting[-1]))
                    if status == 200:
                        approved.append(time.time() - started)
        except TargetError:
            pass  # the gateway is busy or restarting: look again
        with contextlib.suppress(TimeoutError):
            await wait_at_most(stop.wait(), POLL_S)
    return approved


async def _incidents(admin: AdminClient, model: str, started: float) -> list[dict[str, Any]]:
    """The model's incidents opened since ``started`` (oldest first), with their timelines."""
    status, listed = await request_json(admin, "GET", "/admin/incidents")
    if status != 200:
        raise TargetError(f"GET /admin/incidents answered {status}")
    found = []
    for brief in sorted(listed.get("incidents", []), key=lambda i: i["id"]):
        if brief.get("model") != model or float(brief.get("opened_at", 0)) < started:
            continue
        status, full = await request_json(admin, "GET", f"/admin/incidents/{brief['id']}")
        if status == 200:
            found.append(full)
    return found


async def follow_incident(
    admin: AdminClient, expect: IncidentExpect, model: str, started: float
) -> dict[str, Any] | None:
    """The first incident opened on ``model`` since ``started``, once settled (bounded wait)."""
    deadline = time.monotonic() + expect.settle_s
    while True:
        try:
            found = await _incidents(admin, model, started)
        except TargetError:
            found = []
        incident = found[0] if found else None
        settled = incident is not None and (
            "mitigated" not in expect.timeline or incident["state"] in ("mitigated", "resolved")
        )
        if settled or time.monotonic() >= deadline:
            return incident
        await asyncio.sleep(POLL_S)


def score_incident(
    expect: IncidentExpect,
    incident: dict[str, Any] | None,
    outcomes: Outcomes,
    approvals: list[float],
    received: dict[str, int],
    *,
    since_s: float = 0.0,
    timeout_s: float = 1.0,
) -> IncidentScore:
    """``since_s``: when the first fault began; an impacted request answered before it
    is the steady state's noise (the phases judge it), not this incident's."""
    from failsoft.drills.load import NOT_SENT

    score = IncidentScore(approvals=approvals, received=received)
    impacted = ~outcomes.correct | outcomes.degraded
    sent = outcomes.status != NOT_SENT
    answered_s = outcomes.offsets + np.nan_to_num(outcomes.latency_s, nan=timeout_s)
    first = np.flatnonzero(impacted & sent & (answered_s >= since_s))
    if first.size:
        score.first_impact_s = round(float(outcomes.offsets[first[0]]), 3)
    if incident is None:
        score.missing = list(expect.timeline)
        return score
    started = outcomes.started_at
    score.id, score.cause, score.state = incident["id"], incident["cause"], incident["state"]
    score.opened_at_s = round(float(incident["opened_at"]) - started, 3)
    score.gateway_mttd_s = incident.get("mttd_s")
    score.mttm_s = incident.get("mttm_s")
    if score.first_impact_s is not None:
        score.mttd_s = round(max(0.0, score.opened_at_s - score.first_impact_s), 3)
    rows = incident.get("timeline", [])
    actor = f"runbook:{expect.runbook}" if expect.runbook else None
    for row in rows:
        detail = row.get("detail") or {}
        if row.get("kind") != "runbook" or (actor and detail.get("actor") != actor):
            continue
        action = str(detail.get("action", ""))
        score.runbook.append(
            {"at_s": round(float(row["at"]) - started, 3), "action": action, "text": row["text"]}
        )
        done = detail.get("delivered") is True if action == "webhook" else action in _ACTIONS
        if done and action not in score.acted:
            score.acted.append(action)
    score.missing = [item for item in expect.timeline if not _holds(item, rows, actor)]
    return score


# The runbook rows that say an action was done (the others say started, skipped, ...):
# every action but a webhook (judged by its delivery) and a wait (whose done row says
# "verified").
_ACTIONS = (*(a for a in ACTIONS if a not in ("webhook", "wait")), "verified")


def _holds(item: str, rows: list[dict[str, Any]], actor: str | None) -> bool:
    for kind in item.split("|"):
        for row in rows:
            text = str(row.get("text", ""))
            if kind == "opened" and row.get("kind") == "state" and " opened (" in text:
                return True
            if kind == "mitigated" and row.get("kind") == "state" and "mitigated" in text:
                return True
            if row.get("kind") == kind and (
                kind != "runbook"
                or actor is None
                or (row.get("detail") or {}).get("actor") == actor
            ):
                return True
    return False


def incident_checks(
    expect: IncidentExpect, score: IncidentScore
) -> list[tuple[str, str, str, bool]]:
    """(name, measured, expected, ok) for each expectation."""
    checks = []
    opened = score.id is not None
    checks.append(
        (
            "incident opened",
            f"incident {score.id} at {score.opened_at_s:.2f} s" if opened else "none",
            "one, on the load's model",
            opened,
        )
    )
    if expect.cause is not None:
        checks.append(
            ("incident cause", str(score.cause or "-"), expect.cause, score.cause == expect.cause)
        )
    if expect.runbook is not None:
        wanted = expect.acted or ["any action"]
        ok = bool(score.acted) and all(action in score.acted for action in expect.acted)
        checks.append(
            (
                f"runbook {expect.runbook} acted",
                ", ".join(score.acted) or "nothing",
                ", ".join(wanted),
                ok,
            )
        )
    checks.append(
        (
            "incident timeline complete",
            "missing " + ", ".join(score.missing) if score.missing else "complete",
            ", ".join(expect.timeline),
            not score.missing and opened,
        )
    )
    if expect.max_mttd_s is not None:
        measured = "-" if score.mttd_s is None else f"{score.mttd_s:.2f} s"
        if score.gateway_mttd_s is not None:
            measured += f" (gateway {score.gateway_mttd_s:.2f} s)"
        ok = score.mttd_s is not None and score.mttd_s <= expect.max_mttd_s
        checks.append(("incident MTTD", measured, f"<= {expect.max_mttd_s:g} s", ok))
    return checks


async def request_json(admin: AdminClient, method: str, path: str) -> tuple[int, Any]:
    response = await admin.request(method, path)
    try:
        return response.status, orjson.loads(response.body)
    except orjson.JSONDecodeError:
        return response.status, {}
