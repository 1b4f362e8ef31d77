"""The http backend: a remote Open Inference Protocol (V2) server per replica.

All replicas of a version share one aiohttp session (one keep-alive pool).
The request's remaining deadline bounds each call and is passed on to the
remote in the ``Failsoft-Timeout-Ms`` header, so a failsoft upstream can
give up when the caller already has. Failures are classified here, at the
source: connect errors, timeouts and 5xx are ``infra``; a remote 400 is the
client's ``data`` problem; an answer that cannot be decoded is ``logic``.
"""

from __future__ import annotations

import logging

import aiohttp
import orjson

from failsoft.call import Call
from failsoft.errors import (
    BadRequest,
    DeadlineExceeded,
    FailsoftError,
    ModelError,
    UpstreamError,
)
from failsoft.protocol.types import InferRequest, Tensors
from failsoft.protocol.v2 import decode_infer_response, encode_infer_request

log = logging.getLogger("failsoft.backends.http")

HEADER_LENGTH = "Inference-Header-Content-Length"


def new_session(pool_size: int) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(
        limit=pool_size, limit_per_host=pool_size, keepalive_timeout=30, ttl_dns_cache=300
    )
    return aiohttp.ClientSession(
        connector=connector,
        json_serialize=lambda value: orjson.dumps(value).decode(),
        skip_auto_headers=("User-Agent",),
        auto_decompress=False,
    )


def infer_path(model: str, version: str | None) -> str:
    if version:
        return f"/v2/models/{model}/versions/{version}/infer"
    return f"/v2/models/{model}/infer"


class HttpReplica:
    """One remote V2 server. ``base_url`` may change (a restarted worker)."""

    def __init__(
        self,
        name: str,
        base_url: str,
        session_holder: SessionHolder,
        remote_model: str,
        remote_version: str | None,
    ) -> None:
        self.name = name
        self.base_url = base_url
        self._sessions = session_holder
        self._path = infer_path(remote_model, remote_version)
        self._ready_path = (
            f"/v2/models/{remote_model}/versions/{remote_version}/ready"
            if remote_version
            else f"/v2/models/{remote_model}/ready"
        )

    @property
    def available(self) -> bool:
        return True

    async def start(self) -> None:
        self._sessions.get()

    async def infer(self, request: InferRequest, call: Call) -> Tensors:
        remaining = call.remaining()
        if remaining <= 0:
            raise DeadlineExceeded("deadline passed before the call to the replica")
        if request.raw is not None:
            body, header_length = request.raw, request.raw_header_length
        else:
            body, header_length = encode_infer_request(request)
        headers = {
            "Content-Type": "application/json",
            "X-Request-Id": call.request_id,
            "Failsoft-Timeout-Ms": str(max(1, int(remaining * 1000))),
        }
        if header_length is not None:
            headers[HEADER_LENGTH] = str(header_length)
        session = self._sessions.get()
        try:
            async with session.post(
                self.base_url + self._path,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=remaining),
            ) as response:
                payload = await response.read()
                status = response.status
                answer_header_length = response.headers.get(HEADER_LENGTH)
        except TimeoutError:
            raise DeadlineExceeded(
                f"replica {self.name} did not answer within the deadline"
            ) from None
        except aiohttp.ClientError as error:
            raise UpstreamError(f"replica {self.name}: {type(error).__name__}: {error}") from None
        if status != 200:
            raise _status_error(self.name, status, payload)
        try:
            decoded = decode_infer_response(
                payload, int(answer_header_length) if answer_header_length else None
            )
        except (FailsoftError, ValueError) as error:
            raise ModelError(f"replica {self.name} sent an undecodable answer: {error}") from None
        return decoded.outputs

    async def health(self) -> bool:
        session = self._sessions.get()
        try:
            async with session.get(
                self.base_url + self._ready_path, timeout=aiohttp.ClientTimeout(total=1.0)
            ) as response:
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def close(self) -> None:
        return None


def _status_error(replica: str, status: int, payload: bytes) -> FailsoftError:
    try:
        message = str(orjson.loads(payload).get("error", ""))
    except (orjson.JSONDecodeError, AttributeError):
        message = payload[:200].decode("utf-8", "replace")
    if status == 400:
        return BadRequest(message or "the replica rejected the input")
    return UpstreamError(f"replica {replica} answered {status}: {message}")


class SessionHolder:
    """Creates the shared session lazily, inside the running event loop."""

    def __init__(self, pool_size: int) -> None:
        self._pool_size = pool_size
        self._session: aiohttp.ClientSession | None = None

    def get(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = new_session(self._pool_size)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
