"""The README's performance table, rendered from a run kept in bench/results/.

    python -m bench.readme_table bench/results/<run>/results.json [...] --readme README.md

Writes, between ``<!-- bench:begin -->`` and ``<!-- bench:end -->``, for each
kept run named: which command ran, when, on which machine, and every row of
that run's tables, each beside its baseline from the same run (a ratio's range
over the run's rounds or calls is in the row's name).
`tests/test_readme_figures.py` checks that the README shows exactly this for
the kept runs it names.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from bench.common import Row, markdown_table

BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def all_rows(results: dict[str, Any]) -> list[Row]:
    """Every row of the run's tables, in the run's order."""
    return [Row(*raw) for rows in results.get("rows", {}).values() for raw in rows]


def run_section(results: dict[str, Any], source: str) -> str:
    host = results["machine"]
    when = results.get("finished", "")[:10]
    missed = results.get("targets_missed", [])
    failed = results.get("failures", [])
    verdict = "Every target met" if not missed else \
        f"**{len(missed)} target{'s' if len(missed) > 1 else ''} missed**"
    if failed:
        verdict += f"; **{len(failed)} benchmark{'s' if len(failed) > 1 else ''} failed**"
    lines = [
        f"From `{results['command']}` on {when}, kept in `{source}` (its report.md has every"
        f" row): {host['cpu']}, {host['cores']} cores, {host['memory_gib']} GiB,"
        f" {host['os']}, Python {host['python']}, aiortc {host['aiortc']}. {verdict}.",
        "",
        markdown_table(all_rows(results)),
    ]
    return "\n".join(lines)


def section(runs: list[tuple[dict[str, Any], str]]) -> str:
    """Each kept run's part, in the order given."""
    return "\n\n".join(run_section(results, source) for results, source in runs)


def replace(readme: str, text: str) -> str:
    if BEGIN not in readme or END not in readme:
        raise SystemExit(f"the README has no {BEGIN} ... {END} section")
    head, rest = readme.split(BEGIN, 1)
    _old, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{text}\n{END}{tail}"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.readme_table")
    parser.add_argument("results", type=Path, nargs="+")
    parser.add_argument("--readme", type=Path)
    args = parser.parse_args()
    root = Path(__file__).resolve().parent.parent
    runs = []
    for path in args.results:
        results = json.loads(path.read_text())
        if "rows" not in results:
            raise SystemExit(f"{path} has no table rows: a run from before runs kept them")
        try:
            source = str(path.resolve().relative_to(root))
        except ValueError:
            source = str(path)
        runs.append((results, source))
    text = section(runs)
    if args.readme is None:
        print(text)
        return
    args.readme.write_text(replace(args.readme.read_text(), text))


if __name__ == "__main__":
    main()
