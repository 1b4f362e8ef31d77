"""A scorecard for people (a table, failing lines marked) and for machines (JSON, PNG)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from failsoft.drills.chart import draw_timeline
from failsoft.drills.experiment import Experiment
from failsoft.drills.flagstep import FlagScore
from failsoft.drills.incidentstep import IncidentScore
from failsoft.drills.rolloutstep import RolloutScore, evidence
from failsoft.drills.scorecard import Scorecard


def _cell(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}{unit}" if unit == "%" else f"{value:.1f} {unit}"


def _answers(kind: str, answers: dict[str, int]) -> str:
    """``poison 40 (422 x38, 200 degraded x2)``: how often each answer came, most first."""
    ranked = sorted(answers.items(), key=lambda item: -item[1])
    return f"{kind} {sum(answers.values())} (" + ", ".join(f"{a} x{n}" for a, n in ranked) + ")"


def _flag_line(flag: FlagScore) -> str:
    """``flag 1 failsoft.halt.iris.v1 at 3.3 s: set in 4 ms, effective 0.00 s, ...``."""
    head = f"  flag {flag.number} {flag.key} at {flag.start_s:.1f} s: "
    if flag.status != 200:
        return head + f"refused ({flag.status or 'no answer'}): {flag.error}"
    text = head + f"set in {flag.set_ms:.0f} ms, cleared at {flag.cleared_s:.1f} s"
    if not flag.is_switch:
        return text
    effective = "-" if flag.effective_s is None else f"{flag.effective_s:.3f} s"
    calls = "-" if flag.calls is None else str(flag.calls)
    answers = ", ".join(f"{label} {count}" for label, count in flag.answers.items())
    return (
        text
        + f"; effective in {effective}; {calls} calls to {flag.model}/"
        + ",".join(flag.switched)
        + f"; answers meanwhile: {answers}"
    )


def _rollout_line(rollout: RolloutScore) -> str:
    """``rollout 1 iris-3f9a0c at 2.0 s: rolled-back at 10% after 10.4 s; ...``."""
    head = f"  rollout {rollout.number} {rollout.rollout_id} at {rollout.start_s:.1f} s: "
    if rollout.status != 201:
        return head + f"refused ({rollout.status or 'no answer'}): {rollout.error}"
    stage = rollout.stages[rollout.stage] if rollout.stage < len(rollout.stages) else "?"
    took = (
        "still going at the end"
        if rollout.ended_s is None
        else f"after {rollout.ended_s - rollout.start_s:.1f} s"
    )
    return (
        head
        + f"{rollout.outcome} at {stage} {took}; failed {rollout.failed} of {rollout.requests}"
        + ("" if rollout.back_s is None else f"; back to stable in {rollout.back_s:.3f} s")
        + f"\n    {rollout.reason}\n    evidence: {evidence(rollout.checks)}"
    )


def _incident_lines(incident: IncidentScore) -> list[str]:
    if incident.id is None:
        return ["  incident: none opened"]
    mttd = "-" if incident.mttd_s is None else f"{incident.mttd_s:.2f} s"
    lines = [
        f"  incident {incident.id} ({incident.cause}, {incident.state}) opened at "
        f"{incident.opened_at_s:.2f} s · MTTD {mttd} · approvals given {len(incident.approvals)}"
        + "".join(f" · {name} received {count}" for name, count in incident.received.items())
    ]
    lines += [f"    +{row['at_s']:6.2f}s {row['text']}" for row in incident.runbook]
    return lines


def render(card: Scorecard, color: bool = True) -> str:
    """The scorecard as a plain-text table; failing checks are marked FAIL (red on a tty)."""
    lines = [f"drill {card.name}: {card.requests} requests"]
    lines.append(f"  {'phase':<8} {'requests':>9} {'available':>10} {'p50':>10} {'p99':>10}")
    for name, stats in card.phases.items():
        lines.append(
            f"  {name:<8} {stats.requests:>9} {_cell(stats.available_pct, '%'):>10} "
            f"{_cell(stats.p50_ms, 'ms'):>10} {_cell(stats.p99_ms, 'ms'):>10}"
        )
    detect = ", ".join("never" if d is None else f"{d:.2f} s" for d in card.detect_s) or "-"
    recover = "-" if card.recover_s is None else f"{card.recover_s:.2f} s"
    budget = "-" if card.error_budget_used_pct is None else f"{card.error_budget_used_pct:.1f}%"
    amplification = "-" if card.retry_amplification is None else f"{card.retry_amplification:.2f}x"
    after_heal = "" if card.failed_after_heal is None else f" · after heal {card.failed_after_heal}"
    lines += [
        f"  time to detect {detect} · time to recover {recover} · lost {card.lost}{after_heal}",
        f"  degraded {card.degraded_pct:.2f}% · attempts per request {amplification} · "
        f"error budget used {budget} (objective {card.objective_pct:g}%)",
    ]
    if card.attack is not None:
        lines.append(
            "  attack: " + " · ".join(_answers(kind, got) for kind, got in card.attack.items())
        )
    for deploy in card.deploys:
        lines.append(
            f"  deploy {deploy.number} at {deploy.start_s:.1f} s: {deploy.result}"
            f" ({deploy.status or 'no answer'}) in {1000 * (deploy.end_s - deploy.start_s):.0f} ms"
            + (f": {deploy.reason}" if deploy.reason else "")
        )
    for flag in card.flags:
        lines.append(_flag_line(flag))
    for rollout in card.rollouts:
        lines.append(_rollout_line(rollout))
    if card.readiness_polls is not None:
        lines.append(f"  readiness: {card.not_ready} of {card.readiness_polls} polls not ready")
    if card.replica_penalties is not None:
        lines.append(
            "  replicas penalised: "
            + ", ".join(f"{name} x{count}" for name, count in card.replica_penalties.items())
        )
        lines.extend(f"    {note}" for note in card.penalty_notes)
    if card.incident is not None:
        lines.extend(_incident_lines(card.incident))
    lines.append("  checks:")
    for check in card.checks:
        mark = "ok  " if check.ok else "FAIL"
        text = f"  {mark} {check.name:<30} {check.measured:>14}  (expected {check.expected})"
        if color:
            text = click.style(text, fg="green" if check.ok else "red", bold=not check.ok)
        lines.append(text)
    verdict = "PASSED" if card.passed else "FAILED"
    lines.append(
        click.style(f"drill {card.name} {verdict}", fg="green" if card.passed else "red", bold=True)
        if color
        else f"drill {card.name} {verdict}"
    )
    return "\n".join(lines)


def _data_shift(card: Scorecard) -> list[tuple[str, float, float]]:
    drift = card.drift
    if not drift or drift.get("shift_at_s") is None or not card.timeline.seconds:
        return []
    return [(f"data shift: {drift['feature']}", drift["shift_at_s"], card.timeline.seconds[-1])]


def _detected_at(card: Scorecard) -> float | None:
    """When the gateway noticed: its fault reaction, else its DriftDetected."""
    drift = card.drift
    if card.detected_at_s is None and drift and drift.get("detect_s") is not None:
        return float(drift["shift_at_s"]) + float(drift["detect_s"])
    return card.detected_at_s


def write_outputs(card: Scorecard, experiment: Experiment, out_dir: Path) -> tuple[Path, Path]:
    """``<name>.json`` and ``<name>.png`` in ``out_dir``; their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{card.name}.json"
    json_path.write_text(json.dumps(card.to_json(), indent=2) + "\n", encoding="utf-8")
    png_path = out_dir / f"{card.name}.png"
    line = card.timeline
    draw_timeline(
        png_path,
        f"{card.name}: {experiment.load.rate:g} req/s on {experiment.load.model}"
        f" — {'passed' if card.passed else 'FAILED'}",
        line.seconds,
        line.success_pct,
        line.degraded_pct,
        line.p99_ms,
        [
            *(
                (window.label, window.start_s, window.end_s)
                for window in [*card.faults, *([card.attack_window] if card.attack_window else [])]
            ),
            *((deploy.label, deploy.start_s, deploy.end_s) for deploy in card.deploys),
            *((f"flag {f.number}", f.start_s, f.cleared_s) for f in card.flags),
            *_data_shift(card),
        ],
        availability_target_pct=experiment.hypothesis.availability_pct,
        p99_target_ms=experiment.hypothesis.p99_ms,
        detected_at_s=_detected_at(card),
        recovered_at_s=card.recovered_at_s,
    )
    return json_path, png_path
