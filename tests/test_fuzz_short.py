"""A short run of every fuzzer (atheris, coverage-guided): none crashes.

`scripts/fuzz --minutes 10` (or longer) is the real run; this one, two seconds
a target, shows that each target runs under the fuzzer and survives what it
finds first.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import atheris  # noqa: F401  (the test extra: scripts/test installs it)

REPO = Path(__file__).resolve().parent.parent


def test_every_fuzzer_runs_and_nothing_crashes() -> None:
    done = subprocess.run([sys.executable, "-m", "fuzz", "--seconds-each", "2", "--json"],
                          cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    summary = json.loads(done.stdout.splitlines()[-1])
    from fuzz.targets import TARGETS

    assert {row["target"] for row in summary["rows"]} == set(TARGETS)
    crashed = {row["target"]: row["crashes"] for row in summary["rows"] if row["crashes"]}
    assert not crashed, f"{crashed}\n{done.stderr[-3000:]}"
    assert all((row["executions"] or 0) > 100 for row in summary["rows"]), summary["rows"]
    assert done.returncode == 0
