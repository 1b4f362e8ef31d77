"""The ray backend: Ray Serve applications, reached through Serve's HTTP proxy.

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

import orjson

from failsoft.backends.http import HttpReplica
from failsoft.errors import FailsoftError, UpstreamError


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
