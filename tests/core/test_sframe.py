"""SFrame (RFC 9605) as the media layer: the RFC's vectors, keys bound to the call, counters."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from parley.core import sframe
from parley.core.sframe import Drop, FrameOpener, FrameSealer, Kind, SFrameError, StreamKeys

VECTORS = json.loads((Path(__file__).parent / "data" / "rfc9605.json").read_text())
WASHINGTON, MOSCOW, MALLORY = (bytes([i]) * 32 for i in (1, 2, 3))


def test_every_header_vector_encodes_and_decodes() -> None:
    assert len(VECTORS["header"]) > 200
    for v in VECTORS["header"]:
        encoded = bytes.fromhex(v["encoded"])
        assert sframe.encode_header(v["kid"], v["ctr"]) == encoded
        assert sframe.decode_header(encoded + b"rest") == (v["kid"], v["ctr"], len(encoded))


@pytest.mark.parametrize("bad", ["", "80", "0800", "8000", "8800", "900001", "08"])
def test_a_header_cut_short_or_not_minimal_is_refused(bad: str) -> None:
    with pytest.raises(SFrameError):
        sframe.decode_header(bytes.fromhex(bad))


def test_the_aes_128_gcm_vector() -> None:
    (v,) = VECTORS["sframe"]
    assert v["cipher_suite"] == sframe.CIPHER_SUITE
    derived = sframe.derive_key_salt(v["kid"], bytes.fromhex(v["base_key"]))
    assert derived.key.hex() == v["sframe_key"]
    assert derived.salt.hex() == v["sframe_salt"]
    context = sframe.Context()
    context.add_key(v["kid"], bytes.fromhex(v["base_key"]))
    metadata, plaintext = bytes.fromhex(v["metadata"]), bytes.fromhex(v["pt"])
    assert context.encrypt(v["ctr"], v["kid"], metadata, plaintext).hex() == v["ct"]
    assert context.decrypt(metadata, bytes.fromhex(v["ct"])) == (v["kid"], v["ctr"], plaintext)
    ct = bytearray.fromhex(v["ct"])
    for i in range(len(ct)):  # any byte changed: header, ciphertext or tag
        flipped = bytearray(ct)
        flipped[i] ^= 0x01
        with pytest.raises(SFrameError):
            context.decrypt(metadata, bytes(flipped))
    with pytest.raises(SFrameError):
        context.decrypt(metadata[:-1] + b"X", bytes(ct))  # the metadata is authenticated


def _keys(secret: bytes, call_id: str = "call-1", sender: bytes = WASHINGTON,
          receiver: bytes = MOSCOW, epoch: int = 0) -> StreamKeys:
    return StreamKeys.derive(secret, call_id, sender, receiver, epoch)


def test_keys_are_bound_to_the_call_both_identities_the_kind_and_the_epoch() -> None:
    secret = os.urandom(sframe.SECRET_BYTES)
    base = _keys(secret)
    variants = [_keys(secret, call_id="call-2"), _keys(secret, sender=MALLORY),
                _keys(secret, receiver=MALLORY), _keys(secret, sender=MOSCOW,
                                                       receiver=WASHINGTON),
                _keys(secret, epoch=1), _keys(os.urandom(sframe.SECRET_BYTES))]
    keys = {base.audio, base.video} | {k for v in variants for k in (v.audio, v.video)}
    assert len(keys) == 2 * (1 + len(variants))
    # A frame sealed for this call opens under these keys only.
    sealer = FrameSealer(Kind.VIDEO)
    sealer.use(base)
    plain = b"\x00" + os.urandom(400)  # a key frame
    frame = sealer.seal(plain)
    assert frame[:10] == plain[:10] and len(frame) == len(plain) + 1 + sframe.TAG_BYTES
    for other in variants:
        opener = FrameOpener(Kind.VIDEO)
        opener.add(StreamKeys(base.epoch, other.audio, other.video))
        with pytest.raises(SFrameError):
            opener.open(frame)
        assert opener.stats.dropped == {"auth": 1}
    opener = FrameOpener(Kind.VIDEO)
    opener.add(base)
    assert opener.open(frame)[:1] == b"\x00"
    with pytest.raises(SFrameError):
        sframe.media_base_key(b"short", "call-1", WASHINGTON, MOSCOW, Kind.AUDIO, 0)


def test_counters_never_repeat_across_re_keys() -> None:
    sealer = FrameSealer(Kind.AUDIO)
    opener = FrameOpener(Kind.AUDIO)
    seen: set[tuple[int, int]] = set()
    counters: list[int] = []
    for epoch in range(4):
        keys = _keys(os.urandom(sframe.SECRET_BYTES), epoch=epoch)
        opener.add(keys)
        sealer.use(keys)
        for _ in range(50):
            frame = sealer.seal(b"\x78" + os.urandom(60))
            kid, ctr, _ = sframe.decode_header(frame[1:])
            assert (kid, ctr) not in seen
            seen.add((kid, ctr))
            counters.append(ctr)
            assert opener.open(frame)[:1] == b"\x78"
    assert counters == sorted(counters) and len(set(counters)) == len(counters)
    sealer.use(_keys(os.urandom(sframe.SECRET_BYTES), epoch=1))  # an older epoch: ignored
    assert sealer.kid == sframe.media_kid(3, Kind.AUDIO)


def test_an_old_key_is_erased_after_two_re_keys() -> None:
    opener, sealer = FrameOpener(Kind.AUDIO), FrameSealer(Kind.AUDIO)
    first = _keys(os.urandom(32), epoch=0)
    opener.add(first)
    sealer.use(first)
    old = sealer.seal(b"\x78old")
    for epoch in (1, 2):
        opener.add(_keys(os.urandom(32), epoch=epoch))
    with pytest.raises(SFrameError):
        opener.open(old)
    assert opener.stats.last_drop is Drop.UNKNOWN_KEY


def test_replays_stripped_frames_and_the_other_stream_are_dropped_and_counted() -> None:
    keys = _keys(os.urandom(32))
    audio, video = FrameSealer(Kind.AUDIO), FrameSealer(Kind.VIDEO)
    audio.use(keys)
    video.use(keys)
    opener = FrameOpener(Kind.AUDIO)
    opener.add(keys)
    frames = [audio.seal(b"\x78" + os.urandom(80)) for _ in range(300)]
    for frame in frames[:200]:
        opener.open(frame)
    for frame in (frames[150], frames[199], frames[10]):  # replays, in and below the window
        with pytest.raises(SFrameError):
            opener.open(frame)
    for frame in frames[200:]:
        opener.open(frame)
    with pytest.raises(SFrameError):
        opener.open(b"\x78" + os.urandom(80))  # no layer at all
    with pytest.raises(SFrameError):
        # A video frame into audio, whose second byte reads as video's key id to audio.
        opener.open(video.seal(b"\x01\x10\x00" + os.urandom(20)))
    with pytest.raises(SFrameError):
        opener.open(b"\x78")
    assert opener.stats.opened == 300
    # The frame with no layer is read as some header: whatever it names, it is dropped.
    assert opener.stats.dropped["replay"] >= 3
    assert opener.stats.dropped["malformed"] >= 1 and opener.stats.dropped["wrong_stream"] >= 1
    assert sum(opener.stats.dropped.values()) == 6
    assert opener.stats.consecutive_drops == 3


def test_reordered_frames_inside_the_window_still_open() -> None:
    keys = _keys(os.urandom(32))
    sealer, opener = FrameSealer(Kind.VIDEO), FrameOpener(Kind.VIDEO)
    sealer.use(keys)
    opener.add(keys)
    frames = [sealer.seal(b"\x01" + os.urandom(30)) for _ in range(10)]
    for i in (1, 0, 3, 2, 9, 5, 4, 8, 7, 6):
        assert opener.open(frames[i])[:3] == frames[i][:3]
    assert opener.stats.opened == 10


def _keyed_sealer(kind: Kind) -> FrameSealer:
    sealer = FrameSealer(kind)
    sealer.use(_keys(os.urandom(32)))
    return sealer


def test_the_clear_bytes_are_the_codec_headers_and_nothing_more() -> None:
    assert sframe.clear_bytes(Kind.AUDIO, b"\x78abc") == 1
    assert sframe.clear_bytes(Kind.VIDEO, b"\x10" + b"\x00" * 20) == 10  # P bit 0: key frame
    assert sframe.clear_bytes(Kind.VIDEO, b"\x11" + b"\x00" * 20) == 3
    with pytest.raises(SFrameError):  # shorter than its readable bytes: not sealed
        _keyed_sealer(Kind.VIDEO).seal(b"\x10\x00")
    with pytest.raises(SFrameError):
        _keyed_sealer(Kind.AUDIO).seal(b"")
    sealer = FrameSealer(Kind.VIDEO)
    sealer.use(_keys(os.urandom(32)))
    plain = b"\x10\x02\x00\x9d\x01\x2a\x80\x02\xe0\x01" + b"secret picture" * 10
    sealed = sealer.seal(plain)
    assert sealed[:10] == plain[:10]
    assert b"secret picture" not in sealed
    erased = FrameSealer(Kind.AUDIO)
    with pytest.raises(SFrameError):
        erased.seal(b"\x78")
