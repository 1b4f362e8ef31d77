"""The control store: revisions, artifacts, admin tokens and the audit log, behind one object.

Synchronous on purpose: the gateway calls it from a thread, never on the
request path (serving runs on the compiled in-memory state and does not
notice the store being down). Every mutation takes an ``actor`` and writes
its audit entry in the same transaction, so a change and its record commit
together or not at all; afterwards the store signs a checkpoint if none was
signed in the last ``checkpoint_interval_s``. The owner calls
``checkpoint()`` about once a second so the tail of a burst is covered too,
and ``close()`` signs a last one.

Audit digests: for revisions, ``before`` is the configuration digest of the
revision in force (applied) when the change was made and ``after`` that of
the revision changed; for artifacts, ``after`` is the artifact's sha256;
token entries carry no digests (their detail names the scopes).

Revision ids count 1, 2, 3… in the order revisions were added. At most one
revision is ``applied``: marking one applied marks the one before it
``superseded`` (with its own audit entry).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import Connection, Row, func, insert, select, update

from failsoft.control.artifact_ref import ARTIFACT_KINDS, ArtifactRef, ArtifactRefError
from failsoft.store.audit import AuditEntry, AuditLog, Checkpoint, InclusionProof
from failsoft.store.encoding import canonical_json, sha256_hex, utc_text
from failsoft.store.engine import StoreEngine, StoreError, StoreUnreachable, default_url
from failsoft.store.instances import InstanceRows
from failsoft.store.live import LiveRows
from failsoft.store.migrate import upgrade
from failsoft.store.notify import REVISION, notify
from failsoft.store.references import artifact_references
from failsoft.store.signing import SigningKey, load_or_create_key
from failsoft.store.tables import artifacts, revisions, tokens
from failsoft.store.verify import VerifyResult, verify_log

__all__ = ["Artifact", "Revision", "RevisionStatus", "Store", "Token"]

log = logging.getLogger("failsoft.store")

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SCOPE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


class RevisionStatus(StrEnum):
    PENDING = "pending"
    APPLIED = "applied"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    SUPERSEDED = "superseded"


@dataclass(frozen=True)
class Revision:
    id: int
    created_at: str
    actor: str
    config: dict[str, Any]
    config_sha256: str
    status: str
    reason: str | None
    applied_at: str | None

    @classmethod
    def from_row(cls, row: Row[Any]) -> Revision:
        return cls(
            id=row.id,
            created_at=row.created_at,
            actor=row.actor,
            config=json.loads(row.config),
            config_sha256=row.config_sha256,
            status=row.status,
            reason=row.reason,
            applied_at=row.applied_at,
        )


@dataclass(frozen=True)
class Artifact:
    name: str
    version: str
    sha256: str
    kind: str
    size: int
    created_at: str
    actor: str

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @classmethod
    def from_row(cls, row: Row[Any]) -> Artifact:
        return cls(row.name, row.version, row.sha256, row.kind, row.size, row.created_at, row.actor)


@dataclass(frozen=True)
class Token:
    name: str
    sha256: str
    scopes: frozenset[str]
    created_at: str
    revoked_at: str | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    @classmethod
    def from_row(cls, row: Row[Any]) -> Token:
        return cls(
            row.name,
            row.token_sha256,
            frozenset(row.scopes.split()),
            row.created_at,
            row.revoked_at,
        )


def _name(kind: str, value: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise StoreError(
            f"{kind} {value!r} must be letters, digits, '_', '.' or '-' "
            "(at most 128, starting with a letter or digit)"
        )
    return value


def _sha256(kind: str, value: str) -> str:
    digest = value.lower().removeprefix("sha256:") if isinstance(value, str) else ""
    if not _SHA256.match(digest):
        raise StoreError(f"{kind} must be a sha256: 64 hex digits, not {value!r}")
    return digest


def _status(status: str) -> RevisionStatus:
    try:
        return RevisionStatus(status)
    except ValueError:
        raise StoreError(
            f"revision status {status!r} is not one of {[s.value for s in RevisionStatus]}"
        ) from None


class Store(LiveRows, InstanceRows):
    """Open with ``Store.open(data_dir, url)``; see the module docstring for the rules."""

    def __init__(
        self,
        engine: StoreEngine,
        data_dir: Path,
        key: SigningKey,
        *,
        wall: Callable[[], float] = time.time,
        checkpoint_interval_s: float = 1.0,
    ) -> None:
        self._engine = engine
        self.data_dir = Path(data_dir)
        self._key = key
        self._wall = wall
        self.audit = AuditLog(
            engine, self.data_dir, key, wall=wall, checkpoint_interval_s=checkpoint_interval_s
        )

    @classmethod
    def open(
        cls,
        data_dir: Path,
        url: str | None = None,
        *,
        schema: str | None = None,
        wall: Callable[[], float] = time.time,
        checkpoint_interval_s: float = 1.0,
        unreachable_ok: bool = False,
    ) -> Store:
        """Open (and migrate to the newest schema) the store at ``url``.

        ``url`` defaults to the SQLite file ``data_dir/failsoft.db``; the
        audit signing key and the outside copy of checkpoints live in
        ``data_dir`` whatever the URL. Raises StoreError when the store is
        unreachable, its URL is wrong, or its schema is newer than this code.
        With ``unreachable_ok``, a store that does not answer is opened
        anyway: every call raises StoreUnreachable until it answers, and the
        first call that reaches it migrates it first.
        """
        data_dir = Path(data_dir)
        key = load_or_create_key(data_dir)
        engine = StoreEngine(url or default_url(data_dir), schema)
        try:
            migrate(engine)
        except StoreUnreachable:
            if not unreachable_ok:
                engine.dispose()
                raise
            engine.defer(lambda: migrate(engine))
        except BaseException:
            engine.dispose()
            raise
        return cls(engine, data_dir, key, wall=wall, checkpoint_interval_s=checkpoint_interval_s)

    @property
    def url(self) -> str:
        """The store's URL without its password."""
        return self._engine.url

    @property
    def dialect(self) -> str:
        return self._engine.dialect

    @property
    def engine(self) -> StoreEngine:
        return self._engine

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self._key.public

    def close(self) -> None:
        """Sign a last checkpoint (if the store is reachable) and release connections."""
        try:
            self.audit.checkpoint(force=True)
        except StoreError as error:
            log.warning("no final audit checkpoint", extra={"error": error.message})
        self._engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _now(self) -> str:
        return utc_text(self._wall())

    def _changed(self) -> None:
        try:
            self.audit.checkpoint()
        except StoreError as error:
            # The change itself committed; the next checkpoint will cover it.
            log.warning("audit checkpoint postponed", extra={"error": error.message})

    # -- revisions -------------------------------------------------------------

    @staticmethod
    def _applied_sha256(conn: Connection) -> str | None:
        row = conn.execute(
            select(revisions.c.config_sha256)
            .where(revisions.c.status == RevisionStatus.APPLIED)
            .order_by(revisions.c.applied_at.desc(), revisions.c.id.desc())
            .limit(1)
        ).first()
        return None if row is None else str(row.config_sha256)

    def add_revision(
        self, config: Mapping[str, Any], *, actor: str, reason: str | None = None
    ) -> Revision:
        """Store ``config`` as revision N+1, ``pending``."""
        try:
            text = canonical_json(dict(config)).decode()
        except (TypeError, ValueError) as error:
            raise StoreError(f"a revision's configuration must be JSON: {error}") from None
        digest = sha256_hex(text.encode())
        with self._engine.write() as conn:
            last = conn.execute(select(func.coalesce(func.max(revisions.c.id), 0))).scalar_one()
            rev_id = int(last) + 1
            before = self._applied_sha256(conn)
            now = self._now()
            conn.execute(
                insert(revisions).values(
                    id=rev_id,
                    created_at=now,
                    actor=actor,
                    config=text,
                    config_sha256=digest,
                    status=RevisionStatus.PENDING.value,
                    reason=reason,
                    applied_at=None,
                )
            )
            self.audit.append(
                conn,
                actor=actor,
                action="revision.created",
                target=f"revision:{rev_id}",
                before=before,
                after=digest,
                detail={"reason": reason} if reason else {},
            )
            row = conn.execute(select(revisions).where(revisions.c.id == rev_id)).one()
        self._changed()
        return Revision.from_row(row)

    def revision(self, rev_id: int) -> Revision | None:
        with self._engine.read() as conn:
            row = conn.execute(select(revisions).where(revisions.c.id == rev_id)).first()
        return None if row is None else Revision.from_row(row)

    def current_revision(self) -> Revision | None:
        """The revision in force: the one applied last."""
        with self._engine.read() as conn:
            row = conn.execute(
                select(revisions)
                .where(revisions.c.status == RevisionStatus.APPLIED)
                .order_by(revisions.c.applied_at.desc(), revisions.c.id.desc())
                .limit(1)
            ).first()
        return None if row is None else Revision.from_row(row)

    def revisions(self, *, limit: int | None = None, status: str | None = None) -> list[Revision]:
        """The history, newest first."""
        query = select(revisions).order_by(revisions.c.id.desc())
        if status is not None:
            query = query.where(revisions.c.status == _status(status))
        if limit is not None:
            query = query.limit(limit)
        with self._engine.read() as conn:
            rows = conn.execute(query).all()
        return [Revision.from_row(row) for row in rows]

    def mark_revision(
        self, rev_id: int, status: str, *, actor: str, reason: str | None = None
    ) -> Revision:
        """Set a revision's status (and reason); ``applied`` supersedes the one before it."""
        new = _status(status)
        changed = False
        with self._engine.write() as conn:
            row = conn.execute(select(revisions).where(revisions.c.id == rev_id)).first()
            if row is None:
                raise StoreError(f"there is no revision {rev_id}")
            if row.status != new or (reason is not None and reason != row.reason):
                changed = True
                before = self._applied_sha256(conn)
                now = self._now()
                if new is RevisionStatus.APPLIED:
                    self._supersede(conn, rev_id, actor=actor, before=before)
                values: dict[str, Any] = {"status": new.value, "reason": reason}
                if new is RevisionStatus.APPLIED:
                    values["applied_at"] = now
                conn.execute(update(revisions).where(revisions.c.id == rev_id).values(**values))
                detail: dict[str, Any] = {"from": row.status}
                if reason:
                    detail["reason"] = reason
                self.audit.append(
                    conn,
                    actor=actor,
                    action=f"revision.{new.value}",
                    target=f"revision:{rev_id}",
                    before=before,
                    after=row.config_sha256,
                    detail=detail,
                )
                if new is RevisionStatus.APPLIED:
                    notify(conn, REVISION)
            row = conn.execute(select(revisions).where(revisions.c.id == rev_id)).one()
        if changed:
            self._changed()
        return Revision.from_row(row)

    def _supersede(self, conn: Connection, rev_id: int, *, actor: str, before: str | None) -> None:
        others = conn.execute(
            select(revisions.c.id, revisions.c.config_sha256).where(
                revisions.c.status == RevisionStatus.APPLIED, revisions.c.id != rev_id
            )
        ).all()
        for other in others:
            conn.execute(
                update(revisions)
                .where(revisions.c.id == other.id)
                .values(status=RevisionStatus.SUPERSEDED.value)
            )
            self.audit.append(
                conn,
                actor=actor,
                action="revision.superseded",
                target=f"revision:{other.id}",
                before=before,
                after=other.config_sha256,
                detail={"from": "applied", "by": rev_id},
            )

    # -- artifacts -------------------------------------------------------------

    def register_artifact(
        self, name: str, version: str, *, sha256: str, kind: str, size: int, actor: str
    ) -> Artifact:
        """Register ``name@version``; registering it again with the same bytes is a no-op."""
        try:
            ArtifactRef(name=name, version=version)
        except ArtifactRefError as error:
            raise StoreError(f"artifact {error}") from None
        digest = _sha256("an artifact's digest", sha256)
        if kind not in ARTIFACT_KINDS:
            raise StoreError(f"artifact kind {kind!r} is not one of {list(ARTIFACT_KINDS)}")
        if not isinstance(size, int) or size < 0:
            raise StoreError(f"artifact size must be a whole number of bytes, not {size!r}")
        with self._engine.write() as conn:
            existing = conn.execute(
                select(artifacts).where(artifacts.c.name == name, artifacts.c.version == version)
            ).first()
            if existing is not None:
                if existing.sha256 != digest:
                    raise StoreError(
                        f"artifact {name}@{version} is already registered with sha256 "
                        f"{existing.sha256}; versions are immutable, push a new version"
                    )
                return Artifact.from_row(existing)
            conn.execute(
                insert(artifacts).values(
                    name=name,
                    version=version,
                    sha256=digest,
                    kind=kind,
                    size=size,
                    created_at=self._now(),
                    actor=actor,
                )
            )
            self.audit.append(
                conn,
                actor=actor,
                action="artifact.registered",
                target=f"artifact:{name}@{version}",
                after=digest,
                detail={"kind": kind, "size": size},
            )
            row = conn.execute(
                select(artifacts).where(artifacts.c.name == name, artifacts.c.version == version)
            ).one()
        self._changed()
        return Artifact.from_row(row)

    def artifact(self, name: str, version: str) -> Artifact | None:
        with self._engine.read() as conn:
            row = conn.execute(
                select(artifacts).where(artifacts.c.name == name, artifacts.c.version == version)
            ).first()
        return None if row is None else Artifact.from_row(row)

    def find_artifact(self, ref: str | ArtifactRef) -> Artifact | None:
        """By ``name@version`` or by sha256 (the first registered with those bytes)."""
        if isinstance(ref, str):
            try:
                ref = ArtifactRef.parse(ref)
            except ArtifactRefError as error:
                raise StoreError(str(error)) from None
        if ref.name is not None and ref.version is not None:
            return self.artifact(ref.name, ref.version)
        with self._engine.read() as conn:
            row = conn.execute(
                select(artifacts)
                .where(artifacts.c.sha256 == ref.sha256)
                .order_by(artifacts.c.created_at, artifacts.c.name, artifacts.c.version)
                .limit(1)
            ).first()
        return None if row is None else Artifact.from_row(row)

    def artifacts(self, name: str | None = None) -> list[Artifact]:
        query = select(artifacts).order_by(artifacts.c.name, artifacts.c.created_at)
        if name is not None:
            query = query.where(artifacts.c.name == name)
        with self._engine.read() as conn:
            rows = conn.execute(query).all()
        return [Artifact.from_row(row) for row in rows]

    def referenced_sha256(self) -> set[str]:
        """The sha256 of every artifact that any stored revision references (never delete these).

        ``name@version`` references resolve through the registry; one that
        names no registered artifact protects nothing and is skipped.
        """
        with self._engine.snapshot() as conn:
            registered = {
                (row.name, row.version): row.sha256
                for row in conn.execute(
                    select(artifacts.c.name, artifacts.c.version, artifacts.c.sha256)
                )
            }
            configs = conn.execute(select(revisions.c.config)).scalars().all()
        found: set[str] = set()
        for config in configs:
            for ref in artifact_references(json.loads(config), strict=False):
                digest = ref.sha256 or registered.get((ref.name, ref.version))
                if digest is not None:
                    found.add(digest)
        return found

    # -- admin tokens ----------------------------------------------------------

    def add_token(
        self, name: str, token_sha256: str, scopes: Iterable[str], *, actor: str
    ) -> Token:
        """A named token, stored as its sha256; a revoked token's name may be reused."""
        _name("token name", name)
        digest = _sha256("a token's digest", token_sha256)
        scope_set = frozenset(scopes)
        if not scope_set or not all(_SCOPE.match(scope) for scope in scope_set):
            raise StoreError(
                f"token scopes must be short lower-case words, not {sorted(scope_set)}"
            )
        with self._engine.write() as conn:
            existing = conn.execute(select(tokens).where(tokens.c.name == name)).first()
            if existing is not None and existing.revoked_at is None:
                raise StoreError(f"token {name!r} exists; revoke it first")
            clash = conn.execute(
                select(tokens.c.name).where(tokens.c.token_sha256 == digest)
            ).first()
            if clash is not None:
                raise StoreError(f"that token is already registered (as {clash.name!r})")
            values = {
                "token_sha256": digest,
                "scopes": " ".join(sorted(scope_set)),
                "created_at": self._now(),
                "revoked_at": None,
            }
            if existing is None:
                conn.execute(insert(tokens).values(name=name, **values))
            else:
                conn.execute(update(tokens).where(tokens.c.name == name).values(**values))
            self.audit.append(
                conn,
                actor=actor,
                action="token.created",
                target=f"token:{name}",
                detail={"scopes": sorted(scope_set)},
            )
            row = conn.execute(select(tokens).where(tokens.c.name == name)).one()
        self._changed()
        return Token.from_row(row)

    def revoke_token(self, name: str, *, actor: str) -> Token:
        with self._engine.write() as conn:
            row = conn.execute(select(tokens).where(tokens.c.name == name)).first()
            if row is None:
                raise StoreError(f"there is no token {name!r}")
            if row.revoked_at is not None:
                return Token.from_row(row)
            conn.execute(update(tokens).where(tokens.c.name == name).values(revoked_at=self._now()))
            self.audit.append(conn, actor=actor, action="token.revoked", target=f"token:{name}")
            row = conn.execute(select(tokens).where(tokens.c.name == name)).one()
        self._changed()
        return Token.from_row(row)

    def tokens(self, *, include_revoked: bool = True) -> list[Token]:
        query = select(tokens).order_by(tokens.c.name)
        if not include_revoked:
            query = query.where(tokens.c.revoked_at.is_(None))
        with self._engine.read() as conn:
            rows = conn.execute(query).all()
        return [Token.from_row(row) for row in rows]

    def token_by_sha256(self, token_sha256: str) -> Token | None:
        """The active token with this digest, or None (unknown or revoked)."""
        digest = token_sha256.lower()
        with self._engine.read() as conn:
            row = conn.execute(
                select(tokens).where(tokens.c.token_sha256 == digest, tokens.c.revoked_at.is_(None))
            ).first()
        return None if row is None else Token.from_row(row)

    # -- audit -----------------------------------------------------------------

    def record(
        self,
        action: str,
        target: str,
        *,
        actor: str,
        before: str | None = None,
        after: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> AuditEntry:
        """An audit entry for a change made elsewhere (a fault added, a flag flipped…)."""
        with self._engine.write() as conn:
            entry = self.audit.append(
                conn,
                actor=actor,
                action=action,
                target=target,
                before=before,
                after=after,
                detail=detail,
            )
        self._changed()
        return entry

    def audit_entries(
        self, *, after_seq: int = 0, since: float | None = None, limit: int | None = None
    ) -> list[AuditEntry]:
        return self.audit.entries(after_seq=after_seq, since=since, limit=limit)

    def checkpoint(self, *, force: bool = False) -> Checkpoint | None:
        """Sign the log if it grew and the interval passed (or ``force``); call it ~1/s."""
        return self.audit.checkpoint(force=force)

    def verify(self, public_keys: Mapping[str, Ed25519PublicKey] | None = None) -> VerifyResult:
        """Recompute the audit log and every checkpoint (default key: this data directory's)."""
        keys = self.audit.public_keys if public_keys is None else public_keys
        return verify_log(self._engine, self.audit.outside_path, keys)

    def prove(self, seq: int) -> InclusionProof:
        return self.audit.prove(seq)


def migrate(engine: StoreEngine) -> None:
    """Bring the store's schema to this code's newest (under the write lock)."""
    from alembic.util import CommandError

    try:
        with engine.write("open") as conn:
            upgrade(conn)
    except CommandError as error:
        raise StoreError(
            f"control store {engine.url}: cannot migrate its schema ({error}); "
            "was it written by a newer failsoft?"
        ) from None
