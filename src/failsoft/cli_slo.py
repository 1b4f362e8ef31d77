"""SLOs and incidents from the command line.

    failsoft slo status [--json]                 budget left, burn rates, alerts firing
    failsoft slo rules [--config FILE]           equivalent Prometheus rules (YAML)
    failsoft incident list [--state S] [--json]
    failsoft incident show N [--json]
    failsoft incident ack N | resolve N [TEXT] | update N TEXT | approve N
    failsoft incident remediate N TEXT | remediate N --close ITEM
    failsoft incident postmortem N [-o FILE]

They reach the gateway's admin API as the other control commands do
(``--url``, the token from ``$FAILSOFT_ADMIN_TOKEN``); exit codes: 0 done,
1 the gateway refused or cannot be reached, 2 the arguments are wrong.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from failsoft.cli_control import Failed, Gateway, _echo_json, _gateway_options, _json_option, table

__all__ = ["register"]

STATES = ("open", "acknowledged", "mitigated", "resolved")


def _pct(value: float) -> str:
    return f"{100.0 * value:.2f}%"


def _when(at: float | None) -> str:
    return "" if at is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at))


def _secs(value: float | None) -> str:
    if value is None:
        return ""
    if value < 1:
        return f"{value * 1000:.0f}ms"
    return f"{value:.1f}s" if value < 120 else f"{value / 60:.1f}m"


# -- slo ------------------------------------------------------------------------------


@click.group("slo")
def slo_group() -> None:
    """SLOs and error budgets of a running gateway.

    Each model has an availability objective (its objective_pct; a degraded
    answer counts as answered) and optionally quality, latency and accuracy
    objectives (models.NAME.slo; accuracy counts the labels sent as
    feedback), over a rolling 28- or 30-day window, summed over every
    gateway sharing the control store. Alerts follow the
    SRE workbook: 14.4x over 1h and 5m or 6x over 6h and 30m page; 3x over
    1d and 2h or 1x over 3d and 6h open a ticket.

    \b
    Example:
      failsoft slo status
      failsoft slo rules > failsoft-slo.rules.yaml
    """


@slo_group.command("status")
@_json_option
@_gateway_options
def slo_status(as_json: bool, gateway: Gateway) -> None:
    """Each objective: target, events, budget left, burn rates, alerts firing.

    \b
    Example:
      failsoft slo status
      failsoft slo status --json | jq '.slos[] | select(.budget_left < 0.5)'
    """
    answer = gateway.json("GET", "/admin/slo")
    if as_json:
        _echo_json(answer)
        return
    rows = []
    for row in answer["slos"]:
        burn = row["burn"]
        rows.append(
            (
                row["model"] + (f" ({row['tenant']})" if row["tenant"] else ""),
                row["objective"]
                + (f" <{row['latency_ms']:g}ms" if row.get("latency_ms") else "")
                + (f" ±{row['tolerance']:g}" if row.get("tolerance") else ""),
                f"{row['target_pct']:g}% / {row['window_days']}d",
                row["events"],
                row["bad"],
                _pct(row["budget_left"]),
                " ".join(f"{burn[w]:.2g}" for w in ("5m", "1h", "6h", "1d")),
                ", ".join(row["alerts"]) or "-",
            )
        )
    if not rows:
        click.echo("no requests counted yet")
        return
    click.echo(
        table(
            (
                "MODEL",
                "OBJECTIVE",
                "TARGET",
                "EVENTS",
                "BAD",
                "BUDGET LEFT",
                "BURN 5m 1h 6h 1d",
                "ALERTS",
            ),
            rows,
        )
    )
    if not answer.get("saved", True):
        click.echo("note: the control store is down; SLO state is kept in memory meanwhile")


@slo_group.command("rules")
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Make them from this configuration file instead of asking the gateway.",
)
@_gateway_options
def slo_rules(config_path: Path | None, gateway: Gateway) -> None:
    """Print Prometheus recording and alerting rules equivalent to the gateway's alerts.

    They read the failsoft_slo_events_total and failsoft_slo_bad_events_total
    counters of /metrics.

    \b
    Example:
      failsoft slo rules > failsoft-slo.rules.yaml
      failsoft slo rules --config failsoft.yaml
    """
    if config_path is None:
        click.echo(gateway.call("GET", "/admin/slo/rules").decode(), nl=False)
        return
    from failsoft.config import ConfigError, load_config
    from failsoft.control.burn import prometheus_rules
    from failsoft.control.slo import rule_subjects

    try:
        config = load_config(config_path)
    except ConfigError as error:
        raise Failed(str(error), 2) from None
    click.echo(prometheus_rules(rule_subjects(config.models)), nl=False)


# -- incident -------------------------------------------------------------------------


@click.group("incident")
def incident_group() -> None:
    """Incidents: opened by failsoft itself, with exact timelines and MTTD/MTTM/MTTR.

    An incident opens on a page-level burn alert, a version with every
    replica out, a safe halt, or an automatic rollback. States: open ->
    acknowledged -> mitigated (impact ended) -> resolved.

    \b
    Example:
      failsoft incident list
      failsoft incident ack 3
      failsoft incident update 3 "v1 workers restarting; fallback answering"
      failsoft incident resolve 3 "bad node drained"
      failsoft incident postmortem 3 -o incident-3.md
    """


@incident_group.command("list")
@click.option("--state", type=click.Choice(STATES), default=None, help="Only these.")
@_json_option
@_gateway_options
def incident_list(state: str | None, as_json: bool, gateway: Gateway) -> None:
    """Incidents, newest first, with their measures and the means.

    \b
    Example:
      failsoft incident list --state open
    """
    path = "/admin/incidents" + (f"?state={state}" if state else "")
    answer = gateway.json("GET", path)
    if as_json:
        _echo_json(answer)
        return
    rows = [
        (
            i["id"],
            i["state"],
            i["model"],
            i["cause"],
            _when(i["opened_at"]),
            i["failed"],
            i["degraded"],
            _secs(i["mttd_s"]),
            _secs(i["mttm_s"]),
            _secs(i["mttr_s"]),
            i["title"],
        )
        for i in answer["incidents"]
    ]
    if not rows:
        click.echo("no incidents")
        return
    click.echo(
        table(
            (
                "ID",
                "STATE",
                "MODEL",
                "CAUSE",
                "OPENED (UTC)",
                "FAILED",
                "DEGRADED",
                "MTTD",
                "MTTM",
                "MTTR",
                "TITLE",
            ),
            rows,
        )
    )
    means = answer["means"]
    click.echo(
        f"means: MTTD {_secs(means['mttd_s']) or '-'}  MTTM {_secs(means['mttm_s']) or '-'}  "
        f"MTTR {_secs(means['mttr_s']) or '-'}"
    )


def _show(incident: dict[str, Any]) -> None:
    click.echo(f"incident {incident['id']}: {incident['title']}")
    click.echo(
        f"state {incident['state']}, model {incident['model']}, cause {incident['cause']}; "
        f"{incident['failed']} failed, {incident['degraded']} degraded"
    )
    click.echo(
        f"MTTD {_secs(incident['mttd_s']) or '-'}  MTTM {_secs(incident['mttm_s']) or '-'}  "
        f"MTTR {_secs(incident['mttr_s']) or '-'}"
    )
    rows = [
        (
            time.strftime("%H:%M:%S", time.gmtime(e["at"])) + f".{int((e['at'] % 1) * 1000):03d}",
            e["kind"],
            e["text"],
        )
        for e in incident["timeline"]
    ]
    click.echo(table(("TIME (UTC)", "KIND", "WHAT"), rows))


@incident_group.command("show")
@click.argument("number", type=click.IntRange(min=1))
@_json_option
@_gateway_options
def incident_show(number: int, as_json: bool, gateway: Gateway) -> None:
    """One incident with its timeline.

    \b
    Example:
      failsoft incident show 3
    """
    answer = gateway.json("GET", f"/admin/incidents/{number}")
    if as_json:
        _echo_json(answer)
    else:
        _show(answer)


def _change(gateway: Gateway, number: int, verb: str, body: dict[str, Any], as_json: bool) -> None:
    answer = gateway.json("POST", f"/admin/incidents/{number}/{verb}", body)
    if as_json:
        _echo_json(answer)
        return
    click.echo(f"incident {number}: {answer['state']}")
    if not answer.get("saved", True):
        click.echo("note: the control store is down; the change is saved when it answers")


@incident_group.command("ack")
@click.argument("number", type=click.IntRange(min=1))
@_json_option
@_gateway_options
def incident_ack(number: int, as_json: bool, gateway: Gateway) -> None:
    """Acknowledge an incident (someone is on it).

    \b
    Example:
      failsoft incident ack 3
    """
    _change(gateway, number, "ack", {}, as_json)


@incident_group.command("resolve")
@click.argument("number", type=click.IntRange(min=1))
@click.argument("text", required=False, default="")
@_json_option
@_gateway_options
def incident_resolve(number: int, text: str, as_json: bool, gateway: Gateway) -> None:
    """Resolve an incident, optionally saying how.

    \b
    Example:
      failsoft incident resolve 3 "bad node drained"
    """
    _change(gateway, number, "resolve", {"text": text}, as_json)


@incident_group.command("update")
@click.argument("number", type=click.IntRange(min=1))
@click.argument("text")
@_json_option
@_gateway_options
def incident_update(number: int, text: str, as_json: bool, gateway: Gateway) -> None:
    """Post a status update; it goes on the timeline.

    \b
    Example:
      failsoft incident update 3 "fallback answering; v1 workers restarting"
    """
    _change(gateway, number, "update", {"text": text}, as_json)


@incident_group.command("approve")
@click.argument("number", type=click.IntRange(min=1))
@_json_option
@_gateway_options
def incident_approve(number: int, as_json: bool, gateway: Gateway) -> None:
    """Approve the runbook steps of an incident that wait for approval.

    \b
    Example:
      failsoft incident approve 3
    """
    _change(gateway, number, "approve", {}, as_json)


@incident_group.command("remediate")
@click.argument("number", type=click.IntRange(min=1))
@click.argument("text", required=False, default=None)
@click.option("--close", type=click.IntRange(min=1), default=None, help="Close this item.")
@_json_option
@_gateway_options
def incident_remediate(
    number: int, text: str | None, close: int | None, as_json: bool, gateway: Gateway
) -> None:
    """Add a remediation item, or close one; they are tracked until closed.

    \b
    Example:
      failsoft incident remediate 3 "alert on worker restarts per minute"
      failsoft incident remediate 3 --close 1
    """
    if (text is None) == (close is None):
        raise Failed("give TEXT to add an item, or --close ITEM to close one", 2)
    body: dict[str, Any] = {"close": close} if close is not None else {"text": text}
    _change(gateway, number, "remediation", body, as_json)


@incident_group.command("postmortem")
@click.argument("number", type=click.IntRange(min=1))
@click.option(
    "-o",
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write it to this file [default: print it].",
)
@_gateway_options
def incident_postmortem(number: int, out: Path | None, gateway: Gateway) -> None:
    """Write the incident's postmortem in Markdown: summary, impact, timeline, actions,
    remediation items.

    \b
    Example:
      failsoft incident postmortem 3 -o incident-3.md
    """
    text = gateway.call("GET", f"/admin/incidents/{number}/postmortem").decode()
    if out is None:
        click.echo(text, nl=False)
        return
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as error:
        raise Failed(f"--out: cannot write {out}: {error.strerror}", 2) from None
    click.echo(f"postmortem of incident {number} written to {out}")


COMMANDS: tuple[click.Command, ...] = (slo_group, incident_group)


def register(group: click.Group) -> None:
    """Add ``slo`` and ``incident`` to the ``failsoft`` group."""
    for command in COMMANDS:
        group.add_command(command)
