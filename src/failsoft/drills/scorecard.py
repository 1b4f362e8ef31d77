"""The scorecard: what a drill's requests and the gateway's events say, judged.

Everything is computed from the outcomes of the open-loop requests (by their
scheduled send time), the fault windows as they really ran, and the
gateway's notable events, all in seconds since the load started:

- availability, p50 and p99 per phase: before the first fault, during the
  faults, after the last one ends;
- time to detect: from a fault's start to the gateway's first reaction to
  it (a failed call, an ejection, a breaker opening, a failed probe, a
  replica marked down or restarted, a fallback answer, a shed request) that
  concerns the fault's target. A kill fault starts when the gateway's chaos
  code really kills (its ReplicaKilled event, which may come up to half a
  second after the fault is added); that event is the injection, never the
  detection, which is what the gateway then observed;
- time to recover: from the last fault's end to the start of the first
  second from which every second meets the hypothesis with full service
  (no degraded answers);
- failed or degraded after heal: requests scheduled after the last fault
  healed that were not answered correctly, or were answered by a fallback
  (how fast the healed replicas are found again). A fault heals when it
  ends; a kill heals when the first replica it killed is back (the
  supervisor restarted it), which is usually well before the fault's end;
- requests lost, degraded share, retry amplification (attempts per request)
  and the error budget the drill consumed against the objective;
- with a hostile client's attack: how each kind of attack request was
  answered, and how many poison requests were not contained (answered with
  anything but a 422 or a degraded 200); the attack counts as a fault window
  for the phases and the recovery, and its requests count nowhere else;
- readiness: how many polls of /v2/health/ready were answered other than 200;
- replicas penalised: breaker openings, ejections and failed health probes
  of the model during the run, which a hostile client must never cause;
- deploys: whether each proposed change was refused (the served revision
  kept, the reason containing what the drill expects) or applied, as the
  drill expects; each deploy, from its proposal to the gateway's answer,
  counts as a window for the phases and the recovery, as an attack does.
- flag steps (drills/flagstep.py): whether each flag was set; for a switch,
  the time until it was effective, the calls its versions still got, and
  how the requests sent while it held were answered (a fallback or a clean
  503 only). Each step, from setting to clearing, counts as a window for
  the phases and the recovery, as an attack does.

Each check says what was measured, what was expected, and whether it held.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, astuple, dataclass, field
from typing import Any

import numpy as np

from failsoft.drills.deploy import DeployOutcome
from failsoft.drills.experiment import Experiment
from failsoft.drills.flagstep import FlagOutcome, FlagScore, score_flag
from failsoft.drills.incidentstep import IncidentScore
from failsoft.drills.load import NO_ANSWER, NOT_SENT, AttackOutcomes, Outcomes, ReadinessPolls
from failsoft.drills.marked import marked_answers
from failsoft.drills.rolloutstep import (
    RolloutOutcome,
    RolloutScore,
    rollout_checks,
    score_rollout,
)


def is_reaction(event: dict[str, Any]) -> bool:
    """Did the gateway react to trouble with this event?

    Only what the gateway observed counts: a chaos fault's own events
    (FaultAdded, ReplicaKilled) say what was done to it, not what it noticed.
    """
    kind = event["type"]
    if kind == "BreakerTransition":
        return bool(event.get("new") == "open")
    if kind == "HealthChanged":
        return not event.get("healthy", True)
    if kind == "ReplicaStateChanged":
        return not event.get("available", True)
    return kind in (
        "AttemptFailed",
        "ReplicaEjected",
        "WorkerRestarted",
        "FallbackUsed",
        "RequestShed",
    )


PHASES = ("before", "during", "after")


@dataclass(frozen=True)
class FaultWindow:
    label: str
    model: str
    start_s: float
    end_s: float
    kind: str = ""
    version: str | None = None  # every version when None
    replica: str | None = None  # every replica when None
    fault_id: str = ""  # the gateway's id for the fault, which its events carry

    def concerns(self, event: dict[str, Any]) -> bool:
        """Is ``event`` about this fault's target (its model, version and replica)?"""
        if event.get("model") != self.model:
            return False
        for key, wanted in (("version", self.version), ("replica", self.replica)):
            named = event.get(key)
            if wanted is not None and named and named != "*" and named != wanted:
                return False
        return True


