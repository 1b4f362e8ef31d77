from __future__ import annotations

import heapq
import math
import random
from collections import Counter

import pytest
from pydantic import ValidationError

from failsoft.clock import ManualClock
from failsoft.routing import balancer as balancer_module
from failsoft.routing.balancer import (
    FULL_SCAN_MAX,
    INITIAL_EWMA_MS,
    TIE_MARGIN_MS,
    TIE_TOLERANCE,
    BalancerOptions,
    PeakEwmaBalancer,
)


def make(size: int, seed: int = 7, **options: float) -> tuple[PeakEwmaBalancer, ManualClock]:
    clock = ManualClock()
    balancer = PeakEwmaBalancer(size, BalancerOptions(**options), clock, random.Random(seed))
    return balancer, clock


def sample(balancer: PeakEwmaBalancer, index: int, seconds: float, ok: bool = True) -> None:
    balancer.started(index)
    balancer.finished(index, seconds, ok)


def ewma(balancer: PeakEwmaBalancer, index: int) -> float:
    return balancer.snapshot(index)["ewma_ms"]


async def simulate(
    balancer: PeakEwmaBalancer,
    clock: ManualClock,
    latencies: list[float],
    calls: int,
    concurrency: int,
) -> Counter[int]:
    """A closed loop: ``concurrency`` calls in flight, each taking its replica's latency."""
    eligible = range(len(latencies))
    in_flight: list[tuple[float, int, int]] = []
    picks: Counter[int] = Counter()
    for call in range(calls):
        if len(in_flight) == concurrency:
            done_at, _, done = heapq.heappop(in_flight)
            await clock.advance(done_at - clock.now())
            balancer.finished(done, latencies[done], True)
        index = balancer.pick(eligible)
        picks[index] += 1
        balancer.started(index)
        heapq.heappush(in_flight, (clock.now() + latencies[index], call, index))
    return picks


async def test_the_faster_replica_gets_most_of_the_traffic() -> None:
    balancer, clock = make(2)
    picks = await simulate(balancer, clock, [0.005, 0.050], calls=2000, concurrency=16)
    assert picks == Counter({0: 1973, 1: 27})
    assert picks[0] / 2000 > 0.8


async def test_traffic_follows_latency_across_several_replicas() -> None:
    balancer, clock = make(3)
    picks = await simulate(balancer, clock, [0.005, 0.020, 0.050], calls=2000, concurrency=16)
    assert picks == Counter({0: 1847, 1: 124, 2: 29})
    # Comparing all three, the fastest takes most calls until its queue makes it
    # dearer than a slower idle one; the slowest is left with little.
    assert picks[0] / 2000 > 0.8
    assert picks[2] / 2000 < 0.05


def test_of_two_the_lower_latency_one_wins() -> None:
    balancer, _ = make(2)
    sample(balancer, 0, 0.050)
    sample(balancer, 1, 0.005)
    assert {balancer.pick([0, 1]) for _ in range(100)} == {1}


def test_outstanding_calls_outweigh_lower_latency() -> None:
    balancer, _ = make(2)
    sample(balancer, 0, 0.010)
    sample(balancer, 1, 0.020)
    for _ in range(2):
        balancer.started(0)
    # 10 ms x (2 + 1) = 30 > 20 ms x 1
    assert balancer.pick([0, 1]) == 1
    balancer.cancelled(0)
    # 10 ms x 2 = 20: a tie, settled by the draw
    assert {balancer.pick([0, 1]) for _ in range(50)} == {0, 1}
    balancer.cancelled(0)
    assert balancer.pick([0, 1]) == 0


@pytest.mark.parametrize("size", [2, 3])  # the pair, and the full scan
def test_an_idle_replica_beats_a_busy_one_that_looks_alike(size: int) -> None:
    balancer, _ = make(size)
    balancer.started(0)  # 1 ms x 2 is within the tie of 1 ms, but a call is in flight
    if size == 3:
        balancer.started(2)
        balancer.started(2)
    assert {balancer.pick(range(size)) for _ in range(100)} == {1}


