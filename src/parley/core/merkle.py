"""An append-only log's Merkle tree, as RFC 9162 (Certificate Transparency 2.0) defines it.

The tree over entries d[0..n) (section 2.1.1):

* the hash of an empty tree is SHA-256 of nothing;
* a leaf is ``SHA-256(0x00 || d[i])``;
* a tree of n > 1 entries is ``SHA-256(0x01 || MTH(d[0:k]) || MTH(d[k:n]))`` where
  k is the largest power of two smaller than n.

An *inclusion proof* (section 2.1.3) shows that entry m is in the tree of size
n with a given root; a *consistency proof* (section 2.1.4) shows that the tree
of size m is a prefix of the tree of size n -- that nothing written before was
changed or taken away. `inclusion_proof` and `consistency_proof` produce them
from the leaf hashes; `verify_inclusion` and `verify_consistency` check them
with the verification algorithms of sections 2.1.3.2 and 2.1.4.2, which is all
a verifier needs (no tree, no store).

Pure: hashing only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from .errors import ErrorCode, RemoteError

HASH_BYTES = 32


def _sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


EMPTY_ROOT = _sha(b"")


def leaf_hash(entry: bytes) -> bytes:
    return _sha(b"\x00" + entry)


def node_hash(left: bytes, right: bytes) -> bytes:
    return _sha(b"\x01" + left + right)


def _split(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    k = 1
    while k << 1 < n:
        k <<= 1
    return k


class Tree:
    """The tree over a growing list of leaf hashes, with every complete subtree's hash
    kept (``levels[h][i]`` covers leaves ``i*2**h .. (i+1)*2**h``), so that a root,
    an inclusion proof or a consistency proof of any size costs O(log^2 n) hashes,
    and an append O(1) amortised. The functions below are its definitions read
    straight off RFC 9162; `Tree` only avoids hashing the same subtree twice.
    """

    def __init__(self, leaves: Sequence[bytes] = ()) -> None:
        self.levels: list[list[bytes]] = [[]]
        for leaf in leaves:
            self.append(leaf)

    @property
    def size(self) -> int:
        return len(self.levels[0])

    def append(self, leaf: bytes) -> int:
        """Add a leaf hash; its index."""
        level = 0
        self.levels[0].append(leaf)
        index = len(self.levels[0]) - 1
        while len(self.levels[level]) % 2 == 0:
            pair = self.levels[level][-2:]
            if level + 1 == len(self.levels):
                self.levels.append([])
            self.levels[level + 1].append(node_hash(pair[0], pair[1]))
            level += 1
        return index

    def truncate(self, size: int) -> None:
        """Forget the leaves from `size` on (a transaction that wrote them rolled back)."""
        for level, hashes in enumerate(self.levels):
            del hashes[size >> level:]

    def _mth(self, lo: int, n: int) -> bytes:
        """MTH(D[lo:lo+n]) for the subtrees the definitions ask for."""
        if n == 0:
            return EMPTY_ROOT
        if n & (n - 1) == 0 and lo % n == 0:
            return self.levels[n.bit_length() - 1][lo // n]
        k = _split(n)
        return node_hash(self._mth(lo, k), self._mth(lo + k, n - k))

    def root(self, size: int | None = None) -> bytes:
        size = self.size if size is None else size
        if not 0 <= size <= self.size:
            raise ValueError(f"no tree of {size} in a log of {self.size}")
        return self._mth(0, size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """PATH(m, D[n]) of section 2.1.3.1: the audit path of leaf `index`."""
        size = self.size if size is None else size
        if not 0 <= index < size <= self.size:
            raise ValueError(f"no leaf {index} in a tree of {size}")
        return self._path(index, 0, size)

    def _path(self, m: int, lo: int, n: int) -> list[bytes]:
        if n == 1:
            return []
        k = _split(n)
        if m < k:
            return [*self._path(m, lo, k), self._mth(lo + k, n - k)]
        return [*self._path(m - k, lo + k, n - k), self._mth(lo, k)]

    def consistency_proof(self, old_size: int, size: int | None = None) -> list[bytes]:
        """PROOF(m, D[n]) of section 2.1.4.1, for 0 < m <= n."""
        size = self.size if size is None else size
        if not 0 < old_size <= size <= self.size:
            raise ValueError(f"no consistency proof from {old_size} to {size}")
        return self._subproof(old_size, 0, size, True)

    def _subproof(self, m: int, lo: int, n: int, whole: bool) -> list[bytes]:
        if m == n:
            return [] if whole else [self._mth(lo, n)]
        k = _split(n)
        if m <= k:
            return [*self._subproof(m, lo, k, whole), self._mth(lo + k, n - k)]
        return [*self._subproof(m - k, lo + k, n - k, False), self._mth(lo, k)]


def root(leaves: Sequence[bytes]) -> bytes:
    """MTH over these leaf hashes."""
    return Tree(leaves).root()


def inclusion_proof(leaves: Sequence[bytes], index: int) -> list[bytes]:
    return Tree(leaves).inclusion_proof(index)


def consistency_proof(leaves: Sequence[bytes], old_size: int) -> list[bytes]:
    return Tree(leaves).consistency_proof(old_size)


def _bad(what: str) -> RemoteError:
    return RemoteError(what, code=ErrorCode.BAD_SIGNATURE)


def verify_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes],
                     expected_root: bytes) -> None:
    """Section 2.1.3.2. Raises RemoteError (``bad_signature``) unless the proof holds."""
    if not 0 <= index < size:
        raise _bad(f"leaf {index} cannot be in a tree of {size}")
    fn, sn = index, size - 1
    r = leaf
    for p in proof:
        if sn == 0:
            raise _bad("the inclusion proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn & 1 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0 or r != expected_root:
        raise _bad(f"entry {index} is not in the tree of size {size} with this root")


def verify_consistency(old_size: int, new_size: int, old_root: bytes, new_root: bytes,
                       proof: Sequence[bytes]) -> None:
    """Section 2.1.4.2. Raises RemoteError (``bad_signature``) unless the tree of
    `old_size` is a prefix of the tree of `new_size`."""
    if old_size > new_size:
        raise _bad(f"a tree of {new_size} cannot extend one of {old_size}")
    if old_size == new_size:
        if proof:
            raise _bad("the same tree needs no consistency proof")
        if old_root != new_root:
            raise _bad(f"two different trees of the same size {old_size}")
        return
    if old_size == 0:
        if proof:
            raise _bad("an empty tree needs no consistency proof")
        return
    if not proof:
        raise _bad("an empty consistency proof")
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # a power of two: the old root starts the path
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise _bad("the consistency proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn & 1 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0 or fr != old_root or sr != new_root:
        raise _bad(f"the tree of {new_size} is not an extension of the tree of {old_size}:"
                   " the log was rewritten or forked")
