"""SFrame (RFC 9605): the end-to-end layer on every encoded media frame, inside DTLS-SRTP.

Why a second layer
------------------
DTLS-SRTP keys come from an elliptic-curve Diffie-Hellman exchange: a recording
of a call today can be decrypted by whoever later runs a large enough quantum
computer. Every envelope between terminals is already sealed with hybrid
ML-KEM-768 + X25519 (`envelope.py`), so each side picks a fresh random media
secret per call, direction and key epoch and sends it inside its call envelopes
(offer, answer, re-offer, re-answer, re-key). Frames are then encrypted with
SFrame under keys derived from those secrets before they are packetized;
DTLS-SRTP stays the outer layer. Breaking ECDH then yields only SFrame
ciphertext.

The format (RFC 9605, section 4)
--------------------------------
A protected frame on the wire is ``clear || header || ciphertext``:

* ``header`` is SFrame's: a config byte ``X K(3) Y C(3)``, then the key id
  (KID) and counter (CTR) as minimal big-endian integers when they do not fit
  in three bits.
* ``ciphertext`` is AES-128-GCM (cipher suite ``AES_128_GCM_SHA256_128``,
  0x0004, 16-byte tag) of the rest of the frame under ``sframe_key``, with the
  nonce ``sframe_salt XOR CTR`` and the associated data ``header || clear``.
* ``clear`` is the few bytes a packetizer or jitter buffer must read, left
  readable but authenticated as SFrame "metadata" (`clear_bytes`): 10 bytes of
  a VP8 key frame (its 3-byte frame tag, the start code and the dimensions),
  3 of any other VP8 frame (the frame tag), and 1 byte of an Opus packet (its
  TOC byte: mode, bandwidth, frame size), as the WebRTC samples and Jitsi do.

Keys (`media_base_key`): ``base_key = HKDF-SHA256(secret, info = label ||
call id || sender's and receiver's identity fingerprints || kind || epoch)``,
so a key is good for one call between two identities, one direction and one
kind of media, and the SAS (which covers the identity keys) covers it too.
RFC 9605's ``derive_key_salt`` then turns each base key into ``sframe_key``
and ``sframe_salt``. Audio and video of one direction have separate keys and
key ids (``KID = 2 * epoch + kind``), so a frame of one stream can never be
replayed into the other.

Counters (`FrameSealer`) start at zero for a stream and only ever grow: a
re-key changes the key, never winds the counter back, so no (key, counter)
pair is ever used twice. A receiver (`FrameOpener`) accepts a frame only
under a key its verified peer sent for this call, with a counter it has not
seen (a 128-frame sliding window per key, as SRTP's replay list), and drops
everything else, counting why.
"""

from __future__ import annotations

import hmac
import struct
import threading
from dataclasses import dataclass, field
from enum import StrEnum

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

from .encoding import canonical_json

CIPHER_SUITE = 0x0004  # AES_128_GCM_SHA256_128 (RFC 9605, section 4.5)
KEY_BYTES = 16  # Nk
NONCE_BYTES = 12  # Nn
TAG_BYTES = 16  # Nt
SECRET_BYTES = 32  # the random media secret each side sends per epoch
MAX_VALUE = 2**64 - 1  # KID and CTR are at most 8 bytes
REPLAY_WINDOW = 128
KEYS_KEPT = 2  # per stream: the key in use and the one before it (a re-key's overlap)
PROTECTION = "sframe+dtls-srtp"
PROTECTION_OUTER_ONLY = "dtls-srtp"
_MEDIA_LABEL = b"parley sframe media key v1"


class Kind(StrEnum):
    AUDIO = "audio"
    VIDEO = "video"


_KIND_BIT = {Kind.AUDIO: 0, Kind.VIDEO: 1}


class SFrameError(ValueError):
    """A frame that is not valid SFrame, or does not authenticate."""


class Drop(StrEnum):
    """Why a receiver dropped a frame."""

    MALFORMED = "malformed"  # too short, or no SFrame header where one must be
    UNKNOWN_KEY = "unknown_key"  # a key id the peer never sent (or already erased)
    WRONG_STREAM = "wrong_stream"  # another stream's key id
    REPLAY = "replay"  # a counter already seen under this key, or older than the window
    AUTH = "auth"  # does not authenticate under the key its header names


