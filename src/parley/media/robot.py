"""Robot media: the terminal's own aiortc peer, for line tests, demos and bots.

Each call gets one `RobotMediaSession`, an `RTCPeerConnection` configured with
an explicit ICE server list (never aiortc's public default). It sends a
synthetic test pattern and tone (or a media file), counts and optionally
records what it receives, and reports to the terminal when DTLS is up -- with
the fingerprint of the certificate the peer actually presented in the
handshake, which the terminal checks against the fingerprint the peer signed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiortc
import numpy as np
from aiortc import RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.contrib.media import MediaPlayer
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcdtlstransport import RTCCertificate, RTCDtlsTransport, certificate_digest
from aiortc.sdp import candidate_from_sdp
from av import AudioFrame, VideoFrame

from parley.core import sframe
from parley.core.call import MediaKind
from parley.core.errors import ErrorCode, LocalError
from parley.core.sframe import FrameOpener, FrameSealer, Kind, StreamKeys
from parley.media import audio_loss, frame_layer
from parley.media.engine import LocalDescription, MediaEvents
from parley.media.ice import IceConfig
from parley.media.jitter import AudioJitterBuffer
from parley.media.recorder import Recorder
from parley.media.tracks import SampleSource, SynthAudioTrack, TestPatternTrack

log = logging.getLogger("parley.media")
VIDEO_CODECS = ("video/vp8", "video/rtx")
# Frames of one stream that fail the layer in a row before the alarm: half a second of
# audio. A re-key's overlap or a late retransmission drops one or two, never this many.
DROPS_ALARM = 25

AudioTap = Callable[[str, int, np.ndarray], None]  # (call_id, monotonic ns, int16 samples)
# (call_id, monotonic ns, mean brightness 0-255) of each remote video frame; or, sent,
# (call_id, monotonic ns, whether it was a white marker frame)
VideoTap = Callable[[str, int, float], None]


@dataclass
class RobotOptions:
    ice: IceConfig = field(default_factory=IceConfig)
    play: Path | None = None  # a media file to send instead of the test pattern and tone
    record_dir: Path | None = None  # write what we receive to <call_id>.webm here (recorder.py)
    width: int = 640
    height: int = 360
    fps: int = 30
    audio_source: SampleSource | None = None  # programmatic audio (benchmarks)
    on_remote_audio: AudioTap | None = None  # every decoded remote audio frame
    on_local_audio: AudioTap | None = None  # every local audio frame, as it is sent
    # Video against audio (benchmarks): a white test-pattern frame every this many seconds,
    # and taps on the frames sent and received (`VideoTap`).
    flash_every_s: float = 0.0
    on_local_video: VideoTap | None = None
    on_remote_video: VideoTap | None = None
    opus: audio_loss.OpusOptions = field(default_factory=audio_loss.OpusOptions)  # FEC sent
    # Frames of audio held before playing: None adapts the delay to the jitter measured
    # (parley.media.jitter); a number fixes it (aiortc's own is 4, 80 ms).
    audio_prefetch: int | None = None
    # A call whose media stops coming (no frame of any kind, though a muted peer still
    # sends silence) for this long has lost its path: it reconnects (core.call), and ends
    # if that does not bring it back (0: never).
    silence_timeout_s: float = 3.0
    # Seal every frame sent, and open every frame received, with the end-to-end layer
    # (core.sframe) under keys from the call's sealed envelopes. Off only for a
    # benchmark's baseline: calls without it are never shown verified.
    frame_layer: bool = True


def dtls_fingerprint(transport: RTCDtlsTransport) -> str:
    """Our own certificate's sha-256 fingerprint."""
    for fp in transport.getLocalParameters().fingerprints:
        if fp.algorithm.lower() == "sha-256":
            return fp.value.upper()
    raise LocalError("the DTLS transport has no sha-256 fingerprint")


