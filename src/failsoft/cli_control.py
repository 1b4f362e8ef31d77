"""The control plane's commands: change and inspect a running gateway through its admin API.

    failsoft apply FILE                 plan, confirm, store and apply a new revision
    failsoft config history|show|diff|rollback
    failsoft model push|list            the artifact registry
    failsoft registry verify|gc         scrub every copy; remove what no revision uses
    failsoft audit log|verify|prove     the tamper-evident audit log
    failsoft token add|list|revoke      named, scoped admin tokens
    failsoft backup OUT                 a consistent snapshot, downloaded
    failsoft restore IN --data-dir D    offline: the one command that writes a store itself

Every command but ``restore`` reaches the gateway at ``--url`` with the admin
token from ``$FAILSOFT_ADMIN_TOKEN`` (or the variable ``--token-env`` names)
and never touches the store behind it: the gateway validates, audits and
applies. Output is a table for people, JSON with ``--json``. Failures are one
line on stderr, never a traceback.

Exit codes: 0 done; 1 the gateway refused, could not be reached, or a check
failed (the message says which); 2 the input is wrong (an invalid
configuration file, an unreadable file, a bad argument).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import io
import os
import sys
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import click
import orjson

__all__ = ["Failed", "Gateway", "guess_kind", "register", "table"]

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT_S = 60.0
MAX_BACKUP_BYTES = 1 << 32  # the gateway builds the archive in memory too
SCOPES = ("read", "write", "chaos")  # as server/control_routes.py (not imported: it is heavy)
KINDS = ("onnx", "sklearn", "python")
SHOWN_PROBLEMS = 5  # audit verify: the first problem, and a few after it
_KIND_BY_SUFFIX = {".onnx": "onnx", ".joblib": "sklearn", ".pkl": "sklearn", ".pickle": "sklearn"}


class Failed(click.ClickException):
    """A command that could not do its job: one line on stderr, and its exit code."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file: Any = None) -> None:
        click.echo(f"failsoft: {self.message}", err=True)


# -- reaching the gateway -------------------------------------------------------------


@dataclass(frozen=True)
class Gateway:
    """The admin API of one gateway; every request on its own connection, sent once."""

    url: str
    token_env: str = "FAILSOFT_ADMIN_TOKEN"
    timeout_s: float = DEFAULT_TIMEOUT_S

    @property
    def token(self) -> str | None:
        """The token, without the line break a file or a heredoc leaves after it."""
        return (os.environ.get(self.token_env) or "").strip() or None

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        content_type: str = "application/json",
        limit: int | None = None,
    ) -> bytes:
        """The answer's body when the gateway says 2xx; ``Failed`` explaining why otherwise."""
        from failsoft.backends.h1pool import MAX_RESPONSE_BYTES
        from failsoft.drills.target import AdminClient, TargetError, TargetUnreachable

        payload = raw if raw is not None else (b"" if body is None else orjson.dumps(body))
        try:
            client = AdminClient(
                self.url,
                self.token,
                timeout_s=self.timeout_s,
                keep_alive=False,
                max_response_bytes=limit or MAX_RESPONSE_BYTES,
            )
        except TargetError as error:
            raise Failed(f"--url: {error}", 2) from None

        async def exchange() -> Any:
            try:
                return await client.request(method, path, payload, content_type=content_type)
            finally:
                await client.close()

        try:
            response = asyncio.run(exchange())
        except ValueError as error:  # the pool refuses a header with a line break in it
            raise Failed(
                f"cannot send the request: {error} (look at ${self.token_env})", 2
            ) from None
        except TargetUnreachable as error:
            message = f"cannot reach the gateway at {self.url}: {error.reason}"
            if error.timed_out and method != "GET":
                message += (
                    "; the change may have been made all the same: see `failsoft audit log` "
                    "(raise --timeout for slow changes)"
                )
            raise Failed(message) from None
        if response.status >= 300:
            raise Failed(self.explain(response.status, error_text(response.body), method, path))
        body_bytes: bytes = response.body
        return body_bytes

    def json(self, method: str, path: str, body: Any = None, **options: Any) -> Any:
        answer = self.call(method, path, body, **options)
        try:
            return orjson.loads(answer)
        except orjson.JSONDecodeError:
            raise Failed(f"{method} {path}: the gateway's answer is not JSON") from None

    def explain(self, status: int, message: str, method: str, path: str) -> str:
        """What a refusal means for the person at the terminal."""
        variable = f"${self.token_env}"
        if status == 401:
            if self.token is None:
                return (
                    f"no admin token: {variable} is not set (set it, or name another "
                    "variable with --token-env)"
                )
            return f"the gateway at {self.url} does not accept the token in {variable} (401): " + (
                "it is not the admin token, nor a named token that is still valid"
            )
        if status == 403:
            return f"the token in {variable} may not do this (403): {message}"
        if status == 409:
            return f"refused: {message}"
        if status == 503:
            return (
                f"the control store is down (503): {message}; the gateway keeps serving "
                "what it serves, and changes wait until the store is back"
            )
        if status == 404:
            return message or f"{method} {path}: not found (404)"
        if status == 400:
            return f"the gateway refused the request (400): {message}"
        return f"{method} {path}: the gateway answered {status}: {message}"


