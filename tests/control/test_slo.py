"""The SLO engine on the injected clock, fed through the real event bus.

Requests are ``RequestFinished`` events emitted on an ``EventBus`` the way the
server emits them; ``Operate`` judges the burn rates on its own timer, which a
ManualClock drives. The acceptance checks: a total outage at 10 req/s against
99.9 % pages within 2 minutes of the first failure; a 60 s blip of 10 % errors
at 1 req/s pages nobody.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from failsoft.clock import ManualClock
from failsoft.config import Config, ConfigError, parse_config
from failsoft.control.burn import BurnAlert, prometheus_rules
from failsoft.control.incidents import IncidentChanged
from failsoft.control.operate import Operate
from failsoft.control.slo import rule_subjects
from failsoft.errors import FailureClass
from failsoft.observe.events import Event, EventBus, RequestFinished

EPOCH = 1_800_000_000.0


def config(**slo: Any) -> Config:
    python = {"backend": "python", "function": "tests._runtime_models:healthy"}
    model = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
        "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]}],
        "versions": {"v1": python},
        "objective_pct": 99.9,
        "slo": slo,
    }
    return parse_config({"models": {"iris": model}})


class Rig:
    """A bus, an Operate judging on a ManualClock, and what came out of the bus."""

    def __init__(self, cfg: Config) -> None:
        self.clock = ManualClock(EPOCH)
        self.bus = EventBus()
        self.operate = Operate(cfg, self.bus, self.clock, None, wall=self.clock.now)
        self.alerts: list[tuple[float, BurnAlert]] = []
        self.incidents: list[IncidentChanged] = []
        self.bus.subscribe(self._seen, (BurnAlert, IncidentChanged))

    def _seen(self, event: Event) -> None:
        if isinstance(event, BurnAlert):
            self.alerts.append((self.clock.now(), event))
        elif isinstance(event, IncidentChanged):
            self.incidents.append(event)

    async def traffic(
        self,
        seconds: int,
        rate: int,
        fail_every: int = 0,
        *,
        degraded: bool = False,
        step: int = 1,
    ) -> None:
        """``rate`` requests a second for ``seconds``; every ``fail_every``-th one fails.

        ``step``: seconds between judgements (60 for long histories: the buckets are
        minutes, so only the timer's resolution changes)."""
        sent = 0
        for _ in range(seconds // step):
            for _ in range(rate * step):
                sent += 1
                failed = fail_every and sent % fail_every == 0
                self.bus.emit(
                    RequestFinished(
                        "iris",
                        "v1",
                        503 if failed else 200,
                        FailureClass.REPLICA if failed else None,
                        0.004,
                        "v1/0",
                        degraded,
                    )
                )
            await self.clock.advance(float(step))

    def pages(self) -> list[tuple[float, BurnAlert]]:
        return [(at, a) for at, a in self.alerts if a.severity == "page" and a.firing]


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    made = Rig(config())
    made.operate.start()
    yield made
    await made.operate.close()


async def test_a_total_outage_at_10_rps_pages_within_two_minutes(rig: Rig) -> None:
    await rig.traffic(3600, 10)  # an hour of good traffic: the long window is full
    assert rig.alerts == []
    first_failure = rig.clock.now()
    await rig.traffic(180, 10, fail_every=1)
    pages = rig.pages()
    assert pages, "no page within 3 minutes of a total outage"
    paged_after = pages[0][0] - first_failure
    assert paged_after <= 120, f"paged {paged_after:.0f} s after the first failure"
    assert pages[0][1].rule in ("1h/5m 14.4x", "6h/30m 6x")
    # The page opened an incident, cause infra (the failures were replica failures).
    opened = [c for c in rig.incidents if c.what == "opened"]
    assert [(c.model, c.cause) for c in opened] == [("iris", "infra")]
    row = next(r for r in rig.operate.slo_status()["slos"] if r["objective"] == "availability")
    assert row["burn"]["5m"] > 14.4
    assert row["alerts"]


async def test_an_outage_from_a_cold_start_pages_once_min_events_are_seen(rig: Rig) -> None:
    first_failure = rig.clock.now()
    await rig.traffic(60, 10, fail_every=1)
    pages = rig.pages()
    assert pages
    assert pages[0][0] - first_failure <= 20


async def test_a_60_s_blip_of_10_percent_errors_at_1_rps_pages_nobody() -> None:
    rig = Rig(config())
    await rig.traffic(3 * 86_400, 1, step=60)  # three days: every window is full
    rig.operate.start()  # judging every 5 s from here on
    await rig.traffic(60, 1, fail_every=10)  # 6 failures in 60 s: 10 %
    await rig.traffic(3600, 1)
    assert rig.pages() == []
    assert [a for _, a in rig.alerts if a.firing] == []  # not even a ticket
    row = rig.operate.slo_status()["slos"][0]
    assert row["bad"] == 6
    assert row["events"] == 3 * 86_400 + 3660
    assert 0.9 < row["budget_left"] < 1.0
    assert rig.incidents == []
    await rig.operate.close()


async def test_the_blip_alone_with_an_hour_of_history_pages_nobody(rig: Rig) -> None:
    await rig.traffic(3600, 1)
    await rig.traffic(60, 1, fail_every=10)
    await rig.traffic(3600, 1)
    assert rig.pages() == []  # a ticket may fire: the 3-day window holds two hours only


async def test_three_errors_on_a_quiet_model_page_nobody(rig: Rig) -> None:
    for index in range(50):  # 50 requests in an hour, 3 of them failed: 6 %
        failed = index in (10, 11, 12)
        rig.bus.emit(
            RequestFinished(
                "iris",
                "v1",
                503 if failed else 200,
                FailureClass.REPLICA if failed else None,
                0.004,
            )
        )
        await rig.clock.advance(72.0)
    assert rig.pages() == []


async def test_the_alert_clears_when_the_burn_stops(rig: Rig) -> None:
    await rig.traffic(600, 10)
    await rig.traffic(120, 10, fail_every=1)
    assert rig.pages()
    await rig.traffic(900, 10)  # the 5-minute window is clean again
    cleared = [a for _, a in rig.alerts if a.rule == "1h/5m 14.4x" and not a.firing]
    assert cleared


async def test_quality_and_latency_objectives() -> None:
    made = Rig(config(quality_pct=99.0, latency_ms=2, latency_pct=99.0))
    await made.traffic(100, 10, degraded=True)
    rows = {r["objective"]: r for r in made.operate.slo_status()["slos"]}
    assert set(rows) == {"availability", "quality", "latency"}
    assert rows["availability"]["bad"] == 0
    assert rows["availability"]["budget_left"] == 1.0
    assert rows["quality"]["bad"] == 1000  # every answer degraded
    assert rows["quality"]["budget_left"] < 0
    assert rows["latency"]["bad"] == 1000  # 4 ms > 2 ms


async def test_requests_refused_for_their_own_sake_are_no_events(rig: Rig) -> None:
    for status, failure in (
        (400, FailureClass.DATA),
        (429, FailureClass.OVERLOAD),
        (422, FailureClass.REQUEST),
        (504, FailureClass.CLIENT),
    ):
        rig.bus.emit(RequestFinished("iris", "v1", status, failure, 0.01))
    rig.bus.emit(RequestFinished("iris", "v1", 503, FailureClass.OVERLOAD, 0.01))
    row = rig.operate.slo_status()["slos"][0]
    assert (row["events"], row["bad"]) == (1, 1)


def test_prometheus_rules_name_every_window_and_objective() -> None:
    text = prometheus_rules(Operate(config(), EventBus(), ManualClock(), None).book.subjects())
    assert "record: failsoft_slo:error_ratio:rate5m" in text
    assert "record: failsoft_slo:error_ratio:rate3d" in text
    assert "alert: FailsoftSLOBurnAvailabilityPage1h" in text
    assert ">= (14.4 * 0.001)" in text
    assert ">= (1 * 0.001)" in text
    assert "severity: ticket" in text
    accuracy = prometheus_rules(rule_subjects(config(accuracy_pct=95).models))
    assert "alert: FailsoftSLOBurnAccuracyPage1h" in accuracy
    assert ">= (14.4 * 0.05)" in accuracy


async def test_a_series_per_tenant_when_asked() -> None:
    made = Rig(config(per_tenant=True))
    for tenant, status in (("acme", 200), ("acme", 503), ("zeta", 200), (None, 200)):
        failure = FailureClass.REPLICA if status >= 500 else None
        made.bus.emit(RequestFinished("iris", "v1", status, failure, 0.01, "", False, tenant))
    rows = {
        (r["tenant"], r["objective"]): (r["events"], r["bad"])
        for r in made.operate.slo_status()["slos"]
    }
    assert rows == {
        ("", "availability"): (4, 1),
        ("acme", "availability"): (2, 1),
        ("zeta", "availability"): (1, 0),
    }


def test_bad_slo_and_incident_options_are_refused_naming_the_key() -> None:
    with pytest.raises(ConfigError) as refused:
        config(window_days=7, quality=99)
    text = str(refused.value)
    assert "models.iris.slo.window_days" in text
    assert "models.iris.slo.quality: unknown key" in text
    with pytest.raises(ConfigError) as refused:
        config(accuracy_pct=100, accuracy_tolerance=-1)
    text = str(refused.value)
    assert "models.iris.slo.accuracy_pct" in text
    assert "models.iris.slo.accuracy_tolerance" in text
    python = {"backend": "python", "function": "tests._runtime_models:healthy"}
    model = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
        "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]}],
        "versions": {"v1": python},
    }
    with pytest.raises(ConfigError, match=r"incidents\.quiet_s"):
        parse_config({"models": {"iris": model}, "incidents": {"quiet_s": 0}})
