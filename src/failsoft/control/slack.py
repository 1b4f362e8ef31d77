"""A Slack-compatible webhook payload: ``text`` (the fallback line) and Block Kit ``blocks``.

Slack's mrkdwn treats ``&``, ``<`` and ``>`` as markup, so every text taken
from an incident or a runbook is escaped; the only link is the one the
configuration gives (``runbooks.public_url``: the public status page).
"""

from __future__ import annotations

from typing import Any

__all__ = ["slack_payload"]

HEADER_MAX = 150  # Slack's limit on a header's plain text
SECTION_MAX = 3000  # ... and on a section's text


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_payload(
    text: str, runbook: str, incident: dict[str, Any] | None, link: str | None
) -> dict[str, Any]:
    title = str(incident["title"]) if incident else f"runbook {runbook}"
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": title[:HEADER_MAX]}},
        {"type": "section", "text": {"type": "mrkdwn", "text": _escape(text)[:SECTION_MAX]}},
    ]
    if incident is not None:
        fields = [
            ("Incident", str(incident["id"])),
            ("State", str(incident["state"])),
            ("Model", str(incident["model"])),
            ("Cause", str(incident["cause"])),
        ]
        blocks.append(
            {
                "type": "section",
                "fields": [
                    {"type": "mrkdwn", "text": f"*{name}*\n{_escape(value)}"}
                    for name, value in fields
                ],
            }
        )
    context = f"failsoft runbook {_escape(runbook)}"
    if link:
        context += f" · <{_escape(link)}|status page>"
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": context}]})
    fallback = f"{title}: {text}" if incident else text
    return {"text": fallback, "blocks": blocks}
