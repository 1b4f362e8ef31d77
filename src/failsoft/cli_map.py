"""`failsoft map`: the dependency map of a gateway (GET /admin/map) as an indented tree."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

import click

from failsoft.cli_control import Gateway, _echo_json, _gateway_options, _json_option
from failsoft.observe.depmap import BAD, GOOD

__all__ = ["register", "render_tree"]


def _colour_of(state: str) -> str:
    if state in GOOD:
        return "green"
    return "red" if state in BAD else "yellow"


def render_tree(models: list[Mapping[str, Any]], colour: bool = False) -> str:
    """One line per node, children indented under their parent with tree guides."""
    lines: list[str] = []

    def walk(node: Mapping[str, Any], prefix: str, last: bool, top: bool) -> None:
        state = str(node["state"])
        word = click.style(state, fg=_colour_of(state), bold=True) if colour else state
        head = "" if top else prefix + ("└─ " if last else "├─ ")
        kind = "" if node["kind"] in ("model", "fallback") else f"{node['kind']} "
        detail = f"  ({node['detail']})" if node.get("detail") else ""
        lines.append(f"{head}{kind}{node['name']}  [{word}]{detail}")
        children = node.get("children") or []
        inner = "" if top else prefix + ("   " if last else "│  ")
        for index, child in enumerate(children):
            walk(child, inner, index == len(children) - 1, False)

    for model in models:
        walk(model, "", True, True)
    return "\n".join(lines) if lines else "(no models)"


def _want_colour() -> bool:
    return sys.stdout.isatty() and "NO_COLOR" not in os.environ


@click.command("map")
@_json_option
@_gateway_options
def map_command(as_json: bool, gateway: Gateway) -> None:
    """The dependency map: models → versions → replicas (upstream or worker) → fallback
    tiers, each with its state now.

    States: operational, degraded, down, halted, switched-off; replicas: up,
    ejected, breaker open, probe failing, restarting. Colour only on a terminal
    without NO_COLOR.

    \b
    Example:
      failsoft map
      failsoft map --url http://127.0.0.1:8000 --json
    """
    answer = gateway.json("GET", "/admin/map")
    if as_json:
        _echo_json(answer)
        return
    click.echo(render_tree(answer["models"], colour=_want_colour()), color=_want_colour())


def register(main: click.Group) -> None:
    main.add_command(map_command)
