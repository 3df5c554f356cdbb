"""Mouth-to-ear audio latency through a verified call on loopback.

The caller's robot sends short clicks (5 ms chirps, one every 0.6 s) as its
microphone signal; the callee's robot records every decoded frame with the
time it was delivered. Each click is found in the recording by
cross-correlation with the click itself, and its latency is the time between
the sample being *captured* and the same sample reaching the callee's "ear"
(the moment the decoded frame is handed to the application). A microphone
delivers a 20 ms frame once it is full, so a sample at offset o of a frame
handed to the encoder at t was captured at t - 20 ms + o: the frame's fill is
counted. That covers the fill, Opus encoding, packetisation, the end-to-end
layer, SRTP, the network, the jitter buffer and decoding. A robot has no
capture or playout device, so their own buffers (typically 10-40 ms in a
browser) are not included.

Baseline, in the same run: two bare aiortc peers in this process, SDP handed
across, aiortc as it comes (its own jitter buffer, four frames deep, and Opus,
no layer), the same clicks timed the same way. Robot media's audio buffer sets
its delay from the jitter it measures (`parley.media.jitter`): on a clean
loopback it holds none.

Browser to browser (`bench.browser.browser_to_browser`): two persons' web UIs
in one Chromium call each other; Chromium's fake microphone loops a click
track and each page times the clicks in its audio graph -- the caller's on its
microphone track, the callee's on the remote track -- what persons hear, less
the output device's buffer.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np
from aiortc import RTCPeerConnection
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from scipy.signal import correlate

from bench.common import Result, median, percentile, r, say
from bench.line import BenchLine, active_call, hang_up
from bench.samples import click, first_channel
from parley.core.call import MediaKind
from parley.media import audio_loss
from parley.media.ice import IceConfig, use_host_addresses
from parley.media.robot import RobotOptions
from parley.media.tracks import AUDIO_RATE, AUDIO_SAMPLES, SampleSource, SynthAudioTrack

# Robot to robot on a clean loopback: the frame's fill (20 ms), encoding and decoding,
# and no more buffer than the jitter measured asks for (parley.media.jitter).
TARGET_P95_MS = 55.0
CLICK_PERIOD_S = 0.6
SEARCH_S = 0.55  # a click is looked for this long after it was sent
FIRST_CLICK_S = 1.0


def click_source(period_s: float = CLICK_PERIOD_S, first_s: float = FIRST_CLICK_S
                 ) -> tuple[SampleSource, list[int]]:
    """A SampleSource of clicks; the list fills with each click's sample position."""
    template = (click() * 32767).astype(np.int16)
    onsets: list[int] = []
    position = 0
    period = int(period_s * AUDIO_RATE)
    next_onset = int(first_s * AUDIO_RATE)

    def next_samples(n: int) -> np.ndarray:
        nonlocal position, next_onset
        out = np.zeros(n, dtype=np.int16)
        end = position + n
        # Onsets are placed so that a whole click fits in one call (simple, exact).
        while next_onset < end:
            if next_onset >= position and next_onset + len(template) <= end:
                start = next_onset - position
                out[start:start + len(template)] = template
                onsets.append(next_onset)
                next_onset += period
            else:
                next_onset = end  # starts beyond this block's room: move to the next block
        position = end
        return out

    return next_samples, onsets


class Recorder:
    """Keeps (delivery time, samples) of every frame a tap sees."""

    def __init__(self) -> None:
        self.frames: list[tuple[int, np.ndarray]] = []

    def __call__(self, _call_id: str, ns: int, samples: np.ndarray) -> None:
        self.frames.append((ns, samples.copy()))

    def mono(self, frame_samples: int = AUDIO_SAMPLES) -> tuple[np.ndarray, np.ndarray]:
        """(samples as float in -1..1, each sample's time in s); the first channel only."""
        chunks, times = [], []
        for ns, samples in self.frames:
            mono = first_channel(samples, frame_samples)
            chunks.append(mono.astype(np.float64) / 32768)
            times.append(ns / 1e9 + np.arange(len(mono)) / AUDIO_RATE)
        if not chunks:
            return np.zeros(0), np.zeros(0)
        return np.concatenate(chunks), np.concatenate(times)


