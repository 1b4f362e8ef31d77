"""The ring of recent predictions: found by request id until its slot is taken."""

from __future__ import annotations

import random

import pytest

from failsoft.data.prediction_index import Predicted, PredictionIndex


def add(
    index: PredictionIndex,
    request_id: str,
    label: object = 1,
    *,
    tenant: str | None = None,
    time: float = 1.0,
    predictions: list[object] | None = None,
    segments: list[str] | None = None,
) -> None:
    rows = predictions if predictions is not None else [label]
    index.add(request_id, "m", "v1", tenant, time, rows, segments, "classification")


def test_a_prediction_is_found_with_what_was_added() -> None:
    index = PredictionIndex(4)
    add(index, "a", tenant="acme", time=7.5, predictions=[2, 0], segments=["x:<1", "x:>=1"])
    add(index, "b", label="setosa")
    a = index.find("a")
    assert a is not None
    assert (a.model, a.version, a.tenant, a.time) == ("m", "v1", "acme", 7.5)
    assert a.predictions == (2, 0)
    assert a.segments == ("x:<1", "x:>=1")
    b = index.find("b")
    assert b is not None
    assert b.predictions == ("setosa",)
    assert b.segments is None
    assert index.find("nobody") is None
    assert "a" in index
    assert "nobody" not in index


def test_the_oldest_leave_first_across_many_wraps() -> None:
    index = PredictionIndex(5)
    for i in range(23):
        add(index, f"r{i}", label=i)
        if i % 4 == 0:  # lookups between adds: the map is caught up piecewise
            assert index.find(f"r{i}") is not None
    assert len(index) == 5
    assert [rid for rid in (f"r{i}" for i in range(23)) if rid in index] == [
        f"r{i}" for i in range(18, 23)
    ]
    found = index.find("r20")
    assert found is not None
    assert found.predictions == (20,)


def test_the_map_stays_bounded_when_lookups_are_rare() -> None:
    index = PredictionIndex(10)
    for round_no in range(50):
        for i in range(7):
            add(index, f"r{round_no}-{i}")
        assert f"r{round_no}-6" in index
        assert len(index._slots) <= 2 * index.capacity


def test_a_repeated_id_is_the_newest_prediction_and_unjudged() -> None:
    index = PredictionIndex(4)
    add(index, "a", label=1)
    first = index.find("a")
    assert first is not None
    index.mark_judged(first)
    add(index, "a", label=2)
    again = index.find("a")
    assert again is not None
    assert again.predictions == (2,)
    assert not again.judged
    for i in range(3):  # the newer "a" is the last of the four to stay
        add(index, f"r{i}")
    assert index.find("a") is not None
    add(index, "r3")
    assert index.find("a") is None


def test_judged_is_kept_until_the_slot_is_taken() -> None:
    index = PredictionIndex(2)
    add(index, "a")
    found = index.find("a")
    assert found is not None
    assert not found.judged
    index.mark_judged(found)
    found = index.find("a")
    assert found is not None
    assert found.judged
    add(index, "b")
    add(index, "c")  # takes a's slot
    assert index.find("a") is None
    c = index.find("c")
    assert c is not None
    assert not c.judged


def test_a_capacity_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one"):
        PredictionIndex(0)


def test_a_map_made_from_a_snapshot_is_taken_and_caught_up() -> None:
    index = PredictionIndex(8)
    for i in range(11):
        add(index, f"r{i}", label=i)
    assert index.stale()  # never looked up: the next lookup would map every id
    snapshot = index.snapshot()
    for i in range(11, 14):  # adds go on while another thread maps the snapshot
        add(index, f"r{i}", label=i)
    index.install(PredictionIndex.map_of(snapshot), snapshot)
    assert not index.stale()
    present = [f"r{i}" for i in range(14) if f"r{i}" in index]
    assert present == [f"r{i}" for i in range(6, 14)]
    found = index.find("r12")
    assert found is not None
    assert found.predictions == (12,)


def test_an_older_snapshot_does_not_replace_a_newer_map() -> None:
    index = PredictionIndex(4)
    add(index, "a")
    old = index.snapshot()
    add(index, "b")
    assert "b" in index  # a lookup maps both
    index.install(PredictionIndex.map_of(old), old)
    assert "b" in index


FIELDS = ("request_id", "model", "version", "tenant", "time", "prediction", "segments", "kind")


def _state(index: PredictionIndex, ids: list[str]) -> list[object]:
    return [index.find(request_id) for request_id in ids]


@pytest.mark.parametrize("capacity", [1, 5, 16])
def test_adding_many_at_once_is_adding_them_one_by_one(capacity: int) -> None:
    # Chunks of every size, across the end of the ring, larger than the ring, with
    # lookups between them: the same predictions are found, in the same slots.
    rng = random.Random(7)
    one_by_one, at_once = PredictionIndex(capacity), PredictionIndex(capacity)
    ids: list[str] = []
    for chunk in range(40):
        predicted = Predicted()
        for _ in range(rng.randrange(0, 2 * capacity + 3)):
            request_id = f"r{rng.randrange(60)}"  # some ids come back
            ids.append(request_id)
            rows = [rng.randrange(3) for _ in range(rng.choice([1, 1, 2]))]
            tenant = rng.choice([None, "acme"])
            segments = rng.choice([None, ["x:<1"], ["x:<1", "x:>=1"]])
            args = ("m", f"v{chunk % 2}", tenant, float(chunk), rows, segments, "classification")
            one_by_one.add(request_id, *args)
            stored = dict(zip(FIELDS, (request_id, *args), strict=True), status=200)
            predicted.append_record(stored)
        at_once.add_many(predicted)
        if rng.random() < 0.3:
            found = _state(at_once, ids)
            assert found == _state(one_by_one, ids)
            for entry in found:  # judged flags are reset when a slot is taken
                if entry is not None and rng.random() < 0.5:
                    at_once.mark_judged(entry)
                    one_by_one.mark_judged(entry)
    assert len(at_once) == len(one_by_one) == min(capacity, len(ids))
    assert _state(at_once, ids) == _state(one_by_one, ids)