async def test_a_hung_replica_is_avoided_after_its_first_stuck_call() -> None:
    balancer, clock = make(3)
    for index in range(3):
        sample(balancer, index, 0.010)
    picks: Counter[int] = Counter()
    for _ in range(1000):
        index = balancer.pick(range(3))
        picks[index] += 1
        balancer.started(index)
        await clock.advance(0.010)
        if index != 0:  # replica 0 hangs: its calls never finish
            balancer.finished(index, 0.010, True)
    assert picks[0] == 1
    assert balancer.snapshot(0)["outstanding"] == 1.0


def test_a_failure_counts_as_the_penalty_so_fast_failures_do_not_attract() -> None:
    balancer, _ = make(2, failure_penalty_ms=1000.0)
    sample(balancer, 0, 0.001, ok=False)
    sample(balancer, 1, 0.050)
    assert ewma(balancer, 0) == 1000.0
    assert balancer.pick([0, 1]) == 1


def test_a_failure_slower_than_the_penalty_keeps_its_own_latency() -> None:
    balancer, _ = make(1, failure_penalty_ms=1000.0)
    sample(balancer, 0, 2.5, ok=False)
    assert ewma(balancer, 0) == 2500.0


async def test_peak_ewma_jumps_up_and_decays_down() -> None:
    balancer, clock = make(1, ewma_decay_ms=10000.0)
    assert ewma(balancer, 0) == INITIAL_EWMA_MS
    sample(balancer, 0, 0.100)
    assert ewma(balancer, 0) == pytest.approx(100.0)  # a peak replaces the estimate
    await clock.advance(10.0)  # one time constant
    balancer.started(0)
    balancer.finished(0, 0.010, True)
    keep = math.exp(-1.0)
    assert ewma(balancer, 0) == pytest.approx(100.0 * keep + 10.0 * (1.0 - keep))
    sample(balancer, 0, 0.500)
    assert ewma(balancer, 0) == pytest.approx(500.0)


async def test_the_estimate_decays_while_idle_but_not_while_calls_are_in_flight() -> None:
    balancer, clock = make(1, ewma_decay_ms=10000.0)
    sample(balancer, 0, 0.100)
    await clock.advance(20.0)
    assert ewma(balancer, 0) == pytest.approx(100.0 * math.exp(-2.0))
    balancer.started(0)
    assert ewma(balancer, 0) == pytest.approx(100.0)


async def test_a_replica_that_failed_once_is_probed_again_later() -> None:
    balancer, clock = make(2, ewma_decay_ms=10000.0)
    sample(balancer, 0, 0.010, ok=False)  # 1000 ms penalty
    sample(balancer, 1, 0.010)
    assert balancer.pick([0, 1]) == 1
    await clock.advance(60.0)  # both idle: 1000 x e^-6 = 2.5 ms against 10 x e^-6
    assert balancer.pick([0, 1]) == 1
    sample(balancer, 1, 0.010)  # replica 1 answers in 10 ms right now
    assert balancer.pick([0, 1]) == 0  # 2.5 ms: worth another try


def test_a_hedge_loser_can_only_raise_the_estimate() -> None:
    balancer, _ = make(1)
    sample(balancer, 0, 0.050)
    balancer.started(0)
    balancer.cancelled(0, elapsed=0.010)
    assert ewma(balancer, 0) == pytest.approx(50.0)
    balancer.started(0)
    balancer.cancelled(0, elapsed=0.200)
    assert ewma(balancer, 0) == pytest.approx(200.0)
    balancer.started(0)
    balancer.cancelled(0)
    assert balancer.snapshot(0) == {"ewma_ms": 200.0, "outstanding": 0.0, "weight": 1.0}


def test_outstanding_never_goes_below_zero() -> None:
    balancer, _ = make(1)
    balancer.cancelled(0)
    balancer.finished(0, 0.001, True)
    assert balancer.snapshot(0)["outstanding"] == 0.0