def error_text(body: bytes) -> str:
    """The ``error`` of a JSON error answer, else the start of the body."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:200].decode("utf-8", "replace").strip()
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        return str(data["error"])
    return body[:200].decode("utf-8", "replace").strip()


def _gateway_options(function: Callable[..., None]) -> Callable[..., None]:
    """--url, --token-env and --timeout, handed to the command as one ``gateway``."""

    @functools.wraps(function)
    def command(*args: Any, url: str, token_env: str, timeout_s: float, **kwargs: Any) -> None:
        function(*args, gateway=Gateway(url.rstrip("/"), token_env, timeout_s), **kwargs)

    options = [
        click.option(
            "--url", default=DEFAULT_URL, show_default=True, help="The gateway's address."
        ),
        click.option(
            "--token-env",
            default="FAILSOFT_ADMIN_TOKEN",
            show_default=True,
            metavar="NAME",
            help="The environment variable holding the admin token.",
        ),
        click.option(
            "--timeout",
            "timeout_s",
            type=click.FloatRange(min=0.1),
            default=DEFAULT_TIMEOUT_S,
            show_default=True,
            help="Seconds to wait for the gateway's answer.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


_json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print JSON (for scripts) instead of a table."
)
_yes_option = click.option("--yes", "-y", is_flag=True, help="Do it without asking.")


# -- output ---------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns padded to their widest cell; the last one is not padded."""
    cells = [[str(h) for h in headers], *[["" if c is None else str(c) for c in r] for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        padded = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=False)]
        lines.append("  ".join([*padded, row[-1]]).rstrip())
    return "\n".join(lines)


def human_bytes(size: int) -> str:
    """``1536`` as ``1.5 KiB``; below 1 KiB in bytes."""
    if size < 1024:
        return f"{size} bytes"
    value = size / 1024
    for unit in ("KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            break
        value /= 1024
    return f"{value:.1f} {unit}"


def when(text: str | None) -> str:
    """``2026-11-30T11:41:31.118801Z`` as ``2026-11-30 11:41:31``."""
    return "" if not text else text[:19].replace("T", " ")


def _echo_json(data: Any) -> None:
    # Non-str keys: SQLAlchemy's table names are a str subclass, which orjson refuses otherwise.
    click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode())


def _confirm(question: str, what: str) -> None:
    """Ask on the terminal; without one, refuse (exit 1) and say how to go on."""
    if not sys.stdin.isatty():
        raise Failed(
            f"{what}: nobody can confirm (stdin is not a terminal); add --yes to go ahead "
            "without asking"
        )
    if not click.confirm(question, default=False, err=True):
        raise Failed(f"{what}: not confirmed")


def _plan_is_empty(plan: dict[str, Any]) -> bool:
    return not plan.get("changes") and not plan.get("restart_needed")


# -- apply ----------------------------------------------------------------------------


