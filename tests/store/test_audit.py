"""The audit log: append-only, signed checkpoints in and outside the store, verify, prove."""

from __future__ import annotations

import json
import logging
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import text

from failsoft.store import (
    InclusionProof,
    Store,
    StoreError,
    check_inclusion,
    load_public_key,
)
from failsoft.store.audit import CHECKPOINT_FILE
from failsoft.store.merkle import leaf_hash
from failsoft.store.signing import PRIVATE_KEY_FILE, PUBLIC_KEY_FILE

from .conftest import Target, Wall, tamper


def fill(store: Store, wall: Wall, count: int) -> None:
    """``count`` changes, each a second apart: each gets its own checkpoint."""
    for i in range(count):
        store.record("test.change", f"thing:{i}", actor="alice", detail={"i": i})
        wall.advance(1)


def outside_lines(data_dir: Path) -> list[dict[str, object]]:
    lines = (data_dir / CHECKPOINT_FILE).read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_entries_are_canonical_json_hashed_as_rfc_6962_leaves(store: Store) -> None:
    entry = store.record(
        "flag.flipped",
        "flag:new-ui",
        actor="alice",
        before="0" * 64,
        after="f" * 64,
        detail={"to": True, "note": "größer"},
    )
    expected = (
        '{"action":"flag.flipped","actor":"alice","after":"'
        + "f" * 64
        + '","before":"'
        + "0" * 64
        + '","detail":{"note":"größer","to":true},"seq":1,'
        '"target":"flag:new-ui","time":"2023-11-14T22:13:20.000000Z"}'
    ).encode()
    assert entry.canonical() == expected
    assert entry.leaf_hash == leaf_hash(expected).hex()
    assert store.audit_entries() == [entry]
    with pytest.raises(StoreError, match="digest must be 64"):
        store.record("x", "y", actor="alice", after="abc")
    with pytest.raises(StoreError, match="detail must be JSON"):
        store.record("x", "y", actor="alice", detail={"bad": {1, 2}})


def test_the_database_refuses_to_update_or_delete_the_log(store: Store) -> None:
    store.record("test.change", "thing", actor="alice")
    store.checkpoint(force=True)
    for statement in (
        "UPDATE audit_entries SET actor = 'mallory'",
        "DELETE FROM audit_entries",
        "UPDATE checkpoints SET tree_size = 0",
        "DELETE FROM checkpoints",
    ):
        with pytest.raises(StoreError, match="append-only"), store.engine.write() as conn:
            conn.execute(text(statement))
    if store.dialect == "postgresql":
        with pytest.raises(StoreError, match="append-only"), store.engine.write() as conn:
            conn.execute(text("TRUNCATE audit_entries"))
    assert [e.actor for e in store.audit_entries()] == ["alice"]
    assert store.verify().ok


def test_checkpoints_are_batched_signed_and_copied_outside(
    store: Store, wall: Wall, data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="failsoft.audit")
    store.record("test.change", "a", actor="alice")  # signed at once
    store.record("test.change", "b", actor="alice")  # within the second: waits
    wall.advance(0.5)
    assert store.checkpoint() is None
    wall.advance(0.5)
    latest = store.checkpoint()
    assert latest is not None
    assert store.checkpoint(force=True) is None  # nothing new to sign
    assert [(c.id, c.tree_size) for c in store.audit.checkpoints()] == [(1, 1), (2, 2)]
    assert latest.time == "2023-11-14T22:13:21.000000Z"
    assert latest.key_id == store.audit.key_id
    assert latest.signature_valid(store.public_key)
    # The same checkpoints outside the store: a file and a JSON log line each.
    assert outside_lines(data_dir) == [c.to_dict() for c in store.audit.checkpoints()]
    logged = [r.audit_checkpoint for r in caplog.records if hasattr(r, "audit_checkpoint")]
    assert logged == outside_lines(data_dir)


def test_the_signing_key_is_private_and_kept(target: Target, data_dir: Path, wall: Wall) -> None:
    with target.open(data_dir, wall) as store:
        key_id = store.audit.key_id
    key_file = data_dir / PRIVATE_KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    public = load_public_key((data_dir / PUBLIC_KEY_FILE).read_bytes())
    with target.open(data_dir, wall) as again:
        assert again.audit.key_id == key_id
        assert again.audit.public_keys == {key_id: public}


def test_an_honest_log_verifies(store: Store, wall: Wall) -> None:
    fill(store, wall, 12)
    result = store.verify()
    assert result.ok, result.problems
    assert (result.entries, result.checkpoints, result.outside_checkpoints, result.covered) == (
        12,
        12,
        12,
        12,
    )


def test_one_changed_byte_in_one_entry_is_named(store: Store, wall: Wall) -> None:
    fill(store, wall, 6)
    tamper(store, "UPDATE audit_entries SET actor = 'alicf' WHERE seq = 4")
    result = store.verify()
    assert not result.ok
    assert result.first is not None
    assert result.first.seq == 4
    assert (
        str(result.first) == "entry 4: content does not match its leaf hash: edited in the database"
    )


