"""Merkle trees as in RFC 6962 (Certificate Transparency), section 2.1.

Pure functions over *leaf hashes* (``leaf_hash(entry)``), as the RFC's
reference implementations work: the tree hash of n leaves splits at the
largest power of two smaller than n, so a tree grows by appending without
rewriting old nodes. Proofs are generated with the RFC 6962 recursions
(PATH and SUBPROOF) and verified with the iterative algorithms of RFC 9162
(2.1.3.2 and 2.1.4.2), which need only the proof, sizes and roots.

``MerkleTree`` caches every perfect subtree, so roots and proofs for any
size cost O(log n) hashes once built (``audit verify`` checks every
checkpoint with it); ``CompactRange`` keeps only the O(log n) perfect
subtrees on the right edge, enough to extend a log and sign its root.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence

__all__ = [
    "EMPTY_ROOT",
    "CompactRange",
    "MerkleTree",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root",
    "verify_consistency",
    "verify_inclusion",
]

# MTH({}) = SHA-256() : the hash of the empty string.
EMPTY_ROOT = hashlib.sha256(b"").digest()

# The tree hash of leaves[lo:hi]; how it is computed is the caller's business.
_Subtree = Callable[[int, int], bytes]


def leaf_hash(entry: bytes) -> bytes:
    """SHA-256(0x00 || entry)."""
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def _mth(leaves: Sequence[bytes], lo: int, hi: int) -> bytes:
    n = hi - lo
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return leaves[lo]
    k = _split(n)
    return node_hash(_mth(leaves, lo, lo + k), _mth(leaves, lo + k, hi))


def root(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH(D[n]) of the leaves whose hashes are given."""
    return _mth(leaf_hashes, 0, len(leaf_hashes))


def _path(m: int, lo: int, hi: int, subtree: _Subtree) -> list[bytes]:
    """PATH(m, D[lo:hi]): the audit path of leaf lo + m, bottom first."""
    n = hi - lo
    if n == 1:
        return []
    k = _split(n)
    if m < k:
        return [*_path(m, lo, lo + k, subtree), subtree(lo + k, hi)]
    return [*_path(m - k, lo + k, hi, subtree), subtree(lo, lo + k)]


def _subproof(m: int, lo: int, hi: int, complete: bool, subtree: _Subtree) -> list[bytes]:
    """SUBPROOF(m, D[lo:hi], b) of RFC 6962 2.1.2."""
    n = hi - lo
    if m == n:
        return [] if complete else [subtree(lo, hi)]
    k = _split(n)
    if m <= k:
        return [*_subproof(m, lo, lo + k, complete, subtree), subtree(lo + k, hi)]
    return [*_subproof(m - k, lo + k, hi, False, subtree), subtree(lo, lo + k)]


def _check_index(index: int, size: int) -> None:
    if not 0 <= index < size:
        raise ValueError(f"leaf index {index} is outside a tree of {size} leaves")


def _check_sizes(m: int, n: int) -> None:
    if not 0 <= m <= n:
        raise ValueError(f"no consistency proof from {m} to {n} leaves")


def inclusion_proof(leaf_hashes: Sequence[bytes], index: int) -> list[bytes]:
    """The audit path of leaf ``index`` in the tree of all ``leaf_hashes``."""
    _check_index(index, len(leaf_hashes))
    return _path(index, 0, len(leaf_hashes), lambda lo, hi: _mth(leaf_hashes, lo, hi))


def consistency_proof(leaf_hashes: Sequence[bytes], m: int) -> list[bytes]:
    """PROOF(m, D[n]): the tree of the first m leaves is a prefix of the tree of all n."""
    n = len(leaf_hashes)
    _check_sizes(m, n)
    if m in (0, n):
        return []
    return _subproof(m, 0, n, True, lambda lo, hi: _mth(leaf_hashes, lo, hi))