@click.command("apply")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--dry-run", is_flag=True, help="Print the plan and stop.")
@click.option("--reason", default=None, help="Why, kept with the revision.")
@_yes_option
@_json_option
@_gateway_options
def apply_command(
    file: Path, dry_run: bool, reason: str | None, yes: bool, as_json: bool, gateway: Gateway
) -> None:
    """Apply the configuration in FILE to a running gateway, as a new revision.

    FILE is validated here first (errors as `check-config` prints them). The
    gateway plans the change against the revision it serves and the plan is
    printed (+ added, ~ changed, - removed, ! needs a restart); after you
    confirm (or with --yes) it is stored as a new revision and applied live:
    new replicas load and pass their golden probes before they take traffic.
    A revision that cannot come up is refused with the reason, and the
    gateway stays on the one it serves.

    \b
    Exit codes: 0 applied, or nothing to change; 1 refused, not confirmed,
    or the gateway unreachable; 2 FILE is invalid.

    \b
    Example:
      failsoft apply failsoft.yaml --dry-run
      failsoft apply failsoft.yaml --yes --reason "iris v3 becomes the default"
    """
    from failsoft.cli import _load_or_exit
    from failsoft.config import missing_files
    from failsoft.control.revisions import config_json

    config = _load_or_exit(file)
    for line in missing_files(config):
        click.echo(f"warning: {line}", err=True)
    body: dict[str, Any] = {"config": config_json(config)}
    if reason:
        body["reason"] = reason
    serving = gateway.json("GET", "/admin/config")["revision"]
    planned = gateway.json("POST", "/admin/config", {**body, "dry_run": True})
    planned["serving"] = serving
    if _plan_is_empty(planned["plan"]):
        if as_json:
            _echo_json({**planned, "status": "unchanged", "revision": serving})
        else:
            click.echo(f"no changes: the gateway already serves this (revision {serving})")
        return
    shown = f"plan against revision {serving}:\n{_indent(planned['plan_text'])}"
    if dry_run:
        if as_json:
            _echo_json(planned)
        else:
            click.echo(shown)
            click.echo("dry run: nothing applied")
        return
    click.echo(shown, err=as_json)
    if not yes:
        _confirm("Apply this plan as a new revision?", "not applied")
    try:
        outcome = gateway.json("POST", "/admin/config", body)
    except Failed as error:
        if error.message.startswith("refused:"):
            error.message += f"; the gateway stays on revision {serving}"
        raise
    if outcome["plan_text"] != planned["plan_text"]:
        click.echo(
            "note: the gateway changed between the plan and the apply; what was applied:\n"
            + _indent(outcome["plan_text"]),
            err=True,
        )
    if as_json:
        _echo_json(outcome)
    elif outcome["status"] == "unchanged":
        click.echo(f"no changes: the gateway already serves this (revision {outcome['revision']})")
    else:
        click.echo(f"applied: revision {outcome['revision']} is live on {gateway.url}")


def _indent(text: str) -> str:
    return "\n".join(f"  {line}" for line in text.splitlines())


# -- config ---------------------------------------------------------------------------


@click.group("config")
def config_group() -> None:
    """The revisions of a running gateway's configuration.

    \b
    Example:
      failsoft config history
      failsoft config show 3
      failsoft config diff 3 4
      failsoft config rollback --yes
    """


@config_group.command("history")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 10_000))
@_json_option
@_gateway_options
def config_history(limit: int, as_json: bool, gateway: Gateway) -> None:
    """List the stored revisions, newest first; * marks the one serving.

    \b
    Example:
      failsoft config history --limit 5
    """
    answer = gateway.json("GET", f"/admin/config/history?limit={limit}")
    if as_json:
        _echo_json(answer)
        return
    rows = [
        (
            ("* " if item["serving"] else "  ") + str(item["revision"]),
            item["status"],
            item["actor"],
            when(item["created_at"]),
            when(item["applied_at"]),
            item["reason"] or "",
        )
        for item in answer["revisions"]
    ]
    if not rows:
        click.echo("no revisions stored")
        return
    click.echo(table(("  REV", "STATUS", "ACTOR", "CREATED", "APPLIED", "REASON"), rows))


@config_group.command("show")
@click.argument("revision", required=False, type=click.IntRange(min=1))
@_json_option
@_gateway_options
def config_show(revision: int | None, as_json: bool, gateway: Gateway) -> None:
    """Print a revision's configuration as YAML (default: the one serving).

    \b
    Example:
      failsoft config show > serving.yaml
      failsoft config show 2
    """
    import yaml

    if revision is None:
        answer = gateway.json("GET", "/admin/config")
        heading = f"# revision {answer['revision']}, serving on {gateway.url}"
    else:
        answer = gateway.json("GET", f"/admin/config/{revision}")
        heading = f"# revision {answer['revision']} ({answer['status']})"
    if as_json:
        _echo_json(answer)
        return
    if answer["config"] is None:
        raise Failed("the gateway serves no stored revision")
    click.echo(heading)
    click.echo(yaml.safe_dump(answer["config"], sort_keys=False, allow_unicode=True), nl=False)


@config_group.command("diff")
@click.argument("a", type=click.IntRange(min=1))
@click.argument("b", type=click.IntRange(min=1))
@_json_option
@_gateway_options
def config_diff(a: int, b: int, as_json: bool, gateway: Gateway) -> None:
    """What changes from revision A to revision B, as a plan.

    \b
    Example:
      failsoft config diff 3 4
    """
    answer = gateway.json("GET", f"/admin/config/diff?a={a}&b={b}")
    if as_json:
        _echo_json(answer)
    else:
        click.echo(f"revision {a} -> {b}:\n{_indent(answer['plan_text'])}")


