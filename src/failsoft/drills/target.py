"""The gateway a drill runs against, and the admin client that steers it.

A target is either a configuration the drill starts itself (`failsoft serve
--chaos`, an ephemeral port and a fresh admin token, stopped afterwards) or
the URL of a failsoft already running, with its admin token taken from an
environment variable. Either way the drill talks to it over HTTP only.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
from prometheus_client.parser import text_string_to_metric_families

from failsoft.backends.h1pool import H1Pool, PoolError
from failsoft.config import ConfigError, load_config
from failsoft.control.tenants import key_digest
from failsoft.drills.server import ServerFailed, ServerProcess

ADMIN_TIMEOUT_S = 10.0
# A proposed configuration loads and probes its new replicas before the gateway answers.
APPLY_TIMEOUT_S = 180.0


class TargetError(Exception):
    """The target cannot be reached, started or steered; the message says why."""


@dataclass(frozen=True)
class Running:
    url: str
    admin_token: str | None
    server: ServerProcess | None = None


@dataclass(frozen=True)
class TenantEntry:
    """A tenant the drill adds to the target it starts: its key and priority ceiling."""

    key: str
    priority: str


@contextlib.contextmanager
def open_target(
    config: Path | None,
    url: str | None,
    token_env: str = "FAILSOFT_ADMIN_TOKEN",
    tenants: Mapping[str, TenantEntry] | None = None,
) -> Iterator[Running]:
    """Start ``config`` with chaos enabled (``tenants`` added), or use the gateway at ``url``."""
    if url is not None:
        yield Running(url.rstrip("/"), os.environ.get(token_env))
        return
    if config is None:
        raise TargetError("a drill needs a target: a configuration to start or a URL")
    if not config.is_file():
        raise TargetError(f"target configuration not found: {config}")
    token = secrets.token_urlsafe(24)
    with tempfile.TemporaryDirectory(prefix="failsoft-drill-") as scratch:
        if tenants:
            config = _with_tenants(config, tenants, Path(scratch))
        # A fresh control store for every drill: no revision of an earlier run leaks in.
        data_dir = Path(scratch) / "data"
        server = ServerProcess(
            config,
            "--chaos",
            "--data-dir",
            str(data_dir),
            env={"FAILSOFT_ADMIN_TOKEN": token},
        )
        try:
            server.start(timeout=120.0)
        except ServerFailed as error:
            server.stop()
            raise TargetError(f"the target did not start: {error}") from None
        try:
            yield Running(server.url, token, server)
        finally:
            server.stop()


def _with_tenants(config: Path, tenants: Mapping[str, TenantEntry], scratch: Path) -> Path:
    """A copy of ``config`` (paths made absolute) with ``tenants`` added; written to scratch."""
    try:
        loaded = load_config(config)
    except ConfigError as error:
        raise TargetError(f"the target configuration is invalid: {error}") from None
    data = loaded.model_dump(mode="json", exclude_unset=True)
    existing = data.setdefault("tenants", {})
    for name, entry in tenants.items():
        if name in existing:
            raise TargetError(
                f"load.tenants.{name}: the target configuration already has tenant {name!r}; "
                "give its key with key_env"
            )
        existing[name] = {"key_sha256": key_digest(entry.key), "priority": entry.priority}
    path = scratch / "failsoft-drill.yaml"
    path.write_bytes(orjson.dumps(data))  # JSON is YAML
    return path


class AdminClient:
    """The gateway's admin API and metrics, over one small keep-alive pool."""

    def __init__(self, url: str, token: str | None) -> None:
        parts = urlsplit(url)
        if parts.hostname is None:
            raise TargetError(f"not a URL: {url!r}")
        self._pool = H1Pool(parts.hostname, parts.port or 80, 4, idle_timeout_s=4.0)
        self._token = token
        self._url = url

    async def close(self) -> None:
        await self._pool.close()

    async def _call(
        self, method: str, path: str, body: Any = None, timeout_s: float = ADMIN_TIMEOUT_S
    ) -> tuple[int, bytes]:
        headers = [("Content-Type", "application/json")]
        if self._token:
            headers.append(("Authorization", f"Bearer {self._token}"))
        payload = orjson.dumps(body) if body is not None else b""
        try:
            response = await self._pool.request(method, path, headers, payload, timeout_s)
        except PoolError as error:
            raise TargetError(f"{method} {self._url}{path}: {error}") from None
        return response.status, response.body

    async def _json(self, method: str, path: str, body: Any = None) -> Any:
        status, payload = await self._call(method, path, body)
        if status >= 300:
            try:
                message = orjson.loads(payload).get("error", "")
            except (orjson.JSONDecodeError, AttributeError):
                message = payload[:200].decode("utf-8", "replace")
            hint = " (set the admin token)" if status in (401, 403) else ""
            raise TargetError(f"{method} {path} answered {status}: {message}{hint}")
        return orjson.loads(payload)

    async def add_fault(self, spec: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self._json("POST", "/admin/faults", spec)
        return result

    async def end_fault(self, fault_id: str) -> None:
        status, _ = await self._call("DELETE", f"/admin/faults/{fault_id}")
        if status not in (200, 404):  # 404: it already expired, which is fine
            raise TargetError(f"DELETE /admin/faults/{fault_id} answered {status}")

    async def list_faults(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._json("GET", "/admin/faults")
        return result

    async def clear_faults(self) -> None:
        await self._json("DELETE", "/admin/faults")

    async def served_config(self) -> tuple[int, dict[str, Any]]:
        """The revision the gateway serves and its configuration (as stored)."""
        result: dict[str, Any] = await self._json("GET", "/admin/config")
        config = result.get("config")
        if not isinstance(config, dict):
            raise TargetError(
                "the target serves no stored configuration (is it running without a "
                "control store, --no-store?): a deploy step needs one"
            )
        return int(result.get("revision") or 0), config

    async def propose(self, config: dict[str, Any], reason: str) -> tuple[int, Any]:
        """POST /admin/config; the status and the JSON answer (a refusal is not an error)."""
        return await self._change("/admin/config", {"config": config, "reason": reason})

    async def rollback(self, revision: int | None = None) -> tuple[int, Any]:
        """POST /admin/config/rollback (to ``revision``, else the one before); status, answer."""
        body = {} if revision is None else {"revision": revision}
        return await self._change("/admin/config/rollback", body)

    async def _change(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        status, payload = await self._call("POST", path, body, APPLY_TIMEOUT_S)
        try:
            return status, orjson.loads(payload)
        except orjson.JSONDecodeError:
            return status, {"error": payload[:200].decode("utf-8", "replace")}

    async def status(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._json("GET", "/admin/status")
        return result

    async def events(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._json("GET", "/admin/events")
        return result

    async def model_counts(self, model: str) -> tuple[float, float]:
        """Attempts on replicas and requests answered so far, for ``model``."""
        status, payload = await self._call("GET", "/metrics")
        if status != 200:
            raise TargetError(f"GET /metrics answered {status}")
        attempts = requests = 0.0
        for family in text_string_to_metric_families(payload.decode()):
            for sample in family.samples:
                if sample.labels.get("model") != model or not sample.name.endswith("_total"):
                    continue
                if family.name == "failsoft_attempts":
                    attempts += sample.value
                elif family.name == "failsoft_requests":
                    requests += sample.value
        return attempts, requests
