"""The robot's recorder: a WebM file of what was received, whatever the peer sends."""

from __future__ import annotations

import fractions
from pathlib import Path

import av
import numpy as np

from parley.media.recorder import MAX_PENDING, Recorder


def tone_frames(n: int) -> list[av.AudioFrame]:
    frames = []
    for i in range(n):
        t = (np.arange(960) + i * 960) / 48_000
        samples = (3000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate, frame.pts = 48_000, i * 960
        frame.time_base = fractions.Fraction(1, 48_000)
        frames.append(frame)
    return frames


async def test_a_video_call_whose_peer_sends_no_video_still_records_its_audio(
        tmp_path: Path) -> None:
    path = tmp_path / "call.webm"
    recorder = Recorder(path, {"audio", "video"})
    for frame in tone_frames(MAX_PENDING + 50):
        recorder.add("audio", frame)
    await recorder.close()
    assert not recorder.failed
    with av.open(str(path)) as container:
        assert [s.type for s in container.streams] == ["audio"]
        decoded = sum(f.samples for f in container.decode(audio=0))
    assert decoded >= (MAX_PENDING + 40) * 960  # all of it, not only what came after


async def test_a_recording_that_cannot_be_written_stops_taking_frames(tmp_path: Path) -> None:
    recorder = Recorder(tmp_path / "missing-folder" / "call.webm", {"audio"})
    for frame in tone_frames(10):
        recorder.add("audio", frame)
    recorder._thread.join(5)  # the file cannot be created: the writer gives up
    assert recorder.failed and not recorder._thread.is_alive()
    left = recorder._queue.qsize()
    for frame in tone_frames(100):
        recorder.add("audio", frame)
    assert recorder._queue.qsize() == left  # nothing piles up for the rest of the call
    await recorder.close()
