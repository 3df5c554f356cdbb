"""Wall-clock time for the adapters. The pure core never reads a clock: it is given `now_ms`."""

from __future__ import annotations

import time


def now_ms() -> int:
    """Milliseconds since the Unix epoch, as envelopes and the stores count time."""
    return time.time_ns() // 1_000_000
