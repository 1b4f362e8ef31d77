"""The admin routes of rollouts.

    GET  /admin/rollouts                 every rollout: {"rollouts": [...]} (active first)
    POST /admin/rollouts                 start one: {"model", "to", "strategy", "steps",
                                         "step_s", ...} (RolloutSpec); 201 with the rollout
    GET  /admin/rollouts/KEY             one rollout (KEY: its id, or a model's name)
    POST /admin/rollouts/KEY/ACTION      ACTION: pause, resume, promote or abort

Reading needs the ``read`` scope, the rest ``write`` (checked by the caller);
the token's name is the actor in the audit log. A refused rollout is a 400
naming the field; nothing changes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from failsoft.control.rollout_controller import RolloutController
from failsoft.errors import BadRequest, MethodNotAllowed, NotFound

ROLLOUT_BODY_LIMIT = 64 * 1024
ACTIONS = ("pause", "resume", "promote", "abort")
ReadBody = Callable[[int], Awaitable[bytes]]


async def handle_rollouts(
    rollouts: RolloutController,
    method: str,
    rest: list[str],
    actor: str,
    read_body: ReadBody,
) -> tuple[int, bytes]:
    """One request under /admin/rollouts; ``rest`` is the path after it."""
    if not rest:
        if method in ("GET", "HEAD"):
            return 200, orjson.dumps({"rollouts": await rollouts.listed()})
        _allow(method, "POST")
        raw = await read_body(ROLLOUT_BODY_LIMIT)
        try:
            data: Any = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError as error:
            raise BadRequest(f"the body is not JSON: {error}") from None
        state = await rollouts.start_rollout(data, actor=actor)
        return 201, _shown(rollouts, state.id)
    key = rest[0]
    if len(rest) == 1:
        _allow(method, "GET")
        spec, state = await rollouts.lookup(key)
        return 200, orjson.dumps(rollouts.describe(spec, state))
    if len(rest) == 2 and rest[1] in ACTIONS:
        _allow(method, "POST")
        action = getattr(rollouts, rest[1])
        state = await action(key, actor=actor)
        return 200, _shown(rollouts, state.id)
    raise NotFound(
        f"no admin route /admin/rollouts/{'/'.join(rest)} (actions: {', '.join(ACTIONS)})"
    )


def _shown(rollouts: RolloutController, rollout_id: str) -> bytes:
    found = rollouts.find(rollout_id)
    if found is None:  # pragma: no cover - the caller has just changed it
        raise NotFound(f"there is no rollout {rollout_id!r}")
    return orjson.dumps(rollouts.describe(*found))


def _allow(method: str, allowed: str) -> None:
    if method not in allowed.split(", ") and not (method == "HEAD" and "GET" in allowed):
        raise MethodNotAllowed(f"{method} is not allowed here; use {allowed}", allowed)
