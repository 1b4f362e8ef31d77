"""Backups: snapshot → wipe → restore gives the same store; damaged archives are refused."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import stat
import tarfile
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from failsoft.store import Store, StoreError
from failsoft.store.audit import CHECKPOINT_FILE
from failsoft.store.backup import backup, restore
from failsoft.store.migrate import head_revision
from failsoft.store.signing import PRIVATE_KEY_FILE

from .conftest import POSTGRES_URL, RUN, Target, Wall


def populate(store: Store, wall: Wall) -> None:
    store.register_artifact("iris", "v1", sha256="11" * 32, kind="onnx", size=3, actor="ci")
    store.add_revision({"models": {"iris": {"artifact": "iris@v1"}}}, actor="alice")
    store.mark_revision(1, "applied", actor="gateway")
    wall.advance(1)
    store.add_revision({"models": {}}, actor="bob", reason="empty")
    store.mark_revision(2, "failed", actor="gateway", reason="probe failed")
    store.add_token("ci", "ab" * 32, ["read"], actor="admin")
    wall.advance(1)
    store.record("fault.added", "model:iris", actor="alice", detail={"kind": "latency"})
    store.checkpoint(force=True)


def snapshot_of(store: Store) -> tuple[object, ...]:
    return (
        store.revisions(),
        store.artifacts(),
        store.tokens(),
        store.audit_entries(),
        store.audit.checkpoints(),
    )


def wipe(target: Target, store: Store, data_dir: Path) -> None:
    store.close()
    if target.dialect == "postgresql":
        with store.engine.engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{target.schema}" CASCADE'))
        store.engine.dispose()
    shutil.rmtree(data_dir)


@pytest.fixture
def archive(store: Store, wall: Wall, data_dir: Path, tmp_path: Path) -> Path:
    populate(store, wall)
    artifact = data_dir / "artifacts" / ("11" * 32)
    artifact.parent.mkdir()
    artifact.write_bytes(b"onnx")
    result = backup(store, data_dir, tmp_path / "out" / "backup.tar", extra_files=[artifact])
    assert result.rows == {
        "revisions": 2,
        "artifacts": 1,
        "tokens": 1,
        "flags": 0,
        "rollouts": 0,
        "slo_buckets": 0,
        "incidents": 0,
        "audit_entries": 7,
        "checkpoints": 3,
    }
    return result.path


def test_backup_wipe_restore_gives_the_same_store(
    store: Store, target: Target, wall: Wall, data_dir: Path, archive: Path
) -> None:
    before = snapshot_of(store)
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600
    wipe(target, store, data_dir)

    result = restore(archive, data_dir, url=target.url, schema=target.schema, wall=wall)
    assert result.verify.ok, result.verify.problems
    assert result.verify.entries == 7
    assert set(result.files) == {
        "audit-key.pem",
        "audit-key.pub",
        CHECKPOINT_FILE,
        f"artifacts/{'11' * 32}",
    }
    assert (data_dir / "artifacts" / ("11" * 32)).read_bytes() == b"onnx"
    assert stat.S_IMODE((data_dir / PRIVATE_KEY_FILE).stat().st_mode) == 0o600
    with target.open(data_dir, wall) as restored:
        assert snapshot_of(restored) == before
        assert restored.current_revision().id == 1  # type: ignore[union-attr]
        assert restored.verify().ok
        # The restored store carries on: same key, numbering continues.
        assert restored.add_revision({}, actor="alice").id == 3
        assert restored.verify().ok


def test_a_sqlite_backup_restores_into_postgres(
    data_dir: Path, wall: Wall, tmp_path: Path, postgres: Engine
) -> None:
    with Store.open(data_dir, wall=wall) as store:
        populate(store, wall)
        out = backup(store, data_dir, tmp_path / "b.tar.gz").path
        before = snapshot_of(store)
    schema = f"failsoft_test_{RUN}_cross"
    try:
        result = restore(out, tmp_path / "pg-data", url=POSTGRES_URL, schema=schema, wall=wall)
        assert result.verify.ok
        with Store.open(tmp_path / "pg-data", POSTGRES_URL, schema=schema, wall=wall) as pg:
            assert snapshot_of(pg) == before
    finally:
        with postgres.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))


def test_a_truncated_archive_is_refused_and_nothing_is_written(
    archive: Path, tmp_path: Path
) -> None:
    data = archive.read_bytes()
    with tarfile.open(archive) as tar:
        last = tar.getmembers()[-1]
    # Inside the manifest, halfway, and inside the last member's bytes. (Cutting
    # only tar's zero padding at the end loses nothing, and is accepted.)
    for cut in (100, len(data) // 2, last.offset_data + last.size // 2):
        truncated = tmp_path / f"cut-{cut}.tar"
        truncated.write_bytes(data[:cut])
        target = tmp_path / f"restored-{cut}"
        with pytest.raises(StoreError, match=r"truncated|missing|no manifest") as caught:
            restore(truncated, target)
        assert str(truncated) in caught.value.message
        assert not target.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".restored")]


def _rewrite(archive: Path, out: Path, change: dict[str, bytes | None]) -> None:
    """Copy ``archive`` with members replaced (bytes) or dropped (None)."""
    with tarfile.open(archive) as source, tarfile.open(out, "w") as sink:
        for member in source:
            data = source.extractfile(member).read()  # type: ignore[union-attr]
            if member.name in change:
                replacement = change[member.name]
                if replacement is None:
                    continue
                data = replacement
            member.size = len(data)
            sink.addfile(member, io.BytesIO(data))


def test_an_edited_member_is_named_and_nothing_is_written(archive: Path, tmp_path: Path) -> None:
    with tarfile.open(archive) as tar:
        rows = tar.extractfile("store/revisions.jsonl").read()  # type: ignore[union-attr]
    edited = tmp_path / "edited.tar"
    _rewrite(archive, edited, {"store/revisions.jsonl": rows.replace(b"alice", b"alicf")})
    with pytest.raises(StoreError, match=r"member store/revisions.jsonl does not match"):
        restore(edited, tmp_path / "restored")
    assert not (tmp_path / "restored").exists()
    dropped = tmp_path / "dropped.tar"
    _rewrite(archive, dropped, {f"data/{CHECKPOINT_FILE}": None})
    with pytest.raises(StoreError, match=f"member data/{CHECKPOINT_FILE} is missing"):
        restore(dropped, tmp_path / "restored")
    not_tar = tmp_path / "notes.txt"
    not_tar.write_text("hello")
    with pytest.raises(StoreError, match="not a readable tar archive"):
        restore(not_tar, tmp_path / "restored")
    with pytest.raises(StoreError, match="does not exist"):
        restore(tmp_path / "nothing.tar", tmp_path / "restored")


def test_restore_refuses_a_data_directory_in_use(
    archive: Path, data_dir: Path, tmp_path: Path, target: Target, wall: Wall
) -> None:
    with pytest.raises(StoreError, match="is not empty"):
        restore(archive, data_dir)
    if target.dialect == "sqlite":
        # Forced: the old SQLite store is replaced by the backup's.
        result = restore(archive, data_dir, force=True, wall=wall)
        assert result.verify.ok
    else:
        # The store itself must be empty, forced or not.
        with pytest.raises(StoreError, match="already holds"):
            restore(archive, data_dir, url=target.url, schema=target.schema, force=True)


def test_the_manifest_lists_every_member_with_its_hash(archive: Path) -> None:
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
    assert names[0] == "manifest.json"
    assert sorted(m["name"] for m in manifest["members"]) == sorted(names[1:])
    assert manifest["format"] == "failsoft-backup/1"
    assert manifest["schema_revision"] == head_revision()
    assert all(len(m["sha256"]) == 64 for m in manifest["members"])


def test_extra_files_must_be_in_the_data_directory(
    store: Store, data_dir: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "elsewhere.bin"
    outside.write_bytes(b"x")
    with pytest.raises(StoreError, match="not inside the data directory"):
        backup(store, data_dir, tmp_path / "b.tar", extra_files=[outside])
    assert not (tmp_path / "b.tar").exists()


def test_artifacts_travel_by_digest_and_come_back_through_put_artifact(
    store: Store, target: Target, wall: Wall, data_dir: Path, tmp_path: Path
) -> None:
    populate(store, wall)
    digest = hashlib.sha256(b"model bytes").hexdigest()
    elsewhere = tmp_path / "cache" / "copy"  # anywhere: not in the data directory
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(b"model bytes")
    archive = backup(store, data_dir, tmp_path / "b.tar", artifacts={digest: elsewhere}).path
    with tarfile.open(archive) as tar:
        assert f"artifacts/{digest}" in tar.getnames()
    wipe(target, store, data_dir)
    received: dict[str, bytes] = {}
    result = restore(
        archive,
        data_dir,
        url=target.url,
        schema=target.schema,
        wall=wall,
        put_artifact=lambda name, path: received.setdefault(name, path.read_bytes()),
    )
    assert result.verify.ok
    assert result.artifacts == (digest,)
    assert received == {digest: b"model bytes"}
    assert not (data_dir / "artifacts").exists()  # where they go is the caller's choice


def test_an_artifact_whose_bytes_do_not_match_its_digest_is_refused(
    store: Store, data_dir: Path, tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_bytes(b"other bytes")
    with pytest.raises(StoreError, match="should hold artifact artifacts/"):
        backup(store, data_dir, tmp_path / "b.tar", artifacts={"ab" * 32: wrong})
    good = tmp_path / "good"
    good.write_bytes(b"good")
    digest = hashlib.sha256(b"good").hexdigest()
    archive = backup(store, data_dir, tmp_path / "c.tar", artifacts={digest: good}).path
    # An archive rebuilt with other bytes under the name (and a manifest to match).
    with tarfile.open(archive) as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
    for member in manifest["members"]:
        if member["name"] == f"artifacts/{digest}":
            member.update(sha256=hashlib.sha256(b"evil").hexdigest(), size=4)
    forged = tmp_path / "forged.tar"
    _rewrite(
        archive,
        forged,
        {"manifest.json": json.dumps(manifest).encode(), f"artifacts/{digest}": b"evil"},
    )
    with pytest.raises(StoreError, match=f"member artifacts/{digest} hashes to"):
        restore(forged, tmp_path / "restored")
    assert not (tmp_path / "restored").exists()
