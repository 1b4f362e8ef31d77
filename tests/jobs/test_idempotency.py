"""Idempotency-Key semantics (Stripe's) and the Prefer header (RFC 7240)."""

from __future__ import annotations

import pytest

from failsoft.errors import BadRequest
from failsoft.jobs.idempotency import Creating, KeyInUse, fingerprint, mismatch, parse_key
from failsoft.jobs.service import wants_async


@pytest.mark.parametrize(
    ("value", "wanted"),
    [
        (b"respond-async", True),
        (b"Respond-Async", True),
        (b"return=minimal, respond-async; wait=10", True),
        (b"respond-async=1", True),
        (b"wait=10", False),
        (b"respond-asynchronously", False),
    ],
)
def test_prefer_respond_async(value: bytes, wanted: bool) -> None:
    assert wants_async([(b"content-type", b"application/json"), (b"prefer", value)]) is wanted


def test_no_prefer_header_means_synchronous() -> None:
    assert not wants_async([(b"content-type", b"application/json")])
    assert not wants_async(None)


def test_keys_are_checked_and_named() -> None:
    assert parse_key(None) is None
    assert parse_key(b" order-42 ") == "order-42"
    for bad in (b"", b"x" * 256, b"tab\there", "café".encode()):
        with pytest.raises(BadRequest, match="Idempotency-Key"):
            parse_key(bad)


def test_the_same_request_has_the_same_fingerprint() -> None:
    base = fingerprint("iris", None, b'{"inputs": []}', None)
    assert base == fingerprint("iris", None, b'{"inputs": []}', None)
    assert base != fingerprint("iris", "v2", b'{"inputs": []}', None)
    assert base != fingerprint("wine", None, b'{"inputs": []}', None)
    assert base != fingerprint("iris", None, b'{"inputs": [1]}', None)
    assert base != fingerprint("iris", None, b'{"inputs": []}', 14)
    # No ambiguity between where the model name ends and the version begins.
    assert fingerprint("ab", "c", b"", None) != fingerprint("a", "bc", b"", None)


def test_a_concurrent_duplicate_is_a_409_until_the_first_is_done() -> None:
    creating = Creating()
    with creating.hold("acme", "k1"):
        with pytest.raises(KeyInUse) as caught, creating.hold("acme", "k1"):
            pass
        assert caught.value.status == 409
        with (
            creating.hold("globex", "k1"),
            creating.hold("acme", "k2"),
            creating.hold("acme", None),
        ):
            pass  # another tenant, another key, or no key: no conflict
    with creating.hold("acme", "k1"):
        pass  # the first one finished (or failed): the key may be used again


def test_a_reused_key_is_a_422_that_says_why() -> None:
    error = mismatch("k1")
    assert error.status == 422
    assert "Idempotency-Key" in error.message
    assert "different request" in error.message
