"""Runbook webhooks against a real local HTTP receiver (loopback, ephemeral port)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from failsoft.clock import SystemClock, within
from failsoft.control.incident_model import IncidentOptions
from failsoft.control.incidents import Incidents
from failsoft.control.runbook_model import RunbooksOptions, WebhookOptions
from failsoft.control.runbooks import Runbooks
from failsoft.control.webhooks import Delivery, Notifier
from failsoft.observe.events import EventBus


class Receiver:
    """Answers the statuses in ``plan`` in turn (then 200) and keeps what it was sent."""

    def __init__(self, plan: list[int]) -> None:
        self.plan = list(plan)
        self.bodies: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                receiver.bodies.append(json.loads(self.rfile.read(length)))
                status = receiver.plan.pop(0) if receiver.plan else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver([500])
    yield made
    made.close()


async def test_a_runbook_notice_is_retried_after_a_500_and_said_on_the_timeline(
    receiver: Receiver,
) -> None:
    clock = SystemClock()
    bus = EventBus()
    incidents = Incidents(IncidentOptions(), ["iris"], clock.now, bus.emit)
    options = RunbooksOptions.model_validate(
        {
            "webhooks": {"oncall": receiver.url},
            "webhook": {"retries": 2, "backoff_s": 0.05, "timeout_s": 2},
            "runbooks": [
                {
                    "name": "tell",
                    "mode": "act",
                    "trigger": {"incident": "opened"},
                    "steps": [{"action": "webhook", "webhook": "oncall", "text": "{model} down"}],
                }
            ],
        }
    )
    runbooks = Runbooks(options, incidents, bus, clock, clock.now, None)
    try:
        incident = incidents.signal(
            "iris", "replicas", "every replica of iris/v1 is out", default_cause="infra"
        )
        assert incident is not None
        await within(clock, 10, runbooks.drain())
    finally:
        await runbooks.close()
    assert len(receiver.bodies) == 2  # the 500, then the retry that was taken
    body = receiver.bodies[-1]
    assert body["runbook"] == "tell"
    assert body["text"] == "iris down"
    assert body["incident"]["id"] == incident.id
    assert body["incident"]["cause"] == "infra"
    texts = [e["text"] for e in incident.timeline if e["kind"] == "runbook"]
    assert "webhook oncall delivered after 2 attempt(s) (HTTP 200)" in texts
    assert runbooks.notifier.delivered == 1


async def test_a_4xx_is_final_and_a_full_queue_drops_without_waiting() -> None:
    refusing = Receiver([404])
    notifier = Notifier(WebhookOptions(queue_max=1, retries=3, backoff_s=0.05), SystemClock())
    outcomes: list[tuple[bool, int, str]] = []
    try:
        assert notifier.send(Delivery(refusing.url, {"n": 1}, lambda *a: outcomes.append(a)))
        assert not notifier.send(Delivery(refusing.url, {"n": 2}))  # the queue holds one
        assert notifier.dropped == 1
        await within(SystemClock(), 10, notifier.drain())
    finally:
        await notifier.close()
        refusing.close()
    assert outcomes == [(False, 1, "HTTP 404")]
    assert len(refusing.bodies) == 1


async def test_a_slack_notice_carries_the_incident_in_blocks_escaped_with_a_link() -> None:
    receiver = Receiver([])
    clock = SystemClock()
    bus = EventBus()
    incidents = Incidents(IncidentOptions(), ["iris"], clock.now, bus.emit)
    options = RunbooksOptions.model_validate(
        {
            "webhooks": {"chat": receiver.url},
            "public_url": "https://failsoft.example/",
            "runbooks": [
                {
                    "name": "tell-chat",
                    "mode": "act",
                    "trigger": {"incident": "opened"},
                    "steps": [
                        {
                            "action": "webhook",
                            "webhook": "chat",
                            "format": "slack",
                            "text": "{model} <down> & out (incident {incident})",
                        }
                    ],
                }
            ],
        }
    )
    runbooks = Runbooks(options, incidents, bus, clock, clock.now, None)
    try:
        incident = incidents.signal(
            "iris", "replicas", "every replica of iris/v1 is out", default_cause="infra"
        )
        assert incident is not None
        await within(clock, 10, runbooks.drain())
    finally:
        await runbooks.close()
        receiver.close()
    [body] = receiver.bodies
    assert set(body) == {"text", "blocks"}
    title = "iris: every replica of iris/v1 is out"
    assert body["text"] == f"{title}: iris <down> & out (incident {incident.id})"
    header, message, fields, context = body["blocks"]
    assert header == {"type": "header", "text": {"type": "plain_text", "text": title}}
    assert message["text"] == {
        "type": "mrkdwn",
        "text": f"iris &lt;down&gt; &amp; out (incident {incident.id})",
    }
    assert [f["text"] for f in fields["fields"]] == [
        f"*Incident*\n{incident.id}",
        "*State*\nopen",
        "*Model*\niris",
        "*Cause*\ninfra",
    ]
    assert context["elements"][0]["text"] == (
        "failsoft runbook tell-chat · <https://failsoft.example/status|status page>"
    )
    assert runbooks.notifier.delivered == 1
