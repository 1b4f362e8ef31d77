"""A drill's setup: configuration changes applied before the load, undone after it.

Each step is a JSON merge patch (RFC 7386) of the configuration the target
serves, proposed through its admin API like a deploy step; every one must be
applied, or the drill does not run (it would measure another gateway than
the one it describes). Steps apply in order, so a drill can first relax a
model's input ``compatibility`` and then change its inputs, as an operator
must. Afterwards the configuration served before the setup is proposed
again, so a running target is left as it was found.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from failsoft.drills.deploy import merge_patch
from failsoft.drills.target import AdminClient, TargetError

Progress = Callable[[str], None]


async def apply_setup(
    admin: AdminClient, steps: list[dict[str, Any]], progress: Progress
) -> dict[str, Any] | None:
    """Apply every step; the configuration served before them (None without steps)."""
    if not steps:
        return None
    _, original = await admin.served_config()
    for number, change in enumerate(steps, 1):
        _, served = await admin.served_config()
        status, answer = await admin.propose(merge_patch(served, change), f"drill setup {number}")
        if status != 200:
            reason = answer.get("error", "") if isinstance(answer, dict) else ""
            raise TargetError(f"setup step {number} was not applied ({status}): {reason}")
        progress(f"  setup {number}: revision {answer.get('revision')} applied")
    return original


async def undo_setup(
    admin: AdminClient, original: dict[str, Any] | None, progress: Progress
) -> None:
    """Propose the configuration served before the setup again (a note when refused)."""
    if original is None:
        return
    try:
        status, answer = await admin.propose(original, "drill setup undone")
    except TargetError as error:
        progress(f"  setup not undone: {error}")
        return
    if status != 200:
        reason = answer.get("error", "") if isinstance(answer, dict) else ""
        progress(f"  setup not undone ({status}): {reason}")
    else:
        progress("  setup undone")
