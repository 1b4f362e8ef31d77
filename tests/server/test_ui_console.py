"""The console's sessions and CSRF checks: the session store on an injected clock and random
source, then the console itself over a real Runtime and its admin routes (no control store)."""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import orjson
import pytest

from failsoft.clock import ManualClock
from failsoft.config import parse_config
from failsoft.control.operate import Operate
from failsoft.errors import FailureClass
from failsoft.observe.events import EventBus, RequestFinished
from failsoft.pipeline.version import AttemptFailed, PanicChanged
from failsoft.runtime import Runtime
from failsoft.server.admin import AdminRoutes
from failsoft.server.ui.console import Console, Page, UiRequest
from failsoft.server.ui.scorecards import read_cards, read_chart
from failsoft.server.ui.sessions import COOKIE, Sessions, cookie_of, set_cookie
from tests.server.test_admin import TOKEN, config

EPOCH = 1_800_000_000.0


def counting_tokens() -> Callable[[int], str]:
    numbers = itertools.count(1)
    return lambda size: f"tok{next(numbers)}-{size}"


# --- the session store -------------------------------------------------------------


async def test_a_session_ends_after_its_idle_time_and_use_restarts_that_time() -> None:
    clock = ManualClock()
    sessions = Sessions(clock.now, idle_s=60, max_age_s=3600, random_token=counting_tokens())
    opened = sessions.open("secret", "ops")
    assert (opened.id, opened.csrf, opened.actor) == ("tok1-32", "tok2-32", "ops")
    await clock.advance(59)
    assert sessions.get(opened.id) is opened  # used: idle time starts again
    await clock.advance(59)
    assert sessions.get(opened.id) is opened
    await clock.advance(60)
    assert sessions.get(opened.id) is None
    assert len(sessions) == 0


async def test_a_session_ends_at_its_maximum_age_however_much_it_is_used() -> None:
    clock = ManualClock()
    sessions = Sessions(clock.now, idle_s=60, max_age_s=150, random_token=counting_tokens())
    opened = sessions.open("secret", "ops")
    await clock.advance(50)
    assert sessions.get(opened.id) is opened
    assert sessions.remaining_s(opened) == pytest.approx(100)
    await clock.advance(50)
    assert sessions.get(opened.id) is opened
    await clock.advance(50)
    assert sessions.get(opened.id) is None


async def test_the_store_is_bounded_the_least_recently_used_session_goes_first() -> None:
    clock = ManualClock()
    sessions = Sessions(clock.now, capacity=3, random_token=counting_tokens())
    first, second, third = (sessions.open("s", name) for name in ("a", "b", "c"))
    assert sessions.get(first.id) is first  # now the second is the least recently used
    fourth = sessions.open("s", "d")
    assert len(sessions) == 3
    assert sessions.get(second.id) is None
    assert [sessions.get(s.id) for s in (first, third, fourth)] == [first, third, fourth]


async def test_expired_sessions_make_room_before_live_ones_are_evicted() -> None:
    clock = ManualClock()
    sessions = Sessions(clock.now, idle_s=10, capacity=2, random_token=counting_tokens())
    old = sessions.open("s", "old")
    await clock.advance(5)
    live = sessions.open("s", "live")
    await clock.advance(6)  # old is idle past 10 s, live is not
    sessions.open("s", "new")
    assert sessions.get(live.id) is live
    assert sessions.get(old.id) is None


def test_csrf_tokens_must_match_exactly() -> None:
    sessions = Sessions(ManualClock().now, random_token=counting_tokens())
    opened = sessions.open("secret", "ops")
    assert Sessions.csrf_ok(opened, opened.csrf)
    for wrong in (None, "", "tok2", opened.csrf + "x", opened.id):
        assert not Sessions.csrf_ok(opened, wrong)


def test_unknown_or_closed_sessions_are_none() -> None:
    sessions = Sessions(ManualClock().now, random_token=counting_tokens())
    opened = sessions.open("secret", "ops")
    assert sessions.get(None) is None
    assert sessions.get("nope") is None
    sessions.close(opened.id)
    assert sessions.get(opened.id) is None
    with pytest.raises(ValueError, match="capacity"):
        Sessions(time.monotonic, capacity=0)


def test_cookies_are_read_from_the_header_and_set_httponly_samesite_strict() -> None:
    headers = [(b"cookie", b"a=1; failsoft_session=abc; b=2"), (b"accept", b"*/*")]
    assert cookie_of(headers) == "abc"
    assert cookie_of([(b"cookie", b"failsoft_sessionX=1")]) is None
    assert cookie_of(None) is None
    made = set_cookie("abc", 3600.7, secure=False).decode()
    assert made == "failsoft_session=abc; Path=/ui; Max-Age=3600; HttpOnly; SameSite=Strict"
    assert set_cookie("abc", 1, secure=True).endswith(b"; Secure")


# --- the console over a real runtime ------------------------------------------------