async def test_slow_start_ramps_the_weight_linearly() -> None:
    balancer, clock = make(2, slow_start_ms=10000.0, slow_start_min_weight=0.1)
    assert balancer.weight(0) == 1.0
    balancer.begin_slow_start(0)
    assert balancer.weight(0) == pytest.approx(0.1)
    await clock.advance(5.0)
    assert balancer.weight(0) == pytest.approx(0.55)
    await clock.advance(5.0)
    assert balancer.weight(0) == 1.0
    await clock.advance(100.0)
    assert balancer.weight(0) == 1.0
    assert balancer.weight(1) == 1.0


def test_slow_start_resets_the_estimate_to_the_median_of_the_others() -> None:
    balancer, _ = make(4)
    for index, seconds in enumerate([0.010, 0.020, 0.030]):
        sample(balancer, index, seconds)
    sample(balancer, 3, 0.001, ok=False)
    balancer.begin_slow_start(3)
    assert ewma(balancer, 3) == pytest.approx(20.0)


def test_slow_start_of_a_lone_replica_resets_to_the_initial_estimate() -> None:
    balancer, _ = make(1)
    sample(balancer, 0, 0.5)
    balancer.begin_slow_start(0)
    assert ewma(balancer, 0) == INITIAL_EWMA_MS


async def test_a_ramping_replica_gets_a_share_that_grows_with_its_weight() -> None:
    balancer, clock = make(2)  # slow start 10 s from weight 0.1
    balancer.begin_slow_start(0)
    early = sum(balancer.pick([0, 1]) == 0 for _ in range(2000)) / 2000
    await clock.advance(5.0)  # weight 0.55
    middle = sum(balancer.pick([0, 1]) == 0 for _ in range(2000)) / 2000
    await clock.advance(5.0)  # ramp over: an even split between equals
    late = sum(balancer.pick([0, 1]) == 0 for _ in range(2000)) / 2000
    assert 0.0 < early < 0.15
    assert early < middle < late
    assert 0.4 < late < 0.6


def test_slow_start_window_zero_disables_the_ramp() -> None:
    balancer, _ = make(2, slow_start_ms=0.0)
    sample(balancer, 1, 0.040)
    balancer.begin_slow_start(0)
    assert balancer.weight(0) == 1.0
    assert ewma(balancer, 0) == pytest.approx(40.0)


def test_a_single_eligible_replica_is_picked() -> None:
    balancer, _ = make(3)
    sample(balancer, 2, 5.0, ok=False)
    for _ in range(10):
        balancer.started(2)
    assert balancer.pick([2]) == 2


def test_ties_are_split_by_the_rng() -> None:
    balancer, _ = make(3, seed=11)
    picks = Counter(balancer.pick([0, 1, 2]) for _ in range(3000))
    assert picks == Counter({0: 1011, 1: 997, 2: 992})
    assert all(900 < count < 1100 for count in picks.values())


def test_costs_within_the_tolerance_are_a_tie_split_at_random() -> None:
    balancer, _ = make(2, seed=6)
    sample(balancer, 0, 0.0050)
    sample(balancer, 1, 0.0080)  # 8 ms <= 5 ms x 1.5 + 1 ms
    picks = Counter(balancer.pick([0, 1]) for _ in range(2000))
    assert picks == Counter({0: 996, 1: 1004})
    assert 900 < picks[0] < 1100


def test_a_cost_beyond_the_tolerance_is_not_a_tie() -> None:
    balancer, _ = make(2)
    sample(balancer, 0, 0.0050)
    sample(balancer, 1, 0.0090)  # 9 ms > 5 ms x 1.5 + 1 ms
    assert 5.0 * (1 + TIE_TOLERANCE) + TIE_MARGIN_MS < 9.0
    assert {balancer.pick([0, 1]) for _ in range(200)} == {0}
    assert {balancer.pick([1, 0]) for _ in range(200)} == {0}


def test_sub_millisecond_costs_within_the_margin_are_a_tie() -> None:
    balancer, _ = make(2)
    sample(balancer, 0, 0.0002)
    sample(balancer, 1, 0.0012)  # 1.2 ms <= 0.2 ms x 1.5 + 1 ms
    assert {balancer.pick([0, 1]) for _ in range(100)} == {0, 1}


