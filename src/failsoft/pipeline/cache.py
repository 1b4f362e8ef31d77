"""Response cache: opt-in per model, with stale-if-error fallback.

Entries are keyed by ``(model, version, input_digest(inputs))``. An entry is
fresh for ``ttl_ms`` after it was stored: ``get_fresh`` serves it instead of
calling the model. It is then kept ``stale_ms`` longer for ``get_stale``, the
last tier of the fallback chain: when every replica has failed, an old answer
marked degraded beats an error. Past ``ttl_ms + stale_ms`` it is gone.

The cache is a bounded LRU (an ``OrderedDict``, most recently used last).
Expired entries are removed lazily: when looked up, and on each ``put``,
which first drops a few expired entries from the least recently used end
and then evicts live entries beyond ``max_entries``. ``len`` may therefore
include expired entries not yet reached. Outputs larger than
``max_entry_bytes`` are not stored. Stored arrays are read-only copies, and
lookups return a new dict, so neither the caller that stored an answer nor
one that received it can change what the next caller gets.

``input_digest`` compares bytes, not values: ``0.0`` and ``-0.0`` (or two
NaNs with different payloads) give different digests. That can only cost a
cache miss, never serve a wrong answer.
"""

from __future__ import annotations

import hashlib
import struct
from collections import OrderedDict
from dataclasses import dataclass
from typing import Annotated

import numpy as np
from pydantic import Field

from failsoft._options import StrictModel
from failsoft.clock import Clock
from failsoft.protocol.types import InferRequest, Tensors

CacheKey = tuple[str, str, bytes]
"""(model, version, input digest)."""

_LENGTH = struct.Struct("<Q")
_PURGE_PER_PUT = 4  # expired entries checked per put, to keep put O(1)


class CacheOptions(StrictModel):
    enabled: bool = False
    ttl_ms: Annotated[float, Field(gt=0.0)] = 60000.0
    stale_ms: Annotated[float, Field(ge=0.0)] = 3600000.0
    max_entries: Annotated[int, Field(ge=1, le=10_000_000)] = 10000
    max_entry_bytes: Annotated[int, Field(ge=1)] = 1048576
    max_total_bytes: Annotated[int, Field(ge=1)] = 256 * 1048576  # all entries together


def request_digest(request: InferRequest) -> bytes:
    """``input_digest`` of the request's inputs, computed once per request."""
    if request.digest is None:
        request.digest = input_digest(request.inputs)
    return request.digest


def input_digest(inputs: Tensors) -> bytes:
    """A 16-byte blake2b digest of the inputs' names, dtypes, shapes and contents.

    Every variable-length part is length-prefixed, so no two different inputs
    hash the same stream. Object (BYTES) arrays hash each element with its
    type and length; elements other than ``bytes`` and ``str`` raise TypeError
    (their bytes are not well defined, and a guess could serve a wrong answer).
    """
    hasher = hashlib.blake2b(digest_size=16)
    hasher.update(_LENGTH.pack(len(inputs)))
    for name in sorted(inputs):
        array = inputs[name]
        _update_framed(hasher, name.encode("utf-8"))
        _update_framed(hasher, _dtype_tag(array.dtype).encode("utf-8"))
        hasher.update(struct.pack(f"<{array.ndim + 1}Q", array.ndim, *array.shape))
        if array.dtype.hasobject:
            _update_objects(hasher, array)
        else:
            hasher.update(_raw_bytes(array))
    return hasher.digest()


def _dtype_tag(dtype: np.dtype) -> str:
    # A structured dtype's .str is only its size ("|V8"); its fields tell it apart.
    return dtype.str if dtype.names is None else str(dtype.descr)


def _raw_bytes(array: np.ndarray) -> memoryview:
    """The array's bytes in C order; copies only when the array is not contiguous."""
    # Viewed as uint8 because numpy refuses a typed buffer for some dtypes (datetime64).
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8).data


def _update_framed(hasher: hashlib.blake2b, data: bytes) -> None:
    hasher.update(_LENGTH.pack(len(data)))
    hasher.update(data)


