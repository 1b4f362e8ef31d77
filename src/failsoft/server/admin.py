"""The admin API under /admin: bearer token required, JSON in and out."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from failsoft.errors import (
    BadRequest,
    FailsoftError,
    FailureClass,
    MethodNotAllowed,
    NotFound,
    Unauthorized,
)
from failsoft.observe.recent import RecentEvents
from failsoft.runtime import Runtime
from failsoft.server.http import json_body

ADMIN_BODY_LIMIT = 64 * 1024
ReadBody = Callable[[int], Awaitable[bytes]]


class Forbidden(FailsoftError):
    status = 403
    failure_class = FailureClass.CLIENT


class AdminRoutes:
    def __init__(
        self,
        runtime: Runtime,
        token: str | None,
        tenant_snapshot: Callable[[], dict[str, Any]] | None = None,
        recent: RecentEvents | None = None,
    ) -> None:
        self._runtime = runtime
        self._token = token
        self._tenant_snapshot = tenant_snapshot
        self._recent = recent

    async def handle(
        self, method: str, parts: list[str], authorization: str | None, read_body: ReadBody
    ) -> tuple[int, bytes]:
        self.authorize(authorization)
        if parts == ["status"]:
            _allow(method, "GET")
            return 200, json_body(self.status())
        if parts == ["events"]:
            _allow(method, "GET")
            recent = self._recent.snapshot() if self._recent else {"events": []}
            return 200, json_body(recent)
        if parts[:1] == ["faults"] and len(parts) <= 2:
            return await self._faults(method, parts[1] if len(parts) == 2 else None, read_body)
        raise NotFound(f"no admin route /admin/{'/'.join(parts)}")

    async def _faults(
        self, method: str, fault_id: str | None, read_body: ReadBody
    ) -> tuple[int, bytes]:
        faults = self._runtime.faults
        if fault_id is not None:
            _allow(method, "DELETE")
            return 200, json_body({"cleared": faults.clear(fault_id)})
        if method == "DELETE":
            return 200, json_body({"cleared": faults.clear()})
        if method == "POST":
            try:
                spec = orjson.loads(await read_body(ADMIN_BODY_LIMIT))
            except orjson.JSONDecodeError as error:
                raise BadRequest(f"the body is not JSON: {error}") from None
            if not isinstance(spec, dict):
                raise BadRequest("the body must be a JSON object describing one fault")
            fault = faults.add(spec)
            return 201, json_body(fault.describe(self._runtime.clock.now()))
        _allow(method, "GET, POST, DELETE")
        return 200, json_body({"enabled": faults.options.enabled, "faults": faults.snapshot()})

    def authorize(self, authorization: str | None) -> None:
        """Raise unless ``authorization`` carries the admin token."""
        if self._token is None:
            raise Forbidden(
                "the admin API is disabled: set server.admin_token or FAILSOFT_ADMIN_TOKEN"
            )
        scheme, _, presented = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            presented.strip().encode(), self._token.encode()
        ):
            raise Unauthorized("admin API: send Authorization: Bearer <admin token>")

    def status(self) -> dict[str, Any]:
        models: dict[str, Any] = {}
        for name, model in self._runtime.models.items():
            versions: dict[str, Any] = {}
            for version_name, version in model.versions.items():
                config = model.config.versions[version_name]
                versions[version_name] = {
                    "backend": config.backend,
                    "ready": version.ready,
                    "in_flight": version.in_flight,
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
