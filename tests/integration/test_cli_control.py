"""The control-plane commands against a real `failsoft serve`: apply, config, model, registry,
audit, token, backup and restore, with their exit codes and messages."""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from failsoft.cli import main
from failsoft.drills.server import ServerProcess
from tests.integration.conftest import ADMIN_TOKEN

pytestmark = pytest.mark.integration

ROWS = [[6.7, 3.0, 5.2, 2.3], [5.1, 3.5, 1.4, 0.2], [5.9, 3.0, 4.2, 1.5], [6.3, 2.8, 5.1, 1.5]]
SPEC = """
    inputs:  [{name: features, datatype: FP32, shape: [-1, 4]}]
    outputs:
      - {name: label, datatype: INT64, shape: [-1]}
      - {name: probabilities, datatype: FP32, shape: [-1, 3]}
"""


def iris(*versions: str, default: str | None = None) -> str:
    """A configuration of model iris with these versions (YAML flow mappings)."""
    lines = "".join(f"      {version}\n" for version in versions)
    chosen = f"    default_version: {default}\n" if default else ""
    return f"models:\n  iris:{SPEC}    versions:\n{lines}{chosen}"


def cli(server: ServerProcess | None, *args: str, token: str | None = ADMIN_TOKEN) -> Result:
    """Run `failsoft ARGS --url <server>` in-process; never a traceback."""
    url = ["--url", server.url] if server is not None else []
    result = CliRunner().invoke(main, [*args, *url], env={"FAILSOFT_ADMIN_TOKEN": token})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert "Traceback" not in result.output
    return result


def ok(server: ServerProcess | None, *args: str) -> Result:
    result = cli(server, *args)
    assert result.exit_code == 0, result.output
    return result


def as_json(server: ServerProcess, *args: str) -> Any:
    return orjson.loads(ok(server, *args, "--json").stdout)


def infer(server: ServerProcess, row: list[float]) -> tuple[str, str, dict[str, Any]]:
    """Who served ``row``, under which revision, and the outputs."""
    body = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 4], "data": row}]}
    answer = httpx.post(f"{server.url}/v2/models/iris/infer", json=body, timeout=10)
    assert answer.status_code == 200, answer.text
    outputs = {item["name"]: item["data"] for item in answer.json()["outputs"]}
    return answer.headers["failsoft-served-by"], answer.headers["failsoft-revision"], outputs


def test_apply_plans_confirms_applies_refuses_and_rolls_back(
    start_server: Callable[[str], ServerProcess], demo_dir: Path, tmp_path: Path
) -> None:
    v1 = f"v1: {{backend: onnx, path: {demo_dir}/iris-v1.onnx}}"
    v2 = f"v2: {{backend: onnx, path: {demo_dir}/iris-v2.onnx}}"
    server = start_server(iris(v1))
    assert infer(server, ROWS[0])[:2] == ("iris/v1/r0", "1")
    change = tmp_path / "v2.yaml"
    change.write_text(iris(v1, v2, default="v2"))

    planned = ok(server, "apply", str(change), "--dry-run")
    assert "plan against revision 1:" in planned.stdout
    assert "+ models.iris.versions.v2: onnx, 1 replica" in planned.stdout
    assert "~ models.iris.default_version: None -> v2" in planned.stdout
    assert "dry run: nothing applied" in planned.stdout
    unconfirmed = cli(server, "apply", str(change))  # stdin is no terminal, no --yes
    assert unconfirmed.exit_code == 1
    assert "not applied: nobody can confirm" in unconfirmed.stderr
    assert "--yes" in unconfirmed.stderr
    assert [r["revision"] for r in as_json(server, "config", "history")["revisions"]] == [1]
    assert infer(server, ROWS[0])[:2] == ("iris/v1/r0", "1")

    applied = ok(server, "apply", str(change), "--yes", "--reason", "v2 becomes the default")
    assert f"applied: revision 2 is live on {server.url}" in applied.stdout
    assert infer(server, ROWS[0])[:2] == ("iris/v2/r0", "2")
    again = ok(server, "apply", str(change), "--yes")
    assert "no changes: the gateway already serves this (revision 2)" in again.stdout

    pinned = tmp_path / "pinned.yaml"
    pinned.write_text(iris(v1, v2.replace("}", f", sha256: {'ab' * 32}}}"), default="v2"))
    refused = cli(server, "apply", str(pinned), "--yes")
    assert refused.exit_code == 1
    assert refused.stderr.startswith("failsoft: refused: revision 3 was not applied: ")
    assert f"the configuration pins {'ab' * 32}" in refused.stderr
    assert refused.stderr.rstrip().endswith("the gateway stays on revision 2")
    assert infer(server, ROWS[0])[:2] == ("iris/v2/r0", "2")
    invalid = tmp_path / "invalid.yaml"
    invalid.write_text(iris(v1, default="v9"))
    assert cli(server, "apply", str(invalid), "--yes").exit_code == 2

    history = as_json(server, "config", "history")["revisions"]
    assert [(r["revision"], r["status"], r["serving"]) for r in history] == [
        (3, "failed", False),
        (2, "applied", True),
        (1, "superseded", False),
    ]
    table = ok(server, "config", "history").stdout.splitlines()
    assert table[0].split() == ["REV", "STATUS", "ACTOR", "CREATED", "APPLIED", "REASON"]
    assert table[2].startswith("* 2    applied")
    diff = ok(server, "config", "diff", "1", "2").stdout
    assert diff.startswith("revision 1 -> 2:\n")
    assert "+ models.iris.versions.v2" in diff
    shown = ok(server, "config", "show").stdout
    assert shown.startswith(f"# revision 2, serving on {server.url}\n")
    assert yaml.safe_load(shown)["models"]["iris"]["default_version"] == "v2"
    first = yaml.safe_load(ok(server, "config", "show", "1").stdout)
    assert set(first["models"]["iris"]["versions"]) == {"v1"}
    missing = cli(server, "config", "show", "99")
    assert (missing.exit_code, missing.stderr) == (1, "failsoft: there is no revision 99\n")

    rolled = ok(server, "config", "rollback", "--yes")
    assert "roll back from revision 2 to revision 1's configuration:" in rolled.stdout
    assert "- models.iris.versions.v2" in rolled.stdout
    assert "rolled back: revision 4 (revision 1's configuration) is live" in rolled.stdout
    assert infer(server, ROWS[0])[:2] == ("iris/v1/r0", "4")
    statuses = {
        r["revision"]: r["status"] for r in as_json(server, "config", "history")["revisions"]
    }
    assert statuses == {4: "applied", 3: "failed", 2: "rolled_back", 1: "superseded"}