# --- RFC 9605: header and keys --------------------------------------------------------


def _compact(value: int) -> bytes:
    return value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")


def encode_header(kid: int, ctr: int) -> bytes:
    """The SFrame header for `kid` and `ctr` (RFC 9605, section 4.3)."""
    if not (0 <= kid <= MAX_VALUE and 0 <= ctr <= MAX_VALUE):
        raise SFrameError("SFrame KID and CTR must fit in 64 bits")
    config, tail = 0, b""
    if kid < 8:
        config |= kid << 4
    else:
        kid_bytes = _compact(kid)
        config |= 0x80 | (len(kid_bytes) - 1) << 4
        tail += kid_bytes
    if ctr < 8:
        config |= ctr
    else:
        ctr_bytes = _compact(ctr)
        config |= 0x08 | (len(ctr_bytes) - 1)
        tail += ctr_bytes
    return bytes([config]) + tail


def decode_header(data: bytes | memoryview) -> tuple[int, int, int]:
    """(kid, ctr, header length) of the SFrame header at the start of `data`."""
    if not data:
        raise SFrameError("no SFrame header (empty frame)")
    config = data[0]
    pos = 1
    values = []
    for extended, small in ((config & 0x80, (config >> 4) & 0x07), (config & 0x08, config & 0x07)):
        if not extended:
            values.append(small)
            continue
        size = small + 1
        if pos + size > len(data):
            raise SFrameError("SFrame header cut short")
        raw = bytes(data[pos:pos + size])
        if size > 1 and raw[0] == 0:
            raise SFrameError("SFrame header value not minimally encoded")
        value = int.from_bytes(raw, "big")
        if value < 8:
            raise SFrameError("SFrame header value not minimally encoded")
        values.append(value)
        pos += size
    return values[0], values[1], pos


@dataclass(frozen=True)
class KeySalt:
    key: bytes
    salt: bytes


def derive_key_salt(kid: int, base_key: bytes) -> KeySalt:
    """RFC 9605, section 4.4.2: sframe_key and sframe_salt for `kid` from `base_key`."""
    suffix = struct.pack(">QH", kid, CIPHER_SUITE)
    secret = hmac.digest(b"", base_key, "sha256")  # HKDF-Extract with an empty salt
    key = HKDFExpand(hashes.SHA256(), KEY_BYTES, b"SFrame 1.0 Secret key " + suffix).derive(secret)
    salt = HKDFExpand(hashes.SHA256(), NONCE_BYTES, b"SFrame 1.0 Secret salt " + suffix
                      ).derive(secret)
    return KeySalt(key, salt)


def _nonce(salt: bytes, ctr: int) -> bytes:
    return bytes(a ^ b for a, b in zip(salt, ctr.to_bytes(NONCE_BYTES, "big"), strict=True))


class Context:
    """RFC 9605's SFrame context (section 4.4.3): keys by KID; encrypt and decrypt."""

    def __init__(self) -> None:
        self._keys: dict[int, tuple[AESGCM, bytes]] = {}

    def add_key(self, kid: int, base_key: bytes) -> None:
        derived = derive_key_salt(kid, base_key)
        self._keys[kid] = (AESGCM(derived.key), derived.salt)

    def remove_key(self, kid: int) -> None:
        self._keys.pop(kid, None)

    def has_key(self, kid: int) -> bool:
        return kid in self._keys

    def kids(self) -> list[int]:
        return sorted(self._keys)

    def encrypt(self, ctr: int, kid: int, metadata: bytes, plaintext: bytes) -> bytes:
        """header || AEAD ciphertext (section 4.4.3)."""
        aead, salt = self._keys[kid]
        header = encode_header(kid, ctr)
        return header + aead.encrypt(_nonce(salt, ctr), plaintext, header + metadata)

    def decrypt(self, metadata: bytes, ciphertext: bytes) -> tuple[int, int, bytes]:
        """(kid, ctr, plaintext); SFrameError if unknown, malformed or not authentic."""
        kid, ctr, size = decode_header(ciphertext)
        entry = self._keys.get(kid)
        if entry is None:
            raise SFrameError(f"no key for SFrame KID {kid}")
        if len(ciphertext) - size < TAG_BYTES:
            raise SFrameError("SFrame ciphertext shorter than its tag")
        aead, salt = entry
        try:
            plaintext = aead.decrypt(_nonce(salt, ctr), ciphertext[size:],
                                     ciphertext[:size] + metadata)
        except InvalidTag:
            raise SFrameError("SFrame frame does not authenticate") from None
        return kid, ctr, plaintext


