"""The flag commands without a gateway: values, targeting and durations turned into a spec,
refusals before any request (exit 2), an unreachable gateway, and every --help's example."""

from __future__ import annotations

import socket
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result

from failsoft.cli import main
from failsoft.cli_flags import (
    COMMANDS,
    describe_rule,
    expires,
    guess_kind,
    parse_duration,
    parse_value,
    spec_from_options,
)


def run(*args: str) -> Result:
    result = CliRunner().invoke(main, list(args), env={"FAILSOFT_ADMIN_TOKEN": "some-token"})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert "Traceback" not in result.output
    return result


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90.0), ("90s", 90.0), ("10m", 600.0), ("2h", 7200.0), ("1d", 86_400.0), ("1.5m", 90.0)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "10x", "-5m", "m"])
def test_a_bad_duration_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("true", "boolean"),
        ("20", "integer"),
        ("0.5", "float"),
        ('{"a": 1}', "object"),
        ("blue", "string"),
        ("nan", "string"),
    ],
)
def test_the_kind_is_guessed_from_the_value(text: str, kind: str) -> None:
    assert guess_kind(text) == kind


@pytest.mark.parametrize(
    ("text", "kind", "message"),
    [
        ("maybe", "boolean", "'maybe' is not a boolean"),
        ("2.5", "integer", "'2.5' is not an integer"),
        ("inf", "float", "not a finite number"),
        ("[1]", "object", "is a JSON object"),
        ("{", "object", "is not JSON"),
    ],
)
def test_a_value_of_the_wrong_kind_is_refused(text: str, kind: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_value(text, kind)


def spec(key: str, value: str, **options: Any) -> dict[str, Any]:
    given: dict[str, Any] = {
        "kind": None,
        "tenants": (),
        "headers": (),
        "percent": None,
        "default": None,
        "expires_in": None,
        "description": None,
        **options,
    }
    return spec_from_options(key, value, **given)


def test_a_plain_flag_is_its_value() -> None:
    assert spec("banner", "blue") == {"kind": "string", "value": "blue"}
    assert spec("limit", "20", kind="float") == {"kind": "float", "value": 20.0}
    assert spec("failsoft.halt.iris", "1") == {"kind": "boolean", "value": True}


def test_targeting_makes_one_rule_and_a_boolean_defaults_to_its_opposite() -> None:
    made = spec(
        "failsoft.disable.iris.v1",
        "true",
        tenants=("acme", "globex"),
        headers=("X-Canary=yes", "x-canary=1"),
        percent=10.0,
        expires_in="10m",
    )
    assert made == {
        "kind": "boolean",
        "value": False,
        "rules": [
            {
                "when": {
                    "tenants": ["acme", "globex"],
                    "header": {"x-canary": ["yes", "1"]},
                    "percent": 10.0,
                },
                "value": True,
            }
        ],
        "expires_in_s": 600.0,
    }
    assert describe_rule(made["rules"][0]) == "tenant acme,globex, x-canary=yes|1, 10% -> true"


def test_targeting_another_kind_needs_a_default() -> None:
    with pytest.raises(ValueError, match="--default: give the value"):
        spec("banner", "red", percent=50.0)
    assert spec("banner", "red", percent=50.0, default="blue")["value"] == "blue"
    with pytest.raises(ValueError, match="--default applies with"):
        spec("banner", "red", default="blue")
    with pytest.raises(ValueError, match="--header: 'x-canary' is not NAME=VALUE"):
        spec("banner", "red", headers=("x-canary",), default="blue")


def test_an_expiry_is_shown_with_the_time_left() -> None:
    assert expires({}) == ""
    assert expires({"expires_at": 1_800_000_600.0}, now=1_800_000_000.0) == (
        "2027-01-15 08:10:00 (in 10m)"
    )
    assert expires({"expires_at": 1_800_000_000.0}, now=1_800_000_001.0).endswith("(expired)")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("flag", "set", "banner", "maybe", "--kind", "boolean"),
            "VALUE: 'maybe' is not a boolean",
        ),
        (("flag", "set", "bad key", "x"), "KEY: 'bad key' is not a flag key"),
        (("flag", "set", "banner", "x", "--expires-in", "soon"), "'soon' is not a duration"),
        (("halt", "iris/"), "'iris/' is not MODEL or MODEL/VERSION"),
        (("switch", "iris", "off"), "'iris': name the version, MODEL/VERSION"),
        (("halt", "iris", "--off", "--expires-in", "5m"), "--expires-in applies to a halt"),
    ],
)
def test_wrong_arguments_are_refused_before_any_request(
    args: tuple[str, ...], message: str
) -> None:
    # The URL is unreachable: exit 2 shows the arguments were judged first, here.
    result = run(*args, "--url", f"http://127.0.0.1:{closed_port()}")
    assert result.exit_code == 2, result.output
    assert message in result.stderr


def test_an_unreachable_gateway_is_one_clear_line_and_exit_1() -> None:
    port = closed_port()
    result = run("halt", "iris/v2", "--url", f"http://127.0.0.1:{port}")
    assert result.exit_code == 1
    assert result.stderr == (
        f"failsoft: cannot reach the gateway at http://127.0.0.1:{port}: connection refused\n"
    )


def _commands() -> list[tuple[str, click.Command]]:
    found: list[tuple[str, click.Command]] = []
    for command in COMMANDS:
        found.append((command.name or "", command))
        if isinstance(command, click.Group):
            found += [(f"{command.name} {n}", c) for n, c in command.commands.items()]
    return found


@pytest.mark.parametrize(("name", "command"), _commands(), ids=[n for n, _ in _commands()])
def test_every_help_has_an_example(name: str, command: click.Command) -> None:
    result = run(*name.split(), "--help")
    assert result.exit_code == 0
    assert "Example:" in result.stdout, name
    assert f"failsoft {name.split()[0]}" in result.stdout
