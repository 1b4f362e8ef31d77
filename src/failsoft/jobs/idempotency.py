"""``Idempotency-Key`` as in Stripe's API, for job submissions.

The same key with the same request names the same job; with another request it
is refused (422); while the first request with a key is still being accepted,
a second one is refused (409) rather than raced. Keys belong to a tenant: two
tenants may use the same key for different jobs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager

from failsoft.errors import BadRequest, FailsoftError, FailureClass, Overloaded

MAX_KEY_CHARS = 255
MAX_CREATING = 100_000  # keys being accepted at once in this process (bounded)


class KeyInUse(FailsoftError):
    status = 409
    failure_class = FailureClass.CLIENT


class KeyMismatch(FailsoftError):
    status = 422
    failure_class = FailureClass.CLIENT


def parse_key(raw: bytes | None) -> str | None:
    """The header's key, or None; BadRequest names the header when it is unusable."""
    if raw is None:
        return None
    try:
        key = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise BadRequest("header Idempotency-Key must be printable ASCII") from None
    if not key or len(key) > MAX_KEY_CHARS or not key.isprintable():
        raise BadRequest(
            f"header Idempotency-Key must be 1 to {MAX_KEY_CHARS} printable ASCII characters"
        )
    return key


def fingerprint(model: str, version: str | None, body: bytes, header_length: int | None) -> str:
    """What makes two requests "the same": the model, version and exact body."""
    digest = hashlib.sha256()
    for part in (model.encode(), (version or "").encode(), str(header_length).encode()):
        digest.update(len(part).to_bytes(4, "big"))
        digest.update(part)
    digest.update(body)
    return digest.hexdigest()


class Creating:
    """The keys whose first request is being accepted in this process right now."""

    def __init__(self) -> None:
        self._keys: set[tuple[str, str]] = set()

    @contextmanager
    def hold(self, tenant: str, key: str | None) -> Iterator[None]:
        if key is None:
            yield
            return
        scoped = (tenant, key)
        if scoped in self._keys:
            raise KeyInUse(
                "a request with this Idempotency-Key is still being accepted; retry shortly"
            )
        if len(self._keys) >= MAX_CREATING:
            raise Overloaded("too many requests with idempotency keys at once; retry shortly")
        self._keys.add(scoped)
        try:
            yield
        finally:
            self._keys.discard(scoped)


def mismatch(key: str) -> KeyMismatch:
    return KeyMismatch(
        "header Idempotency-Key: this key was already used with a different request "
        "(model, version or body); use a new key for a new request"
    )
