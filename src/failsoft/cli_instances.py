"""``failsoft instances``: the gateways sharing one control store, as the store knows them.

Asks one gateway (``--url``) for the list: every gateway registered in its
store, with the revision it serves, how it hears of changes (``listen``:
PostgreSQL NOTIFY; ``poll``), and whether it is alive (its last heartbeat is
recent) or stale (it stopped beating: killed, or cut off from the store).
"""

from __future__ import annotations

from typing import Any

import click

from failsoft.cli_control import Failed, Gateway, _echo_json, _gateway_options, _json_option, table

__all__ = ["register"]


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.0f}h"


@click.command("instances")
@click.option("--alive", "alive_only", is_flag=True, help="Only the gateways that are alive.")
@_json_option
@_gateway_options
def instances(alive_only: bool, as_json: bool, gateway: Gateway) -> None:
    """List the gateways sharing the control store, with their revision and liveness.

    A gateway is alive while it beats (every store.heartbeat_s); after 3 missed
    beats it is stale, and its row is removed after store.instance_expire_s.
    The gateway answering is marked with *. Exit code 1 if any listed gateway
    is stale.

    \b
    Example:
      failsoft instances --url http://10.0.0.5:8000
      failsoft instances --json | jq '.instances[] | select(.alive | not)'
    """
    answer: dict[str, Any] = gateway.json("GET", "/admin/instances")
    rows = [row for row in answer["instances"] if row["alive"] or not alive_only]
    stale = [row for row in answer["instances"] if not row["alive"]]
    if as_json:
        _echo_json({**answer, "instances": rows})
    elif not rows:
        click.echo("no gateway is registered in the store")
    else:
        click.echo(
            table(
                ("  ID", "ADDRESS", "PID", "REV", "WAKE-UPS", "HEARTBEAT", "STATE", "STARTED"),
                [
                    (
                        ("* " if row["id"] == answer["self"] else "  ") + row["id"],
                        row["address"],
                        row["pid"],
                        row["revision"],
                        row["wakeups"],
                        _age(row["age_s"]) + " ago",
                        "alive" if row["alive"] else "STALE",
                        row["started_at"][:19].replace("T", " "),
                    )
                    for row in rows
                ],
            )
        )
    if stale:
        raise Failed(f"{len(stale)} gateway(s) stale: no heartbeat for 3 periods or more")


def register(group: click.Group) -> None:
    group.add_command(instances)
