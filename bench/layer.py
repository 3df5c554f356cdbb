"""What the end-to-end frame layer costs: CPU per stream and added latency, in one run.

Every frame of a call is sealed with SFrame (core.sframe) before it is packetized
and opened before it is decoded. Two measurements, each beside its baseline:

* Per frame: sealing and then opening real encoded frames -- Opus packets as
  robot media sends them (96 kbit/s, 20 ms) and VP8 frames of its 640x360 test
  pattern, encoded here by aiortc's own encoders -- against protecting and
  unprotecting the same bytes with SRTP (libsrtp, AES-128-GCM, what DTLS-SRTP
  already does to every packet). From it, the CPU each stream costs: microseconds
  per frame times frames per second, as a share of one core.
* Per call: verified robot-to-robot video calls with and without the layer,
  in pairs (one of each, back to back, the order alternating), each timing
  clicks from the caller's microphone to the callee's ear (bench.latency) and
  this process's CPU per second of call (both terminals run in it). The added
  latency is the median of the pairs' differences, with their spread.
"""

from __future__ import annotations

import fractions
import os
import statistics
import time
from pathlib import Path
from typing import Any

import pylibsrtp
from aiortc.codecs.opus import OpusEncoder
from aiortc.codecs.vpx import Vp8Encoder, VpxPayloadDescriptor
from av import AudioFrame

from bench.common import Result, median, r, say
from bench.latency import click_call
from parley.core.call import MediaKind
from parley.core.sframe import FrameOpener, FrameSealer, Kind, StreamKeys
from parley.media.ice import use_host_addresses
from parley.media.tracks import AUDIO_RATE, AUDIO_SAMPLES, TestPatternTrack, tone_source

AUDIO_FPS, VIDEO_FPS = 50, 30
TARGET_CORE_PCT = 2.0  # the layer may cost at most this share of a core per stream
TARGET_ADDED_MS = 5.0  # and add at most this to mouth-to-ear


def opus_frames(n: int) -> list[bytes]:
    encoder, tone, out = OpusEncoder(), tone_source(), []
    for i in range(n):
        frame = AudioFrame.from_ndarray(tone(AUDIO_SAMPLES).reshape(1, -1), format="s16",
                                        layout="mono")
        frame.sample_rate, frame.pts = AUDIO_RATE, i * AUDIO_SAMPLES
        frame.time_base = fractions.Fraction(1, AUDIO_RATE)
        payloads, _ts = encoder.encode(frame)
        out += payloads
    return out


async def vp8_frames(n: int) -> list[bytes]:
    track, encoder, out = TestPatternTrack(640, 360, VIDEO_FPS), Vp8Encoder(), []
    track._start = time.monotonic() - 3600  # type: ignore[attr-defined]  # no pacing here
    for i in range(n):
        payloads, _ts = encoder.encode(await track.recv(), force_keyframe=i == 0)
        out.append(b"".join(VpxPayloadDescriptor.parse(p)[1] for p in payloads))
    track.stop()
    return out


