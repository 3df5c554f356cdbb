"""Decoded audio as the benchmarks read it (numpy only, so the suite's soak test can use it)."""

from __future__ import annotations

import numpy as np

FRAME = 960  # 20 ms at 48 kHz


def first_channel(samples: np.ndarray, frame: int = FRAME) -> np.ndarray:
    """The first channel of one decoded frame of `frame` samples per channel, interleaved."""
    channels = max(1, len(samples) // frame)
    return samples.reshape(-1, channels)[:, 0] if channels > 1 else samples


def click(rate: int = 48_000) -> np.ndarray:
    """5 ms linear chirp from 1 to 6 kHz under a Hann window, at -6 dBFS."""
    n = int(0.005 * rate)
    t = np.arange(n) / rate
    phase = 2 * np.pi * (1000 * t + (5000 / (2 * 0.005)) * t ** 2)
    return 0.5 * np.hanning(n) * np.sin(phase)
