"""Backups of the control store and its data directory, and restores from them.

A backup is one tar archive (gzip when its name ends in .gz or .tgz):

``manifest.json``        format, time, source database, schema revision, row
                         counts, and the sha256 and size of every other member
``store/TABLE.jsonl``    every row of every table, one JSON object per line
``data/…``               the data directory's audit files (the signing key,
                         its public half, the outside checkpoint copy) and any
                         ``extra_files``, by their path in it
``artifacts/SHA256``     each of ``artifacts`` (the registry's bytes), named by
                         its sha256, which must be the hash of its content

The rows are read in one snapshot transaction (PostgreSQL: REPEATABLE READ,
read only; SQLite: one WAL read transaction), so a backup taken while
serving is consistent. One format for both databases, rather than SQLite's
page-level backup API, means one restore path, and a backup of either
restores into either. The outside checkpoint file is copied *before* the
snapshot: checkpoints reach it after the database, so every checkpoint it
holds is covered by the rows.

The archive holds the audit signing key: keep backups as private as the
data directory (the archive is written mode 0600).

``restore`` checks the whole archive against its manifest before writing
anything where it matters: a truncated archive, a missing, extra or edited
member is a StoreError naming it. It restores into an empty data directory
(a non-empty one only with ``force``) and an empty store, then verifies the
audit log and returns the verdict. The store knows nothing of where artifacts
live: each one in the archive is handed, verified, to the caller's
``put_artifact`` (the control plane puts it into its artifact locations).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import re
import shutil
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from sqlalchemy import Connection, func, insert, select

from failsoft.store.audit import CHECKPOINT_FILE
from failsoft.store.encoding import utc_text
from failsoft.store.engine import DEFAULT_DB_FILE, StoreError
from failsoft.store.migrate import current_revision, head_revision
from failsoft.store.signing import PRIVATE_KEY_FILE, PUBLIC_KEY_FILE
from failsoft.store.store import Store
from failsoft.store.tables import ALL_TABLES
from failsoft.store.verify import VerifyResult

__all__ = ["FORMAT", "BackupResult", "RestoreResult", "backup", "restore"]

FORMAT = "failsoft-backup/1"
MANIFEST = "manifest.json"
AUDIT_FILES = (PRIVATE_KEY_FILE, PUBLIC_KEY_FILE, CHECKPOINT_FILE)
# The gateway's id, which its SLO buckets and incidents are stored under (operate_rows.py).
GATEWAY_FILES = ("gateway-id",)
ARTIFACTS = "artifacts"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1 << 20
_BATCH = 1000


@dataclass(frozen=True)
class BackupResult:
    path: Path
    members: tuple[str, ...]
    rows: dict[str, int]
    size: int


@dataclass(frozen=True)
class RestoreResult:
    data_dir: Path
    url: str
    rows: dict[str, int]
    files: tuple[str, ...]
    verify: VerifyResult
    artifacts: tuple[str, ...] = ()  # the digests in the archive (given to put_artifact)


def _sha256_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _copy_complete_lines(source: Path, target: Path) -> None:
    """A checkpoint file being appended to: only its finished lines."""
    data = source.read_bytes()
    target.write_bytes(data[: data.rfind(b"\n") + 1])


def _dump_tables(conn: Connection, folder: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for table in ALL_TABLES:
        query = select(table).order_by(*table.primary_key.columns)
        count = 0
        with (folder / f"{table.name}.jsonl").open("w", encoding="utf-8") as out:
            for row in conn.execution_options(yield_per=_BATCH).execute(query):
                out.write(json.dumps(dict(row._mapping), sort_keys=True, ensure_ascii=False))
                out.write("\n")
                count += 1
        counts[table.name] = count
    return counts


def _member_name(data_dir: Path, path: Path) -> str:
    try:
        relative = path.resolve().relative_to(data_dir.resolve())
    except ValueError:
        raise StoreError(f"backup: {path} is not inside the data directory {data_dir}") from None
    return f"data/{relative.as_posix()}"


def _tarinfo(name: str, size: int, mtime: float) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = int(mtime)
    info.mode = 0o600
    return info


def backup(
    store: Store,
    data_dir: Path,
    out_path: Path,
    *,
    extra_files: Sequence[Path] = (),
    artifacts: Mapping[str, Path] | None = None,
    wall: Callable[[], float] = time.time,
) -> BackupResult:
    """Write a consistent snapshot of ``store`` and ``data_dir``'s audit files to ``out_path``.

    ``artifacts`` maps sha256 digests to files holding those bytes (anywhere);
    each is stored as ``artifacts/<digest>``, and a file whose bytes hash to
    something else stops the backup.
    """
    data_dir, out_path = Path(data_dir), Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    members: list[tuple[str, Path]] = []
    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=".failsoft-backup-") as tmp:
        staging = Path(tmp)
        (staging / "data").mkdir()
        (staging / "store").mkdir()
        for name in (*AUDIT_FILES, *GATEWAY_FILES):
            source = data_dir / name
            if source.is_file():
                target = staging / "data" / name
                if name == CHECKPOINT_FILE:
                    _copy_complete_lines(source, target)
                else:
                    shutil.copyfile(source, target)
                members.append((f"data/{name}", target))
        for extra in extra_files:
            name = _member_name(data_dir, Path(extra))
            if name in {member for member, _ in members}:
                continue
            if not Path(extra).is_file():
                raise StoreError(f"backup: {extra} is not a file")
            members.append((name, Path(extra)))
        for digest, path in sorted((artifacts or {}).items()):
            if not _SHA256.fullmatch(digest):
                raise StoreError(f"backup: artifact name {digest!r} is not a sha256 digest")
            if not Path(path).is_file():
                raise StoreError(f"backup: artifact {digest}: {path} is not a file")
            members.append((f"{ARTIFACTS}/{digest}", Path(path)))
        with store.engine.snapshot() as conn:
            schema_revision = current_revision(conn)
            rows = _dump_tables(conn, staging / "store")
        members[:0] = [
            (f"store/{table.name}.jsonl", staging / "store" / f"{table.name}.jsonl")
            for table in ALL_TABLES
        ]
        sized: list[tuple[str, Path, int]] = []
        listed: list[dict[str, Any]] = []
        for name, path in members:
            digest, size = _sha256_file(path)
            if name.startswith(f"{ARTIFACTS}/") and digest != name.partition("/")[2]:
                raise StoreError(
                    f"backup: {path} should hold artifact {name} but hashes to {digest}"
                )
            sized.append((name, path, size))
            listed.append({"name": name, "sha256": digest, "size": size})
        now = wall()
        manifest = {
            "format": FORMAT,
            "created_at": utc_text(now),
            "dialect": store.dialect,
            "schema_revision": schema_revision,
            "rows": rows,
            "members": listed,
        }
        manifest_bytes = json.dumps(manifest, indent=1, sort_keys=True).encode() + b"\n"
        _write_archive(out_path, manifest_bytes, sized, now)
    return BackupResult(
        path=out_path,
        members=(MANIFEST, *(name for name, _ in members)),
        rows=rows,
        size=out_path.stat().st_size,
    )


def _write_archive(
    out_path: Path, manifest: bytes, members: list[tuple[str, Path, int]], mtime: float
) -> None:
    """Manifest first, then the members; appears at ``out_path`` only when complete."""
    partial = out_path.with_name(f".{out_path.name}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as raw, contextlib.ExitStack() as stack:
            sink: IO[bytes] | gzip.GzipFile = raw
            if out_path.name.endswith((".gz", ".tgz")):
                sink = stack.enter_context(gzip.GzipFile(fileobj=raw, mode="wb"))
            with tarfile.open(fileobj=sink, mode="w") as tar:
                tar.addfile(_tarinfo(MANIFEST, len(manifest), mtime), _BytesReader(manifest))
                for name, path, size in members:
                    with path.open("rb") as handle:
                        tar.addfile(_tarinfo(name, size, mtime), handle)
            stack.close()
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(partial, out_path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
        raise


class _BytesReader:
    """A file object over bytes, for tarfile.addfile."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._offset = 0

    def read(self, size: int = -1) -> bytes:
        end = len(self._data) if size < 0 else self._offset + size
        chunk = self._data[self._offset : end]
        self._offset += len(chunk)
        return chunk