def find_clicks(onsets: list[int], sent_ns: list[int], received: Recorder,
                fill_s: float = AUDIO_SAMPLES / AUDIO_RATE) -> tuple[list[float], int]:
    """Latency of each click in ms from its capture, and how many clicks were not found.

    `sent_ns` holds when each frame was handed to the encoder; its samples were
    captured over the `fill_s` before that.
    """
    template = click()
    energy = float(np.sqrt(np.sum(template ** 2)))
    signal, times = received.mono()
    latencies: list[float] = []
    missing = 0
    for onset in onsets:
        frame, offset = divmod(onset, AUDIO_SAMPLES)
        if frame >= len(sent_ns):
            continue
        sent_at = sent_ns[frame] / 1e9 - fill_s + offset / AUDIO_RATE
        if not len(times) or sent_at + SEARCH_S > times[-1]:
            continue  # sent too late to be heard before the call ended
        lo, hi = np.searchsorted(times, [sent_at, sent_at + SEARCH_S])
        segment = signal[lo:hi]
        if len(segment) < len(template):
            missing += 1
            continue
        score = correlate(segment, template, mode="valid")
        peak = int(np.argmax(np.abs(score)))
        local = segment[peak:peak + len(template)]
        norm = energy * float(np.sqrt(np.sum(local ** 2))) or 1.0
        if abs(score[peak]) / norm < 0.6:  # not the click: silence or something else
            missing += 1
            continue
        latencies.append(float(times[lo + peak] - sent_at) * 1000)
    return latencies, missing


async def click_call(root: Path, seconds: float, *, media: MediaKind = MediaKind.AUDIO,
                     frame_layer: bool = True) -> tuple[list[float], int, dict[str, Any]]:
    """Clicks through one call on a line of its own: latencies (ms), clicks missed, and
    the caller's stats with ``cpu_per_s``, this process's CPU seconds per second of call
    (both terminals and their media run here)."""
    source, onsets = click_source()
    sent_ns: list[int] = []
    received = Recorder()
    line = BenchLine(root)
    await line.start()
    try:
        caller = await line.terminal("washington", RobotOptions(
            audio_source=source, on_local_audio=lambda _c, ns, _s: sent_ns.append(ns),
            frame_layer=frame_layer))
        callee = await line.terminal("moscow", RobotOptions(on_remote_audio=received,
                                                            frame_layer=frame_layer),
                                     auto_answer=True)
        info = await active_call(caller, callee, media=media)
        cpu, wall = time.process_time(), time.monotonic()
        await asyncio.sleep(seconds)
        cpu, wall = time.process_time() - cpu, time.monotonic() - wall
        stats = await caller.call_stats(info.call_id)
        stats["callee_jitter_buffer"] = (await callee.call_stats(info.call_id)).get(
            "jitter_buffer")
        stats["cpu_per_s"] = cpu / wall
        await hang_up(caller, callee, info.call_id)
    finally:
        await line.stop()
    latencies, missing = find_clicks(onsets, sent_ns, received)
    return latencies, missing, stats


