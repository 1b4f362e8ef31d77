"""The worker autoscaling policy, driven by hand-made limiter samples and explicit times."""

from __future__ import annotations

import itertools

import pytest
from pydantic import ValidationError

from failsoft.pipeline.autoscale import AutoscaleOptions, AutoscalePolicy, Decision, Sample

TICK = 0.1


class Feed:
    """Samples a policy every TICK seconds from a simple model of a limiter."""

    def __init__(self, policy: AutoscalePolicy, now: float = 0.0) -> None:
        self.policy = policy
        self.now = now
        self.shed = 0
        self.completed = 0
        self.decisions: list[tuple[float, Decision]] = []

    def run(
        self,
        seconds: float,
        *,
        in_flight: int,
        waiting: int = 0,
        limit: int = 8,
        rate: float = 0.0,
        shed_per_s: float = 0.0,
        rtt_ratio: float = 1.0,
        probing: bool = False,
        carry_out: bool = True,
    ) -> list[Decision]:
        """Feed ``seconds`` of samples; carry each decision out at once (``done``)."""
        made = []
        for _ in range(round(seconds / TICK)):
            self.now += TICK
            self.completed += round(rate * TICK)
            self.shed += round(shed_per_s * TICK)
            sample = Sample(
                in_flight, waiting, limit, self.shed, self.completed, rtt_ratio, probing
            )
            decision = self.policy.observe(self.now, sample)
            if decision is not None:
                made.append(decision)
                self.decisions.append((self.now, decision))
                if carry_out:
                    self.policy.done(self.now, decision.replicas)
        return made


def policy(cores: int = 2, **options: object) -> AutoscalePolicy:
    return AutoscalePolicy(AutoscaleOptions.model_validate(options), cores, 0.0)


def test_a_queue_building_at_the_limit_scales_up_before_any_shed() -> None:
    feed = Feed(policy(max_replicas=4))
    assert feed.run(10, in_flight=2, limit=8, rate=50) == []  # calm: nothing to do
    # The step: calls fill the limit and wait, none shed yet.
    made = feed.run(1.0, in_flight=8, waiting=3, limit=8, rate=50)
    assert [d.action for d in made] == ["up"]
    assert made[0].replicas == 2
    assert "queueing" in made[0].reason or "utilization" in made[0].reason
    assert feed.shed == 0


def test_one_shed_scales_up_at_once() -> None:
    feed = Feed(policy())
    feed.run(5, in_flight=1, rate=10)
    made = feed.run(0.2, in_flight=8, waiting=0, limit=8, rate=50, shed_per_s=10)
    assert made
    assert made[0].action == "up"
    assert made[0].reason == "requests shed"


def test_a_brief_queue_is_not_enough() -> None:
    feed = Feed(policy())
    feed.run(5, in_flight=1, rate=10)
    assert feed.run(0.1, in_flight=8, waiting=2, rate=10) == []  # one instant
    assert feed.run(2, in_flight=1, rate=10) == []


def test_scale_ups_wait_for_the_last_one_to_show_and_stop_at_max() -> None:
    feed = Feed(policy(max_replicas=3, up_cooldown_s=3, cpu_bound=False, min_gain=0))
    rates = iter([50.0, 100.0, 150.0, 150.0])
    for _ in range(4):
        feed.run(5, in_flight=8, waiting=5, rate=next(rates))
    ups = [d for _, d in feed.decisions if d.action == "up"]
    times = [t for t, d in feed.decisions if d.action == "up"]
    assert [d.replicas for d in ups] == [2, 3]
    assert feed.policy.replicas == 3  # never above max_replicas
    assert all(b - a >= 3 for a, b in itertools.pairwise(times))


def test_scale_down_only_after_the_cooldown_one_at_a_time() -> None:
    feed = Feed(policy(max_replicas=3, down_cooldown_s=30, min_gain=0))
    feed.policy.replicas = 3
    feed.policy.per_worker = 50.0  # measured while saturated, earlier
    feed.run(1, in_flight=8, waiting=4, rate=150)  # pressure at max: nothing changes
    assert feed.decisions == []
    assert feed.run(29, in_flight=1, limit=12, rate=20, carry_out=False) == []
    made = feed.run(2, in_flight=1, limit=12, rate=20)
    assert [(d.action, d.replicas) for d in made] == [("down", 2)]
    first_down = feed.now
    # The next one waits a whole cool-down after the last change.
    assert feed.run(28, in_flight=1, limit=12, rate=20) == []
    made = feed.run(3, in_flight=1, limit=12, rate=20)
    assert [(d.action, d.replicas) for d in made] == [("down", 1)]
    assert feed.now - first_down >= 30
    assert feed.run(60, in_flight=0, limit=12, rate=0) == []  # never below min_replicas


def test_no_scale_down_when_one_worker_fewer_would_be_too_busy() -> None:
    feed = Feed(policy(down_cooldown_s=5))
    feed.policy.replicas = 2
    feed.policy.per_worker = 1000.0  # the rate alone would allow it
    # utilization 0.4 now, 0.8 with one worker fewer: above scale_down_utilization 0.5
    assert feed.run(20, in_flight=4, limit=10, rate=100) == []


