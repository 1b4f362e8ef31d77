"""Rollouts from the command line.

    failsoft rollout start MODEL --to VERSION [--strategy canary|ab|shadow|blue-green]
                                 [--steps 10,50,100] [--step-s 60] [...]
    failsoft rollout status [MODEL|ID] | pause | resume | promote | abort  MODEL|ID

They reach the gateway's admin API (/admin/rollouts) as the other control
commands do (``--url``, the token from ``$FAILSOFT_ADMIN_TOKEN``), print a
table a person can read (``--json`` for scripts) and exit 0 when done, 1
when the gateway refused (its reason names the field) or cannot be reached,
2 when the arguments are wrong.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click
import yaml

from failsoft.cli_control import Failed, Gateway, _echo_json, _gateway_options, _json_option, table

__all__ = ["register", "render_status"]

STRATEGIES = ("canary", "shadow", "ab", "blue-green")


def parse_steps(text: str) -> list[int]:
    """``10,50,100`` as [10, 50, 100]; ValueError naming --steps otherwise."""
    try:
        steps = [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise ValueError(f"--steps: {text!r} is not a list of percents like 10,50,100") from None
    if not steps:
        raise ValueError("--steps: give at least one percent, like 10,50,100")
    return steps


def parse_weights(text: str) -> dict[str, int]:
    """``v1=50,v2=50`` as {"v1": 50, "v2": 50}; ValueError naming --weights otherwise."""
    weights: dict[str, int] = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        try:
            weights[name.strip()] = int(value)
        except ValueError:
            raise ValueError(f"--weights: {part!r} is not VERSION=PERCENT") from None
        if not sep or not name.strip():
            raise ValueError(f"--weights: {part!r} is not VERSION=PERCENT")
    return weights


# -- output ---------------------------------------------------------------------------


def _measure(check: dict[str, Any], key: str) -> str:
    """A check's value or threshold in its unit: a rate as %, latency in ms, else plain."""
    value = check.get(key)
    if value is None:
        return "-"
    name = check["name"]
    if "latency" in name:
        return f"{value:.1f} ms"
    if name.endswith("distribution") or name == "golden probes":
        return f"{value:.3g}"
    return f"{value:.2%}"


def _ago(at: float, now: float) -> str:
    seconds = max(0.0, now - at)
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def render_status(shown: dict[str, Any], now: float | None = None) -> str:
    """One rollout for people: where it is, its last analysis check by check, its history."""
    now = time.time() if now is None else now
    stages = shown.get("stages") or []
    stage = int(shown.get("stage", 0))
    labels = [f"[{label}]" if i == stage else label for i, label in enumerate(stages)]
    lines = [
        f"rollout {shown['id']}: {shown['model']} {shown['stable']} -> {shown['candidate']} "
        f"({shown['strategy']}) {shown['status'].upper()}",
        f"  stages   {' -> '.join(labels)}",
    ]
    if shown.get("step_elapsed_s") is not None:
        lines.append(
            f"  step     {shown['step_elapsed_s']:.0f} of {shown['step_due_s']:g} s; "
            f"extensions {shown['extensions']} of {shown['max_extensions']} "
            f"(then {shown['on_inconclusive']})"
        )
    if shown.get("tenants"):
        lines.append(f"  tenants  {', '.join(shown['tenants'])}")
    if shown.get("reason"):
        lines.append(f"  reason   {shown['reason']}")
    analysis = shown.get("analysis")
    if analysis:
        lines += ["", f"analysis: {analysis['verdict'].upper()}"]
        rows = [
            (
                check["name"],
                _measure(check, "value"),
                _measure(check, "threshold"),
                f"{check['samples']:,}",
                "-" if check.get("stable_samples") is None else f"{check['stable_samples']:,}",
                check["verdict"].upper() if check["verdict"] == "fail" else check["verdict"],
            )
            for check in analysis["checks"]
        ]
        headings = ("CHECK", "VALUE", "THRESHOLD", "N", "N STABLE", "VERDICT")
        lines += ["  " + line for line in table(headings, rows).splitlines()]
    verified = shown.get("verified")
    if verified:
        share = verified.get("stable_share")
        lines += [
            "",
            f"rollback verified: {'yes' if verified.get('ok') else 'NO'} (split removed: "
            f"{verified.get('split_removed')}, stable share "
            f"{'-' if share is None else f'{share:.0%}'} over {verified.get('window_s')} s, "
            f"stable probes {verified.get('probes_passed')} passed "
            f"{verified.get('probes_failed')} failed)",
        ]
    history = shown.get("history") or []
    if history:
        lines += ["", "history:"]
        for entry in history[-10:]:
            label = stages[entry["stage"]] if entry.get("stage", -1) < len(stages) else "?"
            lines.append(
                f"  {_ago(entry['at'], now):>8}  {entry['action']:<11} {label:<12} "
                f"by {entry['actor']}: {entry['reason']}"
            )
    return "\n".join(lines)


