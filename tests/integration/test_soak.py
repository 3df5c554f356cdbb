"""A five-minute soak: `bench.soak`'s long call, shortened, as the suite runs it.

`bench/run soak --minutes 120` is the real run (not in CI). Here the same code
runs a verified call for five minutes with a sample a minute, and what must
hold is behaviour: the call stays up and verified throughout, every sample is
taken, media keeps coming, and nothing piles up -- file descriptors and
asyncio tasks end where they were after the first minute. Timings (latency,
A/V offset, RSS growth) are the benchmark's to judge, not a test's.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from bench.soak import run  # scipy and the bench code: installed by scripts/test


@pytest.mark.timeout(600)
async def test_a_five_minute_call_stays_up_and_piles_nothing_up(tmp_path: Path) -> None:
    result = await run(tmp_path, minutes=5)
    samples = result.figures["soak_samples"]
    assert len(samples) >= 5 and all(s["state"] == "active" for s in samples)
    assert all(s["clicks"] > 5 and s["latency_ms"] is not None for s in samples), samples
    assert all(s["av_offset_ms"] is not None for s in samples), samples
    frames = [s["audio_frames"] for s in samples]
    assert frames == sorted(frames) and frames[-1] - frames[0] > 4 * 60 * 40  # 50/s
    first, last = samples[1], samples[-1]
    assert last["fds"] <= first["fds"] + 2, [s["fds"] for s in samples]
    assert last["tasks"] <= first["tasks"] + 3, [s["tasks"] for s in samples]
    assert "soak_verdict" in result.figures and "soak_rss_growth_pct" in result.figures