def handshake_fingerprint(transport: RTCDtlsTransport) -> str:
    """sha-256 of the certificate the peer presented in the DTLS handshake."""
    ssl = getattr(transport, "_ssl", None)
    cert = ssl.get_peer_certificate(as_cryptography=True) if ssl is not None else None
    if cert is None:
        raise LocalError("the DTLS handshake produced no peer certificate",
                         code=ErrorCode.FINGERPRINT_MISMATCH)
    return certificate_digest(cert, "sha-256")


_CLOCK_RATE = {"audio": 48_000, "video": 90_000}


@dataclass
class ReceivedStats:
    frames: int = 0
    first_ms: float | None = None  # since the session opened
    last: float = 0.0  # time.monotonic() of the latest frame

    def as_dict(self) -> dict[str, Any]:
        return {"frames": self.frames, "first_frame_ms": self.first_ms}


class RobotMediaSession:
    def __init__(self, call_id: str, media: MediaKind, events: MediaEvents,
                 options: RobotOptions, forget: Callable[[RobotMediaSession], None],
                 certificate: RTCCertificate | None = None, segment: int = 0,
                 ice: IceConfig | None = None) -> None:
        self.call_id = call_id
        self.media = media
        self._events = events
        self._options = options
        self._forget = forget
        self._opened = time.monotonic()
        self.pc = RTCPeerConnection((ice or options.ice).rtc_configuration())
        if certificate is not None:
            # A reconnection's peer connection presents the call's certificate again, so
            # that the fingerprints both sides signed, and the SAS, stay what they were.
            use_certificate(self.pc, certificate)
        self.certificate = certificate_of(self.pc)
        self._tasks: set[asyncio.Task[None]] = set()
        self._recorder: Recorder | None = None
        self._player: MediaPlayer | None = None
        self.received = {"audio": ReceivedStats(), "video": ReceivedStats()}
        self.sealers = {str(k): FrameSealer(k) for k in Kind} if options.frame_layer else {}
        self.openers = {str(k): FrameOpener(k) for k in Kind} if options.frame_layer else {}
        self._layer_alarmed = False
        self._reported = False
        self._closed = False
        self.audio_track: MediaStreamTrack
        self.video_track: MediaStreamTrack | None = None
        if options.play is not None:
            self._player = MediaPlayer(str(options.play))
            if self._player.audio is None:
                raise LocalError(f"{options.play} has no audio track", code=ErrorCode.BAD_CONFIG)
            self.audio_track = self._player.audio
            self.video_track = self._player.video if media is MediaKind.VIDEO else None
        else:
            call = call_id
            tap = options.on_local_audio
            self.audio_track = SynthAudioTrack(
                options.audio_source,
                on_frame=(lambda ns, s: tap(call, ns, s)) if tap else None)
            if media is MediaKind.VIDEO:
                sent = options.on_local_video
                self.video_track = TestPatternTrack(
                    options.width, options.height, options.fps,
                    flash_every_s=options.flash_every_s,
                    on_frame=(lambda ns, white: sent(call, ns, float(white))) if sent else None)
        if options.record_dir is not None:
            options.record_dir.mkdir(parents=True, exist_ok=True)
            # A reconnection's peer connection records to a file of its own: nothing of
            # what came before is overwritten.
            name = f"{call_id}.webm" if not segment else f"{call_id}.{segment}.webm"
            self._recorder = Recorder(options.record_dir / name,
                                      {"audio", "video"} if media is MediaKind.VIDEO
                                      else {"audio"})
        self.pc.on("track", self._on_track)
        self.pc.on("connectionstatechange", self._on_state)

    def _add_tracks(self) -> None:
        self.pc.addTrack(self.audio_track)
        if self.video_track is not None:
            self.pc.addTrack(self.video_track)
        for transceiver in self.pc.getTransceivers():
            if transceiver.kind == "video":
                # VP8 only: the frame layer leaves VP8's header bytes readable, and
                # knows no other codec's.
                codecs = RTCRtpSender.getCapabilities("video").codecs
                transceiver.setCodecPreferences(
                    [c for c in codecs if c.mimeType.lower() in VIDEO_CODECS])
            if self.sealers and transceiver.kind in self.sealers:
                frame_layer.attach_sealer(transceiver.sender, self.sealers[transceiver.kind])
                frame_layer.attach_opener(transceiver.receiver,
                                          self.openers[transceiver.kind])

    def set_keys(self, send: StreamKeys | None, receive: StreamKeys | None) -> None:
        for kind in Kind:
            if send is not None and self.sealers:
                self.sealers[kind].use(send)
            if receive is not None and self.openers:
                self.openers[kind].add(receive)

    @property
    def media_protection(self) -> str:
        return sframe.PROTECTION if self.sealers else sframe.PROTECTION_OUTER_ONLY

    def _transport(self) -> RTCDtlsTransport:
        for transceiver in self.pc.getTransceivers():
            if transceiver.sender.transport is not None:
                return transceiver.sender.transport
        raise LocalError("no DTLS transport yet")

    async def create_offer(self) -> LocalDescription:
        self._add_tracks()
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return LocalDescription(self.pc.localDescription.sdp, dtls_fingerprint(self._transport()))

    async def create_answer(self, remote_sdp: str) -> LocalDescription:
        await self.pc.setRemoteDescription(RTCSessionDescription(remote_sdp, "offer"))
        self._add_tracks()
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        return LocalDescription(self.pc.localDescription.sdp, dtls_fingerprint(self._transport()))

    async def apply_answer(self, sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp, "answer"))

    async def add_ice(self, candidate: str, mid: str | None, mline: int | None) -> None:
        if not candidate:
            return  # end of candidates: aiortc gathers and checks without being told
        parsed = candidate_from_sdp(candidate.removeprefix("candidate:"))
        parsed.sdpMid, parsed.sdpMLineIndex = mid, mline
        await self.pc.addIceCandidate(parsed)

    def set_local_media(self, audio: bool, video: bool) -> None:
        if isinstance(self.audio_track, SynthAudioTrack):
            self.audio_track.enabled = audio
        if isinstance(self.video_track, TestPatternTrack):
            self.video_track.enabled = video

    async def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: v.as_dict() for k, v in self.received.items()}
        out["state"] = self.pc.connectionState
        out["media_protection"] = self.media_protection
        with contextlib.suppress(Exception):  # which candidates: host, srflx or relay
            ice = self._transport().transport
            connection = ice._connection
            out["ice"] = {"local_types": sorted({c.type for c in connection.local_candidates}),
                          "selected": sorted({p.local_candidate.type
                                              for p in connection._nominated.values()})}
        for receiver in self.pc.getReceivers():
            buffer = getattr(receiver, "_RTCRtpReceiver__jitter_buffer", None)
            buffer = getattr(buffer, "_inner", buffer)  # under the frame layer's opener
            if isinstance(buffer, AudioJitterBuffer):
                out["jitter_buffer"] = buffer.stats.as_dict()
        if self.sealers:
            out["frame_layer"] = {kind: {"sealed": self.sealers[kind].sealed,
                                         **self.openers[kind].stats.as_dict()}
                                  for kind in self.sealers}
        with contextlib.suppress(Exception):
            report = await self.pc.getStats()
            for s in report.values():
                if s.type == "remote-inbound-rtp" and getattr(s, "roundTripTime", None):
                    out.setdefault("rtt_ms", round(s.roundTripTime * 1000, 1))
                if s.type == "inbound-rtp":
                    out.setdefault("inbound", {})[s.kind] = {
                        "packets": s.packetsReceived, "lost": s.packetsLost,
                        # aiortc gives jitter in RTP timestamp units (RFC 3550), not
                        # seconds as the browser does: Opus runs at 48 kHz, video at 90.
                        "jitter_ms": round(s.jitter * 1000 / _CLOCK_RATE[s.kind], 2)
                        if s.jitter else 0,
                        "bytes": getattr(s, "bytesReceived", None)}  # not in aiortc 1.16
        return out

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        await self.pc.close()
        for sealer in self.sealers.values():
            sealer.erase()  # the call's media keys go with it
        for opener in self.openers.values():
            opener.erase()
        if self._recorder is not None:
            await self._recorder.close()
        for track in (self.audio_track, self.video_track):
            if track is not None:
                track.stop()
        self._forget(self)

    # -- events --------------------------------------------------------------------

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind not in self.received:
            return
        task = asyncio.ensure_future(self._consume(track, self.received[track.kind]))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _consume(self, track: MediaStreamTrack, stats: ReceivedStats) -> None:
        tap = self._options.on_remote_audio if track.kind == "audio" else None
        seen = self._options.on_remote_video if track.kind == "video" else None
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if not isinstance(frame, AudioFrame | VideoFrame):
                continue  # remote tracks deliver decoded frames; anything else is not media
            if stats.first_ms is None:
                stats.first_ms = (time.monotonic() - self._opened) * 1000
            stats.frames += 1
            stats.last = time.monotonic()
            if self._recorder is not None:
                self._recorder.add(track.kind, frame)
            if tap is not None:
                tap(self.call_id, time.monotonic_ns(), frame.to_ndarray().reshape(-1))
            if seen is not None and isinstance(frame, VideoFrame):
                # The luma plane of a yuv420p frame, sampled: bright for a marker frame.
                luma = frame.to_ndarray(format="gray")[::8, ::8]
                seen(self.call_id, time.monotonic_ns(), float(luma.mean()))

    async def _on_state(self) -> None:
        state = self.pc.connectionState
        log.debug("call %s: peer connection %s", self.call_id, state)
        if state == "connected" and not self._reported:
            self._reported = True
            try:
                fingerprint = handshake_fingerprint(self._transport())
            except LocalError as exc:
                self._events.media_failed(self.call_id, exc.message)
                return
            self._events.media_connected(self.call_id, fingerprint)
            if self.openers:
                self._spawn(self._watch_layer())
            if self._options.silence_timeout_s > 0:  # 0: never ends for want of media
                watchdog = asyncio.ensure_future(self._watch_media())
                self._tasks.add(watchdog)
                watchdog.add_done_callback(self._tasks.discard)
        elif state == "failed" and not self._closed:
            self._events.media_failed(self.call_id, "the media connection failed (ICE or DTLS)")


    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watch_layer(self) -> None:
        """Raise the alarm once when the peer's frames keep failing the layer."""
        while not self._closed and not self._layer_alarmed:
            await asyncio.sleep(0.25)
            for kind, opener in self.openers.items():
                stats = opener.stats
                if stats.consecutive_drops >= DROPS_ALARM and not self._layer_alarmed:
                    self._layer_alarmed = True
                    self._events.frames_unprotected(
                        self.call_id, f"{stats.consecutive_drops} {kind} frames in a row:"
                                      f" {stats.last_drop}")

    async def _watch_media(self) -> None:
        timeout = self._options.silence_timeout_s
        connected = time.monotonic()
        while not self._closed:
            await asyncio.sleep(min(1.0, timeout / 4))
            last = max([connected, *(r.last for r in self.received.values())])
            if time.monotonic() - last > timeout and not self._closed:
                self._events.media_failed(self.call_id, f"no media from the peer for"
                                                        f" {timeout:g} s")
                return


