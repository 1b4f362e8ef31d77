"""The Store API: revisions, artifacts, tokens, and the audit entry every change writes."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest

from failsoft.store import Store, StoreError
from failsoft.store.encoding import canonical_json, sha256_hex

from .conftest import Target, Wall

IRIS = {"models": {"iris": {"versions": {"v1": {"artifact": "iris@v1"}}}}}


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_revisions_number_from_one_and_keep_their_history(store: Store, wall: Wall) -> None:
    assert store.revisions() == []
    assert store.current_revision() is None
    first = store.add_revision(IRIS, actor="alice", reason="seed")
    wall.advance(5)
    second = store.add_revision({"models": {}}, actor="bob")
    assert (first.id, second.id) == (1, 2)
    assert first.status == "pending"
    assert first.config == IRIS
    assert first.config_sha256 == sha256_hex(canonical_json(IRIS))
    assert first.created_at == "2023-11-14T22:13:20.000000Z"
    assert second.created_at == "2023-11-14T22:13:25.000000Z"
    assert [revision.id for revision in store.revisions()] == [2, 1]
    assert [revision.id for revision in store.revisions(limit=1)] == [2]
    assert store.revision(1) == first
    assert store.revision(3) is None


def test_applying_supersedes_the_revision_before_and_rollback_goes_back(
    store: Store, wall: Wall
) -> None:
    one = store.add_revision(IRIS, actor="alice")
    two = store.add_revision({"models": {}}, actor="alice")
    store.mark_revision(one.id, "applied", actor="gateway")
    assert store.current_revision() == store.revision(1)
    wall.advance(1)
    applied = store.mark_revision(two.id, "applied", actor="gateway")
    assert applied.applied_at == "2023-11-14T22:13:21.000000Z"
    assert store.current_revision() == applied
    assert store.revision(1).status == "superseded"  # type: ignore[union-attr]
    # A rollback: the bad one is marked, the old one applied again.
    wall.advance(1)
    store.mark_revision(two.id, "rolled_back", actor="alice", reason="p99 doubled")
    store.mark_revision(one.id, "applied", actor="alice")
    assert store.current_revision().id == 1  # type: ignore[union-attr]
    assert store.revision(2).reason == "p99 doubled"  # type: ignore[union-attr]
    assert [r.status for r in store.revisions()] == ["rolled_back", "applied"]
    three = store.add_revision({"bad": True}, actor="alice")
    store.mark_revision(three.id, "failed", actor="gateway", reason="golden probe failed")
    assert store.current_revision().id == 1  # type: ignore[union-attr]
    assert [r.id for r in store.revisions(status="failed")] == [3]


def test_revision_mistakes_are_clear_errors(store: Store) -> None:
    with pytest.raises(StoreError, match="no revision 9"):
        store.mark_revision(9, "applied", actor="alice")
    store.add_revision({}, actor="alice")
    with pytest.raises(StoreError, match="'done' is not one of"):
        store.mark_revision(1, "done", actor="alice")
    with pytest.raises(StoreError, match="must be JSON"):
        store.add_revision({"x": float("nan")}, actor="alice")
    with pytest.raises(StoreError, match="must be JSON"):
        store.add_revision({"x": object()}, actor="alice")
    with pytest.raises(StoreError, match="actor"):
        store.add_revision({}, actor="")
    assert [revision.id for revision in store.revisions()] == [1]


def test_every_change_writes_its_audit_entry_in_the_same_transaction(store: Store) -> None:
    one = store.add_revision(IRIS, actor="alice", reason="seed")
    store.mark_revision(1, "applied", actor="gateway")
    two = store.add_revision({}, actor="bob")
    store.mark_revision(2, "applied", actor="bob")
    store.register_artifact("iris", "v1", sha256="a" * 64, kind="onnx", size=10, actor="ci")
    store.add_token("ci", digest("t1"), ["read", "write"], actor="admin")
    store.revoke_token("ci", actor="admin")
    store.record("fault.added", "model:iris", actor="alice", detail={"kind": "latency"})
    entries = store.audit_entries()
    assert [(e.seq, e.actor, e.action, e.target) for e in entries] == [
        (1, "alice", "revision.created", "revision:1"),
        (2, "gateway", "revision.applied", "revision:1"),
        (3, "bob", "revision.created", "revision:2"),
        (4, "bob", "revision.superseded", "revision:1"),
        (5, "bob", "revision.applied", "revision:2"),
        (6, "ci", "artifact.registered", "artifact:iris@v1"),
        (7, "admin", "token.created", "token:ci"),
        (8, "admin", "token.revoked", "token:ci"),
        (9, "alice", "fault.added", "model:iris"),
    ]
    # Digests: the configuration in force before, the revision's after.
    assert (entries[0].before, entries[0].after) == (None, one.config_sha256)
    assert (entries[4].before, entries[4].after) == (one.config_sha256, two.config_sha256)
    assert entries[1].detail == {"from": "pending"}
    assert entries[5].after == "a" * 64
    assert entries[6].detail == {"scopes": ["read", "write"]}
    # A refused change leaves no entry.
    with pytest.raises(StoreError):
        store.register_artifact("iris", "v1", sha256="b" * 64, kind="onnx", size=1, actor="ci")
    assert len(store.audit_entries()) == 9
    # Marking a revision with the status it has is not a change.
    store.mark_revision(2, "applied", actor="bob")
    assert len(store.audit_entries()) == 9


def test_artifacts_register_once_and_are_found_by_name_or_digest(store: Store) -> None:
    sha = "ab" * 32
    iris = store.register_artifact("iris", "v3", sha256=sha, kind="onnx", size=1234, actor="ci")
    assert (iris.ref, iris.sha256, iris.kind, iris.size, iris.actor) == (
        "iris@v3",
        sha,
        "onnx",
        1234,
        "ci",
    )
    # Idempotent with the same bytes, refused with others.
    assert (
        store.register_artifact(
            "iris", "v3", sha256=sha.upper(), kind="onnx", size=1234, actor="ci"
        )
        == iris
    )
    with pytest.raises(StoreError, match="already registered with sha256"):
        store.register_artifact("iris", "v3", sha256="cd" * 32, kind="onnx", size=1, actor="ci")
    store.register_artifact("wine", "v1", sha256="cd" * 32, kind="sklearn", size=9, actor="ci")
    assert store.artifact("iris", "v3") == iris
    assert store.find_artifact("iris@v3") == iris
    assert store.find_artifact(f"sha256:{sha}") == iris
    assert store.find_artifact(sha) == iris
    assert store.find_artifact("iris@v9") is None
    assert [a.ref for a in store.artifacts()] == ["iris@v3", "wine@v1"]
    assert [a.ref for a in store.artifacts("wine")] == ["wine@v1"]
    for bad, says in [
        ({"name": "../x"}, "the name '../x' must start with a letter or digit"),
        ({"sha256": "123"}, "64 hex digits"),
        ({"kind": "tensorflow"}, "kind 'tensorflow'"),
        ({"size": -1}, "size"),
    ]:
        arguments = {"name": "m", "sha256": "ef" * 32, "kind": "onnx", "size": 1, **bad}
        with pytest.raises(StoreError, match=says):
            store.register_artifact(
                str(arguments["name"]),
                "v1",
                sha256=str(arguments["sha256"]),
                kind=str(arguments["kind"]),
                size=int(arguments["size"]),  # type: ignore[call-overload]
                actor="ci",
            )
    with pytest.raises(StoreError, match="has no version"):
        store.find_artifact("iris")


def test_referenced_digests_cover_every_stored_revision(store: Store) -> None:
    store.register_artifact("iris", "v1", sha256="11" * 32, kind="onnx", size=1, actor="ci")
    store.register_artifact("iris", "v2", sha256="22" * 32, kind="onnx", size=1, actor="ci")
    store.register_artifact("iris", "v3", sha256="33" * 32, kind="onnx", size=1, actor="ci")
    store.add_revision(IRIS, actor="alice")
    store.add_revision(
        {
            "models": {
                "iris": {"versions": {"v2": {"artifact": "iris@v2"}}},
                "wine": {"versions": {"v1": {"artifact": "sha256:" + "44" * 32}}},
                "gone": {"versions": {"v1": {"artifact": "gone@v1"}}},
            }
        },
        actor="alice",
    )
    # iris@v3 is referenced by no revision: the registry may collect it.
    assert store.referenced_sha256() == {"11" * 32, "22" * 32, "44" * 32}


def test_tokens_are_stored_as_digests_and_revoked_for_good(store: Store) -> None:
    ci = store.add_token("ci", digest("secret-1"), ["read", "write"], actor="admin")
    assert ci.scopes == {"read", "write"}
    assert ci.active
    assert store.token_by_sha256(digest("secret-1")) == ci
    assert store.token_by_sha256(digest("other")) is None
    with pytest.raises(StoreError, match="exists; revoke it first"):
        store.add_token("ci", digest("secret-2"), ["read"], actor="admin")
    with pytest.raises(StoreError, match="already registered"):
        store.add_token("ops", digest("secret-1"), ["read"], actor="admin")
    with pytest.raises(StoreError, match="scopes"):
        store.add_token("ops", digest("secret-3"), [], actor="admin")
    revoked = store.revoke_token("ci", actor="admin")
    assert not revoked.active
    assert store.token_by_sha256(digest("secret-1")) is None
    assert store.revoke_token("ci", actor="admin") == revoked
    with pytest.raises(StoreError, match="no token 'nobody'"):
        store.revoke_token("nobody", actor="admin")
    # The name may be reused with a new secret; the old one stays dead.
    again = store.add_token("ci", digest("secret-2"), ["chaos"], actor="admin")
    assert again.active
    assert store.token_by_sha256(digest("secret-1")) is None
    assert [t.name for t in store.tokens(include_revoked=False)] == ["ci"]
    assert [e.action for e in store.audit_entries()] == [
        "token.created",
        "token.revoked",
        "token.created",
    ]


def test_concurrent_writers_get_gapless_numbers(store: Store) -> None:
    def work(worker: int) -> None:
        for i in range(8):
            if i % 2:
                store.add_revision({"worker": worker, "i": i}, actor=f"w{worker}")
            else:
                store.record("test.tick", f"worker:{worker}", actor=f"w{worker}")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r.id for r in store.revisions()) == list(range(1, 17))
    assert [e.seq for e in store.audit_entries()] == list(range(1, 33))
    assert store.verify().ok


def test_two_gateways_on_one_store_share_numbering_and_the_log(
    store: Store, target: Target, wall: Wall, tmp_path: Path
) -> None:
    url = store.url if target.dialect == "sqlite" else target.url
    other = Store.open(tmp_path / "gateway-2", url, schema=target.schema, wall=wall)
    try:
        store.add_revision({}, actor="g1")
        other.add_revision({}, actor="g2")
        wall.advance(1)
        store.add_revision({}, actor="g1")
        assert [(r.id, r.actor) for r in other.revisions()] == [(3, "g1"), (2, "g2"), (1, "g1")]
        assert [e.seq for e in store.audit_entries()] == [1, 2, 3]
        # Each data directory signs with its own key: verify with both public keys
        # (or give the gateways one key file).
        assert [str(p) for p in store.verify().problems] == [
            f"store checkpoint #2: signed by an unknown key {other.audit.key_id}"
        ]
        keys = {**store.audit.public_keys, **other.audit.public_keys}
        assert store.verify(keys).ok
        assert other.verify(keys).ok
        # Each gateway signs the sizes it has not signed: both outside copies follow the log.
        other.checkpoint(force=True)
        assert [c.tree_size for c in other.audit.checkpoints()] == [1, 2, 3, 3]
        assert other.verify(keys).outside_checkpoints == 2
        assert other.verify(keys).covered == 3
    finally:
        other.close()
