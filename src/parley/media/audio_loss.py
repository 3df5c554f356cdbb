"""Lost audio packets: lose only what the network lost, recover it from FEC, conceal the rest.

aiortc (1.16) handles a lost audio packet badly, and robot media overrides its
parts for the whole process (`install`, as `ice.use_host_addresses` does for
aioice):

* Its audio jitter buffer (16 slots, 4 packets prefetched) counts a hole as
  occupied: while one sits in the buffer, each packet that arrives pushes a
  *good* packet out, and a hole at the head stalls output until the buffer is
  full. 1 % packet loss becomes about 5 % of frames missing, 5 % about 24 %
  (``bench/run quality`` measures it). And it holds 80 ms on any link.
  `parley.media.jitter.AudioJitterBuffer` gives a frame up when its time comes
  and it is missing (only what the network lost is lost), and sets its delay
  from the jitter it measures.
* It sends Opus with no redundancy: CELT-only at 96 kbit/s, so a lost packet
  is 20 ms gone. `FecOpusEncoder` turns on Opus in-band FEC (RFC 6716,
  section 2.1.7; FFmpeg's libopus options ``fec`` and ``packet_loss``): each
  packet also carries a coarser copy (LBRR) of the speech band of the packet
  before it. libopus then codes speech in hybrid mode (SILK up to 8 kHz, CELT
  above), the clean-link cost measured by ``bench/run quality``
  (``pesq_opus_fec_only`` beside ``pesq_opus_only``). Our SDP says
  ``useinbandfec=1`` (RFC 7587), so browsers send it to robots too.
* Its Opus decoder (FFmpeg's libopus wrapper) never decodes FEC and does
  nothing for a frame that never came. `FecOpusDecoder` decodes with the
  system's libopus directly (`parley.media.libopus`): when a packet arrives
  after a gap, libopus first rebuilds the frame just before it from that
  packet's FEC, and conceals the rest of the gap (up to `MAX_CONCEALED`
  frames; a longer gap stays silent but for the recovered frame).

Without a system libopus (Debian: ``libopus0``) robots still send FEC but
decode through FFmpeg, concealing each missing frame (`ConcealingOpusDecoder`:
a one-byte packet, its TOC, is decoded by libopus as a lost frame of that
duration, RFC 6716 section 4.4), and say so in the log.
"""

from __future__ import annotations

import fractions
import logging
from dataclasses import dataclass
from typing import Any

import aiortc.codecs
import aiortc.rtcrtpreceiver
import aiortc.rtcrtpsender
import numpy as np
from aiortc.codecs.opus import OpusDecoder, OpusEncoder
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from av import AudioFrame

from parley.core.errors import ErrorCode, LocalError
from parley.media import libopus
from parley.media.jitter import AudioJitterBuffer, parts

log = logging.getLogger("parley.media")

MAX_CONCEALED = 5  # 100 ms at 20 ms a frame; a longer gap is left silent
_TIME_BASE = fractions.Fraction(1, libopus.RATE)
_receiver: Any = aiortc.rtcrtpreceiver
_sender: Any = aiortc.rtcrtpsender
_original_jitter_buffer = _receiver.JitterBuffer
_original_get_decoder = _receiver.get_decoder
_original_get_encoder = _sender.get_encoder


@dataclass(frozen=True)
class OpusOptions:
    """How robot media sends Opus (`RobotOptions.opus`).

    fec: send Opus in-band FEC, each packet carrying a coarse copy of the one
      before, so that a receiver that decodes it (robots, browsers) loses only
      what is lost twice in a row; costs some clean-link quality, which
      ``bench/run quality`` measures.
    expected_loss: the packet loss, in percent, that libopus sizes the FEC
      for (its ``OPUS_SET_PACKET_LOSS_PERC``); 1 to 100.
    """

    fec: bool = True
    expected_loss: int = 10

    def __post_init__(self) -> None:
        if not 1 <= self.expected_loss <= 100:
            raise LocalError(f"expected Opus packet loss {self.expected_loss} % is out of range",
                             code=ErrorCode.BAD_CONFIG, hint="use 1 to 100 (percent)")


class ConcealingOpusDecoder(OpusDecoder):
    """aiortc's Opus decoder, plus libopus loss concealment for frames that never came."""

    def __init__(self) -> None:
        super().__init__()
        self._expected: int | None = None  # RTP timestamp of the frame after the last one
        self._duration = 960

    def decode(self, encoded_frame: JitterFrame) -> list[Any]:
        return [f for part in parts(encoded_frame) for f in self._decode(part)]

    def _decode(self, encoded_frame: JitterFrame) -> list[Any]:
        frames: list[Any] = []
        timestamp = encoded_frame.timestamp
        if self._expected is not None and encoded_frame.data:
            gap = (timestamp - self._expected) % 2**32
            missing = gap // self._duration if gap < 2**31 else 0
            if 0 < missing <= MAX_CONCEALED:
                toc = bytes([encoded_frame.data[0] & 0xFC])  # same mode, one frame, no data
                for k in range(missing):
                    lost = (self._expected + k * self._duration) % 2**32
                    frames += super().decode(JitterFrame(data=toc, timestamp=lost))
        decoded = super().decode(encoded_frame)
        if decoded:
            self._duration = max(1, sum(getattr(f, "samples", 0) for f in decoded))
            self._expected = (timestamp + self._duration) % 2**32
        return frames + decoded


