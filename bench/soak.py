"""A long verified call: does anything drift or leak? ``bench/run soak --minutes 120``.

One verified robot-to-robot video call on loopback (the server in its own
process, both terminals here), for the minutes asked. The caller's microphone
is a click a second and its camera turns white for one frame a second (the
same moments, `RobotOptions.flash_every_s`); the callee times both. At the
start and then every interval (10 minutes; a minute in runs of 10 minutes or
less), this process reports:

* RSS, open file descriptors, asyncio tasks, and CPU (process time over
  wall time since the last sample, in % of one core);
* mouth-to-ear audio latency (median over a 20 s probe: the click found in
  the received audio by cross-correlation, as `bench.latency` does, from the
  capture of each sample, a 20 ms frame's fill included);
* the A/V offset: video's latency (white frame handed to the encoder -> white
  frame decoded; a camera frame is whole when captured) minus audio's over the
  same probe -- positive: video behind the sound;
* frames received, and the jitter aiortc reports.

Verdict: RSS grows by at most 10 % after the first interval (the median of the
three samples after it against the median of the last three: `rss_growth`), and
the last probe's latency is within 20 ms of the first's.
Between probes nothing is kept of the media (a two-hour run measures the
terminals, not its own recordings).
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import Result, median, r, rss_mib, say
from bench.latency import Recorder, click_source, find_clicks
from bench.line import BenchLine, active_call, hang_up
from parley.media.ice import use_host_addresses
from parley.media.robot import RobotOptions

PROBE_S = 20.0
CLICK_EVERY_S = 1.0
RSS_GROWTH_MAX = 0.10
LATENCY_DRIFT_MAX_MS = 20.0
WHITE = 200.0  # mean luma above which a decoded frame is the white marker


def rss_growth(samples: list[dict[str, Any]]) -> tuple[float, float]:
    """RSS growth after the first interval: (the verdict's, from one sample to another).

    One sample swings by 5-10 % either way as the heap is trimmed and refilled (the
    111-minute run read 274, 260, 289 and 280 MiB at minutes 10 to 40), so the verdict
    compares the median of the first three samples after the first interval with the
    median of the last three; with fewer than six such samples, the first and the last.
    """
    after = [s["rss_mib"] for s in (samples[1:] if len(samples) > 1 else samples)]
    single = (after[-1] - after[0]) / after[0]
    if len(after) < 6:
        return single, single
    start, end = median(after[:3]), median(after[-3:])
    return (end - start) / start, single


class Probe:
    """Records what the callee receives only while a probe is open."""

    def __init__(self) -> None:
        self.open = False
        self.audio = Recorder()
        self.frames_sent = 0
        self.sent_audio_ns: dict[int, int] = {}  # frame index -> send time, during a probe
        self.flash_sent: list[int] = []
        self.flash_seen: list[int] = []
        self._was_white = False

    def local_audio(self, _call: str, ns: int, _samples: np.ndarray) -> None:
        if self.open:
            self.sent_audio_ns[self.frames_sent] = ns
        self.frames_sent += 1  # click positions count from the first frame

    def remote_audio(self, call: str, ns: int, samples: np.ndarray) -> None:
        if self.open:
            self.audio(call, ns, samples)

    def local_video(self, _call: str, ns: int, white: float) -> None:
        if self.open and white:
            self.flash_sent.append(ns)

    def remote_video(self, _call: str, ns: int, luma: float) -> None:
        white = luma > WHITE
        if self.open and white and not self._was_white:
            self.flash_seen.append(ns)
        self._was_white = white

    def start(self) -> None:
        self.audio = Recorder()
        self.sent_audio_ns = {}
        self.flash_sent, self.flash_seen = [], []
        self.open = True

    def stop(self) -> None:
        self.open = False


def _video_latencies(sent: list[int], seen: list[int]) -> list[float]:
    """Each white frame seen, paired with the last one sent before it (they come a second
    apart, far more than any latency)."""
    out = []
    for ns in seen:
        before = [s for s in sent if s <= ns]
        if before and ns - before[-1] < 900_000_000:
            out.append((ns - before[-1]) / 1e6)
    return out


class _SentTimes:
    """The probe's send times, indexed by frame as `find_clicks` reads them."""

    def __init__(self, times: dict[int, int], frames: int) -> None:
        self.times, self.frames = times, frames

    def __len__(self) -> int:
        return self.frames

    def __getitem__(self, frame: int) -> int:
        return self.times[frame]


def _audio_latencies(onsets: list[int], probe: Probe) -> list[float]:
    frame_samples = 960  # 20 ms at 48 kHz
    during = [o for o in onsets if o // frame_samples in probe.sent_audio_ns]
    latencies, _missing = find_clicks(during, _SentTimes(probe.sent_audio_ns,  # type: ignore[arg-type]
                                                         probe.frames_sent), probe.audio)
    return latencies


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def run(root: Path, *, minutes: float) -> Result:
    use_host_addresses(["127.0.0.1"])
    result = Result("soak")
    started = time.monotonic()
    interval_s = 600.0 if minutes > 10 else 60.0
    total_s = minutes * 60
    source, onsets = click_source(period_s=CLICK_EVERY_S)
    probe = Probe()
    line = BenchLine(root / "soak")
    await line.start()
    samples: list[dict[str, Any]] = []
    try:
        caller = await line.terminal("washington", RobotOptions(
            audio_source=source, on_local_audio=probe.local_audio,
            flash_every_s=CLICK_EVERY_S, on_local_video=probe.local_video,
            silence_timeout_s=30))
        callee = await line.terminal("moscow", RobotOptions(
            on_remote_audio=probe.remote_audio, on_remote_video=probe.remote_video,
            silence_timeout_s=30), auto_answer=True)
        say(f"soak: one verified video call for {minutes:g} min, a sample every"
            f" {interval_s / 60:g} min")
        info = await active_call(caller, callee)
        call_start = time.monotonic()
        cpu_then, wall_then = sum(os.times()[:2]), time.monotonic()
        next_at = 0.0
        while True:
            elapsed = time.monotonic() - call_start
            if elapsed >= next_at:
                probe.start()
                await asyncio.sleep(PROBE_S)
                probe.stop()
                latencies = _audio_latencies(onsets, probe)
                video = _video_latencies(probe.flash_sent, probe.flash_seen)
                cpu_now, wall_now = sum(os.times()[:2]), time.monotonic()
                stats = await callee.call_stats(info.call_id)
                sample = {
                    "minute": round((time.monotonic() - call_start) / 60, 1),
                    "rss_mib": round(rss_mib(os.getpid()), 1), "fds": _fds(),
                    "tasks": len(asyncio.all_tasks()),
                    "cpu_pct": round(100 * (cpu_now - cpu_then) / (wall_now - wall_then), 1),
                    "latency_ms": r(median(latencies)) if latencies else None,
                    "clicks": len(latencies),
                    "av_offset_ms": r(median(video) - median(latencies))
                    if video and latencies else None,
                    "video_latency_ms": r(median(video)) if video else None,
                    "audio_frames": stats.get("audio", {}).get("frames"),
                    "video_frames": stats.get("video", {}).get("frames"),
                    "jitter_ms": stats.get("inbound", {}).get("audio", {}).get("jitter_ms"),
                    "state": caller.book.info(info.call_id).state.value,
                }
                cpu_then, wall_then = cpu_now, wall_now
                samples.append(sample)
                say(f"soak: {sample}")
                if next_at >= total_s - PROBE_S:
                    break  # that was the last probe, at the very end of the call
                # Every interval, and a last probe that ends as the call does: the call
                # lasts the whole time asked for.
                next_at = min(next_at + interval_s, total_s - PROBE_S)
            await asyncio.sleep(min(5.0, max(0.0, next_at - (time.monotonic() - call_start))))
        await hang_up(caller, callee, info.call_id)
    finally:
        await line.stop()

    first = samples[1] if len(samples) > 1 else samples[0]  # after the first interval
    last = samples[-1]
    growth, single = rss_growth(samples)
    drift = (abs(last["latency_ms"] - samples[0]["latency_ms"])
             if last["latency_ms"] is not None and samples[0]["latency_ms"] is not None
             else float("inf"))
    for s in samples:
        result.row(f"minute {s['minute']:g}: RSS / fds / tasks / CPU", s["rss_mib"], "MiB",
                   None, None, f"{s['fds']} fds, {s['tasks']} tasks, {s['cpu_pct']} % CPU")
        result.row(f"minute {s['minute']:g}: mouth-to-ear / A/V offset", s["latency_ms"], "ms",
                   None, None, f"A/V {s['av_offset_ms']} ms, {s['clicks']} clicks")
    result.row("RSS growth after the first interval (medians of three)", r(growth * 100, 1),
               "%", None, None, f"<= {RSS_GROWTH_MAX * 100:.0f} %", growth <= RSS_GROWTH_MAX)
    result.row("RSS growth, first sample after it to the last", r(single * 100, 1), "%")
    result.row("mouth-to-ear at the end against the start", r(drift), "ms", None, None,
               f"within {LATENCY_DRIFT_MAX_MS:.0f} ms", drift <= LATENCY_DRIFT_MAX_MS)
    verdict = growth <= RSS_GROWTH_MAX and drift <= LATENCY_DRIFT_MAX_MS
    result.figures.update({
        "soak_minutes": minutes, "soak_rss_growth_pct": r(growth * 100, 1),
        "soak_rss_growth_single_pct": r(single * 100, 1),
        "soak_latency_from": "capture",  # of each sample (a frame's fill counted)
        "soak_latency_drift_ms": r(drift), "soak_verdict": verdict,
        "soak_fds": [s["fds"] for s in samples], "soak_tasks": [s["tasks"] for s in samples],
        "soak_samples": samples,
    })
    result.series = {"samples": samples}
    result.notes.append("verdict: " + ("held" if verdict else "NOT held") + f" (RSS"
                        f" {growth * 100:+.1f} %, medians of three; one sample to another"
                        f" {first['rss_mib']} -> {last['rss_mib']} MiB; latency"
                        f" {samples[0]['latency_ms']} -> {last['latency_ms']} ms)")
    result.seconds = time.monotonic() - started
    return result
