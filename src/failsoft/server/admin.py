"""The admin API under /admin: a bearer token with the right scope, JSON in and out.

Who may do what: the configured ``admin_token`` (or ``$FAILSOFT_ADMIN_TOKEN``)
is the token named ``admin`` with every scope; tokens made through
``/admin/tokens`` are stored as their sha256 and carry their own scopes
(``read``, ``write``, ``chaos``). The name of the token is the actor of every
change it makes, in the audit log.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from failsoft.control.operate import Operate
from failsoft.control.plane import ControlPlane
from failsoft.control.storecall import store_call
from failsoft.data.drift_service import DriftService
from failsoft.errors import (
    BadRequest,
    FailsoftError,
    FailureClass,
    MethodNotAllowed,
    NotFound,
    Unauthorized,
)
from failsoft.observe.depmap import runtime_map
from failsoft.observe.recent import RecentEvents
from failsoft.runtime import Runtime
from failsoft.server.control_routes import SCOPES, Answer, ControlRoutes
from failsoft.server.http import json_body
from failsoft.server.operate_routes import handle_operate
from failsoft.store import StoreError

ADMIN_BODY_LIMIT = 64 * 1024
ReadBody = Callable[[int], Awaitable[bytes]]
_CONTROL_ROUTES = (
    "config",
    "artifacts",
    "registry",
    "audit",
    "tokens",
    "backup",
    "flags",
    "instances",
    "rollouts",
)


class Forbidden(FailsoftError):
    status = 403
    failure_class = FailureClass.CLIENT


@dataclass(frozen=True)
class Principal:
    """Who is calling: a token's name and scopes."""

    name: str
    scopes: frozenset[str]

    def require(self, scope: str) -> None:
        if scope not in self.scopes:
            raise Forbidden(f"token {self.name!r} lacks the {scope!r} scope for this")


