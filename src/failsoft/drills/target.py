"""The gateway a drill runs against, and the admin client that steers it.

A target is either a configuration the drill starts itself (`failsoft serve
--chaos`, an ephemeral port and a fresh admin token, stopped afterwards) or
the URL of a failsoft already running, with its admin token taken from an
environment variable. Either way the drill talks to it over HTTP only.

``AdminClient`` is also how the control-plane commands (``cli_control.py``)
reach a gateway: ``request`` sends one request and returns the whole answer,
and ``TargetUnreachable`` says why none came (connection refused, timed out).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import socket
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
from prometheus_client.parser import text_string_to_metric_families

from failsoft.backends.h1pool import MAX_RESPONSE_BYTES, H1Pool, H1Response, PoolError, PoolTimeout
from failsoft.config import ConfigError, load_config
from failsoft.control.tenants import key_digest
from failsoft.drills.server import ServerFailed, ServerProcess

ADMIN_TIMEOUT_S = 10.0
# A proposed configuration loads and probes its new replicas before the gateway answers.
APPLY_TIMEOUT_S = 180.0


class TargetError(Exception):
    """The target cannot be reached, started or steered; the message says why."""


class TargetUnreachable(TargetError):
    """No answer came: ``reason`` says why in a few words ("connection refused")."""

    def __init__(self, message: str, reason: str, *, timed_out: bool) -> None:
        super().__init__(message)
        self.reason = reason
        self.timed_out = timed_out  # the request may have been carried out all the same


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
    """The gateway's admin API and metrics, over one small pool.

    ``keep_alive=False`` sends every request on a new connection (``Connection:
    close``): the pool then never retries a request on a stale connection, so a
    change is sent exactly once. ``max_response_bytes`` bounds an answer (a
    backup can be large).
    """

    def __init__(
        self,
        url: str,
        token: str | None,
        *,
        timeout_s: float = ADMIN_TIMEOUT_S,
        keep_alive: bool = True,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or parts.hostname is None:
            raise TargetError(f"not an http:// URL: {url!r}")
        try:
            port = parts.port or 80
        except ValueError:
            raise TargetError(f"not a valid port in {url!r}") from None
        self._pool = H1Pool(
            parts.hostname, port, 4, idle_timeout_s=4.0, max_response_bytes=max_response_bytes
        )
        self._token = token
        self._url = url.rstrip("/")
        self._timeout_s = timeout_s
        self._keep_alive = keep_alive

    async def close(self) -> None:
        await self._pool.close()

    async def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        *,
        content_type: str = "application/json",
        timeout_s: float | None = None,
    ) -> H1Response:
        """One request, with the token; the whole answer, whatever its status."""
        headers = [("Content-Type", content_type)]
        if self._token:
            headers.append(("Authorization", f"Bearer {self._token}"))
        if not self._keep_alive:
            headers.append(("Connection", "close"))
        timeout = self._timeout_s if timeout_s is None else timeout_s
        try:
            return await self._pool.request(method, path, headers, body, timeout)
        except PoolError as error:
            raise TargetUnreachable(
                f"{method} {self._url}{path}: {error}",
                _unreachable_reason(error, timeout),
                timed_out=isinstance(error, PoolTimeout),
            ) from None

    async def _call(
        self, method: str, path: str, body: Any = None, timeout_s: float | None = None
    ) -> tuple[int, bytes]:
        payload = orjson.dumps(body) if body is not None else b""
        response = await self.request(method, path, payload, timeout_s=timeout_s)
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

    async def attempts(self, model: str, versions: list[str]) -> int:
        """Calls on replicas (first tries, retries, hedges) of these versions so far."""
        status, payload = await self._call("GET", "/metrics")
        if status != 200:
            raise TargetError(f"GET /metrics answered {status}")
        total = 0.0
        for family in text_string_to_metric_families(payload.decode()):
            if family.name != "failsoft_attempts":
                continue
            for sample in family.samples:
                labels = sample.labels
                if (
                    sample.name.endswith("_total")
                    and labels.get("model") == model
                    and labels.get("version") in versions
                ):
                    total += sample.value
        return round(total)

    async def set_flag(self, key: str, spec: dict[str, Any]) -> tuple[int, Any]:
        """PUT /admin/flags/KEY; the status and the JSON answer (a refusal is not an error)."""
        response = await self.request("PUT", f"/admin/flags/{key}", orjson.dumps(spec))
        try:
            return response.status, orjson.loads(response.body)
        except orjson.JSONDecodeError:
            return response.status, {"error": response.body[:200].decode("utf-8", "replace")}

    async def clear_flag(self, key: str) -> int:
        """DELETE /admin/flags/KEY; its status (404: it was not set, or expired)."""
        return (await self.request("DELETE", f"/admin/flags/{key}")).status


def _unreachable_reason(error: PoolError, timeout_s: float) -> str:
    """Why no answer came, in a few words: the pool's message, or the socket error under it."""
    if isinstance(error, PoolTimeout):
        return f"no answer within {timeout_s:g} s"
    cause = error.__context__  # the OSError the pool turned into its own error
    if isinstance(cause, socket.gaierror):
        return f"unknown host ({cause.strerror or cause})"
    if isinstance(cause, ConnectionRefusedError) or (
        isinstance(cause, OSError)
        and (cause.errno == errno.ECONNREFUSED or "Connect call failed" in str(cause))
    ):
        # Several addresses (IPv6 and IPv4) that all refused come as one OSError.
        return "connection refused"
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror.lower()
    return str(error)