@dataclass(frozen=True)
class PhaseStats:
    requests: int
    available_pct: float | None
    p50_ms: float | None
    p99_ms: float | None
    degraded_pct: float | None


@dataclass(frozen=True)
class Check:
    name: str
    measured: str
    expected: str
    ok: bool


@dataclass
class Timeline:
    seconds: list[float] = field(default_factory=list)
    success_pct: list[float | None] = field(default_factory=list)
    degraded_pct: list[float | None] = field(default_factory=list)
    p99_ms: list[float | None] = field(default_factory=list)


@dataclass
class Scorecard:
    name: str
    requests: int
    phases: dict[str, PhaseStats]
    detect_s: list[float | None]
    recover_s: float | None
    lost: int
    degraded_pct: float
    retry_amplification: float | None
    objective_pct: float
    error_budget_used_pct: float | None
    checks: list[Check]
    faults: list[FaultWindow]
    timeline: Timeline
    detected_at_s: float | None = None
    recovered_at_s: float | None = None
    failed_after_heal: int | None = None  # None without faults
    healed_at_s: float | None = None
    attack_window: FaultWindow | None = None
    attack: dict[str, dict[str, int]] | None = None  # kind -> answer ("422", ...) -> count
    poison_uncontained: int | None = None
    readiness_polls: int | None = None
    not_ready: int | None = None
    replica_penalties: dict[str, int] | None = None  # kind of penalty -> count
    penalty_notes: list[str] = field(default_factory=list)  # the first few, which and why
    deploys: list[DeployOutcome] = field(default_factory=list)
    flags: list[FlagScore] = field(default_factory=list)
    drift: dict[str, Any] | None = None  # a data step's detection (drills/datastep.py)
    marked: dict[str, int] | None = None  # requests marked degraded: true/false (marked.py)
    rollouts: list[RolloutScore] = field(default_factory=list)
    incident: IncidentScore | None = None  # expect.incident (drills/incidentstep.py)

    @property
    def passed(self) -> bool:
        return all(check.ok for check in self.checks)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["passed"] = self.passed
        return data


def _pct(part: int, whole: int) -> float | None:
    return 100.0 * part / whole if whole else None


def _quantiles(latency_s: np.ndarray) -> tuple[float | None, float | None]:
    answered = latency_s[~np.isnan(latency_s)]
    if not answered.size:
        return None, None
    p50, p99 = np.percentile(answered * 1000, [50, 99])
    return float(p50), float(p99)


def phase_stats(outcomes: Outcomes, mask: np.ndarray) -> PhaseStats:
    count = int(mask.sum())
    p50, p99 = _quantiles(outcomes.latency_s[mask & outcomes.correct])
    return PhaseStats(
        count,
        _pct(int(outcomes.correct[mask].sum()), count),
        p50,
        p99,
        _pct(int(outcomes.degraded[mask].sum()), count),
    )


def timeline(outcomes: Outcomes, duration_s: float) -> Timeline:
    line = Timeline()
    for second in range(math.ceil(duration_s)):
        mask = (outcomes.offsets >= second) & (outcomes.offsets < second + 1)
        stats = phase_stats(outcomes, mask)
        line.seconds.append(float(second))
        line.success_pct.append(stats.available_pct)
        line.degraded_pct.append(stats.degraded_pct)
        line.p99_ms.append(stats.p99_ms)
    return line


def onset(window: FaultWindow, events: Sequence[dict[str, Any]]) -> float | None:
    """When the fault began to bite: its start, or for a kill the first kill it made.

    A kill fault waits for a call to reach its replica (half a second at
    most), so its start is the gateway's ReplicaKilled event for it; None
    when nothing was killed, as then there was nothing to detect.
    """
    if window.kind != "kill":
        return window.start_s
    return min(_kills(window, events), default=None)


def _kills(window: FaultWindow, events: Sequence[dict[str, Any]]) -> list[float]:
    """When this kill fault killed (its ReplicaKilled events; by target without an id)."""
    # With the fault's id, the id says which kills are its own; their times can even
    # come a little before the drill saw the fault added (the kill strikes the first call
    # that reaches the replica, which may be served before the admin answer arrives).
    return [
        event["at_s"]
        for event in events
        if event["type"] == "ReplicaKilled"
        and (
            event.get("fault") == window.fault_id
            if window.fault_id
            else event["at_s"] >= window.start_s and window.concerns(event)
        )
    ]


