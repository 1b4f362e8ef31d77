"""The admin routes of SLOs and incidents.

    GET  /admin/slo                          every objective: budget left, burn rates, alerts
    GET  /admin/slo/rules                    equivalent Prometheus recording + alerting rules
    GET  /admin/incidents?state=open         incidents, newest first, and the mean MTTD/MTTM/MTTR
    GET  /admin/incidents/N                  one incident with its timeline
    GET  /admin/incidents/N/postmortem       the postmortem (Markdown)
    POST /admin/incidents/N/ack              acknowledge
    POST /admin/incidents/N/resolve          {"text": "..."} (optional)
    POST /admin/incidents/N/update           {"text": "..."}: a status update, in the timeline
    POST /admin/incidents/N/remediation      {"text": "..."} adds an item, {"close": ID} closes one
    POST /admin/incidents/N/approve          release the runbook steps waiting for approval

Reading needs ``read``, changing ``write``. A change is in force at once and
saved (with its audit entry) before the answer; ``"saved": false`` says the
store is down and it will be saved when it answers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson

from failsoft.control.burn import prometheus_rules
from failsoft.control.incident_model import STATES
from failsoft.control.operate import Operate
from failsoft.control.postmortem import render
from failsoft.errors import BadRequest, MethodNotAllowed, NotFound
from failsoft.server.control_routes import Answer
from failsoft.server.http import json_body

__all__ = ["handle_operate"]

BODY_LIMIT = 16 * 1024
ReadBody = Callable[[int], Awaitable[bytes]]


async def handle_operate(
    operate: Operate,
    method: str,
    parts: list[str],
    query: Mapping[str, str],
    actor: str,
    require: Callable[[str], None],
    read_body: ReadBody,
) -> Answer:
    reading = method in ("GET", "HEAD")
    require("read" if reading else "write")
    head, rest = parts[0], parts[1:]
    if head == "slo":
        _allow(method, "GET")
        if not rest:
            return Answer(200, json_body(operate.slo_status()))
        if rest == ["rules"]:
            text = prometheus_rules(operate.book.subjects())
            return Answer(200, text.encode(), b"application/yaml")
        raise NotFound(f"no admin route /admin/{'/'.join(parts)}")
    if not rest:
        _allow(method, "GET")
        state = query.get("state")
        if state is not None and state not in STATES:
            raise BadRequest(f"state: {state!r} is not one of {', '.join(STATES)}")
        return Answer(200, json_body(operate.incident_list(state)))
    try:
        incident_id = int(rest[0])
    except ValueError:
        raise NotFound(f"{rest[0]!r} is no incident number") from None
    verb = rest[1:]
    if not verb:
        _allow(method, "GET")
        found = await operate.incident(incident_id)
        return Answer(200, json_body(found.as_json()))
    if verb == ["postmortem"]:
        _allow(method, "GET")
        found = await operate.incident(incident_id)
        budgets = [
            row
            for row in operate.book.status()
            if row["model"] == found.model and not row["tenant"]
        ]
        return Answer(200, render(found, budgets).encode(), b"text/markdown; charset=utf-8")
    if len(verb) != 1 or verb[0] not in ("ack", "resolve", "update", "remediation", "approve"):
        raise NotFound(f"no admin route /admin/{'/'.join(parts)}")
    _allow(method, "POST")
    body = await _json(read_body)
    await operate.incident(incident_id)  # NotFound before anything changes
    incidents = operate.incidents
    if verb[0] == "ack":
        changed = incidents.acknowledge(incident_id, actor)
    elif verb[0] == "resolve":
        changed = incidents.resolve(incident_id, actor, body.get("text", ""))
    elif verb[0] == "approve":
        released = operate.runbooks.approve(incident_id, actor) if operate.runbooks else 0
        if not released:
            raise BadRequest(f"no runbook step of incident {incident_id} awaits approval")
        changed = incidents.get(incident_id)
    elif verb[0] == "update":
        changed = incidents.update(incident_id, actor, body.get("text", ""))
    else:
        close = body.get("close")
        if close is not None and (type(close) is not int or close < 1):
            raise BadRequest(f"close: {close!r} is not a remediation item number")
        changed = incidents.remediate(incident_id, actor, body.get("text"), close)
    saved = await operate.save()
    return Answer(200, json_body({**changed.as_json(), "saved": saved}))


async def _json(read_body: ReadBody) -> dict[str, Any]:
    raw = await read_body(BODY_LIMIT)
    if not raw.strip():
        return {}
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise BadRequest(f"the body is not JSON: {error}") from None
    if not isinstance(data, dict):
        raise BadRequest('the body must be a JSON object, e.g. {"text": "..."}')
    return data


def _allow(method: str, allowed: str) -> None:
    if method not in allowed.split(", ") and not (method == "HEAD" and "GET" in allowed):
        raise MethodNotAllowed(f"{method} is not allowed here; use {allowed}", allowed)
