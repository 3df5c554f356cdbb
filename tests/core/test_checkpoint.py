"""Signed checkpoints, cosignatures, and a forked log caught with its evidence."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from parley.core import checkpoint as cp
from parley.core import merkle
from parley.core.errors import SecurityAlarm

LOG, WITNESS = "washington/hotline", "moscow/hotline"
LOG_KEY, WITNESS_KEY = ed25519.Ed25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate()
LEAVES = [merkle.leaf_hash(f"entry {i}".encode()) for i in range(20)]


def note(size: int, leaves: list[bytes] = LEAVES) -> str:
    return cp.sign_checkpoint(cp.Checkpoint("parley/washington", size,
                                            merkle.root(leaves[:size])), LOG, LOG_KEY)


def test_a_checkpoint_is_signed_opened_and_cosigned() -> None:
    signed = note(7)
    opened = cp.open_checkpoint(signed, LOG, LOG_KEY.public_key())
    assert (opened.size, opened.root) == (7, merkle.root(LEAVES[:7]))
    assert signed.splitlines()[:3] == ["parley/washington", "7", signed.splitlines()[2]]
    with pytest.raises(SecurityAlarm):
        cp.open_checkpoint(signed.replace("\n7\n", "\n8\n"), LOG, LOG_KEY.public_key())
    with pytest.raises(SecurityAlarm):
        cp.open_checkpoint(signed, LOG, WITNESS_KEY.public_key())
    line = cp.cosign(signed, WITNESS, WITNESS_KEY, 1_700_000_000)
    assert cp.verify_cosignature(signed, line, WITNESS, WITNESS_KEY.public_key()) == \
        1_700_000_000
    with pytest.raises(SecurityAlarm):
        cp.verify_cosignature(note(8), line, WITNESS, WITNESS_KEY.public_key())


def test_a_witness_cosigns_what_extends_and_catches_a_fork_with_evidence() -> None:
    witness = cp.Witness(WITNESS, WITNESS_KEY, LOG, LOG_KEY.public_key())
    witness.observe(note(5), [], 100)
    witness.observe(note(12), merkle.consistency_proof(LEAVES[:12], 5), 200)
    # The log rewritten: entry 3 altered, then grown to 15; it can show no proof from 12.
    rewritten = list(LEAVES)
    rewritten[3] = merkle.leaf_hash(b"what was never said")
    forged = note(15, rewritten)
    with pytest.raises(SecurityAlarm, match="does not extend"):
        witness.observe(forged, merkle.consistency_proof(rewritten[:15], 12), 300)
    (fork,) = witness.forks
    assert fork.seen == note(12) and fork.now == forged
    assert cp.open_checkpoint(fork.seen, LOG, LOG_KEY.public_key()).size == 12
    # A log shown smaller than before is a fork too; the genuine next one still verifies.
    with pytest.raises(SecurityAlarm):
        witness.observe(note(10), [], 400)
    witness.observe(note(20), merkle.consistency_proof(LEAVES[:20], 12), 500)
    assert witness.have == 20


def test_a_proof_from_another_size_asks_for_one_from_the_last_seen() -> None:
    witness = cp.Witness(WITNESS, WITNESS_KEY, LOG, LOG_KEY.public_key())
    assert witness.have == 0
    assert witness.observe(note(6), [], 100, from_size=0) is not None  # first seen: taken
    # The sender thought the witness had seen 3: nothing is proven, nothing is a fork.
    assert witness.observe(note(9), merkle.consistency_proof(LEAVES[:9], 3), 200,
                           from_size=3) is None
    assert witness.have == 6 and not witness.forks
    line = witness.observe(note(9), merkle.consistency_proof(LEAVES[:9], 6), 300, from_size=6)
    assert line is not None and witness.have == 9
    # Shorter than before is a fork whatever size the sender names.
    with pytest.raises(SecurityAlarm) as caught:
        witness.observe(note(8), [], 400, from_size=8)
    assert caught.value.code == cp.ErrorCode.RECORD_FORKED
    assert "shorter" in witness.forks[0].why


def test_the_same_checkpoint_again_is_cosigned_whatever_proof_comes_with_it() -> None:
    """The sender's view of what the witness holds may lag (an answer lost): the same size
    and root again is no fork, with or without a proof from an older size."""
    witness = cp.Witness(WITNESS, WITNESS_KEY, LOG, LOG_KEY.public_key())
    witness.observe(note(10), [], 100)
    again = witness.observe(note(10), merkle.consistency_proof(LEAVES[:10], 4), 200,
                            from_size=4)
    assert again is not None and not witness.forks
    rewritten = list(LEAVES)
    rewritten[2] = merkle.leaf_hash(b"changed")
    with pytest.raises(SecurityAlarm, match="same size"):
        witness.observe(note(10, rewritten), [], 300, from_size=10)
