"""Decoded audio as the benchmarks read it (numpy only, so the suite's soak test can use it)."""

from __future__ import annotations

import numpy as np

FRAME = 960  # 20 ms at 48 kHz


def first_channel(samples: np.ndarray, frame: int = FRAME) -> np.ndarray:
    """The first channel of one decoded frame of `frame` samples per channel, interleaved."""
    channels = max(1, len(samples) // frame)
    return samples.reshape(-1, channels)[:, 0] if channels > 1 else samples