@config_group.command("rollback")
@click.argument("revision", required=False, type=click.IntRange(min=1))
@_yes_option
@_json_option
@_gateway_options
def config_rollback(revision: int | None, yes: bool, as_json: bool, gateway: Gateway) -> None:
    """Apply an earlier revision's configuration again (default: the one before).

    The rollback is a new revision with REVISION's configuration; it comes up
    like any other (probes first) or is refused. The plan is printed and
    confirmed first, unless --yes.

    \b
    Example:
      failsoft config rollback --yes
      failsoft config rollback 2
    """
    serving = gateway.json("GET", "/admin/config")["revision"]
    target = revision
    if target is None:
        history = gateway.json("GET", "/admin/config/history?limit=1000")["revisions"]
        earlier = [item["revision"] for item in history if item["status"] == "superseded"]
        if not earlier:
            raise Failed("there is no earlier applied revision to roll back to")
        target = earlier[0]
    if target == serving:
        raise Failed(f"revision {target} is the one serving: nothing to roll back")
    changes = gateway.json("GET", f"/admin/config/diff?a={serving}&b={target}")
    click.echo(
        f"roll back from revision {serving} to revision {target}'s configuration:\n"
        + _indent(changes["plan_text"]),
        err=as_json,
    )
    if not yes:
        _confirm(f"Roll back to revision {target}?", "not rolled back")
    try:
        outcome = gateway.json("POST", "/admin/config/rollback", {"revision": target})
    except Failed as error:
        if error.message.startswith("refused:"):
            error.message += f"; the gateway stays on revision {serving}"
        raise
    if as_json:
        _echo_json(outcome)
    elif outcome["status"] == "unchanged":
        click.echo(f"no changes: revision {serving} already has that configuration")
    else:
        click.echo(
            f"rolled back: revision {outcome['revision']} (revision {target}'s configuration) "
            f"is live on {gateway.url}"
        )


# -- model ----------------------------------------------------------------------------


def guess_kind(path: Path) -> str | None:
    """The artifact kind a file's extension names (.onnx; .joblib, .pkl: sklearn), or None."""
    return _KIND_BY_SUFFIX.get(path.suffix.lower())


@click.group("model")
def model_group() -> None:
    """The artifact registry: model files stored by sha256, referenced as name@version.

    \b
    Example:
      failsoft model push iris v3 iris-v3.onnx
      failsoft model list
    and in a configuration:  v3: {backend: onnx, artifact: iris@v3}
    """


@model_group.command("push")
@click.argument("name")
@click.argument("version")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--kind",
    type=click.Choice(KINDS),
    default=None,
    help="What the file is [default: from its extension: .onnx; .joblib, .pkl: sklearn].",
)
@click.option(
    "--profile",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="A reference profile of this model (`failsoft profile build`), pushed beside it.",
)
@_json_option
@_gateway_options
def model_push(
    name: str,
    version: str,
    file: Path,
    kind: str | None,
    profile: Path | None,
    as_json: bool,
    gateway: Gateway,
) -> None:
    """Push FILE to the registry as NAME@VERSION and print its sha256.

    The gateway stores the bytes in every artifact location and records the
    push in the audit log. A configuration then says `artifact: NAME@VERSION`
    (or the sha256) instead of a path.

    \b
    Example:
      failsoft model push iris v3 iris-v3.onnx
      failsoft model push churn 2024-06 model.joblib
      failsoft model push iris v3 iris-v3.onnx --profile iris-v3.profile.json
    """
    chosen = kind or guess_kind(file)
    if chosen is None:
        raise Failed(
            f"cannot tell what {file} is from its extension: give --kind ({', '.join(KINDS)})", 2
        )
    try:
        data = file.read_bytes()
    except OSError as error:
        raise Failed(f"cannot read {file}: {error.strerror or error}", 2) from None
    digest = hashlib.sha256(data).hexdigest()
    profile_bytes = None
    if profile is not None:
        from failsoft.cli_drift import profile_for_push

        profile_bytes = profile_for_push(profile, digest)
    query = urlencode({"name": name, "version": version, "kind": chosen})
    row = gateway.json(
        "POST", f"/admin/artifacts?{query}", raw=data, content_type="application/octet-stream"
    )
    if row.get("sha256") != digest:
        raise Failed(
            f"the gateway stored sha256 {row.get('sha256')}, but {file} hashes to {digest}"
        )
    if profile_bytes is not None:
        from failsoft.cli_drift import push_profile

        row["profile_sha256"] = push_profile(gateway, name, version, profile_bytes)
    if as_json:
        _echo_json(row)
        return
    click.echo(f"pushed {name}@{version} ({chosen}, {human_bytes(len(data))})", err=True)
    click.echo(digest)


@model_group.command("list")
@_json_option
@_gateway_options
def model_list(as_json: bool, gateway: Gateway) -> None:
    """List the registered artifacts.

    \b
    Example:
      failsoft model list
    """
    answer = gateway.json("GET", "/admin/artifacts")
    if as_json:
        _echo_json(answer)
        return
    rows = [
        (
            f"{item['name']}@{item['version']}",
            item["kind"],
            human_bytes(item["size"]),
            item["sha256"][:16],
            when(item["created_at"]),
            item["actor"],
        )
        for item in answer["artifacts"]
    ]
    if not rows:
        click.echo("no artifacts registered (push one with `failsoft model push`)")
        return
    click.echo(table(("ARTIFACT", "KIND", "SIZE", "SHA256", "PUSHED", "BY"), rows))


