"""The public status page: states, open incidents with their latest update, escaping."""

from __future__ import annotations

from failsoft.control.incident_model import Incident
from failsoft.server.status_page import StatusPage

NOW = 1_800_000_000.0


def incident(
    number: int, state: str, updates: list[str], resolved_at: float | None = None
) -> Incident:
    found = Incident(
        id=number,
        model="iris",
        cause="infra",
        title="iris: every replica of iris/v1 is out (2 of 2 ejected)",
        opened_at=NOW - 600 + number,
        state=state,
        resolved_at=resolved_at,
    )
    found.note(found.opened_at, "signal", "breaker open on r0 at 10.0.0.5", 100)
    for k, text in enumerate(updates):
        found.note(found.opened_at + k + 1, "update", text, 100, actor="alice")
    return found


def test_models_incidents_and_updates_are_shown_and_nothing_internal() -> None:
    page = StatusPage(lambda: NOW)
    models = [
        {"name": "iris", "state": "degraded"},
        {"name": "ranker", "state": "switched-off"},
        {"name": "cart", "state": "operational"},
    ]
    incidents = [
        incident(1, "acknowledged", ["fallback answering", "<script>alert(1)</script> fixed?"]),
        incident(2, "resolved", ["all good"], resolved_at=NOW - 60),
        incident(3, "resolved", ["too old"], resolved_at=NOW - 8 * 86_400),
    ]
    data = page.data(models, incidents)
    assert data["overall"] == "degraded"
    assert [(m["name"], m["state"]) for m in data["models"]] == [
        ("cart", "operational"),
        ("iris", "degraded"),
        ("ranker", "degraded"),  # a switched-off default version is not a public state
    ]
    assert [i["id"] for i in data["open"]] == [1]
    assert data["open"][0]["state"] == "identified"
    assert data["open"][0]["latest"]["text"] == "<script>alert(1)</script> fixed?"
    assert [i["id"] for i in data["resolved"]] == [2]
    html = page.render(models, incidents).decode()
    assert "&lt;script&gt;alert(1)&lt;/script&gt; fixed?" in html
    assert "<script>" not in html
    assert "fallback answering" in html  # the earlier update, listed under the latest
    for internal in ("10.0.0.5", "every replica", "v1", "infra", "alice"):
        assert internal not in html, internal


def test_all_operational_and_nothing_open() -> None:
    html = StatusPage(lambda: NOW).render([{"name": "iris", "state": "operational"}], []).decode()
    assert 'id="overall">operational<' in html
    assert "No open incidents." in html
