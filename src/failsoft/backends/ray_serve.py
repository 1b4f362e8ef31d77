"""The ray backend: Ray Serve applications, reached through Serve's HTTP proxy
(or, for a gateway inside the Ray cluster, their deployment handles: ``via: handle``).

Each replica is one Serve application at ``address`` + its route prefix,
speaking the Open Inference Protocol (V2) under that prefix, as the app in
``failsoft.backends.ray_app`` does. The wire, the pooled client, deadlines
and the decoding are the http backend's; what differs is how Ray's proxy
answers when something in Ray breaks, which changes whose fault it is:

- A replica actor that dies mid-request (killed, out of memory, its node
  lost) comes back from the proxy as a bare ``500 Internal Server Error``,
  the same bytes as an exception the deployment did not catch. The app's own
  model errors are V2 error objects (``{"error": ...}``): only those are
  ``ModelError``, which attribution may find to be the input's fault; any
  other 5xx is Ray's and the replica's (``UpstreamError``), retried elsewhere.
- A 404 from the proxy means no application at that route (not deployed,
  deleted, being redeployed): the replica is missing, not the request wrong.
  failsoft builds every path itself, so no client input can cause one.
- 503 (no replica of the deployment ready, or its queue full) and 408 (the
  proxy's request_timeout_s) are the replica's, as in the http backend.

While Serve replaces a dead replica actor, the proxy holds requests for that
application until the new one is up (seconds), so a version served by Ray
should set ``per_try_timeout_ms``: an attempt stuck there is cut short and
retried on the other application, instead of waiting out the deadline.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import orjson

from failsoft.backends.http import HttpReplica
from failsoft.call import Call
from failsoft.errors import (
    BackendLoadError,
    DeadlineExceeded,
    FailsoftError,
    ModelError,
    UpstreamError,
)
from failsoft.protocol.types import InferRequest, Tensors
from failsoft.waiting import wait_at_most


class RayServeReplica(HttpReplica):
    """One Ray Serve application behind the Serve HTTP proxy."""

    def status_error(self, status: int, payload: bytes) -> FailsoftError:
        if status == 404:
            return UpstreamError(
                f"replica {self.name}: the Ray Serve proxy has no application at this route", 404
            )
        if status >= 500 and not _answered_by_the_app(payload):
            return UpstreamError(f"replica {self.name}: Ray Serve answered {status}", status)
        return super().status_error(status, payload)


def _answered_by_the_app(payload: bytes) -> bool:
    """True for a V2 error object: the deployment's code answered, not Ray."""
    try:
        message = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return False
    return isinstance(message, dict) and isinstance(message.get("error"), str)


HEALTH_TIMEOUT_S = 1.0


class RayHandleReplica:
    """One Serve application called through its deployment handle (``via: handle``).

    For a gateway that runs inside the Ray cluster: no HTTP, tensors travel as
    numpy arrays to the deployment's ``infer`` method (``ray_app.V2Model``).
    The process joins the cluster (``ray.init(address="auto")``) on start
    unless it is connected already. Whose fault: an exception the model raised
    comes back as a ``RayTaskError`` (a ``ModelError``); a dead or unreachable
    replica actor, or Serve refusing the call (back-pressure, no replica
    ready), is the replica's (``UpstreamError``).
    """

    def __init__(self, name: str, application: str) -> None:
        self.name = name
        self._application = application
        self._handle: Any = None

    @property
    def available(self) -> bool:
        return True

    async def start(self) -> None:
        try:
            await asyncio.to_thread(_join_cluster)
        except Exception as error:
            raise BackendLoadError(
                f"replica {self.name}: cannot join the Ray cluster (via: handle runs the "
                f"gateway inside it): {type(error).__name__}: {error}"
            ) from None

    def _connect(self) -> Any:
        """The application's handle, looked up on first use: it may be deployed after start."""
        if self._handle is None:
            from ray import serve

            _join_cluster()
            self._handle = serve.get_app_handle(self._application)
        return self._handle

    async def _call(self, method: str, argument: Any, seconds: float) -> Any:
        handle = self._handle or await asyncio.to_thread(self._connect)
        response = getattr(handle, method).remote(*argument)
        try:
            return await wait_at_most(_awaited(response), seconds)
        except asyncio.CancelledError:  # a hedge that lost: Ray need not finish it
            response.cancel()
            raise
        except TimeoutError:
            response.cancel()
            raise DeadlineExceeded(
                f"replica {self.name} did not answer within the deadline"
            ) from None

    async def infer(self, request: InferRequest, call: Call) -> Tensors:
        remaining = call.remaining()
        if remaining <= 0:
            raise DeadlineExceeded("deadline passed before the call to the replica")
        try:
            outputs = await self._call("infer", (request.inputs,), remaining)
        except FailsoftError:
            raise
        except Exception as error:
            raise _handle_error(self.name, error) from None
        if not isinstance(outputs, dict):
            raise UpstreamError(
                f"replica {self.name} answered {type(outputs).__name__}, not tensors"
            )
        return {str(name): np.asarray(value) for name, value in outputs.items()}

    async def health(self) -> bool:
        try:
            return bool(await self._call("ready", (), HEALTH_TIMEOUT_S))
        except Exception:
            return False

    async def close(self) -> None:
        return None


def _join_cluster() -> None:
    import ray

    if not ray.is_initialized():
        ray.init(address="auto", log_to_driver=False)


async def _awaited(response: Any) -> Any:
    return await response


def _handle_error(replica: str, error: Exception) -> FailsoftError:
    from ray.exceptions import RayActorError, RayTaskError
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

    if isinstance(error, BackPressureError | DeploymentUnavailableError):
        return UpstreamError(f"replica {replica}: Ray Serve refused the call: {error}", 503)
    if isinstance(error, RayTaskError) and not isinstance(error, RayActorError):
        return ModelError(f"replica {replica}: the model failed: {str(error)[:300]}")
    return UpstreamError(f"replica {replica}: {type(error).__name__}: {str(error)[:300]}")