def _summary_rows(rollouts: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for shown in rollouts:
        stages = shown.get("stages") or []
        stage = int(shown.get("stage", 0))
        verdict = (shown.get("analysis") or {}).get("verdict", "-")
        rows.append(
            (
                shown["id"],
                shown["model"],
                f"{shown['stable']} -> {shown['candidate']}",
                shown["strategy"],
                shown["status"],
                stages[stage] if stage < len(stages) else "?",
                verdict,
            )
        )
    return rows


def _show(gateway: Gateway, answer: dict[str, Any], as_json: bool, done: str) -> None:
    if as_json:
        _echo_json(answer)
        return
    click.echo(f"{done} on {gateway.url}")
    click.echo(render_status(answer))


# -- commands -------------------------------------------------------------------------


@click.group("rollout")
def rollout_group() -> None:
    """Roll a model out to a new version, judged on evidence, rolled back on its own.

    A rollout moves MODEL's default traffic from its default version to
    --to VERSION in steps; each step is analysed against the stable version
    (replica errors, contract violations, p99 latency, golden probes, label
    disagreement on shadow traffic, output distributions). A failed check
    rolls back at once; a step without enough evidence is extended, then held.

    \b
    Example:
      failsoft rollout start iris --to v2 --steps 10,50,100 --step-s 60
      failsoft rollout status iris
      failsoft rollout abort iris
    """


@rollout_group.command("start")
@click.argument("model", required=False)
@click.option("--to", "to", default=None, metavar="VERSION", help="The candidate version.")
@click.option(
    "--file",
    "file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="The rollout declared in YAML (the admin API's spec: model, to, strategy, steps, "
    "step_s, analysis, ...) instead of the options.",
)
@click.option(
    "--strategy",
    type=click.Choice(STRATEGIES),
    default="canary",
    show_default=True,
    help="canary: steps; shadow: mirrored traffic first, then steps; ab: a fixed split; "
    "blue-green: shadow, then 100% at once.",
)
@click.option("--steps", default=None, help="Candidate weights in percent [default 10,50,100].")
@click.option("--weights", default=None, help="ab: the split, STABLE=50,CANDIDATE=50.")
@click.option(
    "--step-s",
    "step_s",
    type=click.FloatRange(min=0, min_open=True),
    default=60.0,
    show_default=True,
    help="Seconds per step before it is judged.",
)
@click.option(
    "--shadow",
    type=click.FloatRange(0, 1, min_open=True),
    default=None,
    help="Share of the stable's requests mirrored in a shadow phase [default 1].",
)
@click.option("--tenant", "tenants", multiple=True, help="Only this tenant takes part (repeat).")
@click.option(
    "--max-extensions",
    type=click.IntRange(0, 100),
    default=None,
    help="Times an inconclusive step is extended [default 3].",
)
@click.option(
    "--on-inconclusive",
    type=click.Choice(("hold", "rollback")),
    default=None,
    help="After the last extension [default hold].",
)
@_json_option
@_gateway_options
def rollout_start(
    model: str | None,
    to: str | None,
    file: Path | None,
    strategy: str,
    steps: str | None,
    weights: str | None,
    step_s: float,
    shadow: float | None,
    tenants: tuple[str, ...],
    max_extensions: int | None,
    on_inconclusive: str | None,
    as_json: bool,
    gateway: Gateway,
) -> None:
    """Start rolling MODEL out to --to VERSION (or the rollout in --file).

    The gateway refuses a version that is not loaded, a second rollout of the
    same model, steps that do not end at 100 (canary, shadow) or weights that
    do not add up to 100 (ab), naming the field; then nothing changes.

    \b
    Example:
      failsoft rollout start iris --to v2
      failsoft rollout start iris --to v2 --strategy shadow --steps 5,25,50,100 --step-s 120
      failsoft rollout start iris --to v2 --strategy ab --weights v1=50,v2=50 --step-s 600
      failsoft rollout start --file rollout.yaml
    """
    if file is not None:
        if model is not None or to is not None:
            raise Failed("--file: give the rollout in the file, or MODEL and --to, not both", 2)
        answer = gateway.json("POST", "/admin/rollouts", _read_spec(file))
        _show(gateway, answer, as_json, f"rollout {answer['id']} started")
        return
    if model is None or to is None:
        raise Failed("MODEL and --to VERSION are required (or --file FILE)", 2)
    spec: dict[str, Any] = {"model": model, "to": to, "strategy": strategy, "step_s": step_s}
    try:
        if steps is not None:
            spec["steps"] = parse_steps(steps)
        if weights is not None:
            spec["weights"] = parse_weights(weights)
    except ValueError as error:
        raise Failed(str(error), 2) from None
    if shadow is not None:
        spec["shadow"] = shadow
    if tenants:
        spec["tenants"] = list(tenants)
    if max_extensions is not None:
        spec["max_extensions"] = max_extensions
    if on_inconclusive is not None:
        spec["on_inconclusive"] = on_inconclusive
    answer = gateway.json("POST", "/admin/rollouts", spec)
    _show(gateway, answer, as_json, f"rollout {answer['id']} started")


@rollout_group.command("status")
@click.argument("rollout", required=False)
@_json_option
@_gateway_options
def rollout_status(rollout: str | None, as_json: bool, gateway: Gateway) -> None:
    """Show a rollout (by id or model) with each check's value, threshold, sample size
    and verdict; without one, list them all.

    \b
    Example:
      failsoft rollout status iris
      failsoft rollout status --json
    """
    if rollout is None:
        answer = gateway.json("GET", "/admin/rollouts")
        if as_json:
            _echo_json(answer)
        elif not answer["rollouts"]:
            click.echo("no rollouts")
        else:
            headings = ("ID", "MODEL", "VERSIONS", "STRATEGY", "STATUS", "STAGE", "ANALYSIS")
            click.echo(table(headings, _summary_rows(answer["rollouts"])))
        return
    answer = gateway.json("GET", f"/admin/rollouts/{rollout}")
    if as_json:
        _echo_json(answer)
    else:
        click.echo(render_status(answer))


def _action(verb: str, done: str) -> click.Command:
    @click.argument("rollout")
    @_json_option
    @_gateway_options
    def command(rollout: str, as_json: bool, gateway: Gateway) -> None:
        answer = gateway.json("POST", f"/admin/rollouts/{rollout}/{verb}")
        _show(gateway, answer, as_json, f"rollout {answer['id']} {done}")

    command.__doc__ = {
        "pause": "Hold ROLLOUT (id or model) at its step: no analysis moves it.",
        "resume": "Resume a paused ROLLOUT with a fresh window at its step.",
        "promote": "Promote ROLLOUT now: the candidate takes all traffic and becomes the "
        "default version.",
        "abort": "Abort ROLLOUT: all traffic back to the stable version at once (verified).",
    }[verb] + f"\n\n    \b\n    Example:\n      failsoft rollout {verb} iris\n    "
    return rollout_group.command(verb)(command)


for _verb, _done in (
    ("pause", "paused"),
    ("resume", "resumed"),
    ("promote", "promoted"),
    ("abort", "aborted"),
):
    _action(_verb, _done)


def _read_spec(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise Failed(f"--file: cannot read {path}: {error}", 2) from None
    except yaml.YAMLError as error:
        raise Failed(f"--file: {path} is not valid YAML: {error}", 2) from None
    if not isinstance(data, dict):
        raise Failed(f"--file: {path} must hold a mapping (model, to, strategy, ...)", 2)
    return data


def register(group: click.Group) -> None:
    """Add ``rollout`` to the ``failsoft`` group."""
    group.add_command(rollout_group)