def test_a_declared_cpu_bound_model_never_exceeds_the_cores() -> None:
    feed = Feed(policy(cores=2, max_replicas=8, cpu_bound=True, min_gain=0))
    feed.run(30, in_flight=8, waiting=6, rate=100)
    assert feed.policy.replicas == 2
    assert feed.policy.cap == 2


def test_a_worker_that_adds_no_throughput_is_taken_back_and_capped() -> None:
    feed = Feed(policy(cores=64, max_replicas=8, up_cooldown_s=3, ceiling_hold_s=300))
    feed.run(2, in_flight=8, waiting=6, rate=100)  # 1 worker: 100/s, saturated
    assert feed.policy.replicas == 2
    feed.run(4, in_flight=8, waiting=6, rate=190)  # the 2nd added ~90%: kept
    assert feed.policy.replicas == 3
    made = feed.run(4, in_flight=8, waiting=6, rate=195)  # the 3rd added nothing
    assert [(d.action, d.replicas) for d in made] == [("down", 2)]
    assert "no throughput gain" in made[0].reason
    assert feed.policy.cap == 2
    feed.run(100, in_flight=8, waiting=6, rate=195)
    assert feed.policy.replicas == 2  # held at the ceiling while saturated
    feed.run(250, in_flight=8, waiting=6, rate=195)  # the hold ran out: it may try again
    assert any(d.action == "up" and d.replicas == 3 for t, d in feed.decisions if t > 300)


def test_a_scale_up_that_met_the_demand_is_kept() -> None:
    feed = Feed(policy(cores=64, max_replicas=4))
    feed.run(2, in_flight=8, waiting=6, rate=100)
    assert feed.policy.replicas == 2
    # No longer saturated: the rate could not rise further, yet the worker helped.
    assert feed.run(5, in_flight=2, limit=8, rate=110) == []
    assert feed.policy.replicas == 2


def test_nothing_is_decided_while_a_change_is_under_way() -> None:
    feed = Feed(policy())
    made = feed.run(2, in_flight=8, waiting=6, rate=50, carry_out=False)
    assert len(made) == 1  # the one in progress blocks any other
    feed.policy.failed(feed.now, 1)
    assert feed.policy.replicas == 1
    assert not feed.policy.busy


def test_options_are_checked_with_the_field_named() -> None:
    with pytest.raises(ValidationError, match="max_replicas"):
        AutoscaleOptions(min_replicas=3, max_replicas=2)
    with pytest.raises(ValidationError, match="scale_down_utilization"):
        AutoscaleOptions(scale_up_utilization=0.5, scale_down_utilization=0.6)


def test_latency_inflation_scales_up_while_the_queue_is_inside_the_workers() -> None:
    feed = Feed(policy())
    feed.run(5, in_flight=2, limit=32, rate=40, rtt_ratio=1.2)
    assert feed.decisions == []
    made = feed.run(1, in_flight=12, limit=32, rate=50, rtt_ratio=3.0)  # no limiter queue
    assert [d.action for d in made] == ["up"]
    assert "RTT" in made[0].reason


def test_a_min_rtt_probe_queueing_on_purpose_is_not_pressure() -> None:
    feed = Feed(policy())
    feed.run(5, in_flight=1, limit=4, rate=20)
    assert feed.run(2, in_flight=4, waiting=3, limit=4, rate=20, probing=True) == []


def test_scale_down_waits_until_one_worker_fewer_can_carry_the_served_rate() -> None:
    feed = Feed(policy(max_replicas=2, down_cooldown_s=10))
    feed.policy.replicas = 2
    feed.run(3, in_flight=8, waiting=4, rate=100)  # backlogged: 50/s per worker
    assert feed.policy.per_worker == pytest.approx(50, rel=0.05)
    # The limit says "idle" (1 in flight of 12), but 60/s is more than one worker serves.
    assert feed.run(40, in_flight=1, limit=12, rate=60) == []
    made = feed.run(15, in_flight=1, limit=12, rate=20)
    assert [(d.action, d.replicas) for d in made] == [("down", 1)]
    assert "serves saturated" in made[0].reason


def test_no_flapping_when_the_limit_looks_idle_but_the_rate_needs_the_workers() -> None:
    feed = Feed(policy(max_replicas=2, down_cooldown_s=5))
    feed.run(5, in_flight=1, limit=4, rate=20)
    made = feed.run(1.5, in_flight=4, waiting=3, limit=4, rate=50)  # 1 worker saturated
    assert [(d.action, d.replicas) for d in made] == [("up", 2)]
    # 60/s on 2 workers: 1.5 calls in flight under a limit of 11 looks idle; it is not.
    assert feed.run(30, in_flight=1, limit=11, rate=60) == []
    made = feed.run(10, in_flight=1, limit=11, rate=20)
    assert [(d.action, d.replicas) for d in made] == [("down", 1)]


def test_without_a_measure_of_capacity_only_an_idle_model_scales_down() -> None:
    feed = Feed(policy(down_cooldown_s=5))
    feed.policy.replicas = 3  # e.g. kept by an apply; never saw saturation
    assert feed.run(20, in_flight=1, limit=12, rate=20) == []
    made = feed.run(6, in_flight=0, limit=12, rate=0)  # idle: one down per cool-down
    assert [(d.action, d.replicas) for d in made] == [("down", 2)]