def _update_objects(hasher: hashlib.blake2b, array: np.ndarray) -> None:
    for element in array.flat:
        if isinstance(element, bytes | bytearray):
            hasher.update(b"b")
            _update_framed(hasher, bytes(element))
        elif isinstance(element, str):
            hasher.update(b"s")
            _update_framed(hasher, element.encode("utf-8"))
        else:
            raise TypeError(
                f"cannot digest an object array element of type {type(element).__name__} "
                "(expected bytes or str)"
            )


def _size(array: np.ndarray) -> int:
    if not array.dtype.hasobject:
        return array.nbytes
    return array.nbytes + sum(len(e) for e in array.flat if isinstance(e, bytes | str))


def _frozen_copy(array: np.ndarray) -> np.ndarray:
    copy = np.array(array, copy=True)
    copy.flags.writeable = False
    return copy


@dataclass(slots=True)
class _Entry:
    outputs: Tensors
    stored_at: float
    size: int


class ResponseCache:
    """A bounded LRU of model answers with a fresh and a stale lifetime."""

    def __init__(self, options: CacheOptions, clock: Clock) -> None:
        self._options = options
        self._clock = clock
        self._ttl = options.ttl_ms / 1000.0
        self._lifetime = (options.ttl_ms + options.stale_ms) / 1000.0
        self._entries: OrderedDict[CacheKey, _Entry] = OrderedDict()
        self._bytes = 0
        self._hits = 0
        self._misses = 0
        self._stale_hits = 0
        self._evictions = 0
        self._expired = 0
        self._oversize = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get_fresh(self, key: CacheKey) -> Tensors | None:
        """The stored outputs if younger than the ttl (a hit); None otherwise (a miss)."""
        found = self._lookup(key)
        if found is None or found[1] >= self._ttl:
            self._misses += 1
            return None
        self._hits += 1
        return dict(found[0].outputs)

    def get_stale(self, key: CacheKey) -> tuple[Tensors, float] | None:
        """The stored outputs, fresh or stale, with their age in seconds; None once gone.

        Only successful stale lookups are counted (``stale_hits``): this is the
        fallback path, and its misses are the fallback chain's to report.
        """
        found = self._lookup(key)
        if found is None:
            return None
        self._stale_hits += 1
        entry, age = found
        return dict(entry.outputs), age

    def put(self, key: CacheKey, outputs: Tensors) -> None:
        """Store read-only copies of the outputs (nothing when disabled or oversize)."""
        if not self._options.enabled:
            return
        size = sum(_size(array) for array in outputs.values())
        if size > self._options.max_entry_bytes:
            self._oversize += 1
            return
        now = self._clock.now()
        self._remove(key)
        self._entries[key] = _Entry({n: _frozen_copy(a) for n, a in outputs.items()}, now, size)
        self._bytes += size
        self._purge_expired(now)
        while len(self._entries) > self._options.max_entries or (
            self._bytes > self._options.max_total_bytes and len(self._entries) > 1
        ):
            _, entry = self._entries.popitem(last=False)
            self._bytes -= entry.size
            self._evictions += 1

    def snapshot(self) -> dict[str, float]:
        return {
            "entries": float(len(self._entries)),
            "bytes": float(self._bytes),
            "hits": float(self._hits),
            "misses": float(self._misses),
            "stale_hits": float(self._stale_hits),
            "evictions": float(self._evictions),
            "expired": float(self._expired),
            "oversize": float(self._oversize),
        }

    def _lookup(self, key: CacheKey) -> tuple[_Entry, float] | None:
        """The live entry and its age, marked recently used; an expired one is dropped."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        age = self._clock.now() - entry.stored_at
        if age >= self._lifetime:
            self._remove(key)
            self._expired += 1
            return None
        self._entries.move_to_end(key)
        return entry, age

    def _purge_expired(self, now: float) -> None:
        for _ in range(_PURGE_PER_PUT):
            key, entry = next(iter(self._entries.items()))
            if now - entry.stored_at < self._lifetime:
                return
            self._remove(key)
            self._expired += 1

    def _remove(self, key: CacheKey) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= entry.size