def test_a_pushed_model_is_applied_by_name_and_the_registry_is_kept_honest(
    start_server: Callable[[str], ServerProcess], demo_dir: Path, tmp_path: Path
) -> None:
    server = start_server(iris(f"v1: {{backend: onnx, path: {demo_dir}/iris-v1.onnx}}"))
    model = tmp_path / "iris-v3.onnx"
    shutil.copyfile(demo_dir / "iris-v2.onnx", model)
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    pushed = ok(server, "model", "push", "iris", "v3", str(model))
    assert pushed.stdout == f"{digest}\n"
    assert "pushed iris@v3 (onnx, " in pushed.stderr
    listed = as_json(server, "model", "list")["artifacts"]
    assert [(a["name"], a["version"], a["kind"], a["sha256"]) for a in listed] == [
        ("iris", "v3", "onnx", digest)
    ]
    assert ok(server, "model", "list").stdout.splitlines()[1].startswith("iris@v3   onnx")

    by_name = tmp_path / "v3.yaml"
    by_name.write_text(
        iris(
            f"v1: {{backend: onnx, path: {demo_dir}/iris-v1.onnx}}",
            "v3: {backend: onnx, artifact: iris@v3}",
            default="v3",
        )
    )
    assert "applied: revision 2" in ok(server, "apply", str(by_name), "--yes").stdout
    served_by, revision, outputs = infer(server, ROWS[0])
    assert (served_by, revision, outputs["label"]) == ("iris/v3/r0", "2", [2])

    verified = ok(server, "registry", "verify").stdout
    assert verified.startswith("1 artifacts, 1 copies checked in 1 locations: 1 good")
    # A copy nobody registered (left by a crash, say) is what gc removes; the dry run only says so.
    stray_bytes = b"not a model anyone uses"
    stray_digest = hashlib.sha256(stray_bytes).hexdigest()
    location = tmp_path / "failsoft-data" / "artifacts" / "sha256"
    stray = location / stray_digest[:2] / stray_digest
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(stray_bytes)
    planned = ok(server, "registry", "gc").stdout
    assert f"{stray_digest[:16]}  (not registered)" in planned
    assert f"would remove 1 artifacts ({len(stray_bytes)} bytes across every location)" in planned
    assert "Nothing removed: run with --yes" in planned
    assert stray.exists()
    removed = ok(server, "registry", "gc", "--yes").stdout
    assert f"removed 1 artifacts, freed {len(stray_bytes)} bytes; 1 kept" in removed
    assert not stray.exists()
    assert infer(server, ROWS[1])[0] == "iris/v3/r0"

    # The only copy of iris@v3 goes bad: verify cannot repair it, says so and exits 1.
    (location / digest[:2] / digest).write_bytes(b"rotten")
    broken = cli(server, "registry", "verify")
    assert broken.exit_code == 1
    assert f"UNRECOVERABLE: {digest} has no good copy in any location" in broken.stdout


