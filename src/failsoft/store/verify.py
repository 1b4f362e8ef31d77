"""``audit verify``: recompute the whole log and every checkpoint, in and outside the store.

What is checked, in this order (the first problem found is the one to name):

1. every entry: sequence numbers run 1, 2, 3… without gaps; its detail is
   canonical JSON; its stored leaf hash is the hash of its content;
2. every checkpoint in the store: signed by a known key, the signature
   valid, no larger than the log, its root the root of the log's first
   ``tree_size`` leaves (recomputed from content, not from stored hashes),
   and consistent with the checkpoint before it (RFC 6962 proof);
3. the same for every checkpoint in the file outside the store, which is
   what catches the newest entries deleted together with their checkpoints.

With every leaf at hand, matching roots already imply consistency; the
consistency proofs are checked anyway, as a monitor holding only the
checkpoints would. The outside file is read before the database, so a
checkpoint written while verifying (database first, then file) is never in
the file without its entries in the snapshot.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import select

from failsoft.store.audit import Checkpoint, entry_bytes
from failsoft.store.encoding import canonical_json
from failsoft.store.engine import StoreEngine
from failsoft.store.merkle import MerkleTree, leaf_hash, verify_consistency
from failsoft.store.tables import audit_entries, checkpoints

__all__ = ["Problem", "VerifyResult", "read_outside", "verify_log"]


@dataclass(frozen=True)
class Problem:
    """One thing wrong: ``seq`` is the first entry concerned, when known."""

    what: str
    seq: int | None = None
    checkpoint: str | None = None

    def __str__(self) -> str:
        where = [
            part
            for part in (self.checkpoint, None if self.seq is None else f"entry {self.seq}")
            if part
        ]
        return f"{', '.join(where)}: {self.what}" if where else self.what

    def to_dict(self) -> dict[str, Any]:
        return {"what": self.what, "seq": self.seq, "checkpoint": self.checkpoint}


@dataclass(frozen=True)
class VerifyResult:
    entries: int
    root: str
    checkpoints: int
    outside_checkpoints: int
    covered: int
    """Entries covered by a valid checkpoint; newer ones are not yet protected against deletion."""
    problems: tuple[Problem, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first(self) -> Problem | None:
        return self.problems[0] if self.problems else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "entries": self.entries,
            "root": self.root,
            "checkpoints": self.checkpoints,
            "outside_checkpoints": self.outside_checkpoints,
            "covered": self.covered,
            "problems": [problem.to_dict() for problem in self.problems],
        }


def read_outside(path: Path) -> tuple[list[tuple[str, Checkpoint]], list[Problem]]:
    """The checkpoints in the outside file, labelled by line; an unfinished last line is skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return [], []
    except (OSError, UnicodeDecodeError) as error:
        return [], [Problem(f"cannot read {path}: {error}", checkpoint="outside file")]
    found: list[tuple[str, Checkpoint]] = []
    problems: list[Problem] = []
    lines = text.split("\n")
    # The text after the last newline is a write cut short (or nothing): not a checkpoint yet.
    for number, line in enumerate(lines[:-1], start=1):
        label = f"{path.name} line {number}"
        if not line.strip():
            continue
        try:
            found.append((label, Checkpoint.from_dict(json.loads(line))))
        except ValueError as error:
            problems.append(Problem(f"unreadable: {error}", checkpoint=label))
    return found, problems


def _leaf(row: Any, problems: list[Problem]) -> bytes:
    try:
        detail: Any = json.loads(row.detail)
    except ValueError:
        problems.append(Problem("detail is not JSON: edited in the database", seq=row.seq))
        detail = row.detail
    else:
        if canonical_json(detail).decode() != row.detail:
            problems.append(
                Problem("detail is not canonical JSON: edited in the database", seq=row.seq)
            )
    leaf = leaf_hash(
        entry_bytes(
            seq=row.seq,
            time=row.time,
            actor=row.actor,
            action=row.action,
            target=row.target,
            before=row.before_digest,
            after=row.after_digest,
            detail=detail,
        )
    )
    if leaf.hex() != row.leaf_hash:
        problems.append(
            Problem("content does not match its leaf hash: edited in the database", seq=row.seq)
        )
    return leaf