def healed(window: FaultWindow, events: Sequence[dict[str, Any]]) -> float:
    """When the fault stopped hurting: its end, or for a kill the first replica back.

    A kill is over once a killed replica is available again after the fault's
    last kill (its worker restarted); without such an event, the fault's end.
    """
    if window.kind != "kill":
        return window.end_s
    last_kill = max(_kills(window, events), default=None)
    if last_kill is None:
        return window.end_s
    back = [
        event["at_s"]
        for event in events
        if event["type"] == "ReplicaStateChanged"
        and event.get("available")
        and event["at_s"] >= last_kill
        and window.concerns(event)
    ]
    return min(back, default=window.end_s)


def answer_label(status: int, degraded: bool) -> str:
    """How an attack request was answered: its status, "200 degraded", "no answer"..."""
    if status == NOT_SENT:
        return "not sent"
    if status == NO_ANSWER:
        return "no answer"
    return "200 degraded" if status == 200 and degraded else str(status)


def attack_answers(attack: AttackOutcomes) -> dict[str, dict[str, int]]:
    """For each kind of attack request, in order of first use, how often each answer came."""
    answers: dict[str, dict[str, int]] = {}
    for kind, status, degraded in zip(
        attack.kinds, attack.status.tolist(), attack.degraded.tolist(), strict=True
    ):
        counts = answers.setdefault(kind, {})
        label = answer_label(status, degraded)
        counts[label] = counts.get(label, 0) + 1
    return answers


# What a replica is charged with, by the event that says so (when it is a reaction).
PENALTIES = {
    "breaker opened": "BreakerTransition",
    "ejected": "ReplicaEjected",
    "probe failed": "HealthChanged",
}


MAX_PENALTY_NOTES = 5


def replica_penalties(model: str, events: Sequence[dict[str, Any]]) -> dict[str, int]:
    """The model's replicas' breaker openings, ejections and failed probes during the run."""
    counts = dict.fromkeys(PENALTIES, 0)
    for name, _ in _penalties(model, events):
        counts[name] += 1
    return counts


def penalty_notes(model: str, events: Sequence[dict[str, Any]]) -> list[str]:
    """The first ``MAX_PENALTY_NOTES`` penalties, each with its replica, time and reason,
    and the last failure charged to one of the model's replicas before it: what a failing
    "replicas penalised" check needs to be understood from its report."""
    notes = []
    for name, event in _penalties(model, events)[:MAX_PENALTY_NOTES]:
        note = (
            f"{name} {event.get('version', '?')}/{event.get('replica', '?')} at "
            f"{event['at_s']:.1f} s: {event.get('reason') or 'no reason given'}"
        )
        charged = _last_charged(model, events, event["at_s"])
        if charged is not None:
            count = charged.get("count", 1)
            note += (
                f"; last charged failure: {charged.get('replica', '?')} at "
                f"{charged['at_s']:.1f} s, {charged.get('message') or 'no message'}"
                + (f" (x{count} within a second)" if count > 1 else "")
            )
        notes.append(note)
    return notes


def _last_charged(
    model: str, events: Sequence[dict[str, Any]], before_s: float
) -> dict[str, Any] | None:
    """The last ``AttemptFailed`` of ``model`` at or before ``before_s`` (the gateway keeps
    the first of each second, with a count)."""
    last = None
    for event in events:
        if (
            event["type"] == "AttemptFailed"
            and event.get("model") == model
            and 0 <= event["at_s"] <= before_s
        ):
            last = event
    return last


