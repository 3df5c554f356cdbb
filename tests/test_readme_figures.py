"""The README's figures are those of the runs kept in bench/results/, rendered the same way."""

from __future__ import annotations

import json
import re
from pathlib import Path

from bench.soak_table import BEGIN, END, section

ROOT = Path(__file__).resolve().parent.parent
SOAK = "bench/results/soak-120/results.json"


def test_the_long_call_section_is_the_kept_soak_run() -> None:
    readme = (ROOT / "README.md").read_text()
    shown = readme.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    when = re.search(r"\d{4}-\d{2}-\d{2}", shown)
    assert when is not None, "the section says when the run was"
    kept = json.loads((ROOT / SOAK).read_text())
    assert shown == section(kept, SOAK, when.group(0)).strip(), \
        "README's long-call section differs from the kept run: python -m bench.soak_table" \
        f" {SOAK} --readme README.md"


def test_the_performance_table_is_the_kept_runs_it_names() -> None:
    from bench import readme_table

    readme = (ROOT / "README.md").read_text()
    assert readme_table.BEGIN in readme, "the README shows a performance table"
    shown = readme.split(readme_table.BEGIN, 1)[1].split(readme_table.END, 1)[0].strip()
    sources = re.findall(r"kept in `(bench/results/[^`]+/results\.json)`", shown)
    assert sources, "the table names the kept runs it comes from"
    runs = [(json.loads((ROOT / source).read_text()), source) for source in sources]
    assert all(not results["command"].startswith("bench/run --quick") for results, _ in runs)
    assert shown == readme_table.section(runs).strip(), \
        "README's performance table differs from the kept runs: python -m bench.readme_table" \
        f" {' '.join(sources)} --readme README.md"
