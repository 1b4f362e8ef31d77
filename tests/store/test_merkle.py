"""RFC 6962 Merkle trees: the RFC's worked examples and properties of every proof."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from failsoft.store.merkle import (
    EMPTY_ROOT,
    CompactRange,
    MerkleTree,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root,
    verify_consistency,
    verify_inclusion,
)


def leaves(n: int) -> list[bytes]:
    return [leaf_hash(f"entry {i}".encode()) for i in range(n)]


def test_hashes_are_domain_separated() -> None:
    assert leaf_hash(b"x") == hashlib.sha256(b"\x00x").digest()
    assert node_hash(b"L", b"R") == hashlib.sha256(b"\x01LR").digest()
    assert root([]) == EMPTY_ROOT == hashlib.sha256(b"").digest()


def test_tree_hash_splits_at_the_largest_power_of_two_below_n() -> None:
    d = leaves(7)
    # RFC 6962 2.1.3: the seven-leaf example tree.
    a, b, c, dd, e, f, j = d
    g, h, i = node_hash(a, b), node_hash(c, dd), node_hash(e, f)
    k, l_ = node_hash(g, h), node_hash(i, j)
    m = node_hash(k, l_)
    assert root(d) == m
    assert root(d[:3]) == node_hash(g, c)
    assert root(d[:1]) == a
    assert root(d[:5]) == node_hash(k, e)


def test_the_rfc_audit_paths_and_consistency_proofs() -> None:
    a, b, c, d, e, f, j = leaves(7)
    g, h, i = node_hash(a, b), node_hash(c, d), node_hash(e, f)
    k, l_ = node_hash(g, h), node_hash(i, j)
    seven = [a, b, c, d, e, f, j]
    # RFC 6962 2.1.3: the audit paths for b, d and j.
    assert inclusion_proof(seven, 1) == [a, h, l_]
    assert inclusion_proof(seven, 3) == [c, g, l_]
    assert inclusion_proof(seven, 6) == [i, k]
    # RFC 6962 2.1.3: consistency proofs from the trees of 3, 4 and 6 leaves.
    assert consistency_proof(seven, 3) == [c, d, g, l_]
    assert consistency_proof(seven, 4) == [l_]
    assert consistency_proof(seven, 6) == [i, j, k]


@pytest.mark.parametrize("n", range(1, 34))
def test_every_proof_verifies_on_small_trees(n: int) -> None:
    d = leaves(n)
    tree = MerkleTree(d)
    top = root(d)
    assert tree.root() == top
    for index in range(n):
        proof = inclusion_proof(d, index)
        assert tree.inclusion_proof(index) == proof
        assert verify_inclusion(d[index], index, n, proof, top)
    for m in range(n + 1):
        proof = consistency_proof(d, m)
        assert tree.consistency_proof(m) == proof
        assert verify_consistency(m, n, root(d[:m]), top, proof)


def test_wrong_indexes_sizes_and_roots_are_refused() -> None:
    d = leaves(6)
    top = root(d)
    proof = inclusion_proof(d, 2)
    assert not verify_inclusion(d[2], 3, 6, proof, top)
    # (A proof does not bind the tree size by itself: the signed checkpoint does.)
    assert not verify_inclusion(d[2], 2, 12, proof, top)
    assert not verify_inclusion(d[2], 6, 6, proof, top)
    assert not verify_inclusion(d[2], 2, 6, proof[:-1], top)
    assert not verify_inclusion(d[2], 2, 6, [*proof, top], top)
    cproof = consistency_proof(d, 4)
    assert not verify_consistency(4, 6, root(d[:3]), top, cproof)
    assert not verify_consistency(4, 9, root(d[:4]), top, cproof)
    assert not verify_consistency(4, 6, root(d[:4]), top, [])
    assert not verify_consistency(7, 6, top, top, [])
    assert verify_consistency(6, 6, top, top, [])
    assert not verify_consistency(6, 6, top, root(d[:5]), [])
    with pytest.raises(ValueError, match="outside"):
        inclusion_proof(d, 6)
    with pytest.raises(ValueError, match="no consistency proof"):
        consistency_proof(d, 7)


def test_compact_range_tracks_the_root_of_a_growing_tree() -> None:
    d = leaves(40)
    compact = CompactRange()
    assert compact.root() == EMPTY_ROOT
    for n, leaf in enumerate(d, start=1):
        compact.append(leaf)
        assert compact.size == n
        assert compact.root() == root(d[:n])


entries = st.lists(st.binary(max_size=12), min_size=1, max_size=70)


@settings(max_examples=150, deadline=None)
@given(entries, st.data())
def test_inclusion_proofs_verify_and_a_changed_leaf_breaks_them(
    data: list[bytes], draw: st.DataObject
) -> None:
    d = [leaf_hash(x) for x in data]
    n = len(d)
    index = draw.draw(st.integers(0, n - 1))
    top = root(d)
    proof = MerkleTree(d).inclusion_proof(index)
    assert verify_inclusion(d[index], index, n, proof, top)
    changed = leaf_hash(data[index] + b"!")
    assert not verify_inclusion(changed, index, n, proof, top)
    if proof:
        position = draw.draw(st.integers(0, len(proof) - 1))
        bad = list(proof)
        bad[position] = hashlib.sha256(bad[position]).digest()
        assert not verify_inclusion(d[index], index, n, bad, top)


@settings(max_examples=150, deadline=None)
@given(entries, st.data())
def test_consistency_proofs_verify_and_a_changed_leaf_breaks_them(
    data: list[bytes], draw: st.DataObject
) -> None:
    d = [leaf_hash(x) for x in data]
    n = len(d)
    m = draw.draw(st.integers(1, n))
    tree = MerkleTree(d)
    assert tree.root(m) == root(d[:m])
    proof = tree.consistency_proof(m)
    assert verify_consistency(m, n, tree.root(m), tree.root(), proof)
    # Rewriting history (any leaf of the old tree) breaks consistency.
    changed_at = draw.draw(st.integers(0, m - 1))
    rewritten = list(d)
    rewritten[changed_at] = leaf_hash(data[changed_at] + b"!")
    new = MerkleTree(rewritten)
    assert not verify_consistency(m, n, tree.root(m), new.root(), new.consistency_proof(m))