def _penalties(model: str, events: Sequence[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for event in events:
        if event["at_s"] < 0 or event.get("model") != model:
            continue
        for name, kind in PENALTIES.items():
            if event["type"] == kind and is_reaction(event):
                found.append((name, event))
    return found


def deploy_window(deploy: DeployOutcome, model: str) -> FaultWindow:
    """A deploy step as a window: from its proposal to the gateway's answer."""
    return FaultWindow(deploy.label, model, deploy.start_s, deploy.end_s, kind="deploy")


def deploy_check(deploy: DeployOutcome) -> Check:
    return Check(
        f"deploy {deploy.number} {deploy.expect}",
        deploy.measured(),
        deploy.expected(),
        deploy.as_expected,
    )


def poison_uncontained(attack: AttackOutcomes) -> int:
    """Poison requests answered neither 422 nor 200 from a fallback (marked degraded)."""
    poison = np.asarray(attack.kinds) == "poison"
    contained = (attack.status == 422) | ((attack.status == 200) & attack.degraded)
    return int((poison & ~contained).sum())


def detection(
    window: FaultWindow, events: Sequence[dict[str, Any]], outcomes: Outcomes
) -> float | None:
    """Seconds from the fault's onset to the gateway's first reaction to it, or None."""
    start = onset(window, events)
    if start is None:
        return None
    times = [
        event["at_s"]
        for event in events
        if event["at_s"] >= start and is_reaction(event) and window.concerns(event)
    ]
    degraded = outcomes.offsets[outcomes.degraded & (outcomes.offsets >= start)]
    if degraded.size:
        times.append(float(degraded.min()))
    return min(times) - start if times else None


def recovery(
    line: Timeline, end_s: float, availability_pct: float, p99_ms: float | None
) -> float | None:
    """The start of the first second after ``end_s`` from which every second is healthy."""
    recovered: float | None = None
    for second, success, degraded, p99 in zip(
        line.seconds, line.success_pct, line.degraded_pct, line.p99_ms, strict=True
    ):
        if second + 1 <= end_s or success is None:
            continue
        healthy = (
            success >= availability_pct
            and not degraded
            and (p99_ms is None or (p99 is not None and p99 <= p99_ms))
        )
        if not healthy:
            recovered = None
        elif recovered is None:
            recovered = max(second, end_s)
    return recovered


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}%"


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.2f} s"


