"""py-spy profiles of a running process, summarised for the report.

`py-spy record --format raw` writes collapsed stacks ("frame;frame;... count"),
which are summed here into self time (the innermost frame) and inclusive time
per function, so that the report can say what limits a figure.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from bench.common import say


def py_spy() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


async def record(pid: int, seconds: float, out: Path, rate: int = 250) -> Path | None:
    """Sample `pid` for `seconds`; the collapsed stacks' path, or None without py-spy."""
    tool = py_spy()
    if tool is None:
        say("py-spy is not installed (pip install py-spy): no profile")
        return None
    proc = await asyncio.create_subprocess_exec(
        tool, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", str(rate),
        "--format", "raw", "--nonblocking", "--output", str(out),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    if proc.returncode != 0:
        say(f"py-spy failed: {err.decode(errors='replace')[-500:]}")
        return None
    return out


def summarise(collapsed: Path, top: int = 15) -> dict[str, Any]:
    """Self and inclusive shares of the samples, per function (file:line stripped)."""
    total = 0
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_function(f) for f in stack.split(";")]
        own[frames[-1]] += n
        for name in set(frames):
            inclusive[name] += n

    def share(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(name, round(100 * n / total, 1)) for name, n in counter.most_common(top)]

    return {"samples": total, "self": share(own),
            "inclusive_parley": share(Counter({k: v for k, v in inclusive.items()
                                                if "parley/" in k}))}


def _function(frame: str) -> str:
    """'LineServer._on_send (parley/server/app.py:281)' -> 'LineServer._on_send (parley/...)'."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    return f"{name} ({path})" if path else name
