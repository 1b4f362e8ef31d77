"""The control plane's admin routes: configuration revisions, artifacts, audit, tokens, backups.

    GET  /admin/config                      the revision this gateway serves, and its config
    POST /admin/config                      {"config": {...}, "dry_run": false} -> plan, revision
    GET  /admin/config/history?limit=20     the revisions, newest first
    GET  /admin/config/N                    revision N: its status and config
    GET  /admin/config/diff?a=1&b=2         what changes from revision a to b
    POST /admin/config/rollback             {"revision": N} (default: the one before)
    GET  /admin/artifacts                   the registered artifacts
    POST /admin/artifacts?name=&version=&kind=    the artifact's bytes as the body
    POST /admin/registry/verify             scrub every copy, repair what can be
    POST /admin/registry/gc                 {"dry_run": true}: remove what no revision uses
                                            (kept: anything pushed within the last hour)
    GET  /admin/audit?after=0&limit=100     audit entries
    GET  /admin/audit/verify                recompute the log and every checkpoint
    GET  /admin/audit/proof/SEQ             an inclusion proof, checkable offline
    GET  /admin/tokens, POST /admin/tokens {"name", "scopes"}, DELETE /admin/tokens/NAME
    GET  /admin/instances                   the gateways sharing the store (heartbeats)
    GET  /admin/backup                      a consistent snapshot (tar) of store and artifacts
    GET  /admin/flags[/KEY], PUT|DELETE /admin/flags/KEY   runtime flags (flag_routes.py)
    GET|POST /admin/rollouts[/KEY[/ACTION]]                 rollouts (rollout_routes.py)

Every store call runs on a thread; none runs on the request path. Scopes:
reading needs ``read``, changing needs ``write``.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from failsoft.control.artifact_ref import ARTIFACT_KINDS
from failsoft.control.plane import ControlPlane
from failsoft.control.revisions import StoreUnavailable
from failsoft.control.storecall import store_call
from failsoft.errors import BadRequest, MethodNotAllowed, NotFound
from failsoft.server.flag_routes import handle_flags
from failsoft.server.rollout_routes import handle_rollouts
from failsoft.store import StoreError, StoreUnreachable
from failsoft.store.encoding import utc_text

CONFIG_BODY_LIMIT = 4 * 1024 * 1024
GC_GRACE_S = 3600.0
ARTIFACT_BODY_LIMIT = 1 << 30
SCOPES = ("read", "write", "chaos")

ReadBody = Callable[[int], Awaitable[bytes]]
Query = Mapping[str, str]


@dataclass
class Answer:
    status: int
    body: bytes
    content_type: bytes = b"application/json"


class ControlRoutes:
    def __init__(self, control: ControlPlane) -> None:
        self._control = control

    async def handle(
        self,
        method: str,
        parts: list[str],
        query: Query,
        actor: str,
        require: Callable[[str], None],
        read_body: ReadBody,
    ) -> Answer:
        head, rest = parts[0], parts[1:]
        reading = method in ("GET", "HEAD")
        require("read" if reading else "write")
        if head == "config":
            return await self._config(method, rest, query, actor, read_body)
        if head == "artifacts" and not rest:
            return await self._artifacts(method, query, actor, read_body)
        if head == "registry" and rest in (["verify"], ["gc"]):
            _allow(method, "POST")
            return await self._registry(rest[0], read_body)
        if head == "audit":
            _allow(method, "GET")
            return await self._audit(rest, query)
        if head == "tokens" and len(rest) <= 1:
            return await self._tokens(method, rest, actor, read_body)
        if head == "flags" and len(rest) <= 1:
            if self._control.flags is None:
                raise NotFound("the flags of this gateway are not loaded yet")
            status, body = await handle_flags(self._control.flags, method, rest, actor, read_body)
            return Answer(status, body)
        if head == "instances" and not rest:
            _allow(method, "GET")
            return _ok(await self._instances())
        if head == "rollouts" and len(rest) <= 2:
            if self._control.rollouts is None:
                raise NotFound("the rollouts of this gateway are not loaded yet")
            rollouts = self._control.rollouts
            status, body = await handle_rollouts(rollouts, method, rest, actor, read_body)
            return Answer(status, body)
        if head == "backup" and not rest:
            _allow(method, "GET")
            require("write")  # the archive holds the audit signing key
            return await self._backup()
        raise NotFound(f"no admin route /admin/{'/'.join(parts)}")

    async def _config(
        self, method: str, rest: list[str], query: Query, actor: str, read_body: ReadBody
    ) -> Answer:
        revisions = self._control.revisions
        if not rest:
            if method == "POST":
                body = await _json(read_body, CONFIG_BODY_LIMIT)
                outcome = await revisions.propose(
                    body.get("config"),
                    actor=actor,
                    dry_run=bool(body.get("dry_run", False)),
                    reason=_optional_text(body, "reason"),
                )
                return _ok(outcome.as_json())
            _allow(method, "GET, POST")
            served = revisions.config
            return _ok(
                {
                    "revision": revisions.revision,
                    "config": None if served is None else _dump(served),
                }
            )
        if rest == ["history"]:
            _allow(method, "GET")
            limit = _number(query, "limit", 20)
            return _ok({"revisions": await revisions.history(limit)})
        if rest == ["diff"]:
            _allow(method, "GET")
            changes = await revisions.diff(_number(query, "a"), _number(query, "b"))
            return _ok({**changes.as_json(), "plan_text": changes.render()})
        if len(rest) == 1 and rest[0].isdigit():
            _allow(method, "GET")
            found = await self._call(self._control.store.revision, int(rest[0]))
            if found is None:
                raise NotFound(f"there is no revision {rest[0]}")
            return _ok(
                {
                    "revision": found.id,
                    "status": found.status,
                    "reason": found.reason,
                    "config": _redacted(found.config),
                }
            )
        if rest == ["rollback"]:
            _allow(method, "POST")
            body = await _json(read_body, CONFIG_BODY_LIMIT)
            target = body.get("revision")
            if target is not None and (type(target) is not int or target < 1):
                raise BadRequest("revision must be a revision number")
            return _ok((await revisions.rollback(target, actor=actor)).as_json())
        raise NotFound(f"no admin route /admin/config/{'/'.join(rest)}")

    async def _artifacts(
        self, method: str, query: Query, actor: str, read_body: ReadBody
    ) -> Answer:
        store = self._control.store
        if method != "POST":
            _allow(method, "GET, POST")
            rows = await self._call(store.artifacts)
            return _ok({"artifacts": [asdict(row) for row in rows]})
        name, version, kind = (query.get(key, "") for key in ("name", "version", "kind"))
        if kind not in ARTIFACT_KINDS:
            raise BadRequest(f"kind must be one of {', '.join(ARTIFACT_KINDS)}, got {kind!r}")
        if not name or not version:
            raise BadRequest("give the artifact's name and version (?name=iris&version=v3)")
        data = await read_body(ARTIFACT_BODY_LIMIT)
        if not data:
            raise BadRequest("the body holds no bytes: send the model file")
        digest = hashlib.sha256(data).hexdigest()
        # The row first: gc keeps what is registered, so a push racing it loses nothing.
        row = await self._call(
            store.register_artifact,
            name,
            version,
            sha256=digest,
            kind=kind,
            size=len(data),
            actor=actor,
        )
        await asyncio.to_thread(self._control.registry.put, data)
        return Answer(201, orjson.dumps(asdict(row)))

    async def _registry(self, action: str, read_body: ReadBody) -> Answer:
        store, registry = self._control.store, self._control.registry
        if action == "verify":
            expected = {row.sha256 for row in await self._call(store.artifacts)}
            verified = await asyncio.to_thread(registry.verify, expected)
            return _ok({"ok": verified.ok, "summary": verified.summary(), **_plain(verified)})
        body = await _json(read_body, CONFIG_BODY_LIMIT)
        # What a stored revision uses stays, and so does what was pushed within the
        # grace period: it is likely about to be applied.
        keep = await self._call(store.referenced_sha256)
        recent = utc_text(time.time() - GC_GRACE_S)
        keep |= {
            row.sha256 for row in await self._call(store.artifacts) if row.created_at >= recent
        }
        dry_run = bool(body.get("dry_run", True))
        collected = await asyncio.to_thread(registry.gc, keep, dry_run=dry_run)
        return _ok(
            {
                "dry_run": collected.dry_run,
                "removed": sorted(collected.digests_removed),
                "bytes_freed": collected.bytes_freed,
                "kept": collected.kept,
                "failed": [list(failure) for failure in collected.failed],
            }
        )

    async def _audit(self, rest: list[str], query: Query) -> Answer:
        store = self._control.store
        if not rest:
            entries = await self._call(
                store.audit_entries,
                after_seq=_number(query, "after", 0),
                limit=_number(query, "limit", 100),
            )
            return _ok({"entries": [entry.to_dict() for entry in entries]})
        if rest == ["verify"]:
            return _ok((await self._call(store.verify)).to_dict())
        if len(rest) == 2 and rest[0] == "proof":
            seq = _number({"seq": rest[1]}, "seq")
            proof = await self._call(store.prove, seq)
            public = store.public_key.public_bytes_raw().hex()
            return _ok({"proof": proof.to_dict(), "public_key": public})
        raise NotFound(f"no admin route /admin/audit/{'/'.join(rest)}")

    async def _tokens(
        self, method: str, rest: list[str], actor: str, read_body: ReadBody
    ) -> Answer:
        store = self._control.store
        if rest:
            _allow(method, "DELETE")
            token = await self._call(store.revoke_token, rest[0], actor=actor)
            return _ok({"revoked": token.name})
        if method == "POST":
            body = await _json(read_body, CONFIG_BODY_LIMIT)
            name = _optional_text(body, "name")
            scopes = body.get("scopes", ["read"])
            if not name:
                raise BadRequest("a token needs a name")
            if not isinstance(scopes, list) or not scopes or any(s not in SCOPES for s in scopes):
                raise BadRequest(f"scopes must be a list of {', '.join(SCOPES)}")
            secret = "fsa_" + secrets.token_urlsafe(32)
            digest = hashlib.sha256(secret.encode()).hexdigest()
            await self._call(store.add_token, name, digest, sorted(scopes), actor=actor)
            return Answer(
                201, orjson.dumps({"name": name, "scopes": sorted(scopes), "token": secret})
            )
        _allow(method, "GET, POST")
        rows = await self._call(store.tokens)
        return _ok(
            {
                "tokens": [
                    {
                        "name": row.name,
                        "scopes": sorted(row.scopes),
                        "created_at": row.created_at,
                        "revoked_at": row.revoked_at,
                    }
                    for row in rows
                ]
            }
        )

    async def _instances(self) -> dict[str, Any]:
        """The gateways sharing the store, and how this one hears of changes right now."""
        registry = self._control.instances
        if registry is None:
            raise NotFound("this gateway has not registered yet")
        try:
            listing = await registry.listing()
        except StoreError as error:  # the list is the store's: without it, nothing to show
            raise StoreUnavailable(error.message) from None
        listener = self._control.listener
        listing["wakeups"] = {
            "mode": self._control.wakeups.mode,
            "poll_s": self._control.options.store.poll_s,
            "listen_connects": listener.connects if listener is not None else 0,
            "notifications": listener.heard if listener is not None else 0,
        }
        return listing

    async def _backup(self) -> Answer:
        with tempfile.TemporaryDirectory(prefix="failsoft-backup-") as scratch:
            archive = Path(scratch) / "backup.tar"
            await self._call(self._control.backup, archive, timeout=None)
            data = await asyncio.to_thread(archive.read_bytes)
        return Answer(200, data, b"application/x-tar")

    async def _call(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """A store call off the event loop, with a deadline (``timeout=None``: none)."""
        try:
            return await store_call(self._control.store, function, *args, **kwargs)
        except StoreUnreachable as error:
            raise StoreUnavailable(error.message) from None
        except StoreError as error:  # a refusal: the message says what is wrong with the request
            raise BadRequest(error.message) from None


async def _json(read_body: ReadBody, limit: int) -> dict[str, Any]:
    raw = await read_body(limit)
    if not raw:
        return {}
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise BadRequest(f"the body is not JSON: {error}") from None
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    return data


def _number(query: Query, key: str, default: int | None = None) -> int:
    raw = query.get(key)
    if raw is None:
        if default is None:
            raise BadRequest(f"give {key} (a whole number)")
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{key} must be a whole number, got {raw!r}") from None
    if value < 0:
        raise BadRequest(f"{key} must not be negative")
    return value


def _optional_text(body: Mapping[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise BadRequest(f"{key} must be a string")
    return value


def _plain(report: Any) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(orjson.dumps(asdict(report), default=str))
    return data


def _dump(config: Any) -> Any:
    from failsoft.control.revisions import config_json

    return _redacted(config_json(config))


def _redacted(config: dict[str, Any]) -> dict[str, Any]:
    """A configuration to show: the admin token is a secret, even to a reader."""
    server = config.get("server")
    if isinstance(server, dict) and server.get("admin_token"):
        return {**config, "server": {**server, "admin_token": "<redacted>"}}
    return config


def _ok(data: Any) -> Answer:
    return Answer(200, orjson.dumps(data))


def _allow(method: str, allowed: str) -> None:
    if method not in allowed.split(", ") and not (method == "HEAD" and "GET" in allowed):
        raise MethodNotAllowed(f"{method} is not allowed here; use {allowed}", allowed)