class Browser:
    """Just enough of a browser: keeps the session cookie, sends forms."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.cookie: str | None = None
        self.operate: Operate | None = None  # the SLO book and incidents behind the pages
        self.bus = EventBus()  # the runtime's, which feeds them

    async def request(
        self, method: str, path: str, form: bytes = b"", query: dict[str, str] | None = None
    ) -> Page:
        headers = [(b"cookie", f"{COOKIE}={self.cookie}".encode())] if self.cookie else []

        async def read(limit: int) -> bytes:
            return form

        page = await self.console.handle(
            UiRequest(method, path.strip("/").split("/")[1:], query or {}, headers, read)
        )
        for key, value in page.headers:
            if key == b"set-cookie":
                self.cookie = value.decode().split(";")[0].partition("=")[2] or None
        return page


@pytest.fixture
async def browser() -> AsyncIterator[Callable[[], Awaitable[Browser]]]:
    runtimes: list[Runtime] = []

    async def start() -> Browser:
        clock = ManualClock(start=time.monotonic())
        bus = EventBus()
        runtime = Runtime(parse_config(config()), bus, clock, random.Random(0))
        await runtime.start()
        runtimes.append(runtime)
        admin = AdminRoutes(runtime, TOKEN)
        admin.operate = Operate(runtime.config, bus, clock, None, wall=lambda: EPOCH)
        made = Browser(Console(admin, Sessions(clock.now)))
        made.operate, made.bus = admin.operate, bus
        return made

    yield start
    for runtime in runtimes:
        await runtime.close()


def location(page: Page) -> str:
    return dict(page.headers)[b"location"].decode()


async def test_signing_in_then_pages_then_signing_out(
    browser: Callable[[], Awaitable[Browser]],
) -> None:
    client = await browser()
    assert location(await client.request("GET", "/ui")) == "/ui/login"
    refused = await client.request("POST", "/ui/login", b"token=wrong-token")
    assert refused.status == 401
    assert b"That token is not accepted here." in refused.body
    assert client.cookie is None
    signed_in = await client.request("POST", "/ui/login", f"token={TOKEN}".encode())
    assert signed_in.status == 303
    assert location(signed_in) == "/ui"
    assert client.cookie is not None
    overview = await client.request("GET", "/ui")
    assert overview.status == 200
    assert b'data-model="m"' in overview.body
    assert overview.body.count(b'class="replica"') == 2
    assert b"signed in as <strong>admin</strong>" in overview.body
    fragment = await client.request("GET", "/ui", query={"part": "main"})
    assert (b"x-failsoft-fragment", b"1") in fragment.headers
    assert b"<html" not in fragment.body
    assert b'data-model="m"' in fragment.body

    session = client.console.sessions.get(client.cookie)
    assert session is not None
    forged = await client.request("POST", "/ui/logout", b"csrf=forged")
    assert forged.status == 403
    assert client.console.sessions.get(client.cookie) is session  # still signed in
    out = await client.request("POST", "/ui/logout", f"csrf={session.csrf}".encode())
    assert location(out) == "/ui/login"
    assert client.cookie is None
    assert client.console.sessions.get(session.id) is None


async def test_actions_need_the_csrf_token_and_what_they_echo_is_escaped(
    browser: Callable[[], Awaitable[Browser]],
) -> None:
    client = await browser()
    await client.request("POST", "/ui/login", f"token={TOKEN}".encode())
    session = client.console.sessions.get(client.cookie)
    assert session is not None
    no_csrf = await client.request("POST", "/ui/rollouts/m/pause")
    assert no_csrf.status == 403
    assert session.flash == []  # nothing was attempted
    key = "<script>alert(1)<"
    acted = await client.request(
        "POST", f"/ui/rollouts/{key}/pause", f"csrf={session.csrf}".encode()
    )
    assert location(acted) == "/ui/rollouts"
    shown = await client.request("GET", "/ui/rollouts")
    assert b"<script>alert" not in shown.body
    assert b"&lt;script&gt;alert(1)&lt;: pause refused" in shown.body
    # No control store on this gateway: said plainly, without a path or an exception's text.
    assert b"Not available on this gateway" in shown.body


async def test_headers_keep_the_pages_out_of_frames_and_caches(
    browser: Callable[[], Awaitable[Browser]],
) -> None:
    client = await browser()
    login = await client.request("GET", "/ui/login")
    headers = dict(login.headers)
    assert headers[b"x-frame-options"] == b"DENY"
    assert headers[b"cache-control"] == b"no-store"
    assert b"default-src 'self'" in headers[b"content-security-policy"]
    script = await client.request("GET", "/ui/static/console.js")
    assert script.content_type == b"text/javascript"
    assert b"setInterval(refresh, 2000)" in script.body


# --- scorecards ------------------------------------------------------------------------


def test_scorecards_are_listed_by_name_and_only_listed_charts_are_served(tmp_path: Path) -> None:
    good = {"name": "good", "requests": 300, "passed": True, "checks": []}
    good["checks"] = [
        {"name": "availability", "measured": "99.9%", "expected": ">= 99%", "ok": True}
    ]
    (tmp_path / "good.json").write_bytes(orjson.dumps(good))
    (tmp_path / "good.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "broken.json").write_bytes(b"{not json")
    (tmp_path / "-odd name.json").write_bytes(b"{}")
    cards = {card.name: card for card in read_cards(tmp_path)}
    assert set(cards) == {"good", "broken"}
    assert cards["good"].passed is True
    assert cards["good"].requests == 300
    assert cards["good"].checks[0]["name"] == "availability"
    assert cards["good"].chart is True
    assert (cards["broken"].passed, cards["broken"].chart) == (None, False)
    assert read_chart(tmp_path, "good") == b"\x89PNG not really"
    assert read_chart(tmp_path, "broken") is None  # no chart
    assert read_chart(tmp_path, "../good") is None
    assert read_chart(tmp_path / "missing", "good") is None
    assert read_cards(tmp_path / "missing") == []


async def test_a_form_posted_from_another_site_is_refused_even_the_sign_in(
    browser: Callable[[], Awaitable[Browser]],
) -> None:
    client = await browser()
    evil = [(b"origin", b"https://evil.example"), (b"host", b"gateway:8000")]

    async def form(limit: int) -> bytes:
        return f"token={TOKEN}".encode()

    refused = await client.console.handle(UiRequest("POST", ["login"], {}, evil, form))
    assert refused.status == 403
    assert not any(key == b"set-cookie" for key, _ in refused.headers)
    same = [(b"origin", b"http://gateway:8000"), (b"host", b"gateway:8000")]
    allowed = await client.console.handle(UiRequest("POST", ["login"], {}, same, form))
    assert allowed.status == 303


# --- SLO budgets and incidents ----------------------------------------------------------


def csrf_of(client: Browser) -> str:
    session = client.console.sessions.get(client.cookie)
    assert session is not None
    return session.csrf


async def test_budget_bars_incident_pages_and_acknowledge(
    browser: Callable[[], Awaitable[Browser]],
) -> None:
    client = await browser()
    await client.request("POST", "/ui/login", f"token={TOKEN}".encode())
    operate, bus = client.operate, client.bus
    assert operate is not None
    for status in (200,) * 9 + (503,):
        failure = FailureClass.REPLICA if status >= 500 else None
        bus.emit(RequestFinished("m", "v1", status, failure, 0.01))
    overview = (await client.request("GET", "/ui")).body.decode()
    assert 'data-objective="availability"' in overview
    assert "0.0% left" in overview  # 1 bad of 10 against 99.9%: spent
    assert "overspent: 100 times the budget" in overview
    assert "10 requests, 1 bad" in overview

    bus.emit(AttemptFailed("m", "v1", "r0", FailureClass.REPLICA, "503", 0.01))
    bus.emit(PanicChanged("m", "v1", True))
    (incident,) = operate.incidents.incidents.values()
    operate.incidents.update(incident.id, "alice", "<img src=x onerror=alert(1)> on it")
    listed = (await client.request("GET", "/ui/incidents")).body.decode()
    assert f'data-incident="{incident.id}" data-state="open"' in listed
    assert "No open incidents" not in listed
    empty = (await client.request("GET", "/ui/incidents", query={"state": "resolved"})).body
    assert b"No resolved incidents." in empty
    shown = (await client.request("GET", f"/ui/incidents/{incident.id}")).body.decode()
    assert "<img src=x" not in shown
    assert "&lt;img src=x onerror=alert(1)&gt; on it" in shown
    assert shown.count('class="entry') == len(incident.timeline)
    assert f'action="/ui/incidents/{incident.id}/ack"' in shown
    assert "Waiting for approval" not in shown  # no runbooks here

    forged = await client.request("POST", f"/ui/incidents/{incident.id}/ack", b"csrf=forged")
    assert forged.status == 403
    assert incident.state == "open"
    csrf = f"csrf={csrf_of(client)}".encode()
    acked = await client.request("POST", f"/ui/incidents/{incident.id}/ack", csrf)
    assert location(acked) == f"/ui/incidents/{incident.id}"
    assert incident.state == "acknowledged"
    assert incident.acknowledged_at == EPOCH
    assert ("acknowledged by admin") in incident.timeline[-1]["text"]
    again = (await client.request("GET", f"/ui/incidents/{incident.id}")).body.decode()
    assert f"Incident {incident.id}: acknowledged." in again
    assert f'action="/ui/incidents/{incident.id}/ack"' not in again
    approve = await client.request("POST", f"/ui/incidents/{incident.id}/approve", csrf)
    assert location(approve) == f"/ui/incidents/{incident.id}"
    refused = (await client.request("GET", f"/ui/incidents/{incident.id}")).body.decode()
    assert f"approve refused — no runbook step of incident {incident.id} awaits approval" in refused
    resolved = await client.request(
        "POST", f"/ui/incidents/{incident.id}/resolve", csrf + b"&text=drained+%3Cb%3E"
    )
    assert location(resolved) == f"/ui/incidents/{incident.id}"
    assert incident.state == "resolved"
    assert incident.timeline[-1]["text"] == "resolved by admin: drained <b>"

    for path in ("/ui/incidents/99", "/ui/incidents/x", "/ui/incidents/1/more"):
        assert (await client.request("GET", path)).status == 404, path
