"""The control-plane commands without a gateway: helpers, refusals before any request, help."""

from __future__ import annotations

import io
import socket
import tarfile
from pathlib import Path

import click
import orjson
import pytest
from click.testing import CliRunner, Result

from failsoft.cli import main
from failsoft.cli_control import (
    COMMANDS,
    Gateway,
    backup_manifest,
    describe_problem,
    error_text,
    guess_kind,
    human_bytes,
    table,
    when,
)


def run(*args: str, token: str | None = "some-admin-token") -> Result:
    result = CliRunner().invoke(main, list(args), env={"FAILSOFT_ADMIN_TOKEN": token})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert "Traceback" not in result.output
    return result


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_table_pads_every_column_but_the_last() -> None:
    rendered = table(("REV", "STATUS", "REASON"), [(1, "applied", ""), (12, "failed", "probe")])
    assert rendered.splitlines() == [
        "REV  STATUS   REASON",
        "1    applied",
        "12   failed   probe",
    ]


@pytest.mark.parametrize(
    ("size", "shown"),
    [(0, "0 bytes"), (1023, "1023 bytes"), (1536, "1.5 KiB"), (5 << 20, "5.0 MiB")],
)
def test_human_bytes(size: int, shown: str) -> None:
    assert human_bytes(size) == shown


def test_times_are_shown_to_the_second() -> None:
    assert when("2026-11-30T11:41:31.118801Z") == "2026-11-30 11:41:31"
    assert when(None) == ""


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("iris.onnx", "onnx"),
        ("model.JOBLIB", "sklearn"),
        ("model.pkl", "sklearn"),
        ("rules.py", None),
        ("weights", None),
    ],
)
def test_the_kind_is_guessed_from_the_extension(name: str, kind: str | None) -> None:
    assert guess_kind(Path(name)) == kind


def test_error_text_takes_the_error_field_or_the_start_of_the_body() -> None:
    assert error_text(b'{"error": "there is no revision 9"}') == "there is no revision 9"
    assert error_text(b"<html>bad gateway</html>") == "<html>bad gateway</html>"
    assert error_text(b'{"other": 1}') == '{"other": 1}'


def test_refusals_say_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    gateway = Gateway("http://gw:8000", "CI_TOKEN")
    monkeypatch.delenv("CI_TOKEN", raising=False)
    assert "$CI_TOKEN is not set" in gateway.explain(401, "", "GET", "/admin/config")
    monkeypatch.setenv("CI_TOKEN", "x" * 20)
    assert "does not accept the token in $CI_TOKEN (401)" in gateway.explain(
        401, "", "GET", "/admin/config"
    )
    lacks = "token 'reader' lacks the 'write' scope for this"
    assert gateway.explain(403, lacks, "POST", "/admin/config") == (
        f"the token in $CI_TOKEN may not do this (403): {lacks}"
    )
    assert gateway.explain(409, "revision 3 was not applied: x", "POST", "/") == (
        "refused: revision 3 was not applied: x"
    )
    down = gateway.explain(503, "connection refused", "POST", "/admin/config")
    assert down.startswith("the control store is down (503): connection refused")
    assert gateway.explain(404, "there is no revision 9", "GET", "/") == "there is no revision 9"
    assert "(400): bad scope" in gateway.explain(400, "bad scope", "POST", "/admin/tokens")
    assert gateway.explain(500, "boom", "GET", "/admin/x") == (
        "GET /admin/x: the gateway answered 500: boom"
    )


def test_problems_name_the_checkpoint_and_the_entry() -> None:
    assert describe_problem({"what": "edited", "seq": 2, "checkpoint": None}) == "entry 2: edited"
    assert (
        describe_problem({"what": "forged", "seq": None, "checkpoint": "store checkpoint #3"})
        == "store checkpoint #3: forged"
    )
    assert describe_problem({"what": "x", "seq": 4, "checkpoint": "line 2"}) == "line 2, entry 4: x"


def test_a_backup_is_recognised_by_its_manifest() -> None:
    manifest = orjson.dumps({"format": "failsoft-backup/1", "members": [{"name": "store/a"}]})
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("manifest.json")
        info.size = len(manifest)
        tar.addfile(info, io.BytesIO(manifest))
    assert backup_manifest(buffer.getvalue())["members"] == [{"name": "store/a"}]
    with pytest.raises(ValueError, match=r".+"):
        backup_manifest(b'{"error": "not a tar"}')


def test_an_unreachable_gateway_is_one_clear_line_and_exit_1() -> None:
    port = closed_port()
    result = run("config", "history", "--url", f"http://127.0.0.1:{port}")
    assert result.exit_code == 1
    assert result.stderr == (
        f"failsoft: cannot reach the gateway at http://127.0.0.1:{port}: connection refused\n"
    )
    assert result.stdout == ""


def test_a_token_with_a_line_break_is_refused_here() -> None:
    result = run("token", "list", "--url", f"http://127.0.0.1:{closed_port()}", token="ab\ncd")
    assert result.exit_code == 2
    assert "cannot send the request" in result.stderr
    assert "$FAILSOFT_ADMIN_TOKEN" in result.stderr


def test_a_url_that_is_not_http_is_a_usage_error() -> None:
    result = run("token", "list", "--url", "https://gateway.example")
    assert result.exit_code == 2
    assert "not an http:// URL" in result.stderr


def test_an_invalid_file_is_refused_before_the_gateway_is_asked(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: {}\n")
    # The URL is unreachable: exit 2 shows the file was judged first, here.
    result = run("apply", str(bad), "--url", f"http://127.0.0.1:{closed_port()}")
    assert result.exit_code == 2
    assert f"{bad}: invalid configuration" in result.stderr
    assert "models: Dictionary should have at least 1 item" in result.stderr


def test_push_needs_a_kind_it_can_tell(tmp_path: Path) -> None:
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"\x00")
    result = run("model", "push", "iris", "v3", str(weights), "--url", "http://127.0.0.1:9")
    assert result.exit_code == 2
    assert "give --kind (onnx, sklearn, python)" in result.stderr
    missing = run("model", "push", "iris", "v3", str(tmp_path / "no.onnx"))
    assert missing.exit_code == 2
    assert "cannot read" in missing.stderr


def test_restore_refuses_what_is_not_a_backup_and_writes_nothing(tmp_path: Path) -> None:
    target = tmp_path / "data"
    missing = run("restore", str(tmp_path / "none.tar"), "--data-dir", str(target))
    assert missing.exit_code == 2
    assert "no such backup file" in missing.stderr
    notes = tmp_path / "notes.tar"
    notes.write_text("hello")
    refused = run("restore", str(notes), "--data-dir", str(target))
    assert refused.exit_code == 1
    assert refused.stderr.startswith("failsoft: restore failed: backup ")
    assert "not a readable tar archive" in refused.stderr
    assert not target.exists()


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
