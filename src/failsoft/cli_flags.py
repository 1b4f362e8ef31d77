"""Runtime flags and the gateway's switches, from the command line.

    failsoft flag set KEY VALUE [--kind K] [--tenant T …] [--header NAME=VALUE …]
                                [--percent P] [--default D] [--expires-in 10m]
    failsoft flag get KEY | flag list | flag clear KEY
    failsoft halt MODEL[/VERSION] [--off]          safe halt: no call reaches it
    failsoft switch MODEL/VERSION off|on           its traffic goes to the fallback chain

They reach the gateway's admin API as the control-plane commands do
(``--url``, the token from ``$FAILSOFT_ADMIN_TOKEN``), with the same output
(a table, or ``--json``) and exit codes: 0 done; 1 the gateway refused (its
reason is printed: a value of the wrong type, an expiry in the past, a
switch naming a version that is not served) or cannot be reached; 2 the
arguments are wrong.
"""

from __future__ import annotations

import re
import time
from typing import Any

import click
import orjson

from failsoft.cli_control import (
    Failed,
    Gateway,
    _echo_json,
    _gateway_options,
    _json_option,
    table,
)

__all__ = ["parse_duration", "parse_value", "register", "spec_from_options"]

KINDS = ("boolean", "string", "integer", "float", "object")
PREFIX = "failsoft."
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d)?$")
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0, None: 1.0}


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``10m``, ``2h``, ``1d`` in seconds; ValueError otherwise."""
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None or float(match.group(1)) <= 0:
        raise ValueError(f"{text!r} is not a duration (90s, 10m, 2h, 1d)")
    return float(match.group(1)) * _UNITS[match.group(2)]


def guess_kind(text: str) -> str:
    """The kind a value written on the command line looks like."""
    if text in ("true", "false"):
        return "boolean"
    if re.fullmatch(r"-?\d+", text):
        return "integer"
    try:
        number = float(text)
    except ValueError:
        number = None
    if number is not None and text.strip().lower() not in ("nan", "inf", "-inf", "infinity"):
        return "float"
    if text.lstrip().startswith("{"):
        return "object"
    return "string"


def parse_value(text: str, kind: str, what: str = "VALUE") -> Any:
    """``text`` as a value of ``kind``; ValueError naming ``what`` when it is none."""
    if kind == "boolean":
        lowered = text.strip().lower()
        if lowered in ("true", "on", "yes", "1"):
            return True
        if lowered in ("false", "off", "no", "0"):
            return False
        raise ValueError(f"{what}: {text!r} is not a boolean (true or false)")
    if kind == "integer":
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{what}: {text!r} is not an integer") from None
    if kind == "float":
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{what}: {text!r} is not a number") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"{what}: {text!r} is not a finite number")
        return value
    if kind == "object":
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError:
            raise ValueError(f"{what}: {text!r} is not JSON") from None
        if not isinstance(value, dict):
            raise ValueError(f"{what}: an object flag's value is a JSON object ({{...}})")
        return value
    return text


def spec_from_options(
    key: str,
    value: str,
    kind: str | None,
    tenants: tuple[str, ...],
    headers: tuple[str, ...],
    percent: float | None,
    default: str | None,
    expires_in: str | None,
    description: str | None,
) -> dict[str, Any]:
    """The spec ``flag set`` sends (ValueError for arguments that cannot make one).

    Without targeting, VALUE is the flag's value. With it (--tenant, --header,
    --percent), VALUE is the value of the requests that match and --default
    that of the others (for a boolean, the opposite of VALUE unless given).
    """
    chosen = kind or ("boolean" if key.startswith(PREFIX) else guess_kind(value))
    parsed = parse_value(value, chosen)
    spec: dict[str, Any] = {"kind": chosen}
    when: dict[str, Any] = {}
    if tenants:
        when["tenants"] = list(tenants)
    if headers:
        matches: dict[str, list[str]] = {}
        for item in headers:
            name, sep, wanted = item.partition("=")
            if not sep or not name.strip():
                raise ValueError(f"--header: {item!r} is not NAME=VALUE")
            matches.setdefault(name.strip().lower(), []).append(wanted)
        when["header"] = matches
    if percent is not None:
        when["percent"] = percent
    if when:
        if default is not None:
            otherwise = parse_value(default, chosen, "--default")
        elif chosen == "boolean":
            otherwise = not parsed
        else:
            raise ValueError(
                "--default: give the value of the requests the targeting does not match"
            )
        spec["value"] = otherwise
        spec["rules"] = [{"when": when, "value": parsed}]
    else:
        if default is not None:
            raise ValueError("--default applies with --tenant, --header or --percent only")
        spec["value"] = parsed
    if expires_in is not None:
        spec["expires_in_s"] = parse_duration(expires_in)
    if description:
        spec["description"] = description
    return spec


# -- output ---------------------------------------------------------------------------


def _shown(value: Any, width: int = 40) -> str:
    text = orjson.dumps(value).decode() if not isinstance(value, str) else value
    return text if len(text) <= width else text[: width - 1] + "…"


def describe_rule(rule: dict[str, Any]) -> str:
    """``tenant acme, 10% -> true``."""
    when = rule.get("when", {})
    parts = []
    if when.get("tenants") is not None:
        parts.append("tenant " + ",".join(when["tenants"]))
    for name, values in (when.get("header") or {}).items():
        parts.append(f"{name}={'|'.join(values)}")
    if when.get("percent") is not None:
        parts.append(f"{when['percent']:g}%")
    return f"{', '.join(parts) or 'always'} -> {_shown(rule.get('value'), 20)}"


def expires(spec: dict[str, Any], now: float | None = None) -> str:
    at = spec.get("expires_at")
    if at is None:
        return ""
    left = at - (time.time() if now is None else now)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at))
    if left <= 0:
        return f"{stamp} (expired)"
    if left < 120:
        return f"{stamp} (in {left:.0f}s)"
    if left < 7200:
        return f"{stamp} (in {left / 60:.0f}m)"
    return f"{stamp} (in {left / 3600:.1f}h)"


def _rows(entries: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for entry in entries:
        spec = entry["spec"]
        rows.append(
            (
                entry["key"],
                spec["kind"],
                _shown(spec["value"]),
                "; ".join(describe_rule(rule) for rule in spec.get("rules", [])),
                expires(spec),
                entry.get("switch") or "",
            )
        )
    return rows


_HEADINGS = ("KEY", "KIND", "VALUE", "RULES", "EXPIRES", "SWITCH")


def _set(gateway: Gateway, key: str, spec: dict[str, Any], as_json: bool, done: str) -> None:
    answer = gateway.json("PUT", f"/admin/flags/{key}", spec)
    if as_json:
        _echo_json(answer)
        return
    click.echo(f"{done} on {gateway.url}")
    click.echo(table(_HEADINGS, _rows([answer])))


def _clear(gateway: Gateway, key: str, as_json: bool, done: str, absent: str) -> None:
    try:
        answer = gateway.json("DELETE", f"/admin/flags/{key}")
    except Failed as error:
        if not error.message.startswith("there is no flag"):
            raise
        answer = {"cleared": None}
        message = absent
    else:
        message = f"{done} on {gateway.url}"
    if as_json:
        _echo_json(answer)
    else:
        click.echo(message)


def _checked_key(key: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,199}", key):
        raise Failed(
            f"KEY: {key!r} is not a flag key (letters, digits, '_', '.', '-'; at most 200)", 2
        )
    return key


def _target(text: str, *, version_required: bool) -> tuple[str, str | None]:
    model, sep, version = text.partition("/")
    if not model or (sep and not version) or "/" in version:
        raise Failed(f"{text!r} is not MODEL or MODEL/VERSION", 2)
    if version_required and not version:
        raise Failed(f"{text!r}: name the version, MODEL/VERSION", 2)
    return model, version or None


# -- commands -------------------------------------------------------------------------


@click.group("flag")
def flag_group() -> None:
    """Runtime flags: set, read and clear them on a running gateway.

    A flag is in force the moment `flag set` returns, every change is in the
    audit log, and applications read the flags over OpenFeature's OFREP
    (/ofrep/v1/evaluate/flags). Keys under `failsoft.` are the gateway's own
    switches (booleans):

    \b
      failsoft.halt.MODEL[.VERSION]      safe halt: no call reaches it
      failsoft.disable.MODEL.VERSION     its traffic goes to the fallback chain
      failsoft.feature.MODEL.FEATURE     false: hedging, caching, shadowing or
                                         retries off for the model

    \b
    Example:
      failsoft flag set checkout.banner blue
      failsoft flag set failsoft.halt.iris.v2 true --expires-in 10m
      failsoft flag list
      failsoft flag clear checkout.banner
    """


@flag_group.command("set")
@click.argument("key")
@click.argument("value")
@click.option(
    "--kind",
    type=click.Choice(KINDS),
    default=None,
    help="The flag's kind [default: from VALUE; boolean for failsoft.* switches].",
)
@click.option(
    "--tenant",
    "tenants",
    multiple=True,
    metavar="T",
    help="Only requests of tenant T get VALUE (repeat for more).",
)
@click.option(
    "--header",
    "headers",
    multiple=True,
    metavar="NAME=VALUE",
    help="Only requests with this header value get VALUE (repeat for more).",
)
@click.option(
    "--percent",
    type=click.FloatRange(0, 100),
    default=None,
    metavar="P",
    help="Only this share of keys gets VALUE, sticky by Failsoft-Key / targetingKey.",
)
@click.option(
    "--default",
    "default",
    default=None,
    metavar="D",
    help="With targeting: the value of the other requests [boolean: not VALUE].",
)
@click.option(
    "--expires-in",
    default=None,
    metavar="DURATION",
    help="Revert on its own after this long (90s, 10m, 2h, 1d).",
)
@click.option("--description", default=None, help="What the flag is for.")
@_json_option
@_gateway_options
def flag_set(
    key: str,
    value: str,
    kind: str | None,
    tenants: tuple[str, ...],
    headers: tuple[str, ...],
    percent: float | None,
    default: str | None,
    expires_in: str | None,
    description: str | None,
    as_json: bool,
    gateway: Gateway,
) -> None:
    """Set flag KEY to VALUE, in force at once on the gateway.

    With --tenant, --header or --percent the flag has one rule: the requests
    it matches get VALUE, the others --default. The gateway refuses a value
    of the wrong kind, an expiry in the past, or a switch naming a model,
    version or feature it does not serve; then nothing changes.

    \b
    Example:
      failsoft flag set checkout.banner blue
      failsoft flag set search.limit 20 --kind integer
      failsoft flag set new.ranker true --percent 10
      failsoft flag set failsoft.disable.iris.v1 true --tenant acme --expires-in 30m
    """
    try:
        spec = spec_from_options(
            _checked_key(key),
            value,
            kind,
            tenants,
            headers,
            percent,
            default,
            expires_in,
            description,
        )
    except ValueError as error:
        raise Failed(str(error), 2) from None
    _set(gateway, key, spec, as_json, f"flag {key} set")


@flag_group.command("get")
@click.argument("key")
@_json_option
@_gateway_options
def flag_get(key: str, as_json: bool, gateway: Gateway) -> None:
    """Show flag KEY: its kind, value, rules and expiry.

    \b
    Example:
      failsoft flag get failsoft.halt.iris.v2
    """
    answer = gateway.json("GET", f"/admin/flags/{_checked_key(key)}")
    if as_json:
        _echo_json(answer)
    else:
        click.echo(table(_HEADINGS, _rows([answer])))


@flag_group.command("list")
@_json_option
@_gateway_options
def flag_list(as_json: bool, gateway: Gateway) -> None:
    """List the flags in force, switches included.

    \b
    Example:
      failsoft flag list
    """
    answer = gateway.json("GET", "/admin/flags")
    if as_json:
        _echo_json(answer)
        return
    if not answer["flags"]:
        click.echo("no flags set")
        return
    click.echo(table(_HEADINGS, _rows(answer["flags"])))


@flag_group.command("clear")
@click.argument("key")
@_json_option
@_gateway_options
def flag_clear(key: str, as_json: bool, gateway: Gateway) -> None:
    """Clear flag KEY (exit 1 when there is none).

    \b
    Example:
      failsoft flag clear checkout.banner
    """
    answer = gateway.json("DELETE", f"/admin/flags/{_checked_key(key)}")
    if as_json:
        _echo_json(answer)
    else:
        click.echo(f"flag {key} cleared on {gateway.url}")


@click.command("halt")
@click.argument("target", metavar="MODEL[/VERSION]")
@click.option("--off", is_flag=True, help="End the halt.")
@click.option(
    "--expires-in",
    default=None,
    metavar="DURATION",
    help="End the halt on its own after this long (90s, 10m, 2h, 1d).",
)
@_json_option
@_gateway_options
def halt_command(
    target: str, off: bool, expires_in: str | None, as_json: bool, gateway: Gateway
) -> None:
    """Safe halt: no call reaches MODEL (every version) or MODEL/VERSION.

    Requests are answered by the fallback tiers that are not halted (marked
    degraded), else a 503 with a message and Retry-After: never a silent
    wrong answer. It is the flag failsoft.halt.MODEL[.VERSION]; --off clears it.

    \b
    Example:
      failsoft halt iris/v2
      failsoft halt iris --expires-in 15m
      failsoft halt iris/v2 --off
    """
    model, version = _target(target, version_required=False)
    key = f"{PREFIX}halt.{model}" + (f".{version}" if version else "")
    if off:
        if expires_in is not None:
            raise Failed("--expires-in applies to a halt, not to --off", 2)
        _clear(gateway, key, as_json, f"{target} is no longer halted", f"{target} was not halted")
        return
    spec: dict[str, Any] = {"kind": "boolean", "value": True}
    if expires_in is not None:
        try:
            spec["expires_in_s"] = parse_duration(expires_in)
        except ValueError as error:
            raise Failed(f"--expires-in: {error}", 2) from None
    _set(gateway, key, spec, as_json, f"{target} halted")


@click.command("switch")
@click.argument("target", metavar="MODEL/VERSION")
@click.argument("state", type=click.Choice(["off", "on"]))
@_json_option
@_gateway_options
def switch_command(target: str, state: str, as_json: bool, gateway: Gateway) -> None:
    """Switch MODEL/VERSION off (its traffic goes to the fallback chain) or on again.

    It is the flag failsoft.disable.MODEL.VERSION.

    \b
    Example:
      failsoft switch iris/v1 off
      failsoft switch iris/v1 on
    """
    model, version = _target(target, version_required=True)
    key = f"{PREFIX}disable.{model}.{version}"
    if state == "on":
        _clear(gateway, key, as_json, f"{target} is on again", f"{target} was not switched off")
        return
    _set(gateway, key, {"kind": "boolean", "value": True}, as_json, f"{target} switched off")


COMMANDS: tuple[click.Command, ...] = (flag_group, halt_command, switch_command)


def register(group: click.Group) -> None:
    """Add ``flag``, ``halt`` and ``switch`` to the ``failsoft`` group."""
    for command in COMMANDS:
        group.add_command(command)
