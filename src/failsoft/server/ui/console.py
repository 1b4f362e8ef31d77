"""The web console under /ui: server-rendered pages over the admin API, behind its tokens.

    GET  /ui/login, POST /ui/login      sign in with an admin token (form field ``token``)
    POST /ui/logout                     sign out
    GET  /ui                            overview: models, versions, replicas, SLO budgets, flags
    GET  /ui/incidents?state=S          incidents with their MTTD/MTTM/MTTR
    GET  /ui/incidents/N                one incident: timeline, updates, remediation, approvals
    GET  /ui/map                        the dependency map: models → versions → replicas → fallback
    GET  /ui/rollouts                   rollouts with each analysis decision; pause / resume
    GET  /ui/drift                      each model version's drift windows and features
    GET  /ui/audit?after=N              the audit log (newest page by default)
    GET  /ui/scorecards                 drill scorecards and charts from $FAILSOFT_UI_SCORECARDS
    POST /ui/rollouts/KEY/pause|resume  an action (CSRF token checked)
    POST /ui/switches/MODEL/VERSION/off|on   a version's kill switch (failsoft.disable.*)
    POST /ui/incidents/N/ack|approve|resolve|update   an incident action (field ``text``)
    GET  /ui/static/console.js|css      the few lines of live refresh, the style

Every page is read through ``AdminRoutes.handle`` with the session's token, and
every action is the admin API's own call: the same scopes, the same audit entry
with the token's name as the actor. Any page answers ``?part=main`` with its
main section only, which the live refresh swaps in every two seconds.
Errors show what to do, never a path or an exception's text.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

import jinja2
import orjson

from failsoft.control.incident_model import STATES
from failsoft.control.plane import ControlPlane
from failsoft.control.storecall import store_call
from failsoft.errors import FailsoftError, MethodNotAllowed, NotFound, Unauthorized
from failsoft.server.admin import AdminRoutes
from failsoft.server.ui.incident_view import (
    DONE_AS,
    INCIDENT_ACTIONS,
    TEXT_LIMIT,
    budget_bars,
    duration,
    pending_approvals,
    updates,
)
from failsoft.server.ui.scorecards import read_cards, read_chart
from failsoft.server.ui.sessions import COOKIE, Session, Sessions, cookie_of, set_cookie
from failsoft.store import StoreError
from failsoft.store.encoding import utc_text

FORM_LIMIT = 8 * 1024
AUDIT_PAGE = 50
ROLLOUT_ACTIONS = ("pause", "resume")
PAGES = ("overview", "map", "incidents", "rollouts", "drift", "audit", "scorecards")
STATIC = {"console.js": b"text/javascript", "console.css": b"text/css"}
ReadBody = Callable[[int], Awaitable[bytes]]
_SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; frame-ancestors 'none'; form-action 'self'"),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),  # "no-referrer" makes the Origin of a form "null"
    (b"cache-control", b"no-store"),
]
HTML = b"text/html; charset=utf-8"


@dataclass
class Page:
    status: int
    body: bytes
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    content_type: bytes = HTML


@dataclass(frozen=True)
class UiRequest:
    method: str
    parts: list[str]  # the path after /ui
    query: Mapping[str, str]
    headers: list[tuple[bytes, bytes]]
    read_body: ReadBody


class Console:
    def __init__(
        self,
        admin: AdminRoutes,
        sessions: Sessions,
        control: ControlPlane | None = None,
        scorecards: Path | None = None,
    ) -> None:
        self._admin = admin
        self._cards_dir = scorecards
        self._control = control
        self.sessions = sessions
        self._env = jinja2.Environment(
            loader=jinja2.PackageLoader("failsoft.server.ui", "templates"),
            autoescape=True,
        )
        self._env.filters["pct"] = _pct
        self._env.filters["num"] = _num
        self._env.filters["when"] = _when
        self._env.filters["secs"] = duration
        folder = resources.files("failsoft.server.ui") / "static"
        self._static = {name: (folder / name).read_bytes() for name in STATIC}

    async def handle(self, request: UiRequest) -> Page:
        parts = [part for part in request.parts if part]
        if len(parts) == 2 and parts[0] == "static" and parts[1] in STATIC:
            _allow(request.method, "GET")
            return _secured(Page(200, self._static[parts[1]], content_type=STATIC[parts[1]]))
        if request.method == "POST" and not _same_origin(request.headers):
            return _secured(self._render("missing.html", 403, message="Cross-site form refused."))
        if parts == ["login"]:
            return _secured(await self._login(request))
        session = self.sessions.get(cookie_of(request.headers))
        if session is None:
            if request.method == "POST":
                return _secured(self._render("login.html", 401, error="Your session ended."))
            return _secured(_redirect("/ui/login"))
        if request.method == "POST":
            return _secured(await self._act(request, parts, session))
        _allow(request.method, "GET")
        if len(parts) == 2 and parts[0] == "scorecards" and parts[1].endswith(".png"):
            return _secured(await self._chart(parts[1].removesuffix(".png"), session))
        page = parts[0] if parts else "overview"
        detail = page == "incidents" and len(parts) == 2
        if page not in PAGES or (len(parts) > 1 and not detail):
            return _secured(self._render("missing.html", 404, session=session, page=""))
        template = "incident.html" if detail else f"{page}.html"
        try:
            if detail:
                data = await self._incident(session, parts[1])
            else:
                data = await getattr(self, f"_{page}")(session, request.query)
        except Unauthorized:  # the token was revoked since the sign-in
            self.sessions.close(session.id)
            return _secured(_redirect("/ui/login"))
        except NotFound:
            missing = self._render(
                "missing.html",
                404,
                session=session,
                message="There is no such incident.",
                flash=session.take_flash(),
            )
            return _secured(missing)
        fragment = request.query.get("part") == "main"
        page_answer = self._render(
            template,
            200,
            session=session,
            page=page,
            fragment=fragment,
            flash=[] if fragment else session.take_flash(),
            **data,
        )
        return _secured(page_answer)

    # -- signing in and out ---------------------------------------------------

    async def _login(self, request: UiRequest) -> Page:
        if request.method != "POST":
            _allow(request.method, "GET, POST")
            return self._render("login.html", 200, error=None)
        form = await _form(request.read_body)
        token = form.get("token", "").strip()
        if not token:
            return self._render("login.html", 400, error="Enter an admin token.")
        try:
            principal = await self._admin.authenticate(f"Bearer {token}")
            principal.require("read")
        except FailsoftError:
            return self._render("login.html", 401, error="That token is not accepted here.")
        session = self.sessions.open(token, principal.name)
        cookie = set_cookie(session.id, self.sessions.remaining_s(session), secure=_tls(request))
        return _redirect("/ui", [(b"set-cookie", cookie)])

    # -- actions --------------------------------------------------------------

    async def _act(self, request: UiRequest, parts: list[str], session: Session) -> Page:
        form = await _form(request.read_body)
        if not self.sessions.csrf_ok(session, form.get("csrf")):
            return self._render(
                "missing.html",
                403,
                session=session,
                page="",
                message="The form had expired: reload the page and try again.",
            )
        if parts == ["logout"]:
            self.sessions.close(session.id)
            cleared = set_cookie("", 0, secure=_tls(request))
            return _redirect("/ui/login", [(b"set-cookie", cleared)])
        if len(parts) == 3 and parts[0] == "rollouts" and parts[2] in ROLLOUT_ACTIONS:
            key, action = parts[1], parts[2]
            try:
                await self._call("POST", ["rollouts", key, action], session)
                session.note(f"Rollout {key}: {action} done.")
            except Unauthorized:
                self.sessions.close(session.id)
                return _redirect("/ui/login")
            except FailsoftError as error:
                session.note(f"Rollout {key}: {action} refused — {_safe(error)}")
            return _redirect("/ui/rollouts")
        if len(parts) == 4 and parts[0] == "switches" and parts[3] in ("off", "on"):
            return await self._switch(parts[1], parts[2], parts[3] == "off", session)
        if len(parts) == 3 and parts[0] == "incidents" and parts[2] in INCIDENT_ACTIONS:
            return await self._incident_action(parts[1], parts[2], form, session)
        raise NotFound("no such console action")

    async def _incident_action(
        self, number: str, action: str, form: Mapping[str, str], session: Session
    ) -> Page:
        """Acknowledge, approve the waiting runbook steps, resolve or post an update:
        the admin API's incident routes, which audit the change under the token's name."""
        if not number.isdigit():
            raise NotFound("no such incident")
        text = form.get("text", "").strip()[:TEXT_LIMIT]
        body = orjson.dumps({"text": text} if action in ("resolve", "update") else {})
        try:
            await self._call("POST", ["incidents", number, action], session, body=body)
            session.note(f"Incident {number}: {DONE_AS[action]}.")
        except Unauthorized:
            self.sessions.close(session.id)
            return _redirect("/ui/login")
        except FailsoftError as error:
            session.note(f"Incident {number}: {action} refused — {_safe(error)}")
        return _redirect(f"/ui/incidents/{number}")

    async def _switch(self, model: str, version: str, off: bool, session: Session) -> Page:
        """The kill switch of one version: set (its traffic goes to the fallback chain) or
        cleared, through the admin API's flag routes."""
        key = f"failsoft.disable.{model}.{version}"
        spec = {"kind": "boolean", "value": True, "description": "switched off in the console"}
        try:
            if off:
                await self._call("PUT", ["flags", key], session, body=orjson.dumps(spec))
            else:
                await self._call("DELETE", ["flags", key], session)
            session.note(f"{model}/{version}: switched {'off' if off else 'on again'}.")
        except Unauthorized:
            self.sessions.close(session.id)
            return _redirect("/ui/login")
        except FailsoftError as error:
            session.note(f"{model}/{version}: the switch was refused — {_safe(error)}")
        return _redirect("/ui")

    # -- pages ----------------------------------------------------------------

    async def _overview(self, session: Session, query: Mapping[str, str]) -> dict[str, Any]:
        status = await self._call("GET", ["status"], session)
        flags, flags_error = await self._optional(session, ["flags"])
        listed = (flags or {}).get("flags", [])
        switched_off = {
            tuple(flag["key"].split(".", 3)[2:4])
            for flag in listed
            if flag["key"].startswith("failsoft.disable.") and flag["spec"].get("value") is True
        }
        slo, slo_error = await self._optional(session, ["slo"])
        return {
            "status": status,
            "budgets": budget_bars((slo or {}).get("slos", [])),
            "slo_error": slo_error,
            "flags": listed,
            "flags_error": flags_error,
            "switched_off": switched_off,
            "switches": flags_error is None,
        }

    async def _map(self, session: Session, query: Mapping[str, str]) -> dict[str, Any]:
        answer = await self._call("GET", ["map"], session)
        return {"models": answer.get("models", [])}

    async def _incidents(self, session: Session, query: Mapping[str, str]) -> dict[str, Any]:
        state = query.get("state", "")
        wanted = {"state": state} if state in STATES else {}
        listed, error = await self._optional(session, ["incidents"], wanted)
        return {
            "incidents": (listed or {}).get("incidents", []),
            "means": (listed or {}).get("means", {}),
            "error": error,
            "state": wanted.get("state", ""),
            "states": STATES,
        }

    async def _incident(self, session: Session, number: str) -> dict[str, Any]:
        if not number.isdigit():
            raise NotFound("no such incident")
        incident = await self._call("GET", ["incidents", number], session)
        return {
            "incident": incident,
            "updates": updates(incident),
            "approvals": pending_approvals(self._admin.operate, int(number)),
        }

    async def _rollouts(self, session: Session, query: Mapping[str, str]) -> dict[str, Any]:
        listed, error = await self._optional(session, ["rollouts"])
        return {"rollouts": (listed or {}).get("rollouts", []), "error": error}

    async def _drift(self, session: Session, query: Mapping[str, str]) -> dict[str, Any]:
        drift, error = await self._optional(session, ["drift"])
        return {"drift": (drift or {}).get("models", {}), "error": error}

    async def _audit(self, session: Session, query: Mapping[str, str]) -> dict[str, Any]:
        after = query.get("after", "")
        if not after.isdigit():
            after = str(max(0, await self._audit_size() - AUDIT_PAGE))
        answer, error = await self._optional(
            session, ["audit"], {"after": after, "limit": str(AUDIT_PAGE)}
        )
        entries = list(reversed((answer or {}).get("entries", [])))
        start = int(after)
        return {
            "entries": entries,
            "error": error,
            "older": max(0, start - AUDIT_PAGE) if start > 0 else None,
            "newer": start + AUDIT_PAGE if len(entries) == AUDIT_PAGE else None,
        }

    async def _scorecards(self, session: Session, query: Mapping[str, str]) -> dict[str, Any]:
        if self._cards_dir is None:
            return {"configured": False, "cards": []}
        cards = await asyncio.to_thread(read_cards, self._cards_dir)
        return {"configured": True, "cards": cards}

    async def _chart(self, name: str, session: Session) -> Page:
        found = None
        if self._cards_dir is not None:
            found = await asyncio.to_thread(read_chart, self._cards_dir, name)
        if found is None:
            return self._render("missing.html", 404, session=session)
        return Page(200, found, content_type=b"image/png")

    async def _audit_size(self) -> int:
        control = self._control
        if control is None:
            return 0
        try:
            size: int = await store_call(control.store, control.store.audit.size)
        except StoreError:
            return 0
        return size

    # -- helpers --------------------------------------------------------------

    async def _call(
        self,
        method: str,
        parts: list[str],
        session: Session,
        query: Mapping[str, str] | None = None,
        body: bytes = b"",
    ) -> Any:
        async def read_body(limit: int) -> bytes:
            return body

        answered = await self._admin.handle(
            method, parts, f"Bearer {session.token}", read_body, query or {}
        )
        status, body = answered if isinstance(answered, tuple) else (answered.status, answered.body)
        return orjson.loads(body) if status < 300 and body else {}

    async def _optional(
        self, session: Session, parts: list[str], query: Mapping[str, str] | None = None
    ) -> tuple[Any, str | None]:
        """The admin API's answer, or what to tell the reader when there is none."""
        try:
            return await self._call("GET", parts, session, query), None
        except Unauthorized:
            raise
        except FailsoftError as error:
            return None, _unavailable(error)

    def _render(self, template: str, code: int, /, **context: Any) -> Page:
        context.setdefault("session", None)
        context.setdefault("page", "")
        context.setdefault("fragment", False)
        context.setdefault("flash", [])
        context.setdefault("message", None)
        body = self._env.get_template(template).render(**context).encode()
        headers = [(b"x-failsoft-fragment", b"1")] if context["fragment"] else []
        return Page(code, body, headers)


