"""RFC 9162's Merkle tree: roots, inclusion and consistency proofs, and their edge cases.

The roots are checked against the definition written out directly (a second,
naive implementation here), the proofs by their verifiers, over every tree
size up to 70 (which covers sizes 0 and 1, powers of two and their
neighbours) and every pair of sizes; and each proof is shown to fail when any
of its inputs changes.
"""

from __future__ import annotations

import hashlib

import pytest

from parley.core import merkle
from parley.core.errors import RemoteError

SIZES = range(0, 71)


def definition(entries: list[bytes]) -> bytes:
    """MTH, as section 2.1.1 writes it."""
    if not entries:
        return hashlib.sha256(b"").digest()
    if len(entries) == 1:
        return hashlib.sha256(b"\x00" + entries[0]).digest()
    k = 1
    while k * 2 < len(entries):
        k *= 2
    return hashlib.sha256(b"\x01" + definition(entries[:k]) + definition(entries[k:])).digest()


ENTRIES = [f"entry {i}".encode() for i in range(max(SIZES))]
LEAVES = [merkle.leaf_hash(e) for e in ENTRIES]


def test_roots_are_the_definitions() -> None:
    for n in SIZES:
        assert merkle.root(LEAVES[:n]) == definition(ENTRIES[:n]), n
    assert merkle.root([]) == hashlib.sha256(b"").digest()


def test_every_inclusion_proof_verifies_and_no_other() -> None:
    for n in range(1, max(SIZES) + 1):
        tree = LEAVES[:n]
        top = merkle.root(tree)
        for i in range(n):
            proof = merkle.inclusion_proof(tree, i)
            merkle.verify_inclusion(i, n, tree[i], proof, top)
            with pytest.raises(RemoteError):
                merkle.verify_inclusion(i, n, merkle.leaf_hash(b"forged"), proof, top)
            if n > 1:
                with pytest.raises(RemoteError):
                    merkle.verify_inclusion((i + 1) % n, n, tree[i], proof, top)
                with pytest.raises(RemoteError):
                    merkle.verify_inclusion(i, n, tree[i], proof[:-1], top)
            with pytest.raises(RemoteError):
                merkle.verify_inclusion(i, n, tree[i], [*proof, top], top)


def test_every_consistency_proof_verifies_and_a_rewritten_log_does_not() -> None:
    for n in range(1, 40):
        tree = LEAVES[:n]
        new_root = merkle.root(tree)
        for m in range(1, n + 1):
            old_root = merkle.root(tree[:m])
            proof = merkle.consistency_proof(tree, m)
            merkle.verify_consistency(m, n, old_root, new_root, proof)
            # The old tree with one entry altered: not a prefix of the new one.
            altered = list(tree[:m])
            altered[m // 2] = merkle.leaf_hash(b"altered")
            with pytest.raises(RemoteError):
                merkle.verify_consistency(m, n, merkle.root(altered), new_root, proof)
            if m < n:
                with pytest.raises(RemoteError):
                    merkle.verify_consistency(m, n, old_root, merkle.root(altered + tree[m:]),
                                              proof)
                with pytest.raises(RemoteError):
                    merkle.verify_consistency(m, n, old_root, new_root, proof[:-1])


def test_edge_cases_of_sizes() -> None:
    top = merkle.root(LEAVES[:5])
    merkle.verify_consistency(0, 5, merkle.EMPTY_ROOT, top, [])  # anything extends nothing
    merkle.verify_consistency(5, 5, top, top, [])
    with pytest.raises(RemoteError, match="same size"):
        merkle.verify_consistency(5, 5, top, merkle.root(LEAVES[:4]), [])
    with pytest.raises(RemoteError, match="cannot extend"):
        merkle.verify_consistency(6, 5, top, top, [])
    with pytest.raises(RemoteError):
        merkle.verify_inclusion(5, 5, LEAVES[4], [], top)
    with pytest.raises(ValueError):
        merkle.consistency_proof(LEAVES[:5], 0)
    with pytest.raises(ValueError):
        merkle.inclusion_proof(LEAVES[:5], 5)
    assert merkle.inclusion_proof(LEAVES[:1], 0) == []
    merkle.verify_inclusion(0, 1, LEAVES[0], [], LEAVES[0])


def test_a_growing_tree_answers_for_every_earlier_size() -> None:
    """A log's tree answers for its checkpoints of the past: each root and proof at an
    earlier size is the one the definitions give for that prefix."""
    tree = merkle.Tree()
    for i, leaf in enumerate(LEAVES):
        assert tree.append(leaf) == i
    for n in SIZES:
        assert tree.root(n) == definition(ENTRIES[:n]), n
        for m in range(n):
            proof = tree.inclusion_proof(m, n)
            merkle.verify_inclusion(m, n, LEAVES[m], proof, tree.root(n))
        for m in range(1, n + 1):
            merkle.verify_consistency(m, n, tree.root(m), tree.root(n),
                                      tree.consistency_proof(m, n))
    with pytest.raises(ValueError):
        tree.root(len(LEAVES) + 1)
    tree.truncate(37)
    assert tree.size == 37 and tree.root() == definition(ENTRIES[:37])
    tree.append(LEAVES[37])
    assert tree.root() == definition(ENTRIES[:38])
