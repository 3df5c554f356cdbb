"""Speech through verified calls at set packet loss: the quality benchmark's worker.

Run as ``python -m bench.quality_call JOB.json``, normally inside a network
namespace that the quality benchmark made for it (so that its iptables rules
touch nothing else on the machine). It starts a line server, provisions two
verified terminals and, for each call asked for, sets the link's loss and
jitter (`bench.impair`, netfilter's queue on incoming UDP -- the media;
signaling is TCP and only slowed by loss, never damaged), places a voice call
whose "microphone" is that call's speech clip, and records what the callee
decodes, frame by frame with each frame's RTP timestamp. Results: one ``.npz`` per call, and a line
``json: {...}`` per call on stdout.

Playout is modelled from the timestamps: each decoded frame goes where its
timestamp says, and a frame that never came (lost, and aiortc has no loss
concealment) is silence -- what a loudspeaker fed by this robot would play.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from parley.media import audio_loss
from parley.media.engine import MediaEvents
from parley.media.ice import IceConfig, use_host_addresses
from parley.media.robot import RobotMediaSession, RobotOptions
from parley.media.tracks import clip_source

TAIL_S = 1.5  # after the clip: the last frames are through the jitter buffer by then


class Impaired:
    """`bench.impair` running beside this worker, in its network namespace, for one call."""

    def __init__(self, impairment: dict[str, Any]) -> None:
        self.impairment = impairment
        self.proc: subprocess.Popen[str] | None = None
        self.counts: dict[str, Any] = {}

    def __enter__(self) -> Impaired:
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.impair",
                                      json.dumps(self.impairment)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        ready = self.proc.stdout.readline().strip()
        if ready != "ready":
            self.proc.kill()
            raise RuntimeError(f"bench.impair did not start ({ready!r}): is the bench extra"
                               " (NetfilterQueue) installed?")
        return self

    def __exit__(self, *_exc: object) -> None:
        assert self.proc is not None
        self.proc.terminate()  # its cue to remove its rule and report
        out, _ = self.proc.communicate(timeout=10)
        for line in out.splitlines():
            if line.startswith("json: "):
                self.counts = json.loads(line[6:])


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
    """One call per condition in ``job["calls"]``: {voice, impairment, prefetch, name}."""
    use_host_addresses(["127.0.0.1"])
    root = Path(job["root"])
    clips = {voice: np.load(path) for voice, path in job["clips"].items()}
    recorder = PlayoutRecorder()
    line = BenchLine(root)
    await line.start()
    try:
        caller = await line.terminal("washington")
        callee = await line.terminal("moscow", engine=RecordingMedia(
            RobotOptions(on_remote_audio=recorder.tap), recorder), auto_answer=True)
        for call in job["calls"]:
            speech = clips[call["voice"]]
            # Process-wide, as robot media installs it: this call's receivers get it.
            audio_loss.install(prefetch=call.get("prefetch"))
            recorder.reset()
            line.engines["washington"].options.audio_source = clip_source(speech, loop=False)
            impaired = Impaired(call["impairment"]) if job.get("netns") else None
            with impaired or contextlib.nullcontext():
                info = await active_call(caller, callee, media=MediaKind.AUDIO, timeout=30)
                await asyncio.sleep(len(speech) / 48_000 + TAIL_S)
                stats = await callee.call_stats(info.call_id)
                await hang_up(caller, callee, info.call_id)
            path = root / f"{call['name']}.npy"
            np.save(path, recorder.playout())
            inbound = stats.get("inbound", {}).get("audio", {})
            print("json: " + json.dumps({
                **call, "path": str(path), "packets": inbound.get("packets"),
                "lost": inbound.get("lost"), "jitter_buffer": stats.get("jitter_buffer"),
                "link": impaired.counts if impaired else None}), flush=True)
    finally:
        audio_loss.install()
        await line.stop()


if __name__ == "__main__":
    started = time.monotonic()
    with open(sys.argv[1]) as f:
        asyncio.run(run(json.load(f)))
    print(f"done: {time.monotonic() - started:.1f}", flush=True)
