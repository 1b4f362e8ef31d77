"""Errors that cross module boundaries, each tagged with who caused the failure.

Every failure belongs to one class (DESIGN.md, "charge failures to who
caused them"), decided before any state machine sees it:

``replica``   a replica failed: connect error, reset, 5xx, crash, a timeout
              within the model's own deadline, garbage from one replica
``request``   the input itself breaks the model (a poison request): it fails
              on replicas that answer other inputs well
``client``    the client spent or cut short its own deadline, or sent a
              request the service refuses (404, 405, 413, 401)
``data``      the input breaks the input contract (400), or a feature constraint
              (the model's input_policy: 422, flagged or degraded; data/input_checks.py)
``overload``  shed by admission control, or over a tenant's quota

Only ``replica`` failures move breakers, ejection, balancer penalties and
limiter samples. The names of earlier releases map onto these in one place,
``LEGACY_CLASSES``: ``infra`` and ``logic`` were both replica failures (a
``logic`` failure that a second replica confirms is now a ``request`` one).

The HTTP status a client sees is derived from the error type, so the
protocol layer never guesses. Messages of 500 and 502 errors may hold a
model's exception text or a path: the server logs them and tells the client
only what failed and the request id.
"""

from __future__ import annotations

from enum import StrEnum


class FailureClass(StrEnum):
    REPLICA = "replica"
    REQUEST = "request"
    CLIENT = "client"
    DATA = "data"
    OVERLOAD = "overload"


LEGACY_CLASSES: dict[str, FailureClass] = {
    "infra": FailureClass.REPLICA,
    "logic": FailureClass.REPLICA,
}


class FailsoftError(Exception):
    """Base class: carries the HTTP status and the failure class."""

    status: int = 500
    failure_class: FailureClass = FailureClass.REPLICA

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(FailsoftError):
    """Malformed or contract-violating input (400)."""

    status = 400
    failure_class = FailureClass.DATA


class PayloadTooLarge(FailsoftError):
    """Request body over the configured limit (413)."""

    status = 413
    failure_class = FailureClass.CLIENT


class NotFound(FailsoftError):
    """Unknown model, version or route (404)."""

    status = 404
    failure_class = FailureClass.CLIENT


class MethodNotAllowed(FailsoftError):
    status = 405
    failure_class = FailureClass.CLIENT

    def __init__(self, message: str, allow: str) -> None:
        super().__init__(message)
        self.allow = allow


class Unauthorized(FailsoftError):
    status = 401
    failure_class = FailureClass.CLIENT


class NotReady(FailsoftError):
    """No replica can take the request right now (503)."""

    status = 503
    failure_class = FailureClass.REPLICA


class UpstreamError(FailsoftError):
    """A replica failed: connection refused or reset, 5xx, crashed worker (502).

    ``upstream_status`` is the replica's HTTP status when it answered one.
    """

    status = 502

    def __init__(self, message: str, upstream_status: int | None = None) -> None:
        super().__init__(message)
        self.upstream_status = upstream_status

    @property
    def refused(self) -> bool:
        """The replica said it is overloaded (429 or 503): what client-side throttling counts."""
        return self.upstream_status in (429, 503)


class DeadlineExceeded(FailsoftError):
    """The request's deadline passed before an answer arrived (504).

    A replica failure when the model's own deadline ran out; the client's
    when the client had shortened it, or it was spent before any attempt.
    """

    status = 504


class ModelError(FailsoftError):
    """The model raised, or answered outside its contract, on this input (500).

    A replica failure unless the same input fails on replicas that answer
    other inputs well: then it is a poison request (``PoisonRequest``).
    """

    status = 500


class ContractViolation(ModelError):
    """An answer that breaks the output contract; its message names the check."""


class PoisonRequest(FailsoftError):
    """An input that breaks the model on healthy replicas (422): the request's fault."""

    status = 422
    failure_class = FailureClass.REQUEST


class BackendLoadError(FailsoftError):
    """A model that cannot be loaded as configured (raised at start-up)."""


class Overloaded(FailsoftError):
    """Shed: over the concurrency limit, the queue full or the wait too long (503)."""

    status = 503
    failure_class = FailureClass.OVERLOAD

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Shed(Overloaded):
    """Refused by a model's adaptive concurrency limit: its local fallback tiers may answer."""


class QuotaExceeded(FailsoftError):
    """A tenant over its request or row quota (429)."""

    status = 429
    failure_class = FailureClass.OVERLOAD

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