async def bare_click_call(seconds: float) -> tuple[list[float], int]:
    """The same clicks between two bare aiortc peers, aiortc as it comes."""
    audio_loss.install(False)  # aiortc's own jitter buffer and Opus, not robot media's
    source, onsets = click_source()
    sent_ns: list[int] = []
    received = Recorder()
    config = IceConfig().rtc_configuration()
    a, b = RTCPeerConnection(config), RTCPeerConnection(config)
    tasks: list[asyncio.Task[None]] = []

    async def consume(track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            received("bare", time.monotonic_ns(), frame.to_ndarray().reshape(-1))

    b.on("track", lambda track: tasks.append(asyncio.ensure_future(consume(track))))
    mic = SynthAudioTrack(source, on_frame=lambda ns, _s: sent_ns.append(ns))
    try:
        a.addTrack(mic)
        await a.setLocalDescription(await a.createOffer())
        await b.setRemoteDescription(a.localDescription)
        await b.setLocalDescription(await b.createAnswer())
        await a.setRemoteDescription(b.localDescription)
        await asyncio.sleep(seconds)
    finally:
        for task in tasks:
            task.cancel()
        await a.close()
        await b.close()
        mic.stop()
        audio_loss.install(True)
    return find_clicks(onsets, sent_ns, received)


def stats_delay(stats: dict[str, Any]) -> str:
    buffer = stats.get("callee_jitter_buffer") or {}
    return (f"{buffer.get('delay_ms', '?')} ms held"
            f" (transit spread {buffer.get('spread_ms', '?')} ms)")


async def browser_rows(result: Result, root: Path, seconds: float) -> None:
    """Browser to browser: two persons' web UIs in one Chromium, clicks timed in the pages."""
    from bench.browser import browser_to_browser

    f = result.figures
    try:
        out = await browser_to_browser(root, seconds)
    except Exception as exc:  # reported, not fatal: the robot figures stand
        f["mouth_to_ear_browser_error"] = f"{type(exc).__name__}: {exc}"[:500]
        result.notes.append(f"browser to browser not measured: {exc}"[:300])
        return
    latencies = out["latencies_ms"]
    if not latencies:
        result.notes.append("browser to browser: no click was heard")
        return
    med, p95 = median(latencies), percentile(latencies, 95)
    f.update({"mouth_to_ear_browser_ms_median": r(med), "mouth_to_ear_browser_ms_p95": r(p95),
              "mouth_to_ear_browser_clicks": len(latencies),
              "mouth_to_ear_browser_clicks_sent": out["clicks_sent"],
              "mouth_to_ear_browser_verified": out["verified"]})
    result.row("browser to browser, median (page to page)", med, "ms")
    result.row("browser to browser, p95", p95, "ms")
    result.notes.append(
        f"browser to browser: {len(latencies)} of {out['clicks_sent']} clicks heard, call"
        f" {'verified' if out['verified'] else 'NOT VERIFIED'}; Chromium's fake microphone"
        " loops a click track (--use-file-for-fake-audio-capture), each page's audio graph"
        " (an AudioWorklet) times the clicks on the microphone's track at the caller and on"
        " the remote track at the callee, in the machine's clock: Chromium's capture, Opus,"
        " the end-to-end layer, SRTP, NetEQ and decoding; no output device buffer")


async def run(root: Path, *, seconds: float = 20.0, browser: bool = True) -> Result:
    use_host_addresses(["127.0.0.1"])
    result = Result("latency")
    started = time.monotonic()
    say(f"latency: clicks through one verified voice call for {seconds:.0f} s, then between"
        " two bare aiortc peers as long")
    latencies, missing, stats = await click_call(root / "latency", seconds)
    bare, _bare_missing = await bare_click_call(seconds)
    if not latencies or not bare:
        raise RuntimeError("no click was found in a recording")
    med, p95 = median(latencies), percentile(latencies, 95)
    bare_med, bare_p95 = median(bare), percentile(bare, 95)
    met = p95 <= TARGET_P95_MS
    result.figures.update({
        "mouth_to_ear_ms_median": r(med), "mouth_to_ear_ms_p95": r(p95),
        "mouth_to_ear_ms_max": r(max(latencies)), "mouth_to_ear_clicks": len(latencies),
        "mouth_to_ear_clicks_missing": missing, "mouth_to_ear_target_ms": TARGET_P95_MS,
        "mouth_to_ear_met": met, "latency_rtt_ms": stats.get("rtt_ms"),
    })
    result.figures.update({"mouth_to_ear_bare_ms_median": r(bare_med),
                           "mouth_to_ear_bare_ms_p95": r(bare_p95)})
    result.row("mouth-to-ear median (from capture)", med, "ms", bare_med, r(med / bare_med, 2))
    result.row("mouth-to-ear p95", p95, "ms", bare_p95, r(p95 / bare_p95, 2),
               f"<= {TARGET_P95_MS:.0f} ms", met)
    result.notes.append(f"{len(latencies)} clicks found, {missing} not found;"
                        " counted from each sample's capture (the 20 ms frame fill"
                        " included); no capture/playout device buffers (robot to robot)")
    result.notes.append("baseline: two bare aiortc peers in this process, aiortc's own"
                        " jitter buffer (4 packets prefetched) and Opus, no end-to-end layer;"
                        f" robot media's audio delay at the end: {stats_delay(stats)}")
    result.series = {"latency_ms": latencies, "bare_ms": bare}
    if browser:
        await browser_rows(result, root / "latency-browsers", seconds)
    result.seconds = time.monotonic() - started
    return result