# --- Parley's use of it: keys per call, direction, kind and epoch -----------------------


def media_kid(epoch: int, kind: Kind) -> int:
    return 2 * epoch + _KIND_BIT[kind]


def kid_kind(kid: int) -> Kind:
    return Kind.VIDEO if kid & 1 else Kind.AUDIO


def media_base_key(secret: bytes, call_id: str, sender: bytes, receiver: bytes, kind: Kind,
                   epoch: int) -> bytes:
    """The SFrame base key for one stream; `sender`/`receiver` are identity fingerprints."""
    if len(secret) != SECRET_BYTES:
        raise SFrameError(f"a media secret is {SECRET_BYTES} bytes")
    info = _MEDIA_LABEL + canonical_json([call_id, sender.hex(), receiver.hex(), str(kind),
                                          epoch])
    return HKDF(hashes.SHA256(), KEY_BYTES, salt=None, info=info).derive(secret)


@dataclass(frozen=True)
class StreamKeys:
    """One direction's keys for one epoch: what a media stack needs to seal or open."""

    epoch: int
    audio: bytes
    video: bytes

    def base_key(self, kind: Kind) -> bytes:
        return self.audio if kind is Kind.AUDIO else self.video

    @classmethod
    def derive(cls, secret: bytes, call_id: str, sender: bytes, receiver: bytes,
               epoch: int) -> StreamKeys:
        return cls(epoch, *(media_base_key(secret, call_id, sender, receiver, kind, epoch)
                            for kind in (Kind.AUDIO, Kind.VIDEO)))

    def as_json(self) -> dict[str, object]:
        """For the page's media worker (over the terminal's local control channel)."""
        return {"epoch": self.epoch, "audio": self.audio.hex(), "video": self.video.hex()}

    def __repr__(self) -> str:  # never in a log
        return f"StreamKeys(epoch={self.epoch})"


def clear_bytes(kind: Kind, frame: bytes | memoryview) -> int:
    """How many leading bytes of an encoded frame stay readable (authenticated).

    Read off the first byte, which stays readable: the sender and the receiver
    count the same. A frame shorter than that is not sealed at all.
    """
    if kind is Kind.AUDIO or not frame:
        return 1  # the Opus TOC byte
    keyframe = not frame[0] & 0x01  # VP8 frame tag: P bit 0 is a key frame (RFC 6386, 9.1)
    return 10 if keyframe else 3


class FrameSealer:
    """One outgoing stream: seals each encoded frame under the current key."""

    def __init__(self, kind: Kind) -> None:
        self.kind = Kind(kind)
        self._context = Context()
        self._kid: int | None = None
        self.counter = 0  # the next CTR; never wound back, whatever the key
        self.sealed = 0
        self._lock = threading.Lock()  # a media stack may encode in another thread

    @property
    def kid(self) -> int | None:
        return self._kid

    def use(self, keys: StreamKeys) -> None:
        """Seal from now on under `keys` (a re-key); the counter runs on."""
        kid = media_kid(keys.epoch, self.kind)
        with self._lock:
            if self._kid is not None and kid <= self._kid:
                return  # an older or the same epoch: keys only move forward
            self._context.add_key(kid, keys.base_key(self.kind))
            if self._kid is not None:
                self._context.remove_key(self._kid)
            self._kid = kid

    def seal(self, frame: bytes) -> bytes:
        with self._lock:
            if self._kid is None:
                raise SFrameError("no media key to seal with yet")
            if self.counter > MAX_VALUE:
                raise SFrameError("SFrame counter exhausted")
            clear = clear_bytes(self.kind, frame)
            if len(frame) < clear:
                raise SFrameError(f"a {self.kind} frame of {len(frame)} bytes is too short"
                                  " to seal")
            metadata = bytes(frame[:clear])
            out = metadata + self._context.encrypt(self.counter, self._kid, metadata,
                                                   frame[clear:])
            self.counter += 1
            self.sealed += 1
            return out

    def erase(self) -> None:
        with self._lock:
            for kid in self._context.kids():
                self._context.remove_key(kid)
            self._kid = None


