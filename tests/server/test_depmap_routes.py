"""GET /admin/map and the console's Map page over a real Runtime (python replicas, in process);
the CLI's tree rendering of the same answer."""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from failsoft.cli_map import render_tree
from failsoft.clock import ManualClock
from failsoft.config import parse_config
from failsoft.control.flags import FlagSpec
from failsoft.observe.events import EventBus
from failsoft.runtime import Runtime
from failsoft.server.admin import AdminRoutes
from failsoft.server.ui.console import Console
from failsoft.server.ui.sessions import Sessions
from tests.server.test_admin import AUTH, NO_BODY, TOKEN, config
from tests.server.test_ui_console import Browser


def two_versions() -> dict[str, Any]:
    found = config()
    model = found["models"]["m"]
    model["versions"]["v2"] = {
        "backend": "python",
        "function": "tests._admission_models:label",
        "replicas": 1,
    }
    model["default_version"] = "v2"
    model["fallback"] = [{"version": "v1"}, {"static": {"label": [0]}}]
    return found


@pytest.fixture
async def runtime() -> AsyncIterator[Runtime]:
    clock = ManualClock(start=time.monotonic())
    started = Runtime(parse_config(two_versions()), EventBus(), clock, random.Random(0))
    await started.start()
    yield started
    await started.close()


async def get_map(routes: AdminRoutes) -> Any:
    import orjson

    answered = await routes.handle("GET", ["map"], AUTH, NO_BODY)
    assert isinstance(answered, tuple)
    status, body = answered
    assert status == 200
    return orjson.loads(body)


def switch_off(runtime: Runtime, version: str) -> None:
    spec = FlagSpec(kind="boolean", value=True)
    runtime.set_flags({f"failsoft.disable.m.{version}": spec}, time.time())


async def test_the_map_answers_the_tree_and_follows_a_switch(runtime: Runtime) -> None:
    routes = AdminRoutes(runtime, TOKEN)
    (model,) = (await get_map(routes))["models"]
    assert (model["name"], model["state"], model["detail"]) == ("m", "operational", "default v2")
    v1, v2, chain = model["children"]
    assert [(v1["name"], v1["state"]), (v2["name"], v2["state"])] == [
        ("v1", "operational"),
        ("v2", "operational"),
    ]
    assert [r["state"] for r in v1["children"]] == ["up", "up"]
    assert [(t["name"], t["state"]) for t in chain["children"]] == [
        ("version:v1", "operational"),
        ("static", "operational"),
    ]
    switch_off(runtime, "v2")
    (model,) = (await get_map(routes))["models"]
    assert model["children"][1]["state"] == "switched-off"
    assert model["state"] == "degraded"


async def test_the_map_needs_the_admin_token(runtime: Runtime) -> None:
    routes = AdminRoutes(runtime, TOKEN)
    with pytest.raises(Exception, match="Bearer") as raised:
        await routes.handle("GET", ["map"], None, NO_BODY)
    assert getattr(raised.value, "status", None) == 401


async def test_the_console_map_page_renders_the_same_tree(runtime: Runtime) -> None:
    clock = ManualClock(start=time.monotonic())
    client = Browser(Console(AdminRoutes(runtime, TOKEN), Sessions(clock.now)))
    assert (await client.request("POST", "/ui/login", f"token={TOKEN}".encode())).status == 303
    page = await client.request("GET", "/ui/map")
    assert page.status == 200
    assert b'href="/ui/map" class="here"' in page.body
    assert b'data-kind="model" data-name="m" data-state="operational"' in page.body
    assert page.body.count(b'data-kind="replica"') == 3
    assert b'data-name="version:v1" data-state="operational"' in page.body
    switch_off(runtime, "v1")
    fragment = await client.request("GET", "/ui/map", query={"part": "main"})
    assert b"<html" not in fragment.body
    assert b'data-kind="version" data-name="v1" data-state="switched-off"' in fragment.body
    assert b'data-name="version:v1" data-state="switched-off"' in fragment.body


async def test_the_cli_tree_reads_at_a_glance_with_colour_only_when_asked(
    runtime: Runtime,
) -> None:
    answer = await get_map(AdminRoutes(runtime, TOKEN))
    plain = render_tree(answer["models"])
    assert plain.splitlines() == [
        "m  [operational]  (default v2)",
        "├─ version v1  [operational]  (python, 2/2 replicas up)",
        "│  ├─ replica r0  [up]  (in-process)",
        "│  └─ replica r1  [up]  (in-process)",
        "├─ version v2  [operational]  (python, 1/1 replicas up)",
        "│  └─ replica r0  [up]  (in-process)",
        "└─ fallback  [operational]",
        "   ├─ version:v1  [operational]",
        "   └─ static  [operational]  (local)",
    ]
    assert "\x1b[" not in plain
    assert "\x1b[" in render_tree(answer["models"], colour=True)


def test_colour_only_on_a_terminal_without_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    from failsoft import cli_map

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setattr(cli_map.sys.stdout, "isatty", lambda: False)
    assert not cli_map._want_colour()
    monkeypatch.setattr(cli_map.sys.stdout, "isatty", lambda: True)
    assert cli_map._want_colour()
    monkeypatch.setenv("NO_COLOR", "")
    assert not cli_map._want_colour()
