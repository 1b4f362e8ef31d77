"""Errors that cross module boundaries, each tagged with its failure class.

Failures are classified at the source (DESIGN.md): ``infra`` (connect,
timeout, 5xx, crash), ``data`` (bad input), ``logic`` (model error, output
contract violated) and ``overload`` (shed). The HTTP status a client sees is
derived from the error type, so the protocol layer never guesses.
"""

from __future__ import annotations

from enum import StrEnum


class FailureClass(StrEnum):
    INFRA = "infra"
    DATA = "data"
    LOGIC = "logic"
    OVERLOAD = "overload"


class FailsoftError(Exception):
    """Base class: carries the HTTP status and the failure class."""

    status: int = 500
    failure_class: FailureClass = FailureClass.LOGIC

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
    failure_class = FailureClass.DATA


class NotFound(FailsoftError):
    """Unknown model, version or route (404)."""

    status = 404
    failure_class = FailureClass.DATA


class MethodNotAllowed(FailsoftError):
    status = 405
    failure_class = FailureClass.DATA

    def __init__(self, message: str, allow: str) -> None:
        super().__init__(message)
        self.allow = allow


class Unauthorized(FailsoftError):
    status = 401
    failure_class = FailureClass.DATA


class NotReady(FailsoftError):
    """No replica can take the request right now (503)."""

    status = 503
    failure_class = FailureClass.INFRA


class UpstreamError(FailsoftError):
    """A replica failed: connection refused or reset, 5xx, crashed worker (502)."""

    status = 502
    failure_class = FailureClass.INFRA


class DeadlineExceeded(FailsoftError):
    """The request's deadline passed before an answer arrived (504)."""

    status = 504
    failure_class = FailureClass.INFRA


class ModelError(FailsoftError):
    """The model itself raised, or answered outside its contract (500)."""

    status = 500
    failure_class = FailureClass.LOGIC


class BackendLoadError(FailsoftError):
    """A model that cannot be loaded as configured (raised at start-up)."""


class Overloaded(FailsoftError):
    """Shed: over the concurrency limit, the queue full or the wait too long (503)."""

    status = 503
    failure_class = FailureClass.OVERLOAD

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class QuotaExceeded(FailsoftError):
    """A tenant over its request or row quota (429)."""

    status = 429
    failure_class = FailureClass.OVERLOAD

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