def use_certificate(pc: RTCPeerConnection, certificate: RTCCertificate) -> None:
    """Give a new aiortc peer connection an earlier one's DTLS certificate.

    aiortc (1.16) makes one certificate per peer connection and has no way to pass one
    in, as browsers do (`RTCConfiguration.certificates`): the one private attribute that
    holds it is set here, and only here (checked against the aiortc version at import).
    """
    if not hasattr(pc, _CERTIFICATES):
        raise LocalError(f"aiortc {aiortc.__version__} keeps its certificates elsewhere:"
                         " parley.media.robot.use_certificate needs adapting")
    setattr(pc, _CERTIFICATES, [certificate])


def certificate_of(pc: RTCPeerConnection) -> RTCCertificate:
    certificate: RTCCertificate = getattr(pc, _CERTIFICATES)[0]
    return certificate


_CERTIFICATES = "_RTCPeerConnection__certificates"
if aiortc.__version__ != "1.16.0":  # the attribute was read off 1.16.0's source
    raise ImportError(f"parley.media.robot is written for aiortc 1.16.0, not"
                      f" {aiortc.__version__}")
KEEP_CERTIFICATES = 16  # calls whose certificate is kept for a reconnection
TRIM_EVERY_S = 30.0


def _libc_trim() -> Callable[[int], int] | None:
    try:
        trim: Callable[[int], int] = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to do
        return None
    return trim


