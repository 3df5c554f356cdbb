"""Speech through verified calls at set packet loss: the quality benchmark's worker.

Run as ``python -m bench.quality_call JOB.json``, normally inside a network
namespace that the quality benchmark made for it (so that its iptables rules
touch nothing else on the machine). It starts a line server, provisions two
verified terminals and, for each loss level, sets the loss (iptables
``statistic`` match dropping that share of UDP -- the media; signaling is TCP
and only slowed by loss, never damaged), places a voice call whose "microphone"
is the speech clip, and records what the callee decodes, frame by frame with
each frame's RTP timestamp. Results: one ``.npz`` per call, and a line
``json: {...}`` per call on stdout.

Playout is modelled from the timestamps: each decoded frame goes where its
timestamp says, and a frame that never came (lost, and aiortc has no loss
concealment) is silence -- what a loudspeaker fed by this robot would play.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from aiortc.mediastreams import MediaStreamTrack

from bench.line import BenchLine, TimedRobotMedia, active_call, hang_up
from bench.samples import first_channel
from parley.core.call import MediaKind
from parley.media.engine import MediaEvents
from parley.media.ice import IceConfig, use_host_addresses
from parley.media.robot import RobotMediaSession, RobotOptions
from parley.media.tracks import clip_source

TAIL_S = 1.5  # after the clip: the last frames are through the jitter buffer by then


def set_loss(percent: float) -> None:
    """Drop `percent` % of incoming UDP in this network namespace (0: drop nothing)."""
    subprocess.run(["iptables", "-F", "INPUT"], check=True)
    if percent > 0:
        subprocess.run(["iptables", "-A", "INPUT", "-p", "udp", "-m", "statistic", "--mode",
                        "random", "--probability", f"{percent / 100:.4f}", "-j", "DROP"],
                       check=True)


class PlayoutRecorder:
    """Decoded remote audio with each frame's RTP timestamp, for a playout model."""

    def __init__(self) -> None:
        self.pts: list[int] = []
        self.samples: list[np.ndarray] = []

    def reset(self) -> None:
        self.pts.clear()
        self.samples.clear()

    def watch(self, session: RobotMediaSession) -> None:
        """Note each remote audio frame's timestamp as the robot's consumer takes it."""

        def on_track(track: MediaStreamTrack) -> None:
            if track.kind != "audio":
                return
            recv = track.recv

            async def timed_recv() -> Any:
                frame = await recv()
                self.pts.append(int(frame.pts))
                return frame

            track.recv = timed_recv  # type: ignore[method-assign]

        session.pc.on("track", on_track)

    def tap(self, _call_id: str, _ns: int, samples: np.ndarray) -> None:
        self.samples.append(samples.copy())

    def playout(self, frame: int = 960) -> np.ndarray:
        """The first channel at 48 kHz, with silence where frames are missing."""
        n = min(len(self.pts), len(self.samples))
        if n == 0:
            return np.zeros(0, dtype=np.int16)
        start = self.pts[0]
        end = max(self.pts[:n]) - start + frame
        out = np.zeros(end, dtype=np.int16)
        for pts, samples in zip(self.pts[:n], self.samples[:n], strict=True):
            mono = first_channel(samples, frame)
            at = pts - start
            out[at:at + len(mono)] = mono[:max(0, len(out) - at)]
        return out


class RecordingMedia(TimedRobotMedia):
    def __init__(self, options: RobotOptions, recorder: PlayoutRecorder) -> None:
        super().__init__(options)
        self.recorder = recorder

    def open(self, call_id: str, media: MediaKind, events: MediaEvents,
             ice: IceConfig | None = None) -> RobotMediaSession:
        session = super().open(call_id, media, events, ice)
        self.recorder.watch(session)
        return session


async def run(job: dict[str, Any]) -> None:
    use_host_addresses(["127.0.0.1"])
    root = Path(job["root"])
    speech = np.load(job["speech"])
    clip_s = len(speech) / 48_000
    recorder = PlayoutRecorder()
    line = BenchLine(root)
    await line.start()
    try:
        caller = await line.terminal("washington")
        callee = await line.terminal("moscow", engine=RecordingMedia(
            RobotOptions(on_remote_audio=recorder.tap), recorder), auto_answer=True)
        for percent in job["loss"]:
            for trial in range(job["trials"]):
                if job.get("netns"):
                    set_loss(percent)
                recorder.reset()
                line.engines["washington"].options.audio_source = clip_source(speech, loop=False)
                info = await active_call(caller, callee, media=MediaKind.AUDIO, timeout=30)
                await asyncio.sleep(clip_s + TAIL_S)
                stats = await callee.call_stats(info.call_id)
                await hang_up(caller, callee, info.call_id)
                if job.get("netns"):
                    set_loss(0)
                path = root / f"loss{percent:g}-{trial}.npy"
                np.save(path, recorder.playout())
                inbound = stats.get("inbound", {}).get("audio", {})
                print("json: " + json.dumps({
                    "loss": percent, "path": str(path), "packets": inbound.get("packets"),
                    "lost": inbound.get("lost")}), flush=True)
    finally:
        if job.get("netns"):
            set_loss(0)
        await line.stop()


if __name__ == "__main__":
    started = time.monotonic()
    with open(sys.argv[1]) as f:
        asyncio.run(run(json.load(f)))
    print(f"done: {time.monotonic() - started:.1f}", flush=True)
