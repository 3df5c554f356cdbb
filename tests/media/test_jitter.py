"""The adaptive audio jitter buffer: its delay follows the jitter, and it loses no more
than a fixed buffer of aiortc's depth (no sockets: packets with set arrival times)."""

from __future__ import annotations

import random

import numpy as np
import pytest
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtp import RtpPacket

from parley.media import audio_loss, jitter, libopus
from parley.media.jitter import AudioJitterBuffer, DelaySpread, JitterFrames, parts, prefetch_for

FRAME_S = 0.02


def opus_packets(n: int) -> list[tuple[bytes, int]]:
    from tests.media.test_audio_loss import opus_packets as encoded
    return encoded(n)


def packet(seq: int, size: int = 960) -> RtpPacket:
    p = RtpPacket(payload_type=111, sequence_number=seq % 65536, timestamp=(seq * size) % 2**32)
    p._data = bytes([seq % 256])  # type: ignore[attr-defined]
    return p


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def play(buffer: AudioJitterBuffer, clock: Clock, n: int, *, jitter_s: float, loss: float,
         seed: int) -> dict[int, float]:
    """Send n frames through a link that delays each by a uniform 0..jitter_s and loses
    `loss` of them; frame number -> the delay it waited past its send time."""
    rng = random.Random(seed)
    arrivals = sorted((seq * FRAME_S + rng.uniform(0, jitter_s), seq) for seq in range(n)
                      if rng.random() >= loss)
    out: dict[int, float] = {}
    for at, seq in arrivals:
        clock.now = 100.0 + at
        _, frame = buffer.add(packet(seq))
        if frame is not None:
            for part in parts(frame):
                out[part.timestamp // 960] = at - (part.timestamp // 960) * FRAME_S
    return out


def test_prefetch_is_none_for_under_a_frame_of_spread_and_never_one() -> None:
    assert prefetch_for(0.0, FRAME_S, 14) == 0
    assert prefetch_for(0.0149, FRAME_S, 14) == 0
    assert prefetch_for(0.016, FRAME_S, 14) == 2
    assert prefetch_for(0.040, FRAME_S, 14) == 3
    assert prefetch_for(5.0, FRAME_S, 14) == 14


def test_spread_follows_a_sliding_window_across_the_timestamp_wrap() -> None:
    spread = DelaySpread(window_s=1.0)
    start = 2**32 - 960 * 10
    for i in range(100):  # 2 s of frames, wrapping after 10; one 30 ms late at 0.5 s
        spread.add(i * FRAME_S + (0.03 if i == 25 else 0.0), (start + i * 960) % 2**32)
        if i == 40:
            assert spread.seconds == pytest.approx(0.03)
    assert spread.seconds == pytest.approx(0.0)  # the late one left the window


def test_clean_link_plays_each_frame_as_it_arrives() -> None:
    clock = Clock()
    buffer = AudioJitterBuffer(16, clock=clock)
    waited = play(buffer, clock, 500, jitter_s=0.002, loss=0.0, seed=1)
    assert buffer.prefetch == 0
    assert len(waited) == 500 and buffer.stats.given_up == 0
    late_frames = [f for f, w in waited.items() if f > jitter.WARMUP + 10]
    assert max(waited[f] for f in late_frames) <= 0.002 + 1e-9  # no buffer delay at all


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_jittery_lossy_link_loses_no_more_than_aiortcs_depth(seed: int) -> None:
    """5 % loss, each packet delayed 0-40 ms (netem's `delay 20ms 20ms`, reordering):
    the adaptive buffer holds less than aiortc's four frames and gives up no more."""
    n = 3000
    clock = Clock()
    adaptive = AudioJitterBuffer(16, clock=clock)
    got = play(adaptive, clock, n, jitter_s=0.04, loss=0.05, seed=seed)
    fixed_clock = Clock()
    fixed = AudioJitterBuffer(16, prefetch=4, clock=fixed_clock)
    fixed_got = play(fixed, fixed_clock, n, jitter_s=0.04, loss=0.05, seed=seed)
    assert adaptive.prefetch == 3
    assert adaptive.stats.late <= fixed.stats.late
    assert len(got) >= len(fixed_got) - 4  # the last few wait in either for more packets
    steady = [w for f, w in got.items() if f > 200]
    fixed_steady = [w for f, w in fixed_got.items() if f > 200]
    assert np.percentile(steady, 95) < np.percentile(fixed_steady, 95) - 0.015


def test_delay_comes_down_after_jitter_stops_and_the_frames_due_leave_together() -> None:
    clock = Clock()
    buffer = AudioJitterBuffer(16, clock=clock)
    play(buffer, clock, 300, jitter_s=0.04, loss=0.0, seed=4)
    assert buffer.prefetch == 3
    released: list[JitterFrame] = []
    for seq in range(300, 300 + int(jitter.WINDOW_S / FRAME_S) + 20):  # then clean
        clock.now = 100.0 + seq * FRAME_S + 0.04
        frame = buffer.add(packet(seq))[1]
        if frame is not None:
            released.append(frame)
    assert buffer.prefetch == 0
    assert any(isinstance(f, JitterFrames) for f in released)
    numbers = [p.timestamp // 960 for f in released for p in parts(f)]
    assert numbers == sorted(numbers) and len(numbers) == len(set(numbers))
    assert numbers[-1] == 300 + int(jitter.WINDOW_S / FRAME_S) + 19  # none held back now


@pytest.mark.parametrize("decoder", [audio_loss.FecOpusDecoder, audio_loss.ConcealingOpusDecoder])
def test_frames_released_together_decode_on_aiortcs_timeline(decoder: type) -> None:
    """aiortc rewrites the first frame's timestamp; the others follow it, and all decode."""
    assert libopus.available(), libopus.INSTALL_HINT  # scripts/test installs libopus0
    packets = opus_packets(4)
    raw = [(data, (2**32 - 2 * 960 + i * 960) % 2**32) for i, (data, _) in enumerate(packets)]
    opus = decoder()
    out = opus.decode(JitterFrame(data=raw[0][0], timestamp=5000))
    together = JitterFrames(raw[1:])
    together.timestamp = 5960  # as aiortc's timestamp mapper would
    assert [p.timestamp for p in parts(together)] == [5960, 6920, 7880]
    out += opus.decode(together)
    assert [(f.pts, f.samples) for f in out] == [(5000, 960), (5960, 960), (6920, 960),
                                                 (7880, 960)]  # no gap seen, none concealed


def test_a_fixed_prefetch_stays_fixed() -> None:
    clock = Clock()
    buffer = AudioJitterBuffer(16, prefetch=4, clock=clock)
    waited = play(buffer, clock, 400, jitter_s=0.0, loss=0.0, seed=5)
    assert buffer.prefetch == 4
    assert min(w for f, w in waited.items() if f > 10) == pytest.approx(0.08)


def test_the_frame_layer_opens_every_frame_released_together() -> None:
    """Under the end-to-end layer, frames that leave the buffer together are each opened."""
    import os

    from parley.core.sframe import FrameOpener, FrameSealer, Kind, StreamKeys
    from parley.media.frame_layer import OpeningBuffer

    keys = StreamKeys(1, os.urandom(16), os.urandom(16))
    sealer, opener = FrameSealer(Kind.AUDIO), FrameOpener(Kind.AUDIO)
    sealer.use(keys)
    opener.add(keys)
    clock = Clock()
    buffer = OpeningBuffer(AudioJitterBuffer(16, clock=clock), opener)
    plain = {seq: b"\x78" + os.urandom(40) for seq in range(600)}
    out: list[tuple[int, bytes]] = []
    several = 0
    for seq in range(600):  # jitter for 4 s, then 8 s clean: the delay comes down
        clock.now = 100.0 + seq * FRAME_S + (random.Random(seq).uniform(0, 0.04)
                                              if seq < 200 else 0.04)
        p = packet(seq)
        p._data = sealer.seal(plain[seq])  # type: ignore[attr-defined]
        frame = buffer.add(p)[1]
        if frame is not None:
            several += isinstance(frame, JitterFrames)
            out += [(part.timestamp // 960, part.data) for part in parts(frame)]
    assert several
    assert out == [(seq, plain[seq]) for seq, _ in out]  # each one opened, in order
    assert len(out) >= 600 - 4 - buffer.stats.given_up


def test_a_few_late_packets_raise_the_delay_that_would_have_caught_them() -> None:
    """A clean link (no delay held), then one packet in ten 30-50 ms late: those come after
    their frame was given up, and they are what the delay must be set from."""
    clock = Clock()
    buffer = AudioJitterBuffer(16, clock=clock)
    rng = random.Random(9)
    arrivals = sorted((seq * FRAME_S + (rng.choice((0.03, 0.05)) if seq >= 500 and seq % 10 == 0
                                        else 0.0), seq) for seq in range(3000))
    given_up_at: dict[int, int] = {}
    for at, seq in arrivals:
        clock.now = 100.0 + at
        buffer.add(packet(seq))
        given_up_at[seq] = buffer.stats.given_up
        if seq == 499:
            assert buffer.prefetch == 0
    assert buffer.prefetch >= 3  # 50 ms of spread and the margin: three frames
    # After the first late ones, none is missed again.
    assert given_up_at[2999] - given_up_at[1000] == 0
    assert buffer.stats.late <= 10


def test_a_restart_counts_what_it_drops_and_measures_afresh() -> None:
    clock = Clock()
    buffer = AudioJitterBuffer(16, clock=clock)
    play(buffer, clock, 200, jitter_s=0.04, loss=0.0, seed=6)
    held = buffer.prefetch
    given_up = buffer.stats.given_up
    assert held == 3
    for seq in (30_000, 30_001):
        clock.now += FRAME_S
        buffer.add(packet(seq))
    assert buffer.stats.given_up >= given_up + held - 1  # what was held is counted
    assert buffer.prefetch == jitter.INITIAL_PREFETCH