class ReplayWindow:
    """Counters seen under one key: the highest, and a bitmap of the `size` below it."""

    def __init__(self, size: int = REPLAY_WINDOW) -> None:
        self.size = size
        self.top = -1
        self.bits = 0  # bit i: counter top - i was seen

    def check(self, ctr: int) -> bool:
        if ctr > self.top:
            return True
        offset = self.top - ctr
        return offset < self.size and not (self.bits >> offset) & 1

    def mark(self, ctr: int) -> None:
        if ctr > self.top:
            shift = ctr - self.top
            self.bits = ((self.bits << shift) | 1) & ((1 << self.size) - 1) if shift < self.size \
                else 1
            self.top = ctr
        else:
            self.bits |= 1 << (self.top - ctr)


@dataclass
class OpenerStats:
    opened: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    consecutive_drops: int = 0  # since the last frame that opened
    last_drop: Drop | None = None

    def as_dict(self) -> dict[str, object]:
        return {"opened": self.opened, "dropped": dict(self.dropped),
                "consecutive_drops": self.consecutive_drops,
                "last_drop": None if self.last_drop is None else str(self.last_drop)}


class FrameOpener:
    """One incoming stream: opens frames sealed under keys the verified peer sent."""

    def __init__(self, kind: Kind, keep: int = KEYS_KEPT) -> None:
        self.kind = Kind(kind)
        self._keep = keep
        self._context = Context()
        self._windows: dict[int, ReplayWindow] = {}
        self.stats = OpenerStats()

    def add(self, keys: StreamKeys) -> None:
        kid = media_kid(keys.epoch, self.kind)
        if kid in self._windows:
            return
        self._context.add_key(kid, keys.base_key(self.kind))
        self._windows[kid] = ReplayWindow()
        for old in sorted(self._windows)[:-self._keep]:
            self._context.remove_key(old)  # erased: frames under it are refused from now on
            del self._windows[old]

    def open(self, frame: bytes) -> bytes:
        """The frame as encoded; SFrameError (counted) if it must be dropped."""
        try:
            return self._open(frame)
        except _Dropped as dropped:
            self.stats.dropped[dropped.why] = self.stats.dropped.get(dropped.why, 0) + 1
            self.stats.consecutive_drops += 1
            self.stats.last_drop = dropped.why
            raise SFrameError(f"{self.kind} frame dropped: {dropped.why}") from None

    def _open(self, frame: bytes) -> bytes:
        clear = clear_bytes(self.kind, frame)
        if len(frame) < clear + 1 + TAG_BYTES:
            raise _Dropped(Drop.MALFORMED)
        metadata, body = bytes(frame[:clear]), frame[clear:]
        try:
            kid, ctr, _size = decode_header(body)
        except SFrameError:
            raise _Dropped(Drop.MALFORMED) from None
        if kid_kind(kid) is not self.kind:
            raise _Dropped(Drop.WRONG_STREAM)
        window = self._windows.get(kid)
        if window is None:
            raise _Dropped(Drop.UNKNOWN_KEY)
        if not window.check(ctr):
            raise _Dropped(Drop.REPLAY)
        try:
            _kid, _ctr, plaintext = self._context.decrypt(metadata, body)
        except SFrameError:
            raise _Dropped(Drop.AUTH) from None
        window.mark(ctr)  # only an authentic frame moves the window
        self.stats.opened += 1
        self.stats.consecutive_drops = 0
        return metadata + plaintext

    def erase(self) -> None:
        for kid in self._context.kids():
            self._context.remove_key(kid)
        self._windows.clear()


class _Dropped(Exception):
    def __init__(self, why: Drop) -> None:
        self.why = why