def test_the_full_scan_splits_ties_and_passes_over_a_busy_replica() -> None:
    balancer, _ = make(3, seed=2)
    sample(balancer, 0, 0.0050)
    sample(balancer, 1, 0.0055)
    sample(balancer, 2, 0.0050)
    balancer.started(2)  # one call in flight: the full scan; replica 2 costs 10 ms
    picks = Counter(balancer.pick([0, 1, 2]) for _ in range(3000))
    assert picks == Counter({0: 1481, 1: 1519})
    assert 1350 < picks[0] < 1650


async def _one_call_at_a_time(balancer: PeakEwmaBalancer, clock: ManualClock) -> list[Counter[int]]:
    """100 calls/s for 30 s, one at a time: every replica answers in 1 ms, and every
    61st call in 1 to 5 ms, as real workers do now and then. Picks per second."""
    picks = []
    for call in range(3000):
        index = balancer.pick([0, 1])
        picks.append(index)
        balancer.started(index)
        seconds = 0.001 + 0.001 * (call * 7 % 5) if call % 61 == 0 else 0.001
        await clock.advance(seconds)
        balancer.finished(index, seconds, True)
        await clock.advance(0.010 - seconds)
    return [Counter(picks[start : start + 100]) for start in range(0, 3000, 100)]


async def test_at_low_concurrency_alike_replicas_both_get_calls_every_second() -> None:
    balancer, clock = make(2, seed=9)
    seconds = await _one_call_at_a_time(balancer, clock)
    assert min(min(second[0], second[1]) for second in seconds) > 0
    assert sum(seconds, Counter()) == Counter({0: 1521, 1: 1479})


async def test_without_the_tie_one_replica_takes_every_call_for_seconds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Why the tie exists: the lower of two peak estimates wins every idle pick."""
    monkeypatch.setattr(balancer_module, "_TIE_FACTOR", 1.0)
    monkeypatch.setattr(balancer_module, "TIE_MARGIN_MS", 0.0)
    balancer, clock = make(2, seed=9)
    seconds = await _one_call_at_a_time(balancer, clock)
    assert sum(1 for second in seconds if min(second[0], second[1]) == 0) == 19


def test_more_replicas_than_the_full_scan_are_drawn_in_pairs() -> None:
    size = FULL_SCAN_MAX + 2
    balancer, _ = make(size, seed=3)
    for index in range(size):
        sample(balancer, index, 0.001 * 3**index)  # each 3 times the last: no ties
    picks = Counter(balancer.pick(list(range(size))) for _ in range(2000))
    # Two choices: the slowest replica loses every pair it is drawn into, and the
    # fastest wins every pair it is drawn into (2 in every n draws).
    assert size - 1 not in picks
    assert 0.15 < picks[0] / 2000 < 0.25


def test_pick_draws_a_distinct_pair() -> None:
    balancer, _ = make(2)
    sample(balancer, 0, 0.001)
    sample(balancer, 1, 0.005)
    # Were the same replica drawn twice, replica 1 would sometimes be picked.
    assert {balancer.pick([0, 1]) for _ in range(200)} == {0}


def test_an_empty_eligible_set_raises() -> None:
    balancer, _ = make(2)
    with pytest.raises(ValueError, match="no eligible replica"):
        balancer.pick([])


def test_checked_methods_reject_unknown_indices() -> None:
    balancer, _ = make(2)
    with pytest.raises(IndexError):
        balancer.snapshot(2)
    with pytest.raises(IndexError):
        balancer.begin_slow_start(-1)


def test_a_balancer_needs_a_replica() -> None:
    with pytest.raises(ValueError, match="at least one replica"):
        make(0)


@pytest.mark.parametrize(
    "options",
    [
        {"ewma_decay_ms": 0.0},
        {"failure_penalty_ms": -1.0},
        {"slow_start_ms": -1.0},
        {"slow_start_min_weight": 0.0},
        {"slow_start_min_weight": 1.5},
        {"ewma_decay_ms": math.inf},
        {"unknown": 1.0},
    ],
)
def test_invalid_options_are_rejected(options: dict[str, float]) -> None:
    with pytest.raises(ValidationError):
        BalancerOptions(**options)