# -- registry -------------------------------------------------------------------------


@click.group("registry")
def registry_group() -> None:
    """Keep the artifact registry's copies honest, and its size in check.

    \b
    Example:
      failsoft registry verify
      failsoft registry gc            (a dry run: says what would go)
      failsoft registry gc --yes
    """


@registry_group.command("verify")
@_json_option
@_gateway_options
def registry_verify(as_json: bool, gateway: Gateway) -> None:
    """Scrub every copy of every artifact in every location; repair what can be.

    Exits 1 when a copy could not be repaired or an artifact has no good copy
    left.

    \b
    Example:
      failsoft registry verify
    """
    answer = gateway.json("POST", "/admin/registry/verify")
    if as_json:
        _echo_json(answer)
    else:
        click.echo(answer["summary"])
        rows = [
            (
                finding["sha256"][:16],
                finding["location"],
                finding["problem"],
                "repaired"
                if finding["repaired"]
                else finding.get("repair_error") or "not repaired",
            )
            for finding in answer.get("findings", [])
        ]
        if rows:
            click.echo(table(("SHA256", "LOCATION", "PROBLEM", "NOW"), rows))
        for location, why in answer.get("unlisted", []):
            click.echo(f"cannot list {location}: {why}")
        for digest in answer.get("unrecoverable", []):
            click.echo(f"UNRECOVERABLE: {digest} has no good copy in any location")
    if not answer["ok"]:
        sys.exit(1)


@registry_group.command("gc")
@click.option(
    "--dry-run/--yes",
    "dry_run",
    default=True,
    show_default=True,
    help="Only say what would be removed, or remove it.",
)
@_json_option
@_gateway_options
def registry_gc(dry_run: bool, as_json: bool, gateway: Gateway) -> None:
    """Remove the artifacts no stored revision references (a dry run unless --yes).

    Kept: everything a stored revision references, and anything pushed within
    the last hour (it is likely about to be applied).

    \b
    Example:
      failsoft registry gc
      failsoft registry gc --yes
    """
    registered: dict[str, list[str]] = {}
    for item in gateway.json("GET", "/admin/artifacts")["artifacts"]:
        registered.setdefault(item["sha256"], []).append(f"{item['name']}@{item['version']}")
    answer = gateway.json("POST", "/admin/registry/gc", {"dry_run": dry_run})
    if as_json:
        _echo_json(answer)
    else:
        removed = answer["removed"]
        rows = [(d[:16], ", ".join(registered.get(d, ["(not registered)"]))) for d in removed]
        if rows:
            click.echo(table(("SHA256", "ARTIFACT"), rows))
        freed = human_bytes(answer["bytes_freed"])
        if dry_run:
            click.echo(
                f"would remove {len(removed)} artifacts ({freed} across every location); "
                f"{answer['kept']} copies kept. Nothing removed: run with --yes to remove them"
            )
        else:
            click.echo(f"removed {len(removed)} artifacts, freed {freed}; {answer['kept']} kept")
        for location, path, why in answer["failed"]:
            click.echo(f"could not remove {path or '(listing)'} in {location}: {why}", err=True)
    if answer["failed"]:
        sys.exit(1)


# -- audit ----------------------------------------------------------------------------


@click.group("audit")
def audit_group() -> None:
    """The tamper-evident audit log of every change (RFC 6962 Merkle tree, signed).

    \b
    Example:
      failsoft audit log --since 40
      failsoft audit verify
      failsoft audit prove 42 --public-key data/audit-key.pub --out proof-42.json
    """


@audit_group.command("log")
@click.option("--since", default=1, show_default=True, type=click.IntRange(min=1), metavar="SEQ")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 10_000))
@_json_option
@_gateway_options
def audit_log(since: int, limit: int, as_json: bool, gateway: Gateway) -> None:
    """List the audit entries from number SEQ on: who changed what, when.

    \b
    Example:
      failsoft audit log --since 40 --limit 20
    """
    answer = gateway.json("GET", f"/admin/audit?after={since - 1}&limit={limit}")
    entries = answer["entries"]
    if as_json:
        _echo_json(answer)
        return
    if not entries:
        click.echo(f"no audit entries from {since} on")
        return
    rows = [
        (
            entry["seq"],
            when(entry["time"]),
            entry["actor"],
            entry["action"],
            entry["target"],
            _shorten(orjson.dumps(entry["detail"]).decode(), 60) if entry["detail"] else "",
        )
        for entry in entries
    ]
    click.echo(table(("SEQ", "TIME", "ACTOR", "ACTION", "TARGET", "DETAIL"), rows))
    if len(entries) == limit:
        click.echo(f"(the first {limit}; more with --since {entries[-1]['seq'] + 1})", err=True)


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


