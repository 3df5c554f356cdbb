"""Opus in-band FEC: robots send it, and rebuild a lost packet from the next (no sockets).

Real libopus on both sides: the encoder is FFmpeg's libopus wrapper (through
PyAV, as aiortc uses it), the decoder the system's libopus called directly.
"""

from __future__ import annotations

import fractions

import aiortc.rtcrtpsender
import numpy as np
import pytest
from aiortc import RTCPeerConnection
from aiortc.codecs.opus import OpusEncoder
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from av import AudioFrame

from parley.core.errors import LocalError
from parley.media import audio_loss, libopus
from parley.media.audio_loss import MAX_CONCEALED, FecOpusDecoder, FecOpusEncoder, OpusOptions

FRAME = 960  # 20 ms at 48 kHz
OPUS = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=96)

pytestmark = pytest.mark.skipif(not libopus.available(), reason=libopus.INSTALL_HINT)


def syllables(n: int) -> np.ndarray:
    """Voiced syllables of 8 frames and pauses of 2, each with its own pitch glide.

    Speech-like on purpose: libopus codes FEC only for what its voice activity
    detector takes for speech, which a steady tone stops being after a while.
    """
    rng = np.random.default_rng(1)
    out = []
    for _ in range(n):
        t = np.arange(8 * FRAME) / 48_000
        f0 = rng.uniform(110, 220) * (1 + 0.3 * rng.choice([-1, 1]) * t / t[-1])
        phase = 2 * np.pi * np.cumsum(f0) / 48_000
        voiced = sum(np.sin(k * phase) / k for k in range(1, 25))
        envelope = np.sin(np.pi * np.arange(len(t)) / len(t)) ** 0.5
        out += [3000 * envelope * voiced, np.zeros(2 * FRAME)]
    return np.concatenate(out).astype(np.int16)


def packets(encoder: OpusEncoder, samples: np.ndarray) -> list[tuple[bytes, int]]:
    out = []
    for i in range(len(samples) // FRAME):
        frame = AudioFrame.from_ndarray(samples[i * FRAME:(i + 1) * FRAME].reshape(1, -1),
                                        format="s16", layout="mono")
        frame.sample_rate, frame.pts = 48_000, i * FRAME
        frame.time_base = fractions.Fraction(1, 48_000)
        encoded, timestamp = encoder.encode(frame)
        out += [(p, timestamp) for p in encoded]
    return out


def played(stream: list[tuple[bytes, int]], lost: set[int]) -> dict[int, np.ndarray]:
    """Frame number -> first channel, as FecOpusDecoder puts it out with `lost` never sent."""
    decoder = FecOpusDecoder()
    out = {}
    for i, (data, timestamp) in enumerate(stream):
        if i in lost:
            continue
        for frame in decoder.decode(JitterFrame(data, timestamp)):
            assert frame.sample_rate == 48_000 and frame.layout.name == "stereo"
            samples = frame.to_ndarray().reshape(-1, 2)[:, 0].astype(np.float64)
            out[(frame.pts - stream[0][1]) // FRAME] = samples
    return out


def snr_db(reference: np.ndarray, other: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(reference ** 2) / np.sum((reference - other) ** 2)))


def test_fec_rebuilds_a_lost_frame_far_closer_than_concealment() -> None:
    speech = syllables(6)
    lost = [k for k in range(1, 60) if k % 10 in (2, 4, 6)]  # inside syllables
    with_fec, without = packets(FecOpusEncoder(), speech), packets(OpusEncoder(), speech)
    # Reference: the same packets, none lost (what the codec delivers on a clean link).
    clean_fec, clean_plain = played(with_fec, set()), played(without, set())
    recovered = [snr_db(clean_fec[k], played(with_fec, {k})[k]) for k in lost]
    concealed = [snr_db(clean_plain[k], played(without, {k})[k]) for k in lost]
    assert min(recovered) > 15  # dB: the waveform itself, from the next packet's FEC
    assert max(concealed) < 12 and np.median(concealed) < 6  # extrapolation only
    assert all(r > c + 10 for r, c in zip(recovered, concealed, strict=True))


def test_a_gap_is_filled_in_place_up_to_a_limit() -> None:
    stream = packets(FecOpusEncoder(), syllables(5))
    short, long = {12, 13}, set(range(31, 32 + MAX_CONCEALED))  # 2 lost; then too many
    out = played(stream, short | long)
    assert sorted(out) == [k for k in range(len(stream)) if k not in long or k == max(long)]
    for k in (12, 13, max(long)):  # concealed, or rebuilt from FEC: sound, in place
        assert np.abs(out[k]).max() > 500 and len(out[k]) == FRAME


def test_timestamps_that_jump_by_less_than_a_step_lose_nothing() -> None:
    stream = packets(FecOpusEncoder(), syllables(1))
    decoder = FecOpusDecoder()
    assert len(decoder.decode(JitterFrame(*stream[0]))) == 1
    # A sender's clock that skips 60 samples (1.25 ms): nothing to rebuild, and the
    # decoder goes on; a skip of a step and a half rebuilds the one whole step.
    data, timestamp = stream[1]
    frames = decoder.decode(JitterFrame(data, timestamp + 60))
    assert [f.pts for f in frames] == [timestamp + 60]
    data, timestamp = stream[2]
    frames = decoder.decode(JitterFrame(data, timestamp + 60 + 180))
    assert [f.samples for f in frames] == [libopus.STEP, FRAME]


def test_a_packet_libopus_refuses_counts_as_lost() -> None:
    stream = packets(FecOpusEncoder(), syllables(2))
    decoder = FecOpusDecoder()
    for data, timestamp in stream[:5]:
        decoder.decode(JitterFrame(data, timestamp))
    assert decoder.decode(JitterFrame(bytes([0xFF, 0xFF]), stream[5][1])) == []  # bad frame count
    frames = decoder.decode(JitterFrame(*stream[6]))
    assert [f.pts for f in frames] == [stream[5][1], stream[6][1]]  # 5 rebuilt, then 6


async def test_robot_sdp_asks_for_fec_and_robots_send_it() -> None:
    audio_loss.install(options=OpusOptions(expected_loss=5))
    try:
        encoder = aiortc.rtcrtpsender.get_encoder(OPUS)
        assert isinstance(encoder, FecOpusEncoder)
        assert encoder.codec.options["fec"] == "1" and encoder.codec.options["packet_loss"] == "5"
        assert "useinbandfec=1" in (await offer_sdp())
        audio_loss.install(options=OpusOptions(fec=False))  # still decodes it: still asks
        assert type(aiortc.rtcrtpsender.get_encoder(OPUS)) is OpusEncoder
        assert "useinbandfec=1" in (await offer_sdp())
    finally:
        audio_loss.install(False)
    assert type(aiortc.rtcrtpsender.get_encoder(OPUS)) is OpusEncoder
    assert "useinbandfec" not in (await offer_sdp())


async def offer_sdp() -> str:
    pc = RTCPeerConnection()
    pc.addTransceiver("audio")
    try:
        return (await pc.createOffer()).sdp
    finally:
        await pc.close()


def test_expected_loss_must_be_a_percentage() -> None:
    for bad in (0, 101):
        with pytest.raises(LocalError, match="out of range"):
            OpusOptions(expected_loss=bad)
