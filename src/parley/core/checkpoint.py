"""Signed checkpoints of a log and the other site's cosignatures: C2SP's signed notes.

A site's log is summed up by a *checkpoint* (C2SP ``tlog-checkpoint``): its
origin (which log), its size and its root hash, as three lines of text,
signed with the site's device key in the signed-note format (C2SP
``signed-note``: a blank line, then ``— <name> <base64(key id || signature)>``).
The other site, acting as a witness (C2SP ``tlog-cosignature``), checks each
new checkpoint against the last one it saw from that log with a consistency
proof, and if it holds, cosigns it: it signs ``cosignature/v1``, the time and
the checkpoint's text. A log that was rewritten or forked cannot produce
that proof: the witness refuses, and keeps the two signed checkpoints that
contradict each other as evidence (`Fork`).

Keys are Ed25519, their ids as signed-note defines them (the first four bytes
of SHA-256 over the key's name, a newline, the algorithm byte and the public
key; 0x01 for a note signature, 0x04 for a cosignature).

Pure: no clock (``now`` passed in), no sockets.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass, field
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from . import merkle
from .errors import ErrorCode, RemoteError, SecurityAlarm

NOTE_ALG, COSIG_ALG = 0x01, 0x04
MAX_NOTE = 4096


class Signer(Protocol):
    """A signing key: an Ed25519 private key, or a device's keys (`keys.DeviceKeys`)."""

    def sign(self, data: bytes) -> bytes: ...

    def public_key(self) -> ed25519.Ed25519PublicKey: ...


def key_id(name: str, public: ed25519.Ed25519PublicKey, alg: int) -> bytes:
    raw = public.public_bytes_raw()
    return hashlib.sha256(name.encode() + b"\n" + bytes([alg]) + raw).digest()[:4]


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes

    def body(self) -> str:
        return f"{self.origin}\n{self.size}\n{base64.b64encode(self.root).decode()}\n"


def sign_checkpoint(checkpoint: Checkpoint, name: str, key: Signer) -> str:
    """The checkpoint as a signed note."""
    body = checkpoint.body()
    sig = key.sign(body.encode())
    tag = base64.b64encode(key_id(name, key.public_key(), NOTE_ALG) + sig).decode()
    return f"{body}\n\u2014 {name} {tag}\n"


def _split_note(note: str) -> tuple[str, list[tuple[str, bytes]]]:
    if len(note) > MAX_NOTE or "\n\n" not in note:
        raise RemoteError("not a signed note", code=ErrorCode.BAD_MESSAGE)
    body, _, sigs = note.partition("\n\n")
    body += "\n"
    lines = []
    for line in sigs.splitlines():
        if not line.startswith("\u2014 "):
            raise RemoteError("a signed note's signature lines start with an em dash",
                              code=ErrorCode.BAD_MESSAGE)
        name, _, tag = line[2:].rpartition(" ")
        try:
            lines.append((name, base64.b64decode(tag, validate=True)))
        except ValueError:
            raise RemoteError("a signature that is not base64", code=ErrorCode.BAD_MESSAGE
                              ) from None
    return body, lines


_SIZE = re.compile(r"0|[1-9][0-9]{0,18}")
MAX_SIZE = 2**62


def parse_checkpoint(body: str) -> Checkpoint:
    parts = body.split("\n")
    if len(parts) < 4 or _SIZE.fullmatch(parts[1]) is None or int(parts[1]) > MAX_SIZE:
        raise RemoteError("not a checkpoint: origin, size and root hash, a line each",
                          code=ErrorCode.BAD_MESSAGE)
    try:
        root = base64.b64decode(parts[2], validate=True)
    except ValueError:
        raise RemoteError("a checkpoint root that is not base64", code=ErrorCode.BAD_MESSAGE
                          ) from None
    if len(root) != merkle.HASH_BYTES:
        raise RemoteError("a checkpoint root is 32 bytes", code=ErrorCode.BAD_MESSAGE)
    return Checkpoint(parts[0], int(parts[1]), root)


def open_checkpoint(note: str, name: str, public: ed25519.Ed25519PublicKey) -> Checkpoint:
    """The checkpoint of a note signed by `name` with `public`, or SecurityAlarm."""
    body, lines = _split_note(note)
    want = key_id(name, public, NOTE_ALG)
    for signer, tag in lines:
        if signer == name and tag[:4] == want and len(tag) == 68:
            try:
                public.verify(tag[4:], body.encode())
            except InvalidSignature:
                break
            return parse_checkpoint(body)
    raise SecurityAlarm(f"the checkpoint is not signed by {name}", code=ErrorCode.BAD_SIGNATURE)


