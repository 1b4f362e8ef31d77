"""The admin routes of runtime flags and the gateway's switches.

    GET    /admin/flags          every flag in force: {"flags": [{"key", "spec", "switch"}]}
    GET    /admin/flags/KEY      one flag: {"key", "spec", "switch"} (404 when there is none)
    PUT    /admin/flags/KEY      the spec as JSON ({"kind", "value", "rules", "expires_at" or
                                 "expires_in_s", "description"}): set, stored, in force at once
    DELETE /admin/flags/KEY      clear it

Reading needs the ``read`` scope, setting and clearing ``write`` (checked by
the caller). A refused flag is a 400 naming the field; nothing changes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from failsoft.control.flag_service import FlagService
from failsoft.control.flags import PREFIX, FlagSpec
from failsoft.errors import BadRequest, MethodNotAllowed, NotFound

FLAG_BODY_LIMIT = 256 * 1024
ReadBody = Callable[[int], Awaitable[bytes]]


def describe_switch(key: str, spec: FlagSpec) -> str | None:
    """What a gateway switch does, in a few words ("halt iris/v2"); None for other flags."""
    if not key.startswith(PREFIX):
        return None
    kind, _, target = key[len(PREFIX) :].partition(".")
    shown = target.replace(".", "/") if kind != "feature" else target
    rules = " (targeted)" if spec.rules else ""
    if kind == "feature":
        model, _, feature = target.rpartition(".")
        state = "on" if spec.value else "off"
        return f"{feature} {state} for {model}{rules}"
    if kind in ("halt", "disable"):
        verb = "halt" if kind == "halt" else "switch off"
        return f"{verb} {shown}{rules}" if spec.value or spec.rules else f"{verb} {shown}: false"
    return None


async def handle_flags(
    flags: FlagService,
    method: str,
    rest: list[str],
    actor: str,
    read_body: ReadBody,
) -> tuple[int, bytes]:
    """One request under /admin/flags; ``rest`` is the path after it ([] or [KEY])."""
    if not rest:
        _allow(method, "GET")
        listed = [_entry(flags, key, spec) for key, spec in flags.list().items()]
        return 200, orjson.dumps({"flags": listed})
    key = rest[0]
    if method in ("GET", "HEAD"):
        spec = flags.get(key)
        if spec is None:
            raise NotFound(f"there is no flag {key!r}")
        return 200, orjson.dumps(_entry(flags, key, spec))
    if method == "PUT":
        raw = await read_body(FLAG_BODY_LIMIT)
        try:
            data: Any = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError as error:
            raise BadRequest(f"the body is not JSON: {error}") from None
        spec = await flags.set(key, data, actor=actor)
        return 200, orjson.dumps(_entry(flags, key, spec))
    if method == "DELETE":
        await flags.clear(key, actor=actor)
        return 200, orjson.dumps({"cleared": key})
    allowed = "GET, PUT, DELETE"
    raise MethodNotAllowed(f"{method} is not allowed here; use {allowed}", allowed)


def _entry(flags: FlagService, key: str, spec: FlagSpec) -> dict[str, Any]:
    return {"key": key, "spec": flags.stored(spec), "switch": describe_switch(key, spec)}


def _allow(method: str, allowed: str) -> None:
    if method not in allowed.split(", ") and not (method == "HEAD" and "GET" in allowed):
        raise MethodNotAllowed(f"{method} is not allowed here; use {allowed}", allowed)