def _shift_while_even(fn: int, sn: int) -> tuple[int, int]:
    # "right-shift both equally until either LSB(fn) is set or fn is 0"
    while fn and not fn & 1:
        fn >>= 1
        sn >>= 1
    return fn, sn


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], expected_root: bytes
) -> bool:
    """RFC 9162 2.1.3.2: does ``proof`` place ``leaf`` (a leaf hash) at ``index``?"""
    if not 0 <= index < size:
        return False
    fn, sn = index, size - 1
    r = leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            fn, sn = _shift_while_even(fn, sn)
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == expected_root


def verify_consistency(
    m: int, n: int, root_m: bytes, root_n: bytes, proof: Sequence[bytes]
) -> bool:
    """RFC 9162 2.1.4.2: is the tree of m leaves with ``root_m`` a prefix of ``root_n``'s?"""
    if not 0 <= m <= n:
        return False
    if m == n:
        return not proof and root_m == root_n
    if m == 0:
        # Every tree extends the empty one; RFC 6962 defines no proof for it.
        return not proof and root_m == EMPTY_ROOT
    path = list(proof)
    if not path:
        return False
    if m & (m - 1) == 0:
        path.insert(0, root_m)
    fn, sn = m - 1, n - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            fn, sn = _shift_while_even(fn, sn)
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == root_m and sr == root_n and sn == 0


class MerkleTree:
    """A tree over fixed leaf hashes with every perfect subtree cached.

    ``levels[h][j]`` is the hash of leaves ``[j·2^h, (j+1)·2^h)``. Every node of
    an RFC 6962 tree of any size is such a perfect subtree or splits into
    them along its right edge, so a root or proof costs O(log n) hashes.
    """

    def __init__(self, leaf_hashes: Iterable[bytes]) -> None:
        level = list(leaf_hashes)
        self.levels: list[list[bytes]] = [level]
        while len(level) > 1:
            level = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
            self.levels.append(level)

    @property
    def size(self) -> int:
        return len(self.levels[0])

    def leaf(self, index: int) -> bytes:
        return self.levels[0][index]

    def _subtree(self, lo: int, hi: int) -> bytes:
        n = hi - lo
        if n == 0:
            return EMPTY_ROOT
        if n & (n - 1) == 0 and lo % n == 0:
            height = n.bit_length() - 1
            return self.levels[height][lo >> height]
        k = _split(n)
        return node_hash(self._subtree(lo, lo + k), self._subtree(lo + k, hi))

    def _size(self, size: int | None) -> int:
        if size is None:
            return self.size
        if not 0 <= size <= self.size:
            raise ValueError(f"tree size {size} is outside 0..{self.size}")
        return size

    def root(self, size: int | None = None) -> bytes:
        """MTH of the first ``size`` leaves (all by default)."""
        return self._subtree(0, self._size(size))

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        n = self._size(size)
        _check_index(index, n)
        return _path(index, 0, n, self._subtree)

    def consistency_proof(self, m: int, n: int | None = None) -> list[bytes]:
        n = self._size(n)
        _check_sizes(m, n)
        if m in (0, n):
            return []
        return _subproof(m, 0, n, True, self._subtree)


class CompactRange:
    """The right edge of a growing tree: enough to append leaves and compute the root."""

    def __init__(self) -> None:
        self.size = 0
        # (height, hash) of perfect subtrees, left to right, heights strictly decreasing.
        self._peaks: list[tuple[int, bytes]] = []

    def append(self, leaf: bytes) -> None:
        height, value = 0, leaf
        while self._peaks and self._peaks[-1][0] == height:
            _, left = self._peaks.pop()
            value = node_hash(left, value)
            height += 1
        self._peaks.append((height, value))
        self.size += 1

    def root(self) -> bytes:
        if not self._peaks:
            return EMPTY_ROOT
        acc = self._peaks[-1][1]
        for _, peak in reversed(self._peaks[:-1]):
            acc = node_hash(peak, acc)
        return acc