@audit_group.command("verify")
@_json_option
@_gateway_options
def audit_verify(as_json: bool, gateway: Gateway) -> None:
    """Recompute the whole log and check every checkpoint; exit 1 naming the first bad one.

    The gateway recomputes every entry's hash and the Merkle root, and checks
    every signed checkpoint, in the store and in the copy outside it (which
    catches the newest entries deleted together with their checkpoints).

    \b
    Example:
      failsoft audit verify
    """
    answer = gateway.json("GET", "/admin/audit/verify")
    if as_json:
        _echo_json(answer)
        if not answer["ok"]:
            sys.exit(1)
        return
    if not answer["ok"]:
        problems = [describe_problem(problem) for problem in answer["problems"]]
        click.echo(f"audit log FAILED verification: {problems[0]}")
        for problem in problems[1:SHOWN_PROBLEMS]:
            click.echo(f"  also: {problem}")
        if len(problems) > SHOWN_PROBLEMS:
            click.echo(f"  and {len(problems) - SHOWN_PROBLEMS} more (--json lists them all)")
        sys.exit(1)
    entries, covered = answer["entries"], answer["covered"]
    click.echo(
        f"audit log ok: {entries} entries, root {answer['root'][:16]}…, "
        f"{answer['checkpoints']} checkpoints in the store and {answer['outside_checkpoints']} "
        "outside it, every signature valid"
    )
    if covered < entries:
        click.echo(
            f"entries {covered + 1}..{entries} are newer than the last signed checkpoint "
            "(it follows within a second)"
        )


def describe_problem(problem: dict[str, Any]) -> str:
    """A problem of ``audit verify`` as a line: where (checkpoint, entry), then what."""
    where = [problem.get("checkpoint"), None]
    if problem.get("seq") is not None:
        where[1] = f"entry {problem['seq']}"
    named = ", ".join(part for part in where if part)
    return f"{named}: {problem['what']}" if named else str(problem["what"])


@audit_group.command("prove")
@click.argument("seq", type=click.IntRange(min=1))
@click.option(
    "--public-key",
    "public_key_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The gateway's audit-key.pub (its data directory): check against this key, "
    "not the one the gateway sends.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the proof (JSON) here, to check again later.",
)
@_json_option
@_gateway_options
def audit_prove(
    seq: int, public_key_file: Path | None, out: Path | None, as_json: bool, gateway: Gateway
) -> None:
    """Fetch an inclusion proof of entry SEQ and check it here.

    The check needs nothing but the entry, the proof path, the newest signed
    checkpoint and the public key: the entry's leaf hash must lead to the
    checkpoint's root, and the checkpoint's signature must verify. Exits 1
    when it does not.

    \b
    Example:
      failsoft audit prove 42 --public-key data/audit-key.pub --out proof-42.json
    """
    from failsoft.store import InclusionProof, StoreError, check_inclusion, load_public_key
    from failsoft.store.signing import key_id

    answer = gateway.json("GET", f"/admin/audit/proof/{seq}")
    try:
        proof = InclusionProof.from_dict(answer["proof"])
        if public_key_file is not None:
            key = load_public_key(_read(public_key_file))
            source = str(public_key_file)
        else:
            key = load_public_key(answer["public_key"])
            source = "the gateway (pin it with --public-key)"
    except StoreError as error:
        raise Failed(error.message) from None
    except (KeyError, TypeError):
        raise Failed("the gateway's answer holds no inclusion proof") from None
    checkpoint = proof.checkpoint
    signed = checkpoint.signature_valid(key)
    included = proof.entry.seq == seq and check_inclusion(proof.entry, proof, checkpoint, key)
    if out is not None:
        _write_atomically(out, orjson.dumps(answer, option=orjson.OPT_INDENT_2))
    result = {
        "seq": seq,
        "tree_size": checkpoint.tree_size,
        "root": checkpoint.root,
        "key_id": checkpoint.key_id,
        "signature_valid": signed,
        "included": included,
        "public_key_from": source,
    }
    if as_json:
        _echo_json(result)
    if not signed:
        raise Failed(
            f"entry {seq}: the checkpoint (size {checkpoint.tree_size}) is not signed by the "
            f"key from {source} (key id {key_id(key)}; the checkpoint names {checkpoint.key_id})"
        )
    if not included:
        raise Failed(
            f"entry {seq} is NOT proven in the log of size {checkpoint.tree_size} "
            f"(root {checkpoint.root}): the proof path does not lead to the signed root"
        )
    if not as_json:
        click.echo(
            f"entry {seq} is in the log of size {checkpoint.tree_size} "
            f"(root {checkpoint.root}), signature valid"
        )
        click.echo(f"checked here with the public key from {source}", err=True)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise Failed(f"cannot read {path}: {error.strerror or error}", 2) from None


