"""The admin API under /admin: bearer token required, JSON in and out."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any

from failsoft.errors import FailsoftError, MethodNotAllowed, NotFound, Unauthorized
from failsoft.runtime import Runtime
from failsoft.server.http import json_body


class Forbidden(FailsoftError):
    status = 403


class AdminRoutes:
    def __init__(
        self,
        runtime: Runtime,
        token: str | None,
        tenant_snapshot: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self._runtime = runtime
        self._token = token
        self._tenant_snapshot = tenant_snapshot

    def handle(self, method: str, parts: list[str], authorization: str | None) -> tuple[int, bytes]:
        self._authorize(authorization)
        if parts == ["status"]:
            if method not in ("GET", "HEAD"):
                raise MethodNotAllowed(f"{method} is not allowed here; use GET", "GET")
            return 200, json_body(self.status())
        raise NotFound(f"no admin route /admin/{'/'.join(parts)}")

    def _authorize(self, authorization: str | None) -> None:
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
                "limiter": model.limiter.snapshot(),
                "versions": versions,
            }
        return {"ready": self._runtime.ready, "models": models, "tenants": self._tenants()}

    def _tenants(self) -> dict[str, Any]:
        return self._tenant_snapshot() if self._tenant_snapshot is not None else {}


def _replica_status(replica: Any) -> dict[str, Any]:
    status: dict[str, Any] = {"name": replica.name, "available": replica.available}
    for attribute in ("pid", "restarts", "base_url", "inline"):
        value = getattr(replica, attribute, None)
        if value is not None:
            status[attribute] = value
    return status