class AdminRoutes:
    def __init__(
        self,
        runtime: Runtime,
        token: str | None,
        tenant_snapshot: Callable[[], dict[str, Any]] | None = None,
        recent: RecentEvents | None = None,
        control: ControlPlane | None = None,
        drift: DriftService | None = None,
    ) -> None:
        self._runtime = runtime
        self._drift = drift
        self.token = token
        self._tenant_snapshot = tenant_snapshot
        self._recent = recent
        self._control = control
        self._control_routes = ControlRoutes(control) if control is not None else None
        self.operate: Operate | None = None  # SLOs and incidents, set by the app

    async def handle(
        self,
        method: str,
        parts: list[str],
        authorization: str | None,
        read_body: ReadBody,
        query: Mapping[str, str] | None = None,
    ) -> tuple[int, bytes] | Answer:
        principal = await self.authenticate(authorization)
        if parts == ["status"]:
            _allow(method, "GET")
            principal.require("read")
            return 200, json_body(self.status())
        if parts == ["map"]:
            _allow(method, "GET")
            principal.require("read")
            return 200, json_body(runtime_map(self._runtime, self.status()))
        if parts == ["events"]:
            _allow(method, "GET")
            principal.require("read")
            recent = self._recent.snapshot() if self._recent else {"events": []}
            return 200, json_body(recent)
        if parts[:1] == ["drift"] and len(parts) <= 2 and self._drift is not None:
            _allow(method, "GET")
            principal.require("read")
            return 200, drift_answer(self._drift, parts[1] if len(parts) == 2 else None, query)
        if parts[:1] == ["faults"] and len(parts) <= 2:
            principal.require("read" if method in ("GET", "HEAD") else "chaos")
            fault_id = parts[1] if len(parts) == 2 else None
            return await self._faults(method, fault_id, read_body, principal)
        if parts[:1] in (["slo"], ["incidents"]) and self.operate is not None:
            return await handle_operate(
                self.operate,
                method,
                parts,
                query or {},
                principal.name,
                principal.require,
                read_body,
            )
        if parts[:1] and parts[0] in _CONTROL_ROUTES:
            if self._control_routes is None:
                raise NotFound("the control store is off for this gateway (no --data-dir)")
            return await self._control_routes.handle(
                method, parts, query or {}, principal.name, principal.require, read_body
            )
        raise NotFound(f"no admin route /admin/{'/'.join(parts)}")

    async def _faults(
        self, method: str, fault_id: str | None, read_body: ReadBody, principal: Principal
    ) -> tuple[int, bytes]:
        faults = self._runtime.faults
        if fault_id is not None:
            _allow(method, "DELETE")
            cleared = faults.clear(fault_id)
            await self._audit("fault.cleared", f"fault:{fault_id}", principal, {})
            return 200, json_body({"cleared": cleared})
        if method == "DELETE":
            cleared = faults.clear()
            await self._audit("fault.cleared", "faults", principal, {"count": cleared})
            return 200, json_body({"cleared": cleared})
        if method == "POST":
            try:
                spec = orjson.loads(await read_body(ADMIN_BODY_LIMIT))
            except orjson.JSONDecodeError as error:
                raise BadRequest(f"the body is not JSON: {error}") from None
            if not isinstance(spec, dict):
                raise BadRequest("the body must be a JSON object describing one fault")
            fault = faults.add(spec)
            described = fault.describe(self._runtime.clock.now())
            await self._audit("fault.added", f"fault:{fault.id}", principal, spec)
            return 201, json_body(described)
        _allow(method, "GET, POST, DELETE")
        return 200, json_body({"enabled": faults.options.enabled, "faults": faults.snapshot()})

    async def _audit(
        self, action: str, target: str, principal: Principal, detail: Mapping[str, Any]
    ) -> None:
        """An audit entry for a change made here; a store that is down does not stop it."""
        if self._control is None:
            return
        store = self._control.store
        try:
            await store_call(
                store, store.record, action, target, actor=principal.name, detail=dict(detail)
            )
        except StoreError as error:
            log_store_down(action, error)

    async def authenticate(self, authorization: str | None) -> Principal:
        """The caller's token: the configured admin token, or a named one from the store."""
        scheme, _, presented = (authorization or "").partition(" ")
        presented = presented.strip()
        if scheme.lower() != "bearer" or not presented:
            self._check_enabled()
            raise Unauthorized("admin API: send Authorization: Bearer <admin token>")
        if self.token is not None and hmac.compare_digest(presented.encode(), self.token.encode()):
            return Principal("admin", frozenset(SCOPES))
        if self._control is not None:
            digest = hashlib.sha256(presented.encode()).hexdigest()
            try:
                store = self._control.store
                found = await store_call(store, store.token_by_sha256, digest)
            except StoreError:
                found = None  # named tokens wait for the store; the admin token still works
            if found is not None:
                return Principal(found.name, frozenset(found.scopes))
        self._check_enabled()
        raise Unauthorized("admin API: send Authorization: Bearer <admin token>")

    def _check_enabled(self) -> None:
        if self.token is None and self._control is None:
            raise Forbidden(
                "the admin API is disabled: set server.admin_token or FAILSOFT_ADMIN_TOKEN"
            )

    def status(self) -> dict[str, Any]:
        models: dict[str, Any] = {}
        for name, model in self._runtime.models.items():
            versions: dict[str, Any] = {}
            for version_name, version in model.versions.items():
                config = model.config.versions[version_name]
                scaler = model.units[version_name].autoscaler
                versions[version_name] = {
                    "backend": config.backend,
                    "ready": version.ready,
                    "in_flight": version.in_flight,
                    **({"autoscale": scaler.snapshot()} if scaler is not None else {}),
                    "replicas": [
                        {**_replica_status(replica), **detail}
                        for replica, detail in zip(
                            version.replicas, version.snapshot(), strict=True
                        )
                    ],
                }
            models[name] = {
                "default_version": model.config.default,
                "ready": model.ready,
                "objective_pct": model.config.objective_pct,
                "limiter": model.limiter.snapshot(),
                "versions": versions,
            }
        return {"ready": self._runtime.ready, "models": models, "tenants": self._tenants()}

    def _tenants(self) -> dict[str, Any]:
        return self._tenant_snapshot() if self._tenant_snapshot is not None else {}


def drift_answer(drift: DriftService, model: str | None, query: Mapping[str, str] | None) -> bytes:
    """GET /admin/drift[/MODEL][?cells=1]: each version's windows, verdicts and scores."""
    cells = (query or {}).get("cells") in ("1", "true")
    answer = drift.snapshot(model, cells=cells)
    if model is not None and model not in answer["models"]:
        raise NotFound(
            f"no drift monitor for model {model!r} (give it models.{model}.drift.profile)"
        )
    return json_body(answer)


def log_store_down(action: str, error: StoreError) -> None:
    import logging

    logging.getLogger("failsoft.audit").warning(
        "audit entry not written: the control store is down",
        extra={"action": action, "error": error.message},
    )


def _allow(method: str, allowed: str) -> None:
    if method not in allowed.split(", ") and not (method == "HEAD" and "GET" in allowed):
        raise MethodNotAllowed(f"{method} is not allowed here; use {allowed}", allowed)


def _replica_status(replica: Any) -> dict[str, Any]:
    status: dict[str, Any] = {"name": replica.name, "available": replica.available}
    for attribute in ("pid", "restarts", "base_url", "inline"):
        value = getattr(replica, attribute, None)
        if value is not None:
            status[attribute] = value
    return status