class FecOpusEncoder(OpusEncoder):
    """aiortc's Opus encoder (libopus via FFmpeg, 96 kbit/s, 20 ms), with in-band FEC on."""

    def __init__(self, expected_loss: int = OpusOptions.expected_loss) -> None:
        super().__init__()
        self.codec.options = {"application": "voip", "fec": "1",
                              "packet_loss": str(expected_loss)}


class FecOpusDecoder:
    """An aiortc Opus decoder on the system's libopus: FEC first, then concealment.

    Frames come out as aiortc's do (48 kHz, interleaved int16 stereo, pts = RTP
    timestamp); a frame rebuilt for a lost packet has that packet's timestamp.
    """

    def __init__(self) -> None:
        self._decoder = libopus.Decoder(channels=2)
        self._expected: int | None = None  # RTP timestamp of the audio after the last packet

    def decode(self, encoded_frame: JitterFrame) -> list[AudioFrame]:
        return [f for part in parts(encoded_frame) for f in self._decode(part)]

    def _decode(self, encoded_frame: JitterFrame) -> list[AudioFrame]:
        data, timestamp = encoded_frame.data, encoded_frame.timestamp
        frames: list[AudioFrame] = []
        try:
            duration = libopus.packet_samples(data)
            if self._expected is not None:
                gap = (timestamp - self._expected) % 2**32
                if 0 < gap < 2**31:
                    # A long gap stays silent, but for the frame this packet's FEC rebuilds.
                    missing = gap if gap <= MAX_CONCEALED * duration else duration
                    # libopus rebuilds whole 2.5 ms steps; a sender whose timestamps
                    # jump by less than that has lost nothing worth rebuilding.
                    missing -= missing % libopus.STEP
                    if missing:
                        pcm = self._decoder.recover(data, missing)
                        frames += _frames(pcm, timestamp - len(pcm), duration)
            pcm = self._decoder.decode(data)
        except libopus.OpusError as exc:
            log.debug("an Opus packet that libopus cannot decode (%s): treated as lost", exc)
            return frames
        self._expected = (timestamp + len(pcm)) % 2**32
        return frames + _frames(pcm, timestamp, len(pcm))


def _frames(pcm: np.ndarray, timestamp: int, size: int) -> list[AudioFrame]:
    """(samples, 2) int16 as aiortc-style stereo frames of `size` samples from `timestamp`."""
    out = []
    for start in range(0, len(pcm), max(1, size)):
        chunk = pcm[start:start + size]
        frame = AudioFrame.from_ndarray(np.ascontiguousarray(chunk).reshape(1, -1),
                                        format="s16", layout="stereo")
        frame.sample_rate = libopus.RATE
        frame.pts = (timestamp + start) % 2**32
        frame.time_base = _TIME_BASE
        out.append(frame)
    return out


def _opus_codec() -> RTCRtpCodecParameters:
    return next(c for c in aiortc.codecs.CODECS["audio"] if c.mimeType.lower() == "audio/opus")


def _jitter_buffer(capacity: int, prefetch: int = 0, is_video: bool = False) -> Any:
    if is_video:
        return _original_jitter_buffer(capacity, prefetch=prefetch, is_video=True)
    return AudioJitterBuffer(capacity, prefetch=_prefetch)


def _get_decoder(codec: RTCRtpCodecParameters) -> Any:
    if codec.mimeType.lower() == "audio/opus":
        return FecOpusDecoder() if libopus.available() else ConcealingOpusDecoder()
    return _original_get_decoder(codec)


_options = OpusOptions()
_prefetch: int | None = None


def _get_encoder(codec: RTCRtpCodecParameters) -> Any:
    if codec.mimeType.lower() == "audio/opus" and _options.fec:
        return FecOpusEncoder(_options.expected_loss)
    return _original_get_encoder(codec)


def install(enabled: bool = True, options: OpusOptions | None = None,
            prefetch: int | None = None) -> None:
    """Use these for every aiortc sender and receiver made from now on in this process (or not).

    Process-wide, like aiortc's own defaults: the last call's `options` and
    `prefetch` (None: the audio delay adapts to the jitter; a number of frames:
    fixed) hold for every robot session in the process.
    """
    global _options, _prefetch
    _prefetch = prefetch
    _receiver.JitterBuffer = _jitter_buffer if enabled else _original_jitter_buffer
    _receiver.get_decoder = _get_decoder if enabled else _original_get_decoder
    _sender.get_encoder = _get_encoder if enabled else _original_get_encoder
    _options = options or OpusOptions()
    parameters = _opus_codec().parameters
    if enabled and libopus.available():
        parameters["useinbandfec"] = 1  # RFC 7587: we decode in-band FEC; please send it
    else:
        parameters.pop("useinbandfec", None)
        if enabled:
            log.warning("robot media: %s to recover lost audio from Opus FEC;"
                        " concealing lost packets instead", libopus.INSTALL_HINT)
