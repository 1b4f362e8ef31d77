"""The scorecard as a table: the new figures and checks, failing lines marked FAIL."""

from __future__ import annotations

from failsoft.drills.incidentstep import IncidentScore
from failsoft.drills.report import render
from tests.drills.test_scorecard import (
    FAULT,
    _attack,
    _between,
    _clean_run,
    _fail,
    _polls,
    _score,
)


def _lines(text: str, start: str) -> list[str]:
    """The lines that start so, their runs of spaces (the table's padding) made one."""
    lines = (" ".join(line.split()) for line in text.splitlines())
    return [line for line in lines if line.startswith(start)]


def test_a_hostile_client_drill_shows_the_attack_readiness_and_penalties() -> None:
    card = _score(
        _clean_run(),
        windows=[],
        attack=_attack([422, 504, 413, 200, 504, 413], [False, False, False, True, False, False]),
        readiness=_polls([200] * 99 + [503]),
        events=[
            {
                "type": "BreakerTransition",
                "model": "iris",
                "version": "v1",
                "replica": "w1",
                "new": "open",
                "reason": "failure rate 60% over 10 calls",
                "at_s": 4.0,
            }
        ],
        expect={"max_poison_uncontained": 0, "max_not_ready": 0, "max_replicas_penalised": 0},
    )

    text = render(card, color=False)

    assert _lines(text, "attack:") == [
        "attack: poison 2 (422 x1, 200 degraded x1) · deadline 2 (504 x2) · oversize 2 (413 x2)"
    ]
    assert _lines(text, "readiness:") == ["readiness: 1 of 100 polls not ready"]
    assert _lines(text, "replicas penalised:") == [
        "replicas penalised: breaker opened x1, ejected x0, probe failed x0"
    ]
    assert _lines(text, "breaker opened v1/w1") == [
        "breaker opened v1/w1 at 4.0 s: failure rate 60% over 10 calls"
    ]
    assert _lines(text, "ok poison uncontained") == ["ok poison uncontained 0 of 2 (expected <= 0)"]
    assert _lines(text, "FAIL") == [
        "FAIL replicas penalised 1 (expected <= 0)",
        "FAIL readiness not ready 1 of 100 (expected <= 0)",
    ]
    assert text.endswith("drill synthetic FAILED")


def test_failed_after_heal_is_shown_and_judged() -> None:
    outcomes = _clean_run()
    _fail(outcomes, _between(outcomes, 6.0, 6.7))

    text = render(
        _score(outcomes, hypothesis={"availability_pct": 0}, expect={"max_failed_after_heal": 5}),
        color=False,
    )

    assert "· lost 7 · after heal 7" in text
    assert _lines(text, "FAIL") == ["FAIL failed or degraded after heal 7 (expected <= 5)"]


def test_a_drill_without_the_new_figures_shows_none_of_them() -> None:
    text = render(_score(_clean_run(), windows=[FAULT]), color=False)

    assert not _lines(text, "attack:")
    assert not _lines(text, "readiness:")
    assert not _lines(text, "replicas penalised:")
    assert "after heal 0" in text


def test_an_incident_is_shown_with_its_mttd_and_runbook_rows() -> None:
    card = _score(_clean_run(), windows=[FAULT])
    card.incident = IncidentScore(
        id=3,
        cause="infra",
        state="mitigated",
        opened_at_s=8.14,
        mttd_s=0.064,
        runbook=[{"at_s": 8.15, "action": "webhook", "text": "webhook oncall queued"}],
        received={"oncall": 1},
    )

    text = render(card, color=False)

    assert _lines(text, "incident 3") == [
        "incident 3 (infra, mitigated) opened at 8.14 s · MTTD 0.06 s · approvals given 0"
        " · oncall received 1"
    ]
    assert _lines(text, "+ 8.15s") == ["+ 8.15s webhook oncall queued"]
    card.incident = IncidentScore()
    assert _lines(render(card, color=False), "incident:") == ["incident: none opened"]