def test_an_edit_that_fixes_up_the_leaf_hash_breaks_the_checkpoint_roots(
    store: Store, wall: Wall
) -> None:
    fill(store, wall, 6)
    forged = store.audit_entries()[2]
    rewritten = type(forged)(**{**forged.__dict__, "actor": "mallory"})
    new_leaf = leaf_hash(rewritten.canonical()).hex()
    tamper(
        store,
        f"UPDATE audit_entries SET actor = 'mallory', leaf_hash = '{new_leaf}' WHERE seq = 3",
    )
    result = store.verify()
    assert result.first is not None
    assert result.first.checkpoint == "store checkpoint #3"
    assert result.first.seq == 3
    assert "an entry in 3..3 was changed" in result.first.what


def test_a_hand_edited_detail_is_caught_even_when_it_means_the_same(store: Store) -> None:
    store.record("test.change", "a", actor="alice", detail={"n": 1})
    tamper(store, """UPDATE audit_entries SET detail = '{"n": 1}' WHERE seq = 1""")
    assert "not canonical" in str(store.verify().first)


def test_deleting_the_newest_entries_and_their_checkpoints_is_caught_outside(
    store: Store, wall: Wall
) -> None:
    fill(store, wall, 5)
    tamper(
        store,
        "DELETE FROM audit_entries WHERE seq >= 4",
        "DELETE FROM checkpoints WHERE tree_size >= 4",
    )
    result = store.verify()
    assert not result.ok
    assert result.first is not None
    assert result.first.seq == 4
    assert result.first.checkpoint == f"{CHECKPOINT_FILE} line 4"
    assert "covers 4 entries but the log has 3: entries 4..4 were deleted" in result.first.what


def test_a_deleted_entry_in_the_middle_is_named(store: Store, wall: Wall) -> None:
    fill(store, wall, 5)
    tamper(store, "DELETE FROM audit_entries WHERE seq = 2")
    result = store.verify()
    assert str(result.first) == "entry 2: missing: the log jumps from 1 to 3"


def test_checkpoints_from_another_key_or_edited_do_not_verify(
    store: Store, wall: Wall, data_dir: Path
) -> None:
    fill(store, wall, 3)
    other_key = Ed25519PrivateKey.generate().public_key()
    from failsoft.store.signing import key_id

    result = store.verify({key_id(other_key): other_key})
    assert not result.ok
    assert all("unknown key" in p.what for p in result.problems)
    # Same key id, wrong key: every signature fails.
    wrong = store.verify({store.audit.key_id: other_key})
    assert {p.what for p in wrong.problems} == {"signature does not verify: forged or edited"}
    # A checkpoint edited outside the store.
    lines = (data_dir / CHECKPOINT_FILE).read_text().splitlines()
    edited = json.loads(lines[1])
    edited["time"] = "2020-01-01T00:00:00.000000Z"
    lines[1] = json.dumps(edited)
    (data_dir / CHECKPOINT_FILE).write_text("\n".join(lines) + "\n")
    assert str(store.verify().first) == (
        f"{CHECKPOINT_FILE} line 2: signature does not verify: forged or edited"
    )


def test_an_unfinished_last_line_outside_is_not_an_error(
    store: Store, wall: Wall, data_dir: Path
) -> None:
    fill(store, wall, 2)
    with (data_dir / CHECKPOINT_FILE).open("a") as handle:
        handle.write('{"tree_size": 3, "ro')  # a write cut short by a crash
    assert store.verify().ok
    with (data_dir / CHECKPOINT_FILE).open("a") as handle:
        handle.write("\n")
    assert "unreadable" in str(store.verify().first)


def test_an_inclusion_proof_checks_without_the_log(store: Store, wall: Wall) -> None:
    fill(store, wall, 7)
    proof = store.prove(3)
    assert proof.tree_size == 7
    assert proof.entry.seq == 3
    # Everything a third party needs travels as JSON.
    received = InclusionProof.from_dict(json.loads(json.dumps(proof.to_dict())))
    assert check_inclusion(received.entry, received, received.checkpoint, store.public_key)
    # A different entry, checkpoint or key does not pass.
    other = store.audit_entries()[3]
    assert not check_inclusion(other, received, received.checkpoint, store.public_key)
    edited = type(proof.entry)(**{**proof.entry.__dict__, "actor": "mallory"})
    assert not check_inclusion(edited, received, received.checkpoint, store.public_key)
    stranger = Ed25519PrivateKey.generate().public_key()
    assert not check_inclusion(proof.entry, received, received.checkpoint, stranger)
    older = store.audit.checkpoints()[4]
    assert not check_inclusion(proof.entry, received, older, store.public_key)


def test_prove_signs_a_checkpoint_when_the_entry_is_newer(store: Store) -> None:
    store.record("test.change", "a", actor="alice")
    store.record("test.change", "b", actor="alice")  # not yet checkpointed
    proof = store.prove(2)
    assert proof.checkpoint.tree_size == 2
    assert check_inclusion(proof.entry, proof, proof.checkpoint, store.public_key)
    with pytest.raises(StoreError, match="entry 3 does not exist"):
        store.prove(3)
    with pytest.raises(StoreError, match="entry 0 does not exist"):
        store.prove(0)


def test_prove_refuses_a_log_that_no_longer_matches(store: Store, wall: Wall) -> None:
    fill(store, wall, 3)
    tamper(store, "UPDATE audit_entries SET actor = 'mallory' WHERE seq = 2")
    with pytest.raises(StoreError, match="does not match its checkpoint"):
        store.prove(1)