def _best_us(work: Any, frames: list[bytes], repeat: int) -> float:
    """The fastest of `repeat` passes over `frames`, in microseconds per frame."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        work(frames)
        best = min(best, time.perf_counter() - start)
    return best / len(frames) * 1e6


def layer_us(kind: Kind, frames: list[bytes], repeat: int) -> float:
    keys = StreamKeys(0, os.urandom(16), os.urandom(16))

    def work(batch: list[bytes]) -> None:
        sealer, opener = FrameSealer(kind), FrameOpener(kind)
        sealer.use(keys)
        opener.add(keys)
        for frame in batch:
            opener.open(sealer.seal(frame))
    return _best_us(work, frames, repeat)


def srtp_us(frames: list[bytes], repeat: int) -> float:
    """SRTP protect + unprotect of the same bytes in RTP packets of at most 1,200 bytes."""
    key = os.urandom(28)  # AES-128-GCM: 16-byte key, 12-byte salt
    profile = pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM
    packets = []
    seq = 0
    for frame in frames:
        for start in range(0, len(frame), 1200):
            header = bytes([0x80, 0x60]) + seq.to_bytes(2, "big") + (seq * 3000).to_bytes(4, "big")
            packets.append(header + b"\x12\x34\x56\x78" + frame[start:start + 1200])
            seq = (seq + 1) % 65536
    per_frame = len(packets) / len(frames)

    def work(batch: list[bytes]) -> None:
        policy = pylibsrtp.Policy
        tx = pylibsrtp.Session(policy(key=key, ssrc_type=policy.SSRC_ANY_OUTBOUND,
                                      srtp_profile=profile))
        rx = pylibsrtp.Session(policy(key=key, ssrc_type=policy.SSRC_ANY_INBOUND,
                                      srtp_profile=profile))
        for packet in batch:
            rx.unprotect(tx.protect(packet))
    return _best_us(work, packets, repeat) * per_frame


async def run(root: Path, *, quick: bool = False) -> Result:
    use_host_addresses(["127.0.0.1"])
    result = Result("layer")
    started = time.monotonic()
    repeat = 5 if quick else 15
    say("layer: sealing and opening real Opus and VP8 frames, beside SRTP on the same bytes")
    frames = {Kind.AUDIO: opus_frames(250), Kind.VIDEO: await vp8_frames(150)}
    fps = {Kind.AUDIO: AUDIO_FPS, Kind.VIDEO: VIDEO_FPS}
    f = result.figures
    for kind, batch in frames.items():
        sframe = layer_us(kind, batch, repeat)
        srtp = srtp_us(batch, repeat)
        pct = sframe * fps[kind] / 1e6 * 100
        size = statistics.mean(len(b) for b in batch)
        f.update({f"layer_{kind}_us": r(sframe, 1), f"layer_{kind}_srtp_us": r(srtp, 1),
                  f"layer_{kind}_core_pct": r(pct, 3), f"layer_{kind}_frame_bytes": r(size)})
        result.row(f"{kind}: seal + open per frame ({size:,.0f} B)", sframe, "us", srtp,
                   r(sframe / srtp, 2))
        result.row(f"{kind}: CPU per stream ({fps[kind]} frames/s)", pct, "% core", None, None,
                   f"<= {TARGET_CORE_PCT:g} %", pct <= TARGET_CORE_PCT)
    pairs = 2 if quick else 5
    seconds = 8.0 if quick else 20.0
    say(f"layer: {pairs} pairs of verified video calls with and without it, {seconds:g} s each")
    on: list[dict[str, float]] = []
    off: list[dict[str, float]] = []
    for i in range(pairs):
        order = (True, False) if i % 2 == 0 else (False, True)
        for layered in order:
            latencies, _missing, stats = await click_call(
                root / f"layer-{i}-{'on' if layered else 'off'}", seconds,
                media=MediaKind.VIDEO, frame_layer=layered)
            if not latencies:
                raise RuntimeError("no click was found in the recording")
            (on if layered else off).append({"ms": median(latencies), "cpu": stats["cpu_per_s"]})
        say(f"  pair {i + 1}/{pairs}: mouth-to-ear {on[-1]['ms']:.1f} ms with the layer,"
            f" {off[-1]['ms']:.1f} ms without; CPU {on[-1]['cpu']:.2f} / {off[-1]['cpu']:.2f}"
            " core")
    added = [a["ms"] - b["ms"] for a, b in zip(on, off, strict=True)]
    cpu_ratio = [a["cpu"] / b["cpu"] for a, b in zip(on, off, strict=True)]
    added_med = median(added)
    f.update({"layer_added_ms_median": r(added_med, 1), "layer_added_ms_min": r(min(added), 1),
              "layer_added_ms_max": r(max(added), 1),
              "layer_call_cpu_ratio": r(median(cpu_ratio), 3),
              "layer_mouth_to_ear_ms": r(median([a["ms"] for a in on])),
              "layer_mouth_to_ear_ms_without": r(median([b["ms"] for b in off])),
              "layer_pairs": pairs})
    result.row("mouth-to-ear, video call", median([a["ms"] for a in on]), "ms",
               median([b["ms"] for b in off]))
    result.row("added by the layer (median of pairs)", added_med, "ms", None, None,
               f"<= {TARGET_ADDED_MS:g} ms", added_med <= TARGET_ADDED_MS)
    result.row("call CPU with the layer / without", median(cpu_ratio), "x")
    result.notes.append(f"added latency per pair: {', '.join(f'{a:+.1f}' for a in added)} ms;"
                        f" CPU ratio per pair: {', '.join(f'{c:.3f}' for c in cpu_ratio)}")
    result.notes.append("the baseline call has no end-to-end layer at all (both robots run"
                        " with frame_layer=False): DTLS-SRTP only, and never shown verified")
    result.series = {"added_ms": added, "cpu_ratio": cpu_ratio}
    result.seconds = time.monotonic() - started
    return result