def test_audit_log_verify_prove_and_a_byte_changed_in_the_database(
    start_server: Callable[[str], ServerProcess], demo_dir: Path, tmp_path: Path
) -> None:
    server = start_server(iris(f"v1: {{backend: onnx, path: {demo_dir}/iris-v1.onnx}}"))
    data_dir = tmp_path / "failsoft-data"
    entries = as_json(server, "audit", "log")["entries"]
    assert [(e["seq"], e["action"], e["target"]) for e in entries] == [
        (1, "revision.created", "revision:1"),
        (2, "revision.applied", "revision:1"),
    ]
    listed = ok(server, "audit", "log", "--since", "2").stdout.splitlines()
    assert listed[0].split() == ["SEQ", "TIME", "ACTOR", "ACTION", "TARGET", "DETAIL"]
    assert [line.split()[0] for line in listed[1:]] == ["2"]
    verified = ok(server, "audit", "verify").stdout
    assert verified.startswith("audit log ok: 2 entries, root ")
    assert "every signature valid" in verified

    proof_file = tmp_path / "proof-1.json"
    proved = ok(
        server,
        "audit",
        "prove",
        "1",
        "--public-key",
        str(data_dir / "audit-key.pub"),
        "--out",
        str(proof_file),
    )
    checkpoint = orjson.loads(proof_file.read_bytes())["proof"]["checkpoint"]
    size, root = checkpoint["tree_size"], checkpoint["root"]  # the newest checkpoint: 1 or 2
    assert proved.stdout == f"entry 1 is in the log of size {size} (root {root}), signature valid\n"
    other = tmp_path / "other.pub"
    other.write_bytes(
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    forged = cli(server, "audit", "prove", "1", "--public-key", str(other))
    assert forged.exit_code == 1
    assert "is not signed by the key from" in forged.stderr
    assert cli(server, "audit", "prove", "9").exit_code == 1

    # A database-level attacker: triggers dropped, one byte of entry 2's detail changed,
    # triggers put back.
    with sqlite3.connect(data_dir / "failsoft.db") as db:
        triggers = db.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND name LIKE 'audit%'"
        ).fetchall()
        for name, _ in triggers:
            db.execute(f"DROP TRIGGER {name}")
        (detail,) = db.execute("SELECT detail FROM audit_entries WHERE seq = 2").fetchone()
        assert "pending" in detail
        db.execute(
            "UPDATE audit_entries SET detail = ? WHERE seq = 2",
            (detail.replace("pending", "pendinG"),),
        )
        for _, sql in triggers:
            db.execute(sql)
    tampered = cli(server, "audit", "verify")
    assert tampered.exit_code == 1
    assert tampered.stdout.startswith(
        "audit log FAILED verification: entry 2: content does not match its leaf hash"
    )
    assert as_json_failing(server)["problems"][0]["seq"] == 2


def as_json_failing(server: ServerProcess) -> Any:
    result = cli(server, "audit", "verify", "--json")
    assert result.exit_code == 1
    return orjson.loads(result.stdout)


