"""The http backend: a remote Open Inference Protocol (V2) server per replica.

Each replica keeps its own pool of keep-alive connections (``H1Pool``: a
small HTTP/1.1 client on asyncio protocols, several times cheaper per call
than aiohttp; see benchmarks/h1_client.py). The request's remaining
deadline bounds each call and is passed on to the remote in the
``Failsoft-Timeout-Ms`` header, so a failsoft upstream can give up when the
caller already has. Failures are classified here, at the source: connect
errors, timeouts, 5xx and answers that cannot be decoded are the replica's
(``UpstreamError``); a remote 500 is a ``ModelError``, which attribution may
find to be the input's fault (the same input fails elsewhere too); a remote
400, 404 or 413 is the request's fault, not the replica's.

A replica's ``base_url`` is ``http://host:port[/prefix]`` or, for the
process backend's workers, ``unix:/path/to/socket``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from urllib.parse import urlsplit

import orjson

from failsoft.backends.h1pool import H1Pool, H1Response, PoolError, PoolTimeout
from failsoft.call import Call
from failsoft.errors import (
    BadRequest,
    DeadlineExceeded,
    FailsoftError,
    ModelError,
    NotFound,
    PayloadTooLarge,
    UpstreamError,
)
from failsoft.observe.tracing import traceparent
from failsoft.protocol.types import InferRequest, Tensors
from failsoft.protocol.v2 import decode_infer_response, encode_infer_request

log = logging.getLogger("failsoft.backends.http")

HEADER_LENGTH = "inference-header-content-length"
# Below uvicorn's 5 s keep-alive, so an idle connection is dropped here first.
IDLE_TIMEOUT_S = 4.0
HEALTH_TIMEOUT_S = 1.0


def model_path(model: str, version: str | None) -> str:
    return f"/v2/models/{model}/versions/{version}" if version else f"/v2/models/{model}"


class HttpReplica:
    """One remote V2 server. ``base_url`` may change (a restarted worker)."""

    def __init__(
        self,
        name: str,
        base_url: str,
        pool_size: int,
        remote_model: str,
        remote_version: str | None,
    ) -> None:
        self.name = name
        self._pool_size = pool_size
        self._model_path = model_path(remote_model, remote_version)
        self._pool: H1Pool | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._base_url = ""
        self._prefix = ""
        self.base_url = base_url

    @property
    def base_url(self) -> str:
        return self._base_url

    @base_url.setter
    def base_url(self, url: str) -> None:
        if url == self._base_url:
            return
        pool, prefix = self._pool_for(url)
        if self._pool is not None:  # the old peer is gone (a restarted worker): let go of it
            task = asyncio.get_running_loop().create_task(self._pool.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        self._pool = pool
        self._base_url = url
        self._prefix = prefix

    def _pool_for(self, url: str) -> tuple[H1Pool, str]:
        """A pool for ``url`` and the path prefix of every request."""
        if url.startswith("unix:/"):
            path = url.removeprefix("unix:")
            return H1Pool("localhost", 80, self._pool_size, IDLE_TIMEOUT_S, unix_path=path), ""
        parts = urlsplit(url)
        if parts.scheme != "http" or parts.hostname is None:
            raise ValueError(
                f"replica {self.name}: only http:// and unix:/ URLs are supported, got {url!r}"
            )
        pool = H1Pool(parts.hostname, parts.port or 80, self._pool_size, IDLE_TIMEOUT_S)
        return pool, parts.path.rstrip("/")

    @property
    def available(self) -> bool:
        return True

    async def start(self) -> None:
        return None

    async def infer(self, request: InferRequest, call: Call) -> Tensors:
        remaining = call.remaining()
        if remaining <= 0:
            raise DeadlineExceeded("deadline passed before the call to the replica")
        if request.raw is not None:
            body, header_length = request.raw, request.raw_header_length
        else:  # every output, whatever the client asked for: the contract checks them all
            body, header_length = encode_infer_request(dataclasses.replace(request, outputs=None))
        headers = [
            ("Content-Type", "application/json"),
            ("X-Request-Id", call.request_id),
            ("Failsoft-Timeout-Ms", str(max(1, int(remaining * 1000)))),
        ]
        if header_length is not None:
            headers.append(("Inference-Header-Content-Length", str(header_length)))
        parent = traceparent()  # the attempt's span, so the upstream's spans hang under it
        if parent is not None:
            headers.append(("traceparent", parent))
        response = await self._request("POST", "/infer", headers, body, remaining)
        if response.status != 200:
            raise self.status_error(response.status, response.body)
        answer_length = response.headers.get(HEADER_LENGTH)
        try:
            decoded = decode_infer_response(
                response.body, int(answer_length) if answer_length else None
            )
        except (FailsoftError, ValueError) as error:
            raise UpstreamError(
                f"replica {self.name} sent an undecodable answer: {error}"
            ) from None
        return decoded.outputs

    def status_error(self, status: int, payload: bytes) -> FailsoftError:
        """The failure a non-200 answer means (a subclass knows its server's habits)."""
        return _status_error(self.name, status, payload)

    async def _request(
        self, method: str, suffix: str, headers: list[tuple[str, str]], body: bytes, seconds: float
    ) -> H1Response:
        assert self._pool is not None
        try:
            return await self._pool.request(
                method, self._prefix + self._model_path + suffix, headers, body, seconds
            )
        except PoolTimeout:
            raise DeadlineExceeded(
                f"replica {self.name} did not answer within the deadline"
            ) from None
        except PoolError as error:
            raise UpstreamError(f"replica {self.name}: {error}") from None

    async def health(self) -> bool:
        try:
            response = await self._request("GET", "/ready", [], b"", HEALTH_TIMEOUT_S)
        except FailsoftError:
            return False
        return response.status == 200

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
        for task in list(self._closing):
            await task


def _status_error(replica: str, status: int, payload: bytes) -> FailsoftError:
    try:
        message = str(orjson.loads(payload).get("error", ""))
    except (orjson.JSONDecodeError, AttributeError):
        message = payload[:200].decode("utf-8", "replace")
    # Caused by the request, so not charged to the replica (nor retried elsewhere).
    if status == 400:
        return BadRequest(message or "the replica rejected the input")
    if status == 404:
        return NotFound(message or f"replica {replica} does not know the model or version")
    if status == 413:
        return PayloadTooLarge(message or f"replica {replica} refused the body as too large")
    if status == 500:
        return ModelError(f"replica {replica} answered 500: {message}")
    return UpstreamError(f"replica {replica} answered {status}: {message}", status)