def score(
    experiment: Experiment,
    outcomes: Outcomes,
    windows: Sequence[FaultWindow],
    events: Sequence[dict[str, Any]],
    *,
    duration_s: float,
    attempts: float | None = None,
    requests_served: float | None = None,
    objective_pct: float | None = None,
    attack: AttackOutcomes | None = None,
    readiness: ReadinessPolls | None = None,
    deploys: Sequence[DeployOutcome] = (),
    flags: Sequence[FlagOutcome] = (),
    rollouts: Sequence[RolloutOutcome] = (),
) -> Scorecard:
    hypothesis, expect = experiment.hypothesis, experiment.expect
    offsets = outcomes.offsets
    judged = np.ones(len(offsets), dtype=bool)
    if hypothesis.priorities:
        judged = np.isin(np.asarray(outcomes.priority), hypothesis.priorities)
    if not hypothesis.correctness:  # any 200 counts as available
        outcomes = dataclasses.replace(outcomes, correct=outcomes.status == 200)
    attack_window = (
        None
        if attack is None
        else FaultWindow(
            "attack: " + ", ".join(dict.fromkeys(attack.kinds)),
            experiment.load.model,
            attack.start_s,
            attack.end_s,
            kind="attack",
        )
    )
    model = experiment.load.model
    scored = [
        score_flag(step, model, offsets, outcomes.status, outcomes.degraded, outcomes.served_by)
        for step in flags
    ]
    spans = [
        *windows,
        *([attack_window] if attack_window is not None else []),
        *(
            FaultWindow(f"flag {f.number}", model, f.start_s, f.cleared_s, kind="flag")
            for f in scored
        ),
        *(deploy_window(deploy, model) for deploy in deploys),
        *(
            FaultWindow(
                f"rollout {r.number}", model, r.start_s, r.ended_s or duration_s, kind="rollout"
            )
            for r in rollouts
            if r.status == 201
        ),
    ]
    first = min((w.start_s for w in spans), default=duration_s)
    last = max((w.end_s for w in spans), default=duration_s)
    masks = {
        "before": offsets < first,
        "during": (offsets >= first) & (offsets < last),
        "after": offsets >= last,
    }
    phases = {name: phase_stats(outcomes, mask & judged) for name, mask in masks.items()}
    line = timeline(outcomes, duration_s)
    onsets = [onset(window, events) for window in windows]
    detect = [detection(window, events, outcomes) for window in windows]
    recovered_at = (
        recovery(line, last, hypothesis.availability_pct, hypothesis.p99_ms) if spans else None
    )
    recover_s = None if recovered_at is None else recovered_at - last
    healed_at = max((healed(window, events) for window in windows), default=None)
    after_heal = (
        None
        if healed_at is None
        else int(((~outcomes.correct | outcomes.degraded) & (offsets >= healed_at)).sum())
    )
    total = len(offsets)
    lost = int(total - outcomes.correct.sum())
    degraded_pct = _pct(int(outcomes.degraded.sum()), total) or 0.0
    amplification = attempts / requests_served if attempts and requests_served else None
    objective = objective_pct if objective_pct is not None else hypothesis.availability_pct
    allowed = total * (100.0 - objective) / 100.0
    budget = 100.0 * lost / allowed if allowed > 0 else (0.0 if lost == 0 else None)

    checks: list[Check] = []
    for name, stats in phases.items():
        if not stats.requests:
            continue
        checks.append(
            Check(
                f"availability {name}",
                _percent(stats.available_pct),
                f">= {hypothesis.availability_pct:g}%",
                (stats.available_pct or 0.0) >= hypothesis.availability_pct,
            )
        )
        if hypothesis.p99_ms is not None:
            checks.append(
                Check(
                    f"p99 {name}",
                    _ms(stats.p99_ms),
                    f"<= {hypothesis.p99_ms:g} ms",
                    stats.p99_ms is not None and stats.p99_ms <= hypothesis.p99_ms,
                )
            )
    if expect.max_detect_s is not None:
        known = [value for value in detect if value is not None]
        worst = max(known, default=0.0) if len(known) == len(detect) else None
        checks.append(
            Check(
                "time to detect",
                _seconds(worst),
                f"<= {expect.max_detect_s:g} s",
                worst is not None and worst <= expect.max_detect_s,
            )
        )
    if expect.max_recover_s is not None and spans:
        checks.append(
            Check(
                "time to recover",
                _seconds(recover_s),
                f"<= {expect.max_recover_s:g} s",
                recover_s is not None and recover_s <= expect.max_recover_s,
            )
        )
    if expect.max_failed_after_heal is not None and after_heal is not None:
        checks.append(
            Check(
                "failed or degraded after heal",
                str(after_heal),
                f"<= {expect.max_failed_after_heal}",
                after_heal <= expect.max_failed_after_heal,
            )
        )
    if expect.max_lost is not None:
        checks.append(
            Check("requests lost", str(lost), f"<= {expect.max_lost}", lost <= expect.max_lost)
        )
    if expect.max_degraded_pct is not None:
        checks.append(
            Check(
                "degraded answers",
                _percent(degraded_pct),
                f"<= {expect.max_degraded_pct:g}%",
                degraded_pct <= expect.max_degraded_pct,
            )
        )
    if expect.max_retry_amplification is not None:
        checks.append(
            Check(
                "retry amplification",
                "-" if amplification is None else f"{amplification:.2f}x",
                f"<= {expect.max_retry_amplification:g}x",
                amplification is not None and amplification <= expect.max_retry_amplification,
            )
        )
    if expect.sheddable_first:
        checks.append(_sheddable_first(outcomes, masks["during"]))
    uncontained = None if attack is None else poison_uncontained(attack)
    if expect.max_poison_uncontained is not None:
        poison = 0 if attack is None else attack.kinds.count("poison")
        checks.append(
            Check(
                "poison uncontained",
                "-" if uncontained is None else f"{uncontained} of {poison}",
                f"<= {expect.max_poison_uncontained}",
                uncontained is not None
                and poison > 0
                and uncontained <= expect.max_poison_uncontained,
            )
        )
    penalties = (
        None
        if expect.max_replicas_penalised is None
        else replica_penalties(experiment.load.model, events)
    )
    if penalties is not None and expect.max_replicas_penalised is not None:
        penalised = sum(penalties.values())
        checks.append(
            Check(
                "replicas penalised",
                str(penalised),
                f"<= {expect.max_replicas_penalised}",
                penalised <= expect.max_replicas_penalised,
            )
        )
    checks += [deploy_check(deploy) for deploy in deploys]
    marked = marked_answers(experiment, outcomes)
    if expect.max_not_as_marked is not None:
        checks.append(_as_marked(marked, expect.max_not_as_marked))
    for flag in scored:
        checks += flag_checks(flag, expect)
    rolled = [
        score_rollout(
            r, offsets, outcomes.status, duration_s, outcomes.served_by, outcomes.started_at
        )
        for r in rollouts
    ]
    for rollout, step in zip(rolled, experiment.rollouts, strict=False):
        checks += [Check(*astuple(c)) for c in rollout_checks(rollout, step.expect)]
    polls = None if readiness is None else len(readiness.status)
    not_ready = None if readiness is None else int((readiness.status != 200).sum())
    if expect.max_not_ready is not None:
        checks.append(
            Check(
                "readiness not ready",
                "-" if not_ready is None else f"{not_ready} of {polls}",
                f"<= {expect.max_not_ready}",
                not_ready is not None and not_ready <= expect.max_not_ready,
            )
        )
    return Scorecard(
        experiment.name,
        total,
        phases,
        detect,
        recover_s,
        lost,
        degraded_pct,
        amplification,
        objective,
        budget,
        checks,
        list(windows),
        line,
        detected_at_s=(
            onsets[0] + detect[0]
            if windows and onsets[0] is not None and detect[0] is not None
            else None
        ),
        recovered_at_s=recovered_at,
        failed_after_heal=after_heal,
        healed_at_s=healed_at,
        attack_window=attack_window,
        attack=None if attack is None else attack_answers(attack),
        poison_uncontained=uncontained,
        readiness_polls=polls,
        not_ready=not_ready,
        replica_penalties=penalties,
        penalty_notes=[] if penalties is None else penalty_notes(experiment.load.model, events),
        deploys=list(deploys),
        flags=scored,
        marked=marked,
        rollouts=rolled,
    )