def _safe_name(name: str) -> bool:
    path = PurePosixPath(name)
    if path.parts[:1] == (ARTIFACTS,):
        return len(path.parts) == 2 and _SHA256.fullmatch(path.parts[1]) is not None
    return (
        not path.is_absolute()
        and ".." not in path.parts
        and (name == MANIFEST or path.parts[0] in ("store", "data"))
        and len(path.parts) >= (1 if name == MANIFEST else 2)
    )


def _extract_verified(archive: Path, staging: Path) -> dict[str, Any]:
    """Every member into ``staging``, checked against the manifest (StoreError names a bad one)."""
    where = f"backup {archive}"
    try:
        # Not a with-statement: a failure to open is told apart from a damaged member.
        tar = tarfile.open(archive, "r:*")  # noqa: SIM115
    except FileNotFoundError:
        raise StoreError(f"{where} does not exist") from None
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
        # tarfile lists every compression it tried; the last line is about tar itself.
        reason = str(error).strip().splitlines()[-1].lstrip("- ")
        raise StoreError(f"{where} is not a readable tar archive, or truncated: {reason}") from None
    seen: dict[str, tuple[str, int]] = {}
    reading = "the first member's header"
    with tar:
        try:
            for member in tar:
                name = member.name
                if not member.isfile() or not _safe_name(name) or name in seen:
                    raise StoreError(f"{where}: unexpected member {name!r}")
                source = tar.extractfile(member)
                assert source is not None
                target = staging / name
                target.parent.mkdir(parents=True, exist_ok=True)
                reading = f"member {name}"
                seen[name] = _copy_hashing(source, target)
                reading = f"the header after member {name}"
        except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
            raise StoreError(f"{where} is truncated or damaged in {reading}: {error}") from None
    if MANIFEST not in seen:
        raise StoreError(f"{where} has no {MANIFEST}: not a failsoft backup, or truncated")
    try:
        manifest = json.loads((staging / MANIFEST).read_text(encoding="utf-8"))
        listed = {str(entry["name"]): entry for entry in manifest["members"]}
    except (ValueError, KeyError, TypeError) as error:
        raise StoreError(f"{where}: {MANIFEST} is unreadable: {error}") from None
    if manifest.get("format") != FORMAT:
        raise StoreError(f"{where}: format {manifest.get('format')!r} is not {FORMAT!r}")
    for name, entry in listed.items():
        if name not in seen:
            raise StoreError(f"{where}: member {name} is missing (a truncated archive?)")
        digest, size = seen[name]
        if digest != entry.get("sha256") or size != entry.get("size"):
            raise StoreError(
                f"{where}: member {name} does not match the manifest "
                f"(sha256 {digest}, {size} bytes; expected {entry.get('sha256')}, "
                f"{entry.get('size')} bytes)"
            )
    for name in seen:
        if name != MANIFEST and name not in listed:
            raise StoreError(f"{where}: member {name} is not in the manifest")
        if name.startswith(f"{ARTIFACTS}/") and seen[name][0] != name.partition("/")[2]:
            raise StoreError(f"{where}: member {name} hashes to {seen[name][0]}, not its name")
    return dict(manifest)