def cosign(note: str, name: str, key: Signer, now_s: int) -> str:
    """A witness's cosignature line for a checkpoint it checked (tlog-cosignature/v1)."""
    body, _ = _split_note(note)
    message = f"cosignature/v1\ntime {now_s}\n{body}".encode()
    sig = key.sign(message)
    tag = key_id(name, key.public_key(), COSIG_ALG) + now_s.to_bytes(8, "big") + sig
    return f"\u2014 {name} {base64.b64encode(tag).decode()}\n"


def verify_cosignature(note: str, line: str, name: str, public: ed25519.Ed25519PublicKey
                       ) -> int:
    """The time a witness cosigned this checkpoint at, or SecurityAlarm."""
    body, _ = _split_note(note)
    _, lines = _split_note(f"x\n\n{line.rstrip()}")
    for signer, tag in lines:
        if signer == name and len(tag) == 76 and tag[:4] == key_id(name, public, COSIG_ALG):
            when = int.from_bytes(tag[4:12], "big")
            try:
                public.verify(tag[12:], f"cosignature/v1\ntime {when}\n{body}".encode())
            except InvalidSignature:
                break
            return when
    raise SecurityAlarm(f"the cosignature is not {name}'s", code=ErrorCode.BAD_SIGNATURE)


@dataclass(frozen=True)
class Fork:
    """Two checkpoints of one log, both signed by it, that cannot both be true."""

    origin: str
    seen: str  # the note seen before
    now: str  # the note that contradicts it
    why: str


@dataclass
class Witness:
    """What one site knows of the other site's log, and checks each new checkpoint against."""

    name: str
    key: Signer
    log_name: str  # the name the other site signs its checkpoints with
    log_key: ed25519.Ed25519PublicKey
    last: str | None = None  # the last note seen and cosigned
    forks: list[Fork] = field(default_factory=list)

    @property
    def have(self) -> int:
        """The size of the last checkpoint cosigned (0: none yet)."""
        if self.last is None:
            return 0
        return open_checkpoint(self.last, self.log_name, self.log_key).size

    def observe(self, note: str, proof: list[bytes], now_s: int,
                from_size: int | None = None) -> str | None:
        """Check a new checkpoint (with a consistency proof from the last one seen) and
        cosign it; a log rewritten or forked raises SecurityAlarm, the evidence kept.

        `from_size`: the size the proof starts from, if the sender says; a proof from
        another size than the last one seen proves nothing here, and None is returned
        (the sender is told `have` and sends a proof from there)."""
        checkpoint = open_checkpoint(note, self.log_name, self.log_key)
        if self.last is not None:
            before = open_checkpoint(self.last, self.log_name, self.log_key)
            try:
                if before.origin != checkpoint.origin:
                    raise RemoteError(f"another log ({checkpoint.origin})",
                                      code=ErrorCode.BAD_MESSAGE)
                if checkpoint.size < before.size:
                    raise RemoteError(f"it is shorter now ({checkpoint.size}) than it was"
                                      f" ({before.size}): entries were taken away",
                                      code=ErrorCode.BAD_MESSAGE)
                if checkpoint.size == before.size:
                    # The same size again: the same root, whatever proof came with it.
                    if checkpoint.root != before.root:
                        raise RemoteError(f"two different trees of the same size"
                                          f" {before.size}", code=ErrorCode.BAD_MESSAGE)
                elif from_size is not None and from_size != before.size:
                    return None
                else:
                    merkle.verify_consistency(before.size, checkpoint.size, before.root,
                                              checkpoint.root, proof)
            except RemoteError as exc:
                fork = Fork(checkpoint.origin, self.last, note, exc.message)
                self.forks.append(fork)
                raise SecurityAlarm(
                    f"the log {checkpoint.origin} of {self.log_name} does not extend what it"
                    f" showed before (size {before.size} -> {checkpoint.size}): {exc.message}",
                    code=ErrorCode.RECORD_FORKED,
                    hint="both signed checkpoints are kept as evidence") from None
        self.last = note
        return cosign(note, self.name, self.key, now_s)
