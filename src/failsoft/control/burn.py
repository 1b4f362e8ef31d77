"""Multi-window, multi-burn-rate alerts (the SRE workbook, chapter 5, alert 6).

A burn rate is how fast an objective spends its error budget: the share of
bad events in a window divided by the budget (1 - objective). 1x spends the
whole budget in exactly the SLO window; 14.4x spends 2 % of a 30-day budget
in one hour. An alert fires when both its long and its short window burn at
least its factor: the long window proves the burn is significant, the short
one that it is still going on (so the alert stops soon after the burn does).
A minimum number of events in the long window keeps a model with little
traffic from paging on three errors.

``prometheus_rules`` writes the same rules for teams that alert from
Prometheus, over the ``failsoft_slo_events_total`` and
``failsoft_slo_bad_events_total`` counters the gateway exports.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from failsoft.observe.events import Event

__all__ = [
    "RULES",
    "WINDOWS",
    "BurnAlert",
    "BurnRule",
    "burn_rate",
    "prometheus_rules",
    "window_label",
]


@dataclass(frozen=True)
class BurnRule:
    severity: str  # "page" or "ticket"
    long_s: int
    short_s: int
    factor: float


RULES: tuple[BurnRule, ...] = (
    BurnRule("page", 3600, 300, 14.4),
    BurnRule("page", 6 * 3600, 1800, 6.0),
    BurnRule("ticket", 86_400, 2 * 3600, 3.0),
    BurnRule("ticket", 3 * 86_400, 6 * 3600, 1.0),
)
# Every window a rule reads, shortest first.
WINDOWS: tuple[int, ...] = tuple(sorted({w for r in RULES for w in (r.long_s, r.short_s)}))


@dataclass(slots=True)
class BurnAlert(Event):
    """An alert started (``firing``) or stopped burning for one objective of one series."""

    model: str
    tenant: str  # "" for the model as a whole
    objective: str  # availability, quality or latency
    severity: str
    firing: bool
    long_burn: float
    short_burn: float
    rule: str  # "1h/5m 14.4x"


def window_label(seconds: int) -> str:
    if seconds % 86_400 == 0:
        return f"{seconds // 86_400}d"
    if seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    return f"{seconds // 60}m"


def rule_label(rule: BurnRule) -> str:
    return f"{window_label(rule.long_s)}/{window_label(rule.short_s)} {rule.factor:g}x"


def burn_rate(bad: int, valid: int, objective_pct: float) -> float:
    """How many times faster than allowed the budget is spent (0 without events)."""
    if valid <= 0:
        return 0.0
    budget = 1.0 - objective_pct / 100.0
    return (bad / valid) / budget


@dataclass(frozen=True)
class RuleSubject:
    """One objective of one model, as the Prometheus rules see it."""

    model: str
    objective: str
    objective_pct: float
    min_events: int


def prometheus_rules(subjects: Iterable[RuleSubject]) -> str:
    """Recording and alerting rules (Prometheus rule-file YAML) equivalent to the gateway's."""
    subjects = list(subjects)
    lines = ["groups:", "  - name: failsoft-slo-recording", "    rules:"]
    for window in WINDOWS:
        label = window_label(window)
        lines += [
            f"      - record: failsoft_slo:error_ratio:rate{label}",
            "        expr: >-",
            f"          sum by (model, objective) (rate(failsoft_slo_bad_events_total"
            f'{{tenant=""}}[{label}]))',
            f"          / sum by (model, objective) (rate(failsoft_slo_events_total"
            f'{{tenant=""}}[{label}]))',
            f"      - record: failsoft_slo:events:increase{label}",
            "        expr: >-",
            f"          sum by (model, objective) (increase(failsoft_slo_events_total"
            f'{{tenant=""}}[{label}]))',
        ]
    lines += ["  - name: failsoft-slo-alerts", "    rules:"]
    for subject in subjects:
        budget = round(1.0 - subject.objective_pct / 100.0, 10)
        match = f'model="{subject.model}", objective="{subject.objective}"'
        for rule in RULES:
            long_l, short_l = window_label(rule.long_s), window_label(rule.short_s)
            name = (
                f"FailsoftSLOBurn{subject.objective.capitalize()}"
                f"{rule.severity.capitalize()}{long_l}"
            )
            lines += [
                f"      - alert: {name}",
                "        expr: >-",
                f"          failsoft_slo:error_ratio:rate{long_l}{{{match}}}"
                f" >= ({rule.factor:g} * {budget:g})",
                f"          and failsoft_slo:error_ratio:rate{short_l}{{{match}}}"
                f" >= ({rule.factor:g} * {budget:g})",
                f"          and failsoft_slo:events:increase{long_l}{{{match}}}"
                f" >= {subject.min_events}",
                "        labels:",
                f"          severity: {rule.severity}",
                f'          model: "{subject.model}"',
                f"          objective: {subject.objective}",
                "        annotations:",
                f'          summary: "{subject.model} {subject.objective} '
                f"({subject.objective_pct:g}%) burns its error budget at "
                f'{rule.factor:g}x or more over {long_l} and {short_l}"',
            ]
    return "\n".join(lines) + "\n"
