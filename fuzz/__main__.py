"""scripts/fuzz: every fuzz target in turn, the time shared out; a summary, and crashes.

    scripts/fuzz [--minutes M | --seconds-each S] [--json] [TARGET ...]

Each target runs in its own process (`fuzz.run`, atheris), for M minutes in
all (default 10) shared equally, or S seconds each. The summary gives each
target's executions, coverage (libFuzzer's edges, ``cov``), features (``ft``),
the corpus it grew and its crashes; a crash's input is in
``fuzz/out/crashes/TARGET/`` -- make it a regression: copy it into
``fuzz/regressions/TARGET/`` (tests/core/test_fuzz_corpus.py runs every one
of them) and fix what it found. Exit status 1 if anything crashed.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent


def targets() -> list[str]:
    sys.path.insert(0, str(REPO))
    from fuzz.targets import TARGETS

    return sorted(TARGETS)


def _last(pattern: str, text: str) -> int | None:
    found = re.findall(pattern, text)
    return int(found[-1]) if found else None


def run_one(name: str, seconds: int) -> dict[str, object]:
    crashes = ROOT / "out" / "crashes" / name
    before = set(crashes.iterdir()) if crashes.is_dir() else set()
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "fuzz.run", name, "--seconds", str(seconds)],
                          cwd=REPO, capture_output=True, text=True, errors="replace",
                          timeout=seconds + 120, check=False)
    log = ROOT / "out" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(done.stderr)
    found = sorted(str(p.relative_to(REPO)) for p in set(crashes.iterdir()) - before) \
        if crashes.is_dir() else []
    crashed = done.returncode != 0
    return {"target": name, "seconds": round(time.monotonic() - started, 1),
            "executions": _last(r"stat::number_of_executed_units:\s*(\d+)", done.stderr),
            "coverage": _last(r"\bcov: (\d+)", done.stderr),
            "features": _last(r"\bft: (\d+)", done.stderr),
            "corpus": _last(r"\bcorp: (\d+)", done.stderr),
            "crashes": found if found or not crashed else [f"exit {done.returncode}"],
            "log": str(log.relative_to(REPO))}


def main() -> int:
    parser = argparse.ArgumentParser(prog="scripts/fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="*", metavar="TARGET")
    parser.add_argument("--minutes", type=float, default=10.0, help="in all (default 10)")
    parser.add_argument("--seconds-each", type=int, help="instead of --minutes")
    parser.add_argument("--json", action="store_true", help="one JSON object, last line")
    args = parser.parse_args()
    names = targets()
    unknown = set(args.targets) - set(names)
    if unknown:
        parser.error(f"unknown target(s) {', '.join(sorted(unknown))}; choose from"
                     f" {', '.join(names)}")
    chosen = args.targets or names
    each = args.seconds_each or max(1, int(args.minutes * 60 / len(chosen)))
    print(f"fuzz: {len(chosen)} targets, {each} s each", file=sys.stderr, flush=True)
    rows = []
    for name in chosen:
        row = run_one(name, each)
        rows.append(row)
        print(f"  {name:16} {row['executions'] or 0:>11,} runs  cov {row['coverage'] or 0:>5}"
              f"  ft {row['features'] or 0:>6}  corpus {row['corpus'] or 0:>5}  crashes"
              f" {len(row['crashes'])}", file=sys.stderr, flush=True)  # type: ignore[arg-type]
    total = {"targets": len(rows), "seconds": round(sum(r["seconds"] for r in rows), 1),  # type: ignore[misc]
             "executions": sum(r["executions"] or 0 for r in rows),  # type: ignore[misc]
             "crashes": sum(len(r["crashes"]) for r in rows), "rows": rows}  # type: ignore[arg-type]
    print(f"fuzz: {total['executions']:,} runs in {total['seconds']:.0f} s, {total['crashes']}"
          " crash(es)", file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps(total), flush=True)
    return 1 if total["crashes"] else 0


if __name__ == "__main__":
    sys.exit(main())
