"""A drill's deploy step: patch the target's configuration mid-load, and what came of it.

The runner reads the configuration the target serves (GET /admin/config),
applies the step's ``change`` to it with ``merge_patch`` and proposes the
result (POST /admin/config); then it reads the served revision again. The
answer is classified here: ``applied`` (200, a new revision), ``unchanged``
(200, nothing to apply), ``refused`` (400: the configuration is invalid;
409: it could not come up) or ``error`` (anything else, or no answer).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

REFUSED_STATUSES = (400, 409)


def merge_patch(target: Any, patch: Any) -> Any:
    """``target`` with ``patch`` applied as a JSON merge patch (RFC 7386); neither is changed.

    A mapping in the patch merges into the mapping it meets (recursively), a
    null removes the key, and anything else (a list, a number, a string)
    replaces what was there.
    """
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    merged: dict[str, Any] = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


@dataclass(frozen=True)
class DeployOutcome:
    """One deploy step as it ran; times in seconds since the load started."""

    number: int  # 1, 2, ... in the drill's order
    expect: str  # "refused" | "applied"
    start_s: float  # when the change was proposed
    end_s: float  # when the gateway answered
    status: int  # the HTTP status of the proposal (0: no answer)
    result: str  # "applied" | "unchanged" | "refused" | "error"
    reason: str  # the refusal's or the error's message ("" when applied)
    revision_before: int | None  # the revision served before the change
    revision_after: int | None  # the revision served after the answer
    revision: int | None = None  # the revision the change became (applied or refused)
    wanted_reason: str | None = None  # text the refusal had to contain

    @property
    def label(self) -> str:
        return f"deploy {self.number} ({self.result})"

    @property
    def as_expected(self) -> bool:
        if self.expect == "applied":
            return self.result == "applied" and self.revision_after == self.revision
        return (
            self.result == "refused"
            and self.revision_after == self.revision_before
            and (self.wanted_reason is None or self.wanted_reason in self.reason)
        )

    def measured(self) -> str:
        if self.result == "applied":
            return f"applied as revision {self.revision} ({self.status})"
        if self.result == "refused":
            kept = (
                "revision kept"
                if self.revision_after == self.revision_before
                else f"revision {self.revision_before} -> {self.revision_after}"
            )
            return f"refused ({self.status}), {kept}"
        return f"{self.result} ({self.status})" if self.status else self.result

    def expected(self) -> str:
        if self.expect == "applied":
            return "applied, and served"
        text = "refused, revision kept"
        return text if self.wanted_reason is None else f"{text}, reason has {self.wanted_reason!r}"


def classify(status: int, body: Any) -> tuple[str, str, int | None]:
    """(result, reason, revision) for the gateway's answer to a proposal."""
    data = body if isinstance(body, dict) else {}
    if status == 200:
        revision = data.get("revision")
        result = "applied" if data.get("status") == "applied" else "unchanged"
        return result, "", revision if isinstance(revision, int) else None
    message = str(data.get("error", "")) or (f"HTTP {status}" if status else "no answer")
    if status in REFUSED_STATUSES:
        return "refused", message, _revision_in(message)
    return "error", message, None


def _revision_in(message: str) -> int | None:
    """The revision a refusal names ("revision 3 was not applied: ..."), if it names one."""
    words = message.split()
    if len(words) >= 2 and words[0] == "revision" and words[1].isdigit():
        return int(words[1])
    return None
