"""The traffic split of a rollout: sticky buckets, targeting, shadow share."""

from __future__ import annotations

import pytest

from failsoft.routing.split import BUCKETS, Split, bucket

KEYS = [f"user-{n}" for n in range(20_000)]


def share(split: Split, tenant: str | None = None) -> float:
    return sum(split.choose(key, tenant) == split.candidate for key in KEYS) / len(KEYS)


def test_the_weight_is_the_candidates_share() -> None:
    for weight in (0, 500, 2_500, 5_000, BUCKETS):
        assert share(Split("r1", "v1", "v2", weight)) == pytest.approx(weight / BUCKETS, abs=0.01)


def test_a_user_who_is_in_stays_in_as_the_weight_grows() -> None:
    small, large = Split("r1", "v1", "v2", 1_000), Split("r1", "v1", "v2", 5_000)
    ins = [key for key in KEYS if small.choose(key, None) == "v2"]
    assert ins
    assert all(large.choose(key, None) == "v2" for key in ins)


def test_two_rollouts_pick_different_users() -> None:
    first, second = Split("r1", "v1", "v2", 1_000), Split("r2", "v1", "v2", 1_000)
    both = sum(first.choose(k, None) == "v2" and second.choose(k, None) == "v2" for k in KEYS)
    assert both / len(KEYS) == pytest.approx(0.01, abs=0.005)  # independent: 10% of 10%


def test_only_targeted_tenants_take_part() -> None:
    split = Split("r1", "v1", "v2", BUCKETS, tenants=frozenset({"acme"}))
    assert split.choose("user-1", "acme") == "v2"
    assert split.choose("user-1", "other") == "v1"
    assert split.choose("user-1", None) == "v1"


def test_a_shadow_share_mirrors_that_share_of_requests() -> None:
    split = Split("r1", "v1", "v2", 0, shadow=0.25)
    mirrored = sum(split.mirror(key, None) for key in KEYS) / len(KEYS)
    assert mirrored == pytest.approx(0.25, abs=0.01)
    assert not Split("r1", "v1", "v2").mirror("user-1", None)


def test_buckets_are_stable_and_spread() -> None:
    assert bucket("user-1", "r1") == bucket("user-1", "r1")
    assert {bucket(key, "r1") // 1_000 for key in KEYS} == set(range(10))


def test_a_weight_or_share_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="weight"):
        Split("r1", "v1", "v2", BUCKETS + 1)
    with pytest.raises(ValueError, match="shadow"):
        Split("r1", "v1", "v2", shadow=1.5)