_MALLOC_TRIM = _libc_trim()
M_MMAP_THRESHOLD, M_ARENA_MAX = -3, -8  # glibc's mallopt parameters (malloc.h)
ARENA_MAX = 2
MMAP_THRESHOLD = 128 * 1024
_heap_bounded = False


def bound_heap() -> bool:
    """Keep the C heap of a long call from fragmenting (glibc's mallopt), once per process.

    Every thread that allocates gets a glibc arena of its own, up to eight per core, and
    a video frame decoded in one thread is freed in another: the two-hour run with
    `trim_heap` alone still grew 14 % to a plateau held in those arenas. Two arenas are
    enough for the event loop and the codec threads of a terminal. And glibc raises its
    mmap threshold each time a large block is freed, until 640x480 frames (450 KiB) come
    from the arenas instead of mmap; a fixed 128 KiB (glibc's own starting value) keeps
    every frame buffer in a mapping of its own that goes back to the system when freed.
    Called before the first call's threads start. False where there is no glibc.
    """
    global _heap_bounded
    if _heap_bounded:
        return True
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    _heap_bounded = bool(mallopt(M_ARENA_MAX, ARENA_MAX)) and bool(
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    return _heap_bounded


def trim_heap() -> bool:
    """Give the C heap's free memory back to the system (glibc's malloc_trim).

    The encoders and decoders run in threads, each with glibc arenas of its own, and
    free memory stays in them: measured on a two-hour call, the process grew by about
    0.3 MiB a minute with nothing held; trimmed every 30 s, it stays flat (docs/
    benchmarks.md, "Long calls"). False where there is no glibc.
    """
    if _MALLOC_TRIM is None:
        return False
    _MALLOC_TRIM(0)
    return True


class RobotMedia:
    """The robot's MediaEngine: one aiortc peer connection per call (and per reconnection)."""

    def __init__(self, options: RobotOptions | None = None) -> None:
        self.options = options or RobotOptions()
        self.sessions: dict[str, RobotMediaSession] = {}
        self._certificates: dict[str, RTCCertificate] = {}
        self._segments: dict[str, int] = {}  # peer connections opened for each call so far
        self._trimmer: asyncio.Task[None] | None = None
        bound_heap()
        # aiortc loses more audio than the network does, and sends no FEC: see audio_loss.
        audio_loss.install(options=self.options.opus, prefetch=self.options.audio_prefetch)
        frame_layer.install()
        self.frame_layer = self.options.frame_layer

    @property
    def ice(self) -> IceConfig:
        return self.options.ice

    def open(self, call_id: str, media: MediaKind, events: MediaEvents,
             ice: IceConfig | None = None) -> RobotMediaSession:
        segment = self._segments.get(call_id, -1) + 1
        self._segments[call_id] = segment
        session = RobotMediaSession(call_id, media, events, self.options, self.forget,
                                    self._certificates.get(call_id), segment, ice)
        self._certificates[call_id] = session.certificate
        while len(self._certificates) > KEEP_CERTIFICATES:
            del self._certificates[next(iter(self._certificates))]
        while len(self._segments) > KEEP_CERTIFICATES:
            del self._segments[next(iter(self._segments))]
        self.sessions[call_id] = session
        if self._trimmer is None or self._trimmer.done():
            self._trimmer = asyncio.ensure_future(self._trim_while_in_calls())
        return session

    async def _trim_while_in_calls(self) -> None:
        while self.sessions:
            await asyncio.sleep(TRIM_EVERY_S)
            trim_heap()

    def forget(self, session: RobotMediaSession) -> None:
        """A closed session lets go of its peer connection, tracks and recorder."""
        if self.sessions.get(session.call_id) is session:
            del self.sessions[session.call_id]
