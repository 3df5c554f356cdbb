"""The SFrame layer (core.sframe) in aiortc: sealed after the encoder, opened before the decoder.

aiortc (1.16) has no encoded-frame transform, so robot media adapts it here, as
`audio_loss` does for lost audio, for the whole process (`install`) but acting
only on the senders and receivers a session hands a sealer or opener (`attach`):

* Sending: `RTCRtpSender._next_encoded_frame` gets its encoder from
  ``get_encoder``; for a sender with a sealer it is wrapped (`SealingEncoder`),
  so that each encoded frame -- an Opus packet, or a whole VP8 frame taken back
  out of aiortc's packetization -- is sealed before it is packetized again with
  the same VP8 payload descriptor. A frame when no key has come yet is not
  sent: nothing leaves without the layer.
* Receiving: the receiver's jitter buffer hands whole frames to the decoder
  thread; it is wrapped (`OpeningBuffer`) so that each frame is opened on the
  way, and one that does not open (no layer, a key the peer never sent, a
  replayed counter, a failed tag) is dropped and counted: the decoder, and the
  person, never get it.

Video is VP8 only (`VIDEO_CODECS`): the bytes left readable are VP8's.
"""

from __future__ import annotations

import logging
from typing import Any

import aiortc
import aiortc.rtcrtpsender
from aiortc import RTCRtpReceiver, RTCRtpSender
from aiortc.codecs.vpx import Vp8Encoder, VpxPayloadDescriptor
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from parley.core.sframe import FrameOpener, FrameSealer, SFrameError
from parley.media.jitter import JitterFrames, parts

log = logging.getLogger("parley.media")

_sender: Any = aiortc.rtcrtpsender
_original_next_encoded_frame = RTCRtpSender._next_encoded_frame
_ENCODER = "_RTCRtpSender__encoder"  # the sender's encoder, made on its first frame
_JITTER_BUFFER = "_RTCRtpReceiver__jitter_buffer"
_SEALER = "_parley_sealer"
if aiortc.__version__ != "1.16.0":  # the attributes above were read off 1.16.0's source
    raise ImportError(f"parley.media.frame_layer is written for aiortc 1.16.0, not"
                      f" {aiortc.__version__}")


class SealingEncoder:
    """An aiortc encoder whose every frame comes out sealed (or not at all)."""

    def __init__(self, inner: Any, sealer: FrameSealer, codec: RTCRtpCodecParameters) -> None:
        self._inner = inner
        self._sealer = sealer
        self._vp8 = codec.mimeType.lower() == "video/vp8"
        if not self._vp8 and codec.mimeType.lower() != "audio/opus":
            raise SFrameError(f"the frame layer knows Opus and VP8, not {codec.mimeType}")

    @property
    def target_bitrate(self) -> int:
        return int(self._inner.target_bitrate)

    @target_bitrate.setter
    def target_bitrate(self, bitrate: int) -> None:
        self._inner.target_bitrate = bitrate

    def encode(self, frame: Any, force_keyframe: bool = False) -> tuple[list[bytes], int]:
        payloads, timestamp = self._inner.encode(frame, force_keyframe)
        return self._seal(payloads), timestamp

    def pack(self, packet: Any) -> tuple[list[bytes], int]:
        payloads, timestamp = self._inner.pack(packet)
        return self._seal(payloads), timestamp

    def _seal(self, payloads: list[bytes]) -> list[bytes]:
        if not payloads:
            return payloads
        try:
            if not self._vp8:
                return [self._sealer.seal(p) for p in payloads]
            descriptor, _ = VpxPayloadDescriptor.parse(payloads[0])
            frame = b"".join(VpxPayloadDescriptor.parse(p)[1] for p in payloads)
            return list(Vp8Encoder._packetize(self._sealer.seal(frame),
                                              descriptor.picture_id or 0))
        except SFrameError:
            return []  # no key yet: the frame is not sent at all


class OpeningBuffer:
    """A receiver's jitter buffer whose frames are opened before they are decoded."""

    def __init__(self, inner: Any, opener: FrameOpener) -> None:
        self._inner = inner
        self.opener = opener

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def add(self, packet: Any) -> tuple[bool, JitterFrame | None]:
        pli, frame = self._inner.add(packet)
        if frame is None:
            return pli, None
        opened = []
        for part in parts(frame):  # the audio buffer may release several frames at once
            try:
                opened.append((self.opener.open(part.data), part.timestamp))
            except SFrameError:
                continue  # dropped and counted (opener.stats)
        if not opened:
            return pli, None
        if len(opened) == 1:
            return pli, JitterFrame(data=opened[0][0], timestamp=opened[0][1])
        return pli, JitterFrames(opened)


async def _next_encoded_frame(self: RTCRtpSender, codec: RTCRtpCodecParameters) -> Any:
    sealer = getattr(self, _SEALER, None)
    if sealer is not None and getattr(self, _ENCODER) is None:
        setattr(self, _ENCODER, SealingEncoder(_sender.get_encoder(codec), sealer, codec))
    return await _original_next_encoded_frame(self, codec)


def attach_sealer(sender: RTCRtpSender, sealer: FrameSealer) -> None:
    """Every frame `sender` sends from now on is sealed by `sealer`."""
    if getattr(sender, _ENCODER) is not None:
        raise SFrameError("the sender has already encoded frames without the layer")
    setattr(sender, _SEALER, sealer)


def attach_opener(receiver: RTCRtpReceiver, opener: FrameOpener) -> None:
    """Every frame `receiver` decodes from now on must open with `opener`."""
    buffer = getattr(receiver, _JITTER_BUFFER)
    if not isinstance(buffer, OpeningBuffer):
        setattr(receiver, _JITTER_BUFFER, OpeningBuffer(buffer, opener))


def install() -> None:
    """Wrap aiortc's senders' encoders where a session attached a sealer (idempotent)."""
    RTCRtpSender._next_encoded_frame = _next_encoded_frame  # type: ignore[method-assign]