async def _form(read_body: ReadBody) -> dict[str, str]:
    raw = await read_body(FORM_LIMIT)
    fields = parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True)
    return {key: values[-1] for key, values in fields.items()}


def _redirect(location: str, headers: list[tuple[bytes, bytes]] | None = None) -> Page:
    return Page(303, b"", [(b"location", quote(location).encode()), *(headers or [])])


def _secured(page: Page) -> Page:
    page.headers.extend(_SECURITY_HEADERS)
    return page


def _same_origin(headers: list[tuple[bytes, bytes]]) -> bool:
    """A form posted from another site is refused, the sign-in form too (login CSRF);
    a client that sends no Origin (curl, an old browser) relies on the CSRF token."""
    found = dict(headers)
    origin, host = found.get(b"origin"), found.get(b"host")
    if origin is None or host is None:
        return True
    return origin.partition(b"://")[2] == host


def _tls(request: UiRequest) -> bool:
    """Behind a TLS-terminating proxy the cookie is Secure too."""
    return any(k == b"x-forwarded-proto" and v == b"https" for k, v in request.headers)


def _allow(method: str, allowed: str) -> None:
    if method not in allowed.split(", ") and not (method == "HEAD" and "GET" in allowed):
        raise MethodNotAllowed(f"{method} is not allowed here; use {allowed}", allowed)


def _unavailable(error: FailsoftError) -> str:
    if error.status == 403:
        return "Your token lacks the scope to read this."
    if error.status == 404:
        return "Not available on this gateway (no control store, or not configured)."
    if error.status == 503:
        return "The control store is unavailable right now; this page will catch up."
    return "This could not be read right now."


def _safe(error: FailsoftError) -> str:
    """A refusal's own words (they name the field or state), else a plain summary."""
    if error.status in (400, 409) and "/" not in error.message:
        return error.message[:200]
    return _unavailable(error)


def _pct(value: Any) -> str:
    return f"{100 * value:.1f}%" if isinstance(value, int | float) else "-"


def _num(value: Any, digits: int = 3) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-" if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}g}"


def _when(value: Any) -> str:
    """A wall-clock time (seconds since the epoch) as UTC text; text stays as it is."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-" if value is None else str(value)
    return utc_text(value)


__all__ = ["COOKIE", "Console", "Page", "UiRequest"]
