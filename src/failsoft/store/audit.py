"""The tamper-evident audit log: an RFC 6962 Merkle log of every change.

An entry is canonical JSON (``encoding.canonical_json``) of ``seq``, ``time``,
``actor``, ``action``, ``target``, ``before``/``after`` (SHA-256 digests of
what changed, or null) and ``detail``; its leaf hash is SHA-256(0x00 ‖ those
bytes). Entries are appended inside the same transaction as the change they
record, under the store's write lock, so sequence numbers are gapless and a
change without its entry cannot commit. The database refuses UPDATE and
DELETE on the log (triggers).

A checkpoint is the signed tree head: tree size, root, time and key id,
signed with the data directory's ed25519 key (``signing.py``). It is kept in
three places: the ``checkpoints`` table, a JSON-lines file in the data
directory (``audit-checkpoints.jsonl``) and a JSON log line on the
``failsoft.audit`` logger. Someone who can write the database can delete the
newest entries together with their checkpoints; the copies outside still
name the size the log had, so ``verify`` catches it. ``checkpoint()`` signs
at most once per ``checkpoint_interval_s`` unless forced: the store calls it
after every change, and the owner of the store calls it once a second (and
at shutdown) so the last changes of a burst are covered too. Entries newer
than the newest checkpoint are not yet protected against deletion.

Gateways sharing one store each sign with their own data directory's key,
and each signs every tree size it has not signed itself, so every outside
copy follows the whole log. ``verify`` then needs every gateway's public key
(``audit-key.pub``), or the gateways share one key file.

``prove(seq)`` gives an inclusion proof against the newest checkpoint that
``check_inclusion`` verifies with nothing but the entry, the proof, the
checkpoint and the public key.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import Connection, Row, func, insert, select

from failsoft.store.encoding import canonical_json, utc_text
from failsoft.store.engine import StoreEngine, StoreError
from failsoft.store.merkle import CompactRange, MerkleTree, leaf_hash, verify_inclusion
from failsoft.store.signing import SigningKey, signature_valid
from failsoft.store.tables import audit_entries, checkpoints

__all__ = [
    "CHECKPOINT_FILE",
    "AuditEntry",
    "AuditLog",
    "Checkpoint",
    "InclusionProof",
    "check_inclusion",
    "entry_bytes",
]

log = logging.getLogger("failsoft.audit")

CHECKPOINT_FILE = "audit-checkpoints.jsonl"
# Signed bytes start with this, so a checkpoint signature means nothing else.
CHECKPOINT_DOMAIN = b"failsoft audit checkpoint v1\n"
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_LIMITS = {"actor": 128, "action": 64, "target": 256}


def entry_bytes(
    *,
    seq: int,
    time: str,
    actor: str,
    action: str,
    target: str,
    before: str | None,
    after: str | None,
    detail: Any,
) -> bytes:
    """The canonical bytes of one entry: what its leaf hash covers."""
    return canonical_json(
        {
            "seq": seq,
            "time": time,
            "actor": actor,
            "action": action,
            "target": target,
            "before": before,
            "after": after,
            "detail": detail,
        }
    )


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    time: str
    actor: str
    action: str
    target: str
    before: str | None
    after: str | None
    detail: Mapping[str, Any]
    leaf_hash: str

    def canonical(self) -> bytes:
        return entry_bytes(
            seq=self.seq,
            time=self.time,
            actor=self.actor,
            action=self.action,
            target=self.target,
            before=self.before,
            after=self.after,
            detail=self.detail,
        )

    def to_dict(self) -> dict[str, Any]:
        return {**json.loads(self.canonical()), "leaf_hash": self.leaf_hash}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AuditEntry:
        try:
            return cls(
                seq=int(data["seq"]),
                time=str(data["time"]),
                actor=str(data["actor"]),
                action=str(data["action"]),
                target=str(data["target"]),
                before=data["before"],
                after=data["after"],
                detail=dict(data["detail"]),
                leaf_hash=str(data.get("leaf_hash", "")),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise StoreError(f"not an audit entry: {error}") from None

    @classmethod
    def from_row(cls, row: Row[Any]) -> AuditEntry:
        return cls(
            seq=row.seq,
            time=row.time,
            actor=row.actor,
            action=row.action,
            target=row.target,
            before=row.before_digest,
            after=row.after_digest,
            detail=json.loads(row.detail),
            leaf_hash=row.leaf_hash,
        )


@dataclass(frozen=True)
class Checkpoint:
    """A signed tree head. ``id`` is its row in the store (None for a copy from outside)."""

    tree_size: int
    root: str
    time: str
    key_id: str
    signature: str
    id: int | None = field(default=None, compare=False)

    def message(self) -> bytes:
        """The bytes the signature covers."""
        return CHECKPOINT_DOMAIN + canonical_json(
            {
                "key_id": self.key_id,
                "root": self.root,
                "time": self.time,
                "tree_size": self.tree_size,
            }
        )

    def signature_valid(self, public_key: Ed25519PublicKey) -> bool:
        try:
            signature = bytes.fromhex(self.signature)
        except ValueError:
            return False
        return signature_valid(public_key, signature, self.message())

    def to_dict(self) -> dict[str, Any]:
        return {
            "tree_size": self.tree_size,
            "root": self.root,
            "time": self.time,
            "key_id": self.key_id,
            "signature": self.signature,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Checkpoint:
        """A checkpoint from its JSON form; ValueError when it is not one."""
        try:
            size = data["tree_size"]
            values = [data[name] for name in ("root", "time", "key_id", "signature")]
        except (KeyError, TypeError) as error:
            raise ValueError(f"not a checkpoint: missing {error}") from None
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError("not a checkpoint: tree_size must be a whole number")
        if not all(isinstance(value, str) for value in values):
            raise ValueError("not a checkpoint: root, time, key_id and signature are text")
        return cls(size, *values)

    @classmethod
    def from_row(cls, row: Row[Any]) -> Checkpoint:
        return cls(row.tree_size, row.root_hash, row.time, row.key_id, row.signature, row.id)


@dataclass(frozen=True)
class InclusionProof:
    """Entry ``entry.seq`` is leaf ``seq - 1`` of the tree that ``checkpoint`` signs."""

    entry: AuditEntry
    checkpoint: Checkpoint
    path: tuple[str, ...]

    @property
    def leaf_index(self) -> int:
        return self.entry.seq - 1

    @property
    def tree_size(self) -> int:
        return self.checkpoint.tree_size

    def to_dict(self) -> dict[str, Any]:
        return {
            "leaf_index": self.leaf_index,
            "tree_size": self.tree_size,
            "path": list(self.path),
            "entry": self.entry.to_dict(),
            "checkpoint": self.checkpoint.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InclusionProof:
        try:
            checkpoint = Checkpoint.from_dict(data["checkpoint"])
            path = tuple(str(node) for node in data["path"])
            entry = AuditEntry.from_dict(data["entry"])
        except (KeyError, TypeError, ValueError) as error:
            raise StoreError(f"not an inclusion proof: {error}") from None
        return cls(entry, checkpoint, path)


def check_inclusion(
    entry: AuditEntry, proof: InclusionProof, checkpoint: Checkpoint, public_key: Ed25519PublicKey
) -> bool:
    """Is ``entry`` in the log that ``checkpoint`` signs? Needs nothing else.

    The checkpoint must carry a valid signature by ``public_key``, the proof
    must be for its tree size, and the path must lead from the entry's leaf
    hash (recomputed from its content) at index ``seq - 1`` to its root.
    """
    if proof.tree_size != checkpoint.tree_size or not checkpoint.signature_valid(public_key):
        return False
    try:
        path = [bytes.fromhex(node) for node in proof.path]
        expected_root = bytes.fromhex(checkpoint.root)
        leaf = leaf_hash(entry.canonical())
    except (ValueError, TypeError):
        return False
    return verify_inclusion(leaf, entry.seq - 1, checkpoint.tree_size, path, expected_root)


def _check_text(name: str, value: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > _LIMITS[name]:
        raise StoreError(
            f"audit {name} must be non-empty text of at most {_LIMITS[name]} characters"
        )
    return value


def _check_digest(name: str, value: str | None) -> str | None:
    if value is not None and not _DIGEST.match(value):
        raise StoreError(f"audit {name} digest must be 64 lower-case hex digits, not {value!r}")
    return value


class AuditLog:
    """Appends entries, signs checkpoints, proves inclusion; ``verify`` checks it all."""

    def __init__(
        self,
        engine: StoreEngine,
        data_dir: Path,
        key: SigningKey,
        *,
        wall: Callable[[], float],
        checkpoint_interval_s: float = 1.0,
    ) -> None:
        self._engine = engine
        self._key = key
        self._wall = wall
        self.checkpoint_interval_s = checkpoint_interval_s
        self.outside_path = Path(data_dir) / CHECKPOINT_FILE
        # The log as this process last signed it: grows by the rows after it.
        self._range = CompactRange()
        self._last_checkpoint_at = -math.inf

    @property
    def key_id(self) -> str:
        return self._key.key_id

    @property
    def public_keys(self) -> dict[str, Ed25519PublicKey]:
        return {self._key.key_id: self._key.public}

    def append(
        self,
        conn: Connection,
        *,
        actor: str,
        action: str,
        target: str,
        before: str | None = None,
        after: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> AuditEntry:
        """Add an entry in ``conn``'s write transaction (the store's write lock is held)."""
        try:
            detail_text = canonical_json(dict(detail or {})).decode()
        except (TypeError, ValueError) as error:
            raise StoreError(f"audit detail must be JSON: {error}") from None
        last = conn.execute(select(func.coalesce(func.max(audit_entries.c.seq), 0))).scalar_one()
        entry = AuditEntry(
            seq=int(last) + 1,
            time=utc_text(self._wall()),
            actor=_check_text("actor", actor),
            action=_check_text("action", action),
            target=_check_text("target", target),
            before=_check_digest("before", before),
            after=_check_digest("after", after),
            detail=json.loads(detail_text),
            leaf_hash="",
        )
        digest = leaf_hash(entry.canonical()).hex()
        conn.execute(
            insert(audit_entries).values(
                seq=entry.seq,
                time=entry.time,
                actor=entry.actor,
                action=entry.action,
                target=entry.target,
                before_digest=entry.before,
                after_digest=entry.after,
                detail=detail_text,
                leaf_hash=digest,
            )
        )
        return replace(entry, leaf_hash=digest)

    def checkpoint(self, *, force: bool = False) -> Checkpoint | None:
        """Sign the log as it stands, if it grew, at most once per interval unless forced."""
        now = self._wall()
        if not force and now - self._last_checkpoint_at < self.checkpoint_interval_s:
            return None
        with self._engine.write() as conn:
            self._catch_up(conn)
            # Each key signs every size it sees, even one another gateway signed:
            # so each data directory's outside copy follows the whole log.
            signed = conn.execute(
                select(func.max(checkpoints.c.tree_size)).where(
                    checkpoints.c.key_id == self._key.key_id
                )
            ).scalar()
            if self._range.size == 0 or (signed is not None and signed >= self._range.size):
                return None
            last_id = conn.execute(select(func.max(checkpoints.c.id))).scalar()
            unsigned = Checkpoint(
                tree_size=self._range.size,
                root=self._range.root().hex(),
                time=utc_text(now),
                key_id=self._key.key_id,
                signature="",
            )
            checkpoint = replace(
                unsigned,
                signature=self._key.sign(unsigned.message()).hex(),
                id=(last_id or 0) + 1,
            )
            conn.execute(
                insert(checkpoints).values(
                    id=checkpoint.id,
                    tree_size=checkpoint.tree_size,
                    root_hash=checkpoint.root,
                    time=checkpoint.time,
                    signature=checkpoint.signature,
                    key_id=checkpoint.key_id,
                )
            )
        self._last_checkpoint_at = now
        self._copy_outside(checkpoint)
        return checkpoint

    def _catch_up(self, conn: Connection) -> None:
        rows = conn.execute(
            select(audit_entries)
            .where(audit_entries.c.seq > self._range.size)
            .order_by(audit_entries.c.seq)
        )
        for row in rows:
            if row.seq != self._range.size + 1:
                log.error(
                    "audit log has a gap; signing only the entries before it",
                    extra={"missing_seq": self._range.size + 1},
                )
                return
            self._range.append(leaf_hash(AuditEntry.from_row(row).canonical()))

    def _copy_outside(self, checkpoint: Checkpoint) -> None:
        line = json.dumps(checkpoint.to_dict(), sort_keys=True, separators=(",", ":")) + "\n"
        try:
            fd = os.open(self.outside_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line.encode())
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as error:
            log.error(
                "cannot copy the audit checkpoint outside the store",
                extra={"path": str(self.outside_path), "error": str(error)},
            )
        log.info("audit checkpoint", extra={"audit_checkpoint": checkpoint.to_dict()})

    def latest_checkpoint(self) -> Checkpoint | None:
        with self._engine.read() as conn:
            row = conn.execute(
                select(checkpoints).order_by(checkpoints.c.id.desc()).limit(1)
            ).first()
        return None if row is None else Checkpoint.from_row(row)

    def checkpoints(self) -> list[Checkpoint]:
        with self._engine.read() as conn:
            rows = conn.execute(select(checkpoints).order_by(checkpoints.c.id)).all()
        return [Checkpoint.from_row(row) for row in rows]

    def entries(
        self, *, after_seq: int = 0, since: float | None = None, limit: int | None = None
    ) -> list[AuditEntry]:
        """Entries in order: after ``after_seq``, at or after wall time ``since``."""
        query = select(audit_entries).where(audit_entries.c.seq > after_seq)
        if since is not None:
            query = query.where(audit_entries.c.time >= utc_text(since))
        query = query.order_by(audit_entries.c.seq)
        if limit is not None:
            query = query.limit(limit)
        with self._engine.read() as conn:
            rows = conn.execute(query).all()
        return [AuditEntry.from_row(row) for row in rows]

    def size(self) -> int:
        with self._engine.read() as conn:
            last = conn.execute(select(func.coalesce(func.max(audit_entries.c.seq), 0)))
            return int(last.scalar_one())

    def prove(self, seq: int) -> InclusionProof:
        """A proof of entry ``seq`` against the newest checkpoint (signed now if needed)."""
        for attempt in range(2):
            with self._engine.snapshot() as conn:
                row = conn.execute(
                    select(checkpoints).order_by(checkpoints.c.id.desc()).limit(1)
                ).first()
                checkpoint = None if row is None else Checkpoint.from_row(row)
                if checkpoint is not None and 1 <= seq <= checkpoint.tree_size:
                    rows = conn.execute(
                        select(audit_entries)
                        .where(audit_entries.c.seq <= checkpoint.tree_size)
                        .order_by(audit_entries.c.seq)
                    ).all()
                    return self._proof(seq, checkpoint, rows)
            if attempt == 0 and seq >= 1:
                self.checkpoint(force=True)
        raise StoreError(f"audit entry {seq} does not exist (the log has {self.size()} entries)")

    def _proof(self, seq: int, checkpoint: Checkpoint, rows: Sequence[Row[Any]]) -> InclusionProof:
        entries = [AuditEntry.from_row(row) for row in rows]
        tree = MerkleTree(leaf_hash(entry.canonical()) for entry in entries)
        if (
            tree.size != checkpoint.tree_size
            or entries[seq - 1].seq != seq
            or tree.root().hex() != checkpoint.root
        ):
            raise StoreError(
                f"the audit log does not match its checkpoint #{checkpoint.id} "
                f"(size {checkpoint.tree_size}); run `failsoft audit verify`"
            )
        path = tuple(node.hex() for node in tree.inclusion_proof(seq - 1))
        return InclusionProof(entries[seq - 1], checkpoint, path)