def _check_checkpoints(
    labelled: list[tuple[str, Checkpoint]],
    tree: MerkleTree,
    keys: Mapping[str, Ed25519PublicKey],
    problems: list[Problem],
) -> int:
    """Check one sequence of checkpoints (store or outside); the largest valid size."""
    root_ok = {
        label: cp.tree_size <= tree.size and tree.root(cp.tree_size).hex() == cp.root
        for label, cp in labelled
    }
    good_sizes = sorted({cp.tree_size for label, cp in labelled if root_ok[label]})
    covered = 0
    previous: Checkpoint | None = None
    for label, cp in labelled:
        key = keys.get(cp.key_id)
        signed = key is not None and cp.signature_valid(key)
        if key is None:
            problems.append(Problem(f"signed by an unknown key {cp.key_id}", checkpoint=label))
        elif not signed:
            problems.append(
                Problem("signature does not verify: forged or edited", checkpoint=label)
            )
        if cp.tree_size > tree.size:
            problems.append(
                Problem(
                    f"covers {cp.tree_size} entries but the log has {tree.size}: "
                    f"entries {tree.size + 1}..{cp.tree_size} were deleted",
                    seq=tree.size + 1,
                    checkpoint=label,
                )
            )
        elif not root_ok[label]:
            since = max((size for size in good_sizes if size < cp.tree_size), default=0) + 1
            problems.append(
                Problem(
                    f"root does not match entries 1..{cp.tree_size}: an entry in "
                    f"{since}..{cp.tree_size} was changed, inserted or removed",
                    seq=since,
                    checkpoint=label,
                )
            )
        elif signed:
            covered = max(covered, cp.tree_size)
        if previous is not None and root_ok[label]:
            if cp.tree_size < previous.tree_size:
                problems.append(
                    Problem(
                        f"tree size went down from {previous.tree_size} to {cp.tree_size}",
                        checkpoint=label,
                    )
                )
            elif previous.tree_size <= tree.size and not verify_consistency(
                previous.tree_size,
                cp.tree_size,
                bytes.fromhex(previous.root),
                bytes.fromhex(cp.root),
                tree.consistency_proof(previous.tree_size, cp.tree_size),
            ):
                problems.append(
                    Problem(
                        f"not consistent with the checkpoint before it (size {previous.tree_size})",
                        checkpoint=label,
                    )
                )
        previous = cp
    return covered


def verify_log(
    engine: StoreEngine, outside_path: Path, keys: Mapping[str, Ed25519PublicKey]
) -> VerifyResult:
    outside, problems = read_outside(outside_path)
    with engine.snapshot() as conn:
        rows = conn.execute(select(audit_entries).order_by(audit_entries.c.seq)).all()
        stored = [
            Checkpoint.from_row(row)
            for row in conn.execute(select(checkpoints).order_by(checkpoints.c.id))
        ]
    entry_problems: list[Problem] = []
    leaves: list[bytes] = []
    expected = 1
    for row in rows:
        if row.seq != expected:
            entry_problems.append(
                Problem(f"missing: the log jumps from {expected - 1} to {row.seq}", seq=expected)
            )
        expected = row.seq + 1
        leaves.append(_leaf(row, entry_problems))
    tree = MerkleTree(leaves)
    checkpoint_problems: list[Problem] = []
    covered = _check_checkpoints(
        [(f"store checkpoint #{cp.id}", cp) for cp in stored], tree, keys, checkpoint_problems
    )
    outside_problems: list[Problem] = []
    covered = max(covered, _check_checkpoints(outside, tree, keys, outside_problems))
    return VerifyResult(
        entries=tree.size,
        root=tree.root().hex(),
        checkpoints=len(stored),
        outside_checkpoints=len(outside),
        covered=covered,
        problems=(*entry_problems, *checkpoint_problems, *problems, *outside_problems),
    )