def test_tokens_have_names_and_scopes_and_can_be_revoked(
    start_server: Callable[[str], ServerProcess], demo_dir: Path, tmp_path: Path
) -> None:
    v1 = f"v1: {{backend: onnx, path: {demo_dir}/iris-v1.onnx}}"
    server = start_server(iris(v1))
    added = ok(server, "token", "add", "reader", "--scope", "read")
    reader = added.stdout.strip()
    assert reader.startswith("fsa_")
    assert "admin token reader (read); shown once" in added.stderr
    ok(server, "token", "add", "deployer", "--scope", "write", "--scope", "read")
    listed = as_json(server, "token", "list")["tokens"]
    assert [(t["name"], t["scopes"], t["revoked_at"]) for t in listed] == [
        ("deployer", ["read", "write"], None),
        ("reader", ["read"], None),
    ]

    assert cli(server, "config", "history", token=reader).exit_code == 0
    change = tmp_path / "v2.yaml"
    change.write_text(
        iris(v1, f"v2: {{backend: onnx, path: {demo_dir}/iris-v2.onnx}}", default="v2")
    )
    denied = cli(server, "apply", str(change), "--yes", token=reader)
    assert denied.exit_code == 1
    assert denied.stderr == (
        "failsoft: the token in $FAILSOFT_ADMIN_TOKEN may not do this (403): "
        "token 'reader' lacks the 'write' scope for this\n"
    )
    assert [r["revision"] for r in as_json(server, "config", "history")["revisions"]] == [1]

    assert ok(server, "token", "revoke", "reader").stdout == "token reader revoked\n"
    revoked = cli(server, "config", "history", token=reader)
    assert revoked.exit_code == 1
    assert "does not accept the token in $FAILSOFT_ADMIN_TOKEN (401)" in revoked.stderr
    anonymous = cli(server, "config", "history", token=None)
    assert anonymous.exit_code == 1
    assert "no admin token: $FAILSOFT_ADMIN_TOKEN is not set" in anonymous.stderr
    changes = [
        (e["actor"], e["action"], e["target"]) for e in as_json(server, "audit", "log")["entries"]
    ]
    assert changes[-3:] == [
        ("admin", "token.created", "token:reader"),
        ("admin", "token.created", "token:deployer"),
        ("admin", "token.revoked", "token:reader"),
    ]


def test_backup_wipe_restore_gives_the_same_history_and_answers(
    start_server: Callable[[str], ServerProcess], demo_dir: Path, tmp_path: Path
) -> None:
    v1 = f"v1: {{backend: onnx, path: {demo_dir}/iris-v1.onnx}}"
    config = iris(v1)
    server = start_server(config)
    model = tmp_path / "iris-v3.onnx"
    shutil.copyfile(demo_dir / "iris-v2.onnx", model)
    ok(server, "model", "push", "iris", "v3", str(model))
    change = tmp_path / "v3.yaml"
    change.write_text(iris(v1, "v3: {backend: onnx, artifact: iris@v3}", default="v3"))
    ok(server, "apply", str(change), "--yes")
    answers = [infer(server, row) for row in ROWS]
    assert {served_by for served_by, _, _ in answers} == {"iris/v3/r0"}
    history = as_json(server, "config", "history")
    entries = as_json(server, "audit", "log")["entries"]

    archive = tmp_path / "backups" / "failsoft.tar"
    saved = ok(server, "backup", str(archive)).stdout
    assert saved.startswith(f"backup written to {archive}: ")
    assert "revisions, " in saved
    assert saved.rstrip().endswith("1 artifacts)")
    assert archive.stat().st_mode & 0o077 == 0

    assert server.stop() == 0
    data_dir = tmp_path / "failsoft-data"
    shutil.rmtree(data_dir)
    restored = ok(None, "restore", str(archive), "--data-dir", str(data_dir)).stdout
    assert f"restored {archive} into {data_dir}: 2 revisions" in restored
    assert "1 artifacts (into " in restored
    assert "audit log ok: " in restored
    assert not (data_dir / "artifact-cache").exists()  # the gateway must fetch it from the registry

    again = start_server(config)  # the same file: the store's revision 2 wins over it
    assert [infer(again, row) for row in ROWS] == answers
    assert as_json(again, "config", "history") == history
    assert as_json(again, "audit", "log")["entries"][: len(entries)] == entries
    assert ok(again, "audit", "verify").stdout.startswith("audit log ok: ")

    into_used = cli(None, "restore", str(archive), "--data-dir", str(data_dir))
    assert into_used.exit_code == 1
    assert "is not empty" in into_used.stderr
    assert "(--force)" in into_used.stderr
    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    cut = cli(None, "restore", str(truncated), "--data-dir", str(tmp_path / "elsewhere"))
    assert cut.exit_code == 1
    assert "truncated" in cut.stderr
    assert not (tmp_path / "elsewhere").exists()


def test_the_real_command_line_fails_in_one_line_when_the_gateway_is_down(
    tmp_path: Path,
) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    change = tmp_path / "c.yaml"
    change.write_text(iris("v1: {backend: python, function: 'tests.integration._models:shout'}"))
    down = subprocess.run(
        [sys.executable, "-m", "failsoft", "apply", str(change), "--yes", "--url", url],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "FAILSOFT_ADMIN_TOKEN": ADMIN_TOKEN},
        check=False,
    )
    assert (down.returncode, down.stdout) == (1, "")
    assert down.stderr == f"failsoft: cannot reach the gateway at {url}: connection refused\n"
