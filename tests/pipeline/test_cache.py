from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from pydantic import ValidationError

from failsoft.clock import ManualClock
from failsoft.pipeline.cache import CacheOptions, ResponseCache, input_digest
from failsoft.protocol.types import Tensors


class SteppedClock(ManualClock):
    """A ManualClock that sync tests can move without an event loop."""

    def step(self, seconds: float) -> None:
        self._now += seconds


def key(name: str = "a") -> tuple[str, str, bytes]:
    return ("model", "1", input_digest({"x": np.frombuffer(name.encode(), np.uint8)}))


def answer(value: float = 1.0) -> Tensors:
    return {"y": np.full(4, value, np.float32)}


def make_cache(clock: ManualClock | None = None, **fields: object) -> ResponseCache:
    options = CacheOptions.model_validate({"enabled": True, **fields})
    return ResponseCache(options, clock or ManualClock())


# Options


@pytest.mark.parametrize(
    "fields",
    [
        {"ttl_ms": 0.0},
        {"stale_ms": -1.0},
        {"max_entries": 0},
        {"max_entries": 10_000_001},
        {"max_entry_bytes": 0},
        {"size": 10},
    ],
)
def test_invalid_options_are_rejected(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        CacheOptions.model_validate(fields)


# input_digest

dtypes = st.one_of(
    hnp.integer_dtypes(), hnp.floating_dtypes(), hnp.boolean_dtypes(), hnp.byte_string_dtypes()
)
arrays = dtypes.flatmap(lambda dtype: hnp.arrays(dtype, hnp.array_shapes(min_dims=0)))
names = st.text(min_size=1, max_size=8)
tensor_dicts = st.dictionaries(names, arrays, min_size=1, max_size=3)


def copied(inputs: Tensors) -> Tensors:
    return {name: array.copy() for name, array in reversed(inputs.items())}


@given(tensor_dicts)
def test_equal_inputs_give_equal_digests(inputs: Tensors) -> None:
    digest = input_digest(inputs)
    assert len(digest) == 16
    assert input_digest(copied(inputs)) == digest


@given(tensor_dicts, st.data())
def test_a_changed_value_changes_the_digest(inputs: Tensors, data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(sorted(inputs)))
    array = inputs[name]
    if array.size == 0:
        return
    changed = copied(inputs)
    raw = bytearray(changed[name].tobytes())
    position = data.draw(st.integers(0, len(raw) - 1))
    raw[position] ^= 0xFF
    changed[name] = np.frombuffer(bytes(raw), array.dtype).reshape(array.shape)
    assert input_digest(changed) != input_digest(inputs)


@given(tensor_dicts, st.data())
def test_a_changed_shape_changes_the_digest(inputs: Tensors, data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(sorted(inputs)))
    changed = copied(inputs)
    changed[name] = changed[name].reshape((*changed[name].shape, 1))
    assert input_digest(changed) != input_digest(inputs)


@given(tensor_dicts, st.data())
def test_a_changed_dtype_changes_the_digest(inputs: Tensors, data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(sorted(inputs)))
    changed = copied(inputs)
    # Same shape and bytes, other dtype: only the dtype tells them apart.
    changed[name] = changed[name].view(np.dtype(("V", changed[name].dtype.itemsize)))
    assert input_digest(changed) != input_digest(inputs)


@given(tensor_dicts, names)
def test_a_changed_name_changes_the_digest(inputs: Tensors, new_name: str) -> None:
    old_name = sorted(inputs)[0]
    if new_name in inputs:
        return
    changed = copied(inputs)
    changed[new_name] = changed.pop(old_name)
    assert input_digest(changed) != input_digest(inputs)


def test_views_digest_like_their_contiguous_copies() -> None:
    base = np.arange(24, dtype=np.float64).reshape(4, 6)
    view = base[:, ::2]
    assert input_digest({"x": view}) == input_digest({"x": np.ascontiguousarray(view)})
    assert input_digest({"x": base.T}) == input_digest({"x": base.T.copy()})


def test_byte_order_is_part_of_the_dtype() -> None:
    little = np.arange(3, dtype="<i4")
    assert input_digest({"x": little}) != input_digest({"x": little.astype(">i4")})


def test_bytes_elements_are_framed() -> None:
    def digest(*elements: bytes) -> bytes:
        return input_digest({"x": np.array(elements, dtype=object)})

    assert digest(b"ab", b"c") != digest(b"a", b"bc")
    assert digest(b"ab", b"c") == digest(b"ab", b"c")
    assert input_digest({"x": np.array([b"a"], object)}) != input_digest(
        {"x": np.array(["a"], object)}
    )


def test_names_and_contents_do_not_run_together() -> None:
    one = {"ab": np.array([1], np.uint8), "c": np.array([2], np.uint8)}
    other = {"a": np.array([1], np.uint8), "bc": np.array([2], np.uint8)}
    assert input_digest(one) != input_digest(other)


def test_unknown_object_elements_are_refused() -> None:
    with pytest.raises(TypeError, match="object array element of type int"):
        input_digest({"x": np.array([1, 2], dtype=object)})


# ResponseCache


def test_put_then_get_fresh() -> None:
    cache = make_cache()
    cache.put(key(), answer(2.0))
    got = cache.get_fresh(key())
    assert got is not None
    np.testing.assert_array_equal(got["y"], answer(2.0)["y"])
    assert cache.get_fresh(key("other")) is None


def test_disabled_cache_stores_nothing() -> None:
    cache = ResponseCache(CacheOptions(), ManualClock())
    cache.put(key(), answer())
    assert len(cache) == 0
    assert cache.get_fresh(key()) is None


async def test_fresh_then_stale_then_gone() -> None:
    clock = ManualClock()
    cache = make_cache(clock, ttl_ms=1000.0, stale_ms=5000.0)
    cache.put(key(), answer())
    await clock.advance(0.5)
    assert cache.get_fresh(key()) is not None
    stale = cache.get_stale(key())
    assert stale is not None
    assert stale[1] == pytest.approx(0.5)
    await clock.advance(1.0)  # 1.5 s: past the ttl, within the stale time
    assert cache.get_fresh(key()) is None
    stale = cache.get_stale(key())
    assert stale is not None
    np.testing.assert_array_equal(stale[0]["y"], answer()["y"])
    assert stale[1] == pytest.approx(1.5)
    await clock.advance(4.5)  # 6 s: past ttl + stale
    assert cache.get_stale(key()) is None
    assert len(cache) == 0


async def test_zero_stale_time_means_no_stale_answers() -> None:
    clock = ManualClock()
    cache = make_cache(clock, ttl_ms=1000.0, stale_ms=0.0)
    cache.put(key(), answer())
    await clock.advance(1.0)
    assert cache.get_stale(key()) is None


async def test_put_again_restarts_the_ttl() -> None:
    clock = ManualClock()
    cache = make_cache(clock, ttl_ms=1000.0)
    cache.put(key(), answer(1.0))
    await clock.advance(0.9)
    cache.put(key(), answer(2.0))
    await clock.advance(0.9)
    got = cache.get_fresh(key())
    assert got is not None
    assert got["y"][0] == 2.0
    assert len(cache) == 1


def test_least_recently_used_is_evicted_first() -> None:
    cache = make_cache(max_entries=3)
    for name in "abc":
        cache.put(key(name), answer())
    assert cache.get_fresh(key("a")) is not None  # a is now the most recent
    cache.put(key("d"), answer())
    assert cache.get_fresh(key("b")) is None
    assert [cache.get_fresh(key(n)) is not None for n in "acd"] == [True, True, True]
    cache.put(key("e"), answer())  # order is now a, c, d: a goes
    assert cache.get_fresh(key("a")) is None
    assert len(cache) == 3
    assert cache.snapshot()["evictions"] == 2


def test_stale_lookups_also_mark_recently_used() -> None:
    cache = make_cache(max_entries=2)
    cache.put(key("a"), answer())
    cache.put(key("b"), answer())
    assert cache.get_stale(key("a")) is not None
    cache.put(key("c"), answer())
    assert cache.get_stale(key("a")) is not None
    assert cache.get_stale(key("b")) is None


def test_expired_entries_go_before_live_ones_when_full() -> None:
    clock = SteppedClock()
    cache = make_cache(clock, max_entries=2, ttl_ms=1000.0, stale_ms=0.0)
    cache.put(key("old"), answer())
    clock.step(0.5)
    cache.put(key("live"), answer())
    clock.step(0.6)  # old has expired, live has not
    cache.put(key("new"), answer())
    assert cache.get_fresh(key("live")) is not None
    snapshot = cache.snapshot()
    assert (snapshot["expired"], snapshot["evictions"]) == (1.0, 0.0)


def test_oversize_outputs_are_not_cached() -> None:
    cache = make_cache(max_entry_bytes=16)
    cache.put(key("fits"), {"y": np.zeros(4, np.float32)})
    cache.put(key("big"), {"y": np.zeros(5, np.float32)})
    cache.put(key("text"), {"y": np.array([b"x" * 100], dtype=object)})
    assert cache.get_fresh(key("fits")) is not None
    assert cache.get_fresh(key("big")) is None
    assert cache.get_fresh(key("text")) is None
    assert cache.snapshot()["oversize"] == 2


def test_stored_arrays_are_read_only_copies() -> None:
    cache = make_cache()
    outputs = answer(1.0)
    cache.put(key(), outputs)
    outputs["y"][0] = 99.0  # the caller's array changes; the cached one must not
    got = cache.get_fresh(key())
    assert got is not None
    assert got["y"][0] == 1.0
    with pytest.raises(ValueError, match="read-only"):
        got["y"][0] = 5.0
    got["z"] = np.zeros(1)  # a caller's dict is its own
    again = cache.get_fresh(key())
    assert again is not None
    assert set(again) == {"y"}


async def test_counters() -> None:
    clock = ManualClock()
    cache = make_cache(clock, ttl_ms=1000.0, max_entries=1)
    assert cache.get_fresh(key("a")) is None
    cache.put(key("a"), answer())
    assert cache.get_fresh(key("a")) is not None
    assert cache.get_fresh(key("a")) is not None
    await clock.advance(2.0)
    assert cache.get_fresh(key("a")) is None
    assert cache.get_stale(key("a")) is not None
    assert cache.get_stale(key("missing")) is None
    cache.put(key("b"), answer())
    assert cache.snapshot() == {
        "entries": 1.0,
        "bytes": 16.0,
        "hits": 2.0,
        "misses": 2.0,
        "stale_hits": 1.0,
        "evictions": 1.0,
        "expired": 0.0,
        "oversize": 0.0,
    }


def test_total_bytes_are_bounded_by_evicting_the_least_recently_used() -> None:
    cache = ResponseCache(
        CacheOptions(enabled=True, max_total_bytes=2 * 800, max_entry_bytes=1000), ManualClock()
    )
    for index in range(3):  # 100 float64 = 800 bytes each
        cache.put(("m", "v1", bytes([index])), {"y": np.zeros(100)})
    assert len(cache) == 2
    assert cache.get_fresh(("m", "v1", bytes([0]))) is None
    assert cache.get_fresh(("m", "v1", bytes([2]))) is not None
    assert cache.snapshot()["bytes"] <= 1600
