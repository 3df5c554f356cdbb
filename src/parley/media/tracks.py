"""Synthetic media for robot terminals: a moving test pattern and a tone.

The pattern is colour bars with a bar sweeping across and the frame number
drawn large in the corner, so a recording or a screenshot shows at once that
video is live and how many frames went by. The tone is a steady 440 Hz sine.
Both are paced in real time like a camera and a microphone, and both honour
mute and camera-off the way a browser does: the track keeps running and sends
silence or black.

Audio can come from any `SampleSource` (a function that returns the next N
samples), which is how benchmarks feed speech and clicks through a call.
"""

from __future__ import annotations

import asyncio
import fractions
import time
from collections.abc import Callable

import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame, VideoFrame

AUDIO_RATE = 48_000
AUDIO_PTIME = 0.020
AUDIO_SAMPLES = int(AUDIO_RATE * AUDIO_PTIME)
VIDEO_CLOCK = 90_000

SampleSource = Callable[[int], np.ndarray]  # n -> int16 array of n mono samples

# 3x5 bitmap digits, one string of 15 bits per digit (row-major).
_DIGITS = {
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111",
    "3": "111001111001111", "4": "101101111001001", "5": "111100111001111",
    "6": "111100111101111", "7": "111001001010010", "8": "111101111101111",
    "9": "111101111001111",
}
_GLYPHS = {d: np.array([int(b) for b in bits], dtype=bool).reshape(5, 3)
           for d, bits in _DIGITS.items()}
_BARS = np.array([[235, 235, 235], [235, 235, 16], [16, 235, 235], [16, 235, 16],
                  [235, 16, 235], [235, 16, 16], [16, 16, 235], [16, 16, 16]], dtype=np.uint8)


def draw_number(image: np.ndarray, number: int, x: int, y: int, scale: int) -> None:
    """Draw `number` in white on a black box at (x, y), in place."""
    text = str(number)
    w, h = (len(text) * 4 + 1) * scale, 7 * scale
    image[y : y + h, x : x + w] = 0
    for i, ch in enumerate(text):
        glyph = np.kron(_GLYPHS[ch], np.ones((scale, scale), dtype=bool))
        gx, gy = x + (1 + i * 4) * scale, y + scale
        image[gy : gy + 5 * scale, gx : gx + 3 * scale][glyph] = 255


class TestPatternTrack(MediaStreamTrack):
    """Colour bars, a sweeping bar and a frame counter, at `fps`."""

    kind = "video"
    __test__ = False  # not a pytest test class, despite the name

    def __init__(self, width: int = 640, height: int = 360, fps: int = 30, *,
                 flash_every_s: float = 0.0,
                 on_frame: Callable[[int, bool], None] | None = None) -> None:
        super().__init__()
        self.width, self.height, self.fps = width, height, fps
        # A white frame every this many seconds (0: never), the first 1 s in, to time
        # video against audio clicks (benchmarks); on_frame(send ns, white?) for each frame.
        self._flash_every = round(flash_every_s * fps)
        self._on_frame = on_frame
        self._white = np.full((height, width, 3), 255, dtype=np.uint8)
        cols = np.repeat(np.arange(8), -(-width // 8))[:width]
        self._bars = np.broadcast_to(_BARS[cols], (height, width, 3)).copy()
        self._black = np.zeros((height, width, 3), dtype=np.uint8)
        self.enabled = True  # camera off -> black frames, as a browser sends
        self.frames = 0
        self._start: float | None = None

    async def recv(self) -> VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        else:
            await asyncio.sleep(max(0.0, self._start + self.frames / self.fps - time.monotonic()))
        flash = bool(self._flash_every) and self.frames >= self.fps and \
            (self.frames - self.fps) % self._flash_every == 0
        if self.enabled and flash:
            image = self._white
        elif self.enabled:
            image = self._bars.copy()
            sweep = (self.frames * 6) % self.width
            image[:, sweep : sweep + 12] = 255
            draw_number(image, self.frames, 8, 8, max(2, self.height // 60))
        else:
            image = self._black
        if self._on_frame is not None:
            self._on_frame(time.monotonic_ns(), flash and self.enabled)
        frame = VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts = self.frames * VIDEO_CLOCK // self.fps
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        self.frames += 1
        return frame


def tone_source(freq: float = 440.0, level_dbfs: float = -12.0) -> SampleSource:
    amplitude = 32767 * 10 ** (level_dbfs / 20)
    position = 0

    def next_samples(n: int) -> np.ndarray:
        nonlocal position
        t = (np.arange(position, position + n) / AUDIO_RATE)
        position += n
        return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16)

    return next_samples


def clip_source(samples: np.ndarray, *, loop: bool = True) -> SampleSource:
    """Play an int16 mono array at 48 kHz (looped, or followed by silence)."""
    data = np.asarray(samples, dtype=np.int16)
    position = 0

    def next_samples(n: int) -> np.ndarray:
        nonlocal position
        out = np.zeros(n, dtype=np.int16)
        filled = 0
        while filled < n and (loop or position < len(data)) and len(data):
            if position >= len(data):
                position = 0
            take = min(n - filled, len(data) - position)
            out[filled : filled + take] = data[position : position + take]
            filled += take
            position += take
        return out

    return next_samples


class SynthAudioTrack(MediaStreamTrack):
    """48 kHz mono audio from a SampleSource, paced in 20 ms frames."""

    kind = "audio"

    def __init__(self, source: SampleSource | None = None,
                 on_frame: Callable[[int, np.ndarray], None] | None = None) -> None:
        super().__init__()
        self.source = source or tone_source()
        self.enabled = True  # mute -> silence
        self.frames = 0
        self._start: float | None = None
        self._on_frame = on_frame  # (send time in ns, samples): for latency measurement

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        else:
            await asyncio.sleep(max(0.0, self._start + self.frames * AUDIO_PTIME
                                    - time.monotonic()))
        samples = self.source(AUDIO_SAMPLES)
        if not self.enabled:
            samples = np.zeros(AUDIO_SAMPLES, dtype=np.int16)
        if self._on_frame is not None:
            self._on_frame(time.monotonic_ns(), samples)
        frame = AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = AUDIO_RATE
        frame.pts = self.frames * AUDIO_SAMPLES
        frame.time_base = fractions.Fraction(1, AUDIO_RATE)
        self.frames += 1
        return frame
