"""What every benchmark shares: a line to measure, statistics, tables and the machine.

A figure alone means little on a shared, noisy machine, so every benchmark
measures its baseline in the same run, interleaved with the real thing where
it can, and reports the ratio. The line under test is real: the server is its
own process (``python -m parley server``, as deployed), terminals are real
`Terminal`s with robot media, and everything talks over 127.0.0.1 or over
network namespaces the benchmark creates itself.
"""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Self

from parley import children

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


# -- statistics -----------------------------------------------------------------------

def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def r(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(float(value), digits)


# -- results ------------------------------------------------------------------------

@dataclass
class Row:
    """One line of a benchmark's table: a figure beside its baseline."""

    name: str
    value: float | None
    unit: str = ""
    baseline: float | None = None
    ratio: float | None = None
    target: str = ""
    met: bool | None = None


@dataclass
class Result:
    bench: str
    figures: dict[str, Any] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    series: dict[str, Any] = field(default_factory=dict)  # raw samples, for plots
    seconds: float = 0.0

    def row(self, *args: Any, **kwargs: Any) -> None:
        self.rows.append(Row(*args, **kwargs))


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and value != value:
        return "n/a"
    text = f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}" if abs(value) < 10 \
        else f"{value:.1f}"
    return f"{text} {unit}".strip()


def table(rows: Iterable[Row]) -> list[list[str]]:
    out = [["figure", "value", "baseline", "ratio", "target", "met"]]
    for row in rows:
        out.append([row.name, _fmt(row.value, row.unit), _fmt(row.baseline, row.unit),
                    "-" if row.ratio is None else f"{row.ratio:.2f}x", row.target or "-",
                    "-" if row.met is None else ("yes" if row.met else "NO")])
    return out


def print_table(result: Result, out: Any = sys.stdout) -> None:
    cells = table(result.rows)
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    print(f"\n== {result.bench} ({result.seconds:.0f} s) ==", file=out)
    for i, row in enumerate(cells):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(),
              file=out)
        if i == 0:
            print("  ".join("-" * w for w in widths), file=out)
    for note in result.notes:
        print(f"  * {note}", file=out)
    out.flush()


def markdown_table(rows: Iterable[Row]) -> str:
    cells = table(rows)
    lines = ["| " + " | ".join(cells[0]) + " |", "|" + "---|" * len(cells[0])]
    lines += ["| " + " | ".join(row) + " |" for row in cells[1:]]
    return "\n".join(lines)


def say(text: str) -> None:
    """Progress goes to stderr so that stdout stays the tables and the JSON."""
    print(text, file=sys.stderr, flush=True)


# -- the machine -------------------------------------------------------------------------

def machine() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    os_name = ""
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip('"')

    def version(pkg: str) -> str:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return "-"

    return {
        "cpu": cpu or platform.processor(),
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "os": os_name or platform.platform(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "aiortc": version("aiortc"),
        "aiohttp": version("aiohttp"),
        "cryptography": version("cryptography"),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def raise_fd_limit(want: int = 20_000) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(max(soft, want), hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


def rss_mib(pid: int) -> float:
    """Resident memory of a process (VmRSS), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


# -- processes -----------------------------------------------------------------------------

class Child(children.Child):
    """A child started in the repository, so that ``python -m bench.<module>`` finds it."""

    @classmethod
    async def spawn(cls, name: str, argv: list[str], log_dir: Path, *, stdin: bool = False,
                    env: dict[str, str] | None = None, cwd: Path | None = REPO) -> Self:
        return await super().spawn(name, argv, log_dir, stdin=stdin, env=env, cwd=cwd)


def pinned(argv: list[str], cpu: int | None) -> list[str]:
    """`argv` run on one CPU only (``taskset``, which execs it: the pid is the same)."""
    return argv if cpu is None else ["taskset", "-c", str(cpu), *argv]


async def start_module(name: str, module: str, log_dir: Path, *args: str,
                       netns: str | None = None, cpu: int | None = None) -> tuple[Child, str]:
    """``python -m module args`` in its own process, once it prints ``ready: URL``; and URL.

    Optionally inside a network namespace, or on one CPU. A child that never gets ready
    is stopped.
    """
    argv = pinned([PYTHON, "-m", module, *args], cpu)
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    child = await Child.spawn(name, argv, log_dir)
    try:
        url = await child.line("ready: ")
    except BaseException:
        await child.stop()
        raise
    return child, url


async def start_server_process(data: Path, log_dir: Path, *, host: str = "127.0.0.1",
                               netns: str | None = None, name: str = "server",
                               extra_args: Sequence[str] = (), cpu: int | None = None
                               ) -> tuple[Child, str]:
    """`parley server` in its own process (optionally inside a network namespace, or on
    one CPU)."""
    return await start_module(name, "parley", log_dir, "server", "--data", str(data), "--host",
                              host, "--port", "0", "--log-level", "warning", *extra_args,
                              netns=netns, cpu=cpu)


def need_commands(*names: str) -> list[str]:
    return [n for n in names if shutil.which(n) is None]


def run_quiet(*argv: str) -> None:
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
