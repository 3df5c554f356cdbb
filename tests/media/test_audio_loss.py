"""Lost audio packets cost only themselves, and libopus conceals them (no sockets)."""

from __future__ import annotations

import fractions
import random

import aiortc.rtcrtpreceiver
import numpy as np
from aiortc.codecs.opus import OpusEncoder
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtp import RtpPacket
from av import AudioFrame

from parley.media import audio_loss
from parley.media.audio_loss import MAX_CONCEALED, ConcealingOpusDecoder
from parley.media.jitter import AudioJitterBuffer, parts


def packet(seq: int) -> RtpPacket:
    p = RtpPacket(payload_type=111, sequence_number=seq % 65536, timestamp=(seq * 960) % 2**32)
    p._data = bytes([seq % 256])  # type: ignore[attr-defined]
    return p


def released(buffer: JitterBuffer | AudioJitterBuffer, lost: set[int], n: int
             ) -> list[tuple[int, int]]:
    """(sequence number sent when a frame came out, that frame's number) for each release."""
    out = []
    for seq in range(n):
        if seq in lost:
            continue
        _, frame = buffer.add(packet(seq))
        if frame is not None:
            out += [(seq, part.timestamp // 960) for part in parts(frame)]
    return out


def test_the_jitter_buffer_loses_only_what_the_network_lost_and_keeps_its_delay() -> None:
    rng = random.Random(7)
    n = 70_000  # past the 16-bit sequence wrap
    lost = {s for s in range(n) if rng.random() < 0.05}
    ours = released(AudioJitterBuffer(16, prefetch=4), lost, n)
    frames = [f for _, f in ours]
    assert frames == sorted(frames) and len(frames) == len(set(frames))
    assert n - 4 - len(lost) <= len(frames) <= n - len(lost)  # the last 4 wait for more
    assert {seq - f for seq, f in ours[:60_000]} <= {4, 5, 6, 7, 8, 9}  # 4 after, or a hole
    # aiortc's own buffer, same losses: several times as many frames never come out.
    theirs = released(JitterBuffer(16, prefetch=4), lost, n)
    assert n - len(theirs) > 3 * len(lost)


def test_late_duplicate_and_restarted_sequences() -> None:
    buffer = AudioJitterBuffer(16, prefetch=2)
    out = [buffer.add(packet(s))[1] for s in (0, 1, 2, 3)]
    assert [f.timestamp // 960 if f else None for f in out] == [None, None, 0, 1]
    assert buffer.add(packet(0))[1] is None  # late: already released
    assert buffer.stats.late == 1
    assert buffer.add(packet(3))[1] is None  # a duplicate: nothing comes out twice
    assert buffer.add(packet(4))[1].timestamp // 960 == 2  # type: ignore[union-attr]
    assert buffer.add(packet(30_000))[1] is None  # one stray packet: on probation, dropped
    assert [f.timestamp // 960 for s in (5, 6) if (f := buffer.add(packet(s))[1])] == [3, 4]
    for start in (40_000, 10):  # a restart, ahead or behind (mod 2**16)
        jumped = [buffer.add(packet(s))[1] for s in range(start, start + 4)]
        # The first is on probation; the second starts the new sequence, two held after it.
        assert jumped[:3] == [None, None, None]
        assert jumped[3] is not None and jumped[3].timestamp == ((start + 1) * 960) % 2**32


def opus_packets(n: int) -> list[tuple[bytes, int]]:
    encoder = OpusEncoder()
    t = np.arange(n * 960) / 48_000
    tone = (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    out = []
    for i in range(n):
        frame = AudioFrame.from_ndarray(tone[i * 960:(i + 1) * 960].reshape(1, -1),
                                        format="s16", layout="mono")
        frame.sample_rate, frame.pts = 48_000, i * 960
        frame.time_base = fractions.Fraction(1, 48_000)
        packets, timestamp = encoder.encode(frame)
        out += [(p, timestamp) for p in packets]
    return out


def test_libopus_conceals_missing_frames_up_to_a_limit() -> None:
    packets = opus_packets(40)
    decoder = ConcealingOpusDecoder()
    pts: list[int] = []
    loud: list[bool] = []
    for i, (data, timestamp) in enumerate(packets):
        if 10 <= i < 12 or 20 <= i < 21 + MAX_CONCEALED:  # 2 lost, then too many to conceal
            continue
        for frame in decoder.decode(JitterFrame(data, timestamp)):
            pts.append(frame.pts // 960 - packets[0][1] // 960)
            loud.append(bool(np.abs(frame.to_ndarray()).max() > 1000))
    assert 10 in pts and 11 in pts  # concealed, in place, with sound
    assert loud[pts.index(10)] and loud[pts.index(11)]
    assert not set(range(20, 21 + MAX_CONCEALED)) & set(pts)  # a long gap stays silent


def test_install_swaps_aiortc_receivers_parts_and_can_undo_it() -> None:
    audio_loss.install()
    try:
        assert aiortc.rtcrtpreceiver.JitterBuffer(16, prefetch=4).__class__ is AudioJitterBuffer
        video = aiortc.rtcrtpreceiver.JitterBuffer(128, is_video=True)
        assert isinstance(video, JitterBuffer)
    finally:
        audio_loss.install(False)
    assert aiortc.rtcrtpreceiver.JitterBuffer is JitterBuffer
