"""One fuzz target under atheris: ``python -m fuzz.run TARGET --seconds N``.

The target's seed corpus (``fuzz/corpus/TARGET``) and the inputs of crashes
found before (``fuzz/regressions/TARGET``) start it off; what widens coverage
goes to a working corpus (``--work``, default ``fuzz/out/corpus/TARGET``, not
kept in the repository); a crash's input is written to
``fuzz/out/crashes/TARGET/`` and the process exits non-zero. libFuzzer's
progress and final statistics go to stderr (`fuzz.__main__` reads them).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import atheris

ROOT = Path(__file__).resolve().parent

with atheris.instrument_imports(include=["parley"]):
    from fuzz import targets


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m fuzz.run")
    parser.add_argument("target", choices=sorted(targets.TARGETS))
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--work", type=Path)
    args = parser.parse_args()
    work = args.work or ROOT / "out" / "corpus" / args.target
    crashes = ROOT / "out" / "crashes" / args.target
    work.mkdir(parents=True, exist_ok=True)
    crashes.mkdir(parents=True, exist_ok=True)
    seeds = [d for d in (ROOT / "corpus" / args.target, ROOT / "regressions" / args.target)
             if d.is_dir()]
    target = targets.TARGETS[args.target]

    def one(data: bytes) -> None:
        with contextlib.suppress(targets.ParleyError):
            target(data)

    atheris.Setup([sys.argv[0], str(work), *map(str, seeds),
                   f"-max_total_time={args.seconds}", f"-artifact_prefix={crashes}/",
                   "-print_final_stats=1", "-timeout=10", "-rss_limit_mb=3072",
                   "-max_len=65536"], one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
