"""Recording what a robot receives to a WebM file (VP8 video, Opus audio).

Every frame the robot decodes is handed to the recorder as it is counted, and
encoding runs on a worker thread (PyAV releases the GIL while it encodes), so
a busy machine delays the file but never drops from it: on close, the queue is
drained before the container is finished. A recording therefore holds exactly
the frames the call's statistics say were received.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import queue
import threading
from pathlib import Path
from typing import Any

import av

log = logging.getLogger("parley.media")

VIDEO_TIME_BASE = fractions.Fraction(1, 90_000)
AUDIO_RATE = 48_000
_DONE = object()
# Frames held while waiting for the first frame of every expected kind (a WebM header
# names each stream): 10 s of 20 ms audio. A kind that has not come by then is left out.
MAX_PENDING = 500


class Recorder:
    def __init__(self, path: Path, kinds: set[str]) -> None:
        self.path = path
        self.kinds = kinds  # a WebM header names every stream, so all are known up front
        self.failed = False  # then frames are no longer queued: nothing would take them
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=f"recorder {path.name}",
                                        daemon=True)
        self._thread.start()

    def add(self, kind: str, frame: av.AudioFrame | av.VideoFrame) -> None:
        """Queue one received frame (called on the event loop, never blocks)."""
        if not self.failed:
            self._queue.put((kind, frame))

    async def close(self) -> None:
        """Finish the file: everything queued so far is written first."""
        self._queue.put(_DONE)
        await asyncio.to_thread(self._thread.join)

    def _run(self) -> None:
        container = None
        try:
            container = av.open(str(self.path), "w", format="webm")
            resampler = av.AudioResampler(format="s16", layout="stereo", rate=AUDIO_RATE)
            # A WebM header names every stream, and the video's size comes from its
            # first frame: hold frames until each expected kind has sent one.
            pending: list[tuple[str, Any]] = []
            ended = False
            while {kind for kind, _ in pending} < self.kinds and len(pending) < MAX_PENDING:
                item = self._queue.get()
                if item is _DONE:
                    ended = True
                    break
                pending.append(item)
            streams: dict[str, Any] = {}
            first_pts: dict[str, int] = {}
            for kind, frame in pending:
                if kind not in streams:
                    streams[kind] = self._stream(container, kind, frame)
                    first_pts[kind] = frame.pts or 0

            def write(kind: str, frame: Any) -> None:
                if kind not in streams:
                    return
                if kind == "video":
                    frame.pts = (frame.pts or 0) - first_pts[kind]
                    frame.time_base = VIDEO_TIME_BASE
                for out in resampler.resample(frame) if kind == "audio" else [frame]:
                    for packet in streams[kind].encode(out):
                        container.mux(packet)

            for kind, frame in pending:
                write(kind, frame)
            while not ended:
                item = self._queue.get()
                if item is _DONE:
                    break
                write(*item)
            for stream in streams.values():
                for packet in stream.encode(None):
                    container.mux(packet)
        except Exception:
            self.failed = True
            log.exception("recording to %s failed", self.path)
        finally:
            if container is not None:
                container.close()

    @staticmethod
    def _stream(container: Any, kind: str, frame: Any) -> Any:
        if kind == "video":
            stream = container.add_stream("libvpx", rate=30)
            stream.width, stream.height = frame.width, frame.height
            stream.pix_fmt = "yuv420p"
            stream.codec_context.time_base = VIDEO_TIME_BASE
            stream.codec_context.options = {"deadline": "realtime", "cpu-used": "8"}
            return stream
        stream = container.add_stream("libopus", rate=AUDIO_RATE)
        stream.layout = "stereo"
        return stream