def _copy_hashing(source: IO[bytes], target: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        while chunk := source.read(_CHUNK):
            digest.update(chunk)
            out.write(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _check_target(data_dir: Path, force: bool) -> None:
    if data_dir.exists() and not data_dir.is_dir():
        raise StoreError(f"restore: {data_dir} is not a directory")
    if data_dir.is_dir() and not force:
        present = sorted(path.name for path in data_dir.iterdir())
        if present:
            shown = ", ".join(present[:5]) + (" …" if len(present) > 5 else "")
            raise StoreError(
                f"restore: data directory {data_dir} is not empty ({shown}); "
                "restore into an empty one, or force it"
            )


def _load_tables(conn: Connection, folder: Path) -> dict[str, int]:
    for table in ALL_TABLES:
        if conn.execute(select(func.count()).select_from(table)).scalar_one():
            raise StoreError(
                f"restore: the target store already holds {table.name}; use an empty one"
            )
    counts: dict[str, int] = {}
    for table in ALL_TABLES:
        columns = {column.name for column in table.columns}
        batch: list[dict[str, Any]] = []
        count = 0
        with (folder / f"{table.name}.jsonl").open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                row = json.loads(line)
                if set(row) != columns:
                    raise StoreError(
                        f"restore: store/{table.name}.jsonl line {number} has columns "
                        f"{sorted(row)}, expected {sorted(columns)}"
                    )
                batch.append(row)
                count += 1
                if len(batch) >= _BATCH:
                    conn.execute(insert(table), batch)
                    batch = []
        if batch:
            conn.execute(insert(table), batch)
        counts[table.name] = count
    return counts


def _move_files(staging: Path, data_dir: Path) -> list[str]:
    moved: list[str] = []
    source_root = staging / "data"
    if not source_root.is_dir():
        return moved
    for source in sorted(path for path in source_root.rglob("*") if path.is_file()):
        relative = source.relative_to(source_root)
        target = data_dir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(source, target)
        moved.append(relative.as_posix())
    return moved


def _remove_default_db(data_dir: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            (data_dir / f"{DEFAULT_DB_FILE}{suffix}").unlink()


def restore(
    archive: Path,
    data_dir: Path,
    *,
    url: str | None = None,
    schema: str | None = None,
    force: bool = False,
    put_artifact: Callable[[str, Path], object] | None = None,
    wall: Callable[[], float] = time.time,
) -> RestoreResult:
    """Restore ``archive`` into ``data_dir`` and the store at ``url`` (default: SQLite in it).

    Nothing is written to ``data_dir`` or the store unless the whole archive
    matches its manifest. ``force`` restores into a non-empty data directory
    (replacing its default SQLite store); the store itself must be empty.
    Once the rows are in, ``put_artifact(digest, path)`` is called for every
    artifact in the archive (its bytes verified); without it they are left out.
    """
    archive, data_dir = Path(archive), Path(data_dir)
    _check_target(data_dir, force)
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=data_dir.parent, prefix=f".{data_dir.name}.restore-"))
    try:
        manifest = _extract_verified(archive, staging)
        if manifest.get("schema_revision") != head_revision():
            raise StoreError(
                f"backup {archive} has schema revision {manifest.get('schema_revision')!r}; "
                f"this failsoft restores {head_revision()!r}"
            )
        data_dir.mkdir(parents=True, exist_ok=True)
        if force and url is None:
            _remove_default_db(data_dir)
        files = _move_files(staging, data_dir)
        store = Store.open(data_dir, url, schema=schema, wall=wall)
        try:
            with store.engine.write() as conn:
                rows = _load_tables(conn, staging / "store")
            result = store.verify()
        finally:
            store.close()
        folder = staging / ARTIFACTS
        digests = sorted(path.name for path in folder.iterdir()) if folder.is_dir() else []
        if put_artifact is not None:
            for digest in digests:
                put_artifact(digest, folder / digest)
        return RestoreResult(
            data_dir=data_dir,
            url=store.url,
            rows=rows,
            files=tuple(files),
            verify=result,
            artifacts=tuple(digests),
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)