def _write_atomically(path: Path, data: bytes) -> None:
    """``path`` appears whole or not at all (mode 0600: backups hold the signing key)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
    except OSError as error:
        partial.unlink(missing_ok=True)
        raise Failed(f"cannot write {path}: {error.strerror or error}") from None


# -- tokens ---------------------------------------------------------------------------


@click.group("token")
def token_group() -> None:
    """Named admin tokens with scopes: read, write (changes), chaos (faults).

    The token's name is the actor of every change it makes, in the audit log.
    Only its sha256 is stored. The configured admin token (server.admin_token
    or $FAILSOFT_ADMIN_TOKEN) is the token named `admin`, with every scope.

    \b
    Example:
      failsoft token add ci --scope read --scope write
      failsoft token list
      failsoft token revoke ci
    """


@token_group.command("add")
@click.argument("name")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    type=click.Choice(SCOPES),
    help="A scope (repeat for more) [default: read].",
)
@_json_option
@_gateway_options
def token_add(name: str, scopes: tuple[str, ...], as_json: bool, gateway: Gateway) -> None:
    """Make an admin token NAME and print it once (only its sha256 is kept).

    \b
    Example:
      export FAILSOFT_CI_TOKEN=$(failsoft token add ci --scope read --scope write)
      failsoft apply failsoft.yaml --yes --token-env FAILSOFT_CI_TOKEN
    """
    chosen = sorted(set(scopes or ("read",)))
    answer = gateway.json("POST", "/admin/tokens", {"name": name, "scopes": chosen})
    if as_json:
        _echo_json(answer)
        return
    click.echo(
        f"admin token {answer['name']} ({', '.join(answer['scopes'])}); shown once, store it now:",
        err=True,
    )
    click.echo(answer["token"])


@token_group.command("list")
@_json_option
@_gateway_options
def token_list(as_json: bool, gateway: Gateway) -> None:
    """List the named admin tokens, revoked ones too.

    \b
    Example:
      failsoft token list
    """
    answer = gateway.json("GET", "/admin/tokens")
    if as_json:
        _echo_json(answer)
        return
    rows = [
        (
            item["name"],
            ",".join(item["scopes"]),
            when(item["created_at"]),
            f"revoked {when(item['revoked_at'])}" if item["revoked_at"] else "active",
        )
        for item in answer["tokens"]
    ]
    if not rows:
        click.echo("no named tokens (make one with `failsoft token add NAME`)")
        return
    click.echo(table(("NAME", "SCOPES", "CREATED", "STATE"), rows))


@token_group.command("revoke")
@click.argument("name")
@_json_option
@_gateway_options
def token_revoke(name: str, as_json: bool, gateway: Gateway) -> None:
    """Revoke the admin token NAME: it stops working at once.

    \b
    Example:
      failsoft token revoke ci
    """
    answer = gateway.json("DELETE", f"/admin/tokens/{quote(name, safe='')}")
    if as_json:
        _echo_json(answer)
    else:
        click.echo(f"token {answer['revoked']} revoked")


# -- backup and restore ---------------------------------------------------------------


def backup_manifest(archive: bytes) -> dict[str, Any]:
    """The manifest of a backup archive (tar, or tar.gz); ValueError when it is none."""
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:*") as tar:
            first = tar.next()
            if first is None or first.name != "manifest.json":
                raise ValueError("its first member is not manifest.json")
            handle = tar.extractfile(first)
            assert handle is not None
            manifest = orjson.loads(handle.read())
    except (tarfile.TarError, EOFError, OSError, orjson.JSONDecodeError) as error:
        raise ValueError(str(error) or type(error).__name__) from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("members"), list):
        raise ValueError("manifest.json lists no members")
    return manifest


@click.command("backup")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@_json_option
@_gateway_options
def backup_command(out: Path, as_json: bool, gateway: Gateway) -> None:
    """Download a consistent snapshot of the gateway's store and artifacts to OUT.

    Taken while serving; OUT appears only once complete (gzip when it ends in
    .gz or .tgz). It holds the audit signing key: keep it private (mode 0600).
    Needs a token with the write scope. Restore it with `failsoft restore`.

    \b
    Example:
      failsoft backup backups/failsoft-$(date +%F).tar
    """
    import gzip

    data = gateway.call("GET", "/admin/backup", limit=MAX_BACKUP_BYTES)
    try:
        manifest = backup_manifest(data)
    except ValueError as error:
        raise Failed(
            f"the gateway's answer is not a failsoft backup ({error}): {out} not written"
        ) from None
    if out.name.endswith((".gz", ".tgz")):
        data = gzip.compress(data)
    _write_atomically(out, data)
    names = [str(member.get("name", "")) for member in manifest["members"]]
    artifacts = sum(name.startswith("artifacts/") for name in names)
    rows = manifest.get("rows", {})
    summary = {
        "path": str(out),
        "size": len(data),
        "members": len(names) + 1,  # and the manifest itself
        "artifacts": artifacts,
        "rows": rows,
        "created_at": manifest.get("created_at"),
    }
    if as_json:
        _echo_json(summary)
        return
    click.echo(
        f"backup written to {out}: {human_bytes(len(data))}, {summary['members']} members "
        f"({rows.get('revisions', 0)} revisions, {rows.get('audit_entries', 0)} audit entries, "
        f"{artifacts} artifacts)"
    )


@click.command("restore")
@click.argument("archive", metavar="IN", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--data-dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The data directory to restore into (empty, unless --force).",
)
@click.option(
    "--force", is_flag=True, help="Restore into a non-empty data directory (its store replaced)."
)
@click.option(
    "--store-url",
    default=None,
    help="Restore into this (empty) store, e.g. postgresql+psycopg://…  [default: SQLite in D].",
)
@click.option(
    "--artifact-location",
    "artifact_locations",
    multiple=True,
    metavar="LOCATION",
    help="Put the artifacts here (repeat for more; as artifacts.locations) [default: D/artifacts].",
)
@_json_option
def restore_command(
    archive: Path,
    data_dir: Path,
    force: bool,
    store_url: str | None,
    artifact_locations: tuple[str, ...],
    as_json: bool,
) -> None:
    """Restore a backup IN into the data directory D, offline, and verify it.

    Stop the gateway first. The whole archive is checked against its manifest
    before anything is written (a truncated or edited archive is refused,
    naming the member). Then the store's rows and the audit files go into D,
    the artifacts into D/artifacts (or --artifact-location), and the audit
    log is verified: exit 1 if it does not verify. A gateway started on D
    serves the restored revision.

    \b
    Example:
      failsoft restore backups/failsoft-2026-06-01.tar --data-dir failsoft-data
      failsoft serve --config failsoft.yaml --data-dir failsoft-data
    """
    from failsoft.control.registry import ArtifactLocations, ArtifactWriteError
    from failsoft.store import StoreError, redact
    from failsoft.store.backup import restore

    if not archive.is_file():
        raise Failed(f"{archive}: no such backup file", 2)
    locations = list(artifact_locations) or [str(data_dir / "artifacts")]
    try:
        registry = ArtifactLocations(locations)
    except ValueError as error:
        raise Failed(f"--artifact-location: {error}", 2) from None

    def put(digest: str, path: Path) -> None:
        registry.put(path)

    try:
        result = restore(archive, data_dir, url=store_url, force=force, put_artifact=put)
    except StoreError as error:
        hint = " (--force)" if "force it" in error.message else ""
        raise Failed(f"restore failed: {error.message}{hint}") from None
    except ArtifactWriteError as error:
        raise Failed(f"restore: the store is back but an artifact is not: {error}") from None
    verified = result.verify
    if as_json:
        _echo_json(
            {
                "data_dir": str(result.data_dir),
                "store": redact(result.url),
                "rows": result.rows,
                "files": list(result.files),
                "artifacts": list(result.artifacts),
                "artifact_locations": locations,
                "verify": verified.to_dict(),
            }
        )
    else:
        rows = result.rows
        click.echo(
            f"restored {archive} into {data_dir}: {rows.get('revisions', 0)} revisions, "
            f"{rows.get('audit_entries', 0)} audit entries, {rows.get('tokens', 0)} tokens, "
            f"{len(result.artifacts)} artifacts (into {', '.join(locations)}); "
            f"store {redact(result.url)}"
        )
        if verified.ok:
            click.echo(
                f"audit log ok: {verified.entries} entries, root {verified.root[:16]}…, "
                f"{verified.checkpoints} checkpoints"
            )
        else:
            click.echo(f"audit log FAILED verification: {verified.problems[0]}")
    if not verified.ok:
        sys.exit(1)


# -- registration ---------------------------------------------------------------------

COMMANDS: tuple[click.Command, ...] = (
    apply_command,
    config_group,
    model_group,
    registry_group,
    audit_group,
    token_group,
    backup_command,
    restore_command,
)


def register(group: click.Group) -> None:
    """Add the control plane's commands to the ``failsoft`` group."""
    for command in COMMANDS:
        group.add_command(command)