def _as_marked(marked: dict[str, int] | None, bound: int) -> Check:
    if marked is None:
        return Check("degraded as marked", "-", f"<= {bound} otherwise", False)
    measured = (
        f"violators {marked['violators_degraded']}/{marked['violators']} degraded, "
        f"others {marked['others_degraded']}/{marked['others']} degraded; "
        f"{marked['not_as_marked']} otherwise"
    )
    return Check(
        "degraded as marked", measured, f"<= {bound} otherwise", marked["not_as_marked"] <= bound
    )


def flag_checks(flag: FlagScore, expect: Any) -> list[Check]:
    """A flag step's checks: it was set; for a switch, how soon and how well it held."""
    name = f"flag {flag.number}"
    checks = [
        Check(
            f"{name} set",
            f"{flag.status or 'no answer'} in {flag.set_ms:.0f} ms",
            "set (200)",
            flag.status == 200,
        )
    ]
    if not flag.is_switch:
        return checks
    if expect.max_switch_effective_s is not None:
        checks.append(
            Check(
                f"{name} effective",
                _seconds(flag.effective_s),
                f"<= {expect.max_switch_effective_s:g} s",
                flag.effective_s is not None and flag.effective_s <= expect.max_switch_effective_s,
            )
        )
    if expect.max_calls_to_switched is not None:
        checks.append(
            Check(
                f"{name} calls to {','.join(flag.switched)}",
                "-" if flag.calls is None else str(flag.calls),
                f"<= {expect.max_calls_to_switched}",
                flag.calls is not None and flag.calls <= expect.max_calls_to_switched,
            )
        )
    answers = flag.answers
    checks.append(
        Check(
            f"{name} answers while switched",
            f"{answers['other']} other of {sum(answers.values())}",
            "fallback or clean 503 only",
            flag.status == 200 and answers["other"] == 0,
        )
    )
    return checks


def _sheddable_first(outcomes: Outcomes, during: np.ndarray) -> Check:
    priorities = np.asarray(outcomes.priority)
    rates: dict[str, float] = {}
    for name in ("critical", "default", "sheddable"):
        mask = during & (priorities == name)
        if mask.any():
            rates[name] = 100.0 * float(outcomes.correct[mask].mean())
    order = [rates[name] for name in ("critical", "default", "sheddable") if name in rates]
    ok = len(order) >= 2 and all(a >= b for a, b in itertools.pairwise(order))
    measured = ", ".join(f"{name} {rate:.1f}%" for name, rate in rates.items())
    return Check("sheddable shed first", measured, "critical >= default >= sheddable", ok)
