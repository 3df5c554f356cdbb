"""bench/run: Parley's benchmarks, each figure beside a baseline measured in the same run.

    bench/run [--quick] [--json] [--out DIR] [--no-browser] [--profile] [BENCH ...]

BENCH is any of setup, latency, layer, quality, relay, flood, messages, record (default: all of
them), or soak (only when named: `bench/run soak --minutes 120`, a long call). Each
prints a table as it finishes; with --json the last line of stdout is one JSON
object with every figure. Every run writes report.md, results.json (figures,
table rows, series, the machine) and PNG plots to a folder it prints: a full
run's is kept in bench/results/<time>/ to be committed (its work files stay in
bench/out/), a quick run's goes to bench/out/<time>-quick/. The README's table
is rendered from a kept run: ``python -m bench.readme_table RESULTS --readme
README.md``. --quick runs all of them, shorter and fewer times (about ten
minutes); the full run measures longer and more often and, with
--profile (on by default in a full run), records a py-spy profile of the line
server relaying at saturation. The exit status is 1 if a benchmark failed, a
figure is missing, or any target was missed (each named on a ``TARGETS MISSED``
line and in the JSON's ``targets_missed``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from bench.common import REPO, Result, machine, print_table, say

BENCHES = ("setup", "latency", "layer", "quality", "relay", "flood", "messages", "record")
LONG = ("soak",)  # only when named: `bench/run soak --minutes 120`
REQUIRED = ("setup_ratio", "setup_ms_median", "mouth_to_ear_ms_p95", "pesq_clean",
            "pesq_opus_only", "pesq_loss5", "relay_ratio", "idle_2000_mib", "flood_ratio",
            "flood_max_rtt_ms", "flood_login_ms_max", "messages_per_s", "messages_p99_ms",
            "record_verify_1000_s", "record_paper_chars", "layer_video_core_pct",
            "layer_added_ms_median")


async def run_one(name: str, root: Path, args: argparse.Namespace) -> Result:
    if name == "setup":
        from bench import setup
        return await setup.run(root, calls=20 if args.quick else 40)
    if name == "latency":
        from bench import latency
        return await latency.run(root, seconds=15.0 if args.quick else 60.0,
                                 browser=args.browser)
    if name == "layer":
        from bench import layer
        return await layer.run(root, quick=args.quick)
    if name == "quality":
        from bench import quality
        return await quality.run(root, quick=args.quick, browser=args.browser)
    if name == "flood":
        from bench import flood
        return await flood.run(root, quick=args.quick)
    if name == "messages":
        from bench import messages
        return await messages.run(root, quick=args.quick)
    if name == "record":
        from bench import record
        return await record.run(root, quick=args.quick)
    if name == "soak":
        from bench import soak
        return await soak.run(root, minutes=args.minutes)
    from bench import relay
    return await relay.run(root, quick=args.quick, profile=args.profile, nodes=args.nodes)


async def run_all(args: argparse.Namespace, work: Path) -> tuple[list[Result], list[str]]:
    results, failures = [], []
    for name in args.benches:
        say(f"-- {name}")
        try:
            result = await run_one(name, work, args)
        except Exception as exc:
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
            say(f"{name} FAILED:\n{traceback.format_exc()}")
            continue
        print_table(result)
        results.append(result)
    return results, failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__.split("\n\n")[0])
    parser.add_argument("benches", nargs="*", metavar="BENCH",
                        help=f"any of {', '.join(BENCHES)} (default: all)")
    parser.add_argument("--quick", action="store_true",
                        help="all of it, shorter and fewer times (about ten minutes)")
    parser.add_argument("--json", action="store_true", help="one JSON object, last line")
    parser.add_argument("--minutes", type=float, default=120.0,
                        help="how long the soak call lasts (default 120)")
    parser.add_argument("--out", type=Path, help="where to write the report (default: a"
                        " full run's is kept in bench/results/<time>/, to be committed; a quick"
                        " run's goes to bench/out/<time>-quick/)")
    parser.add_argument("--no-browser", dest="browser", action="store_false",
                        help="skip the browser rows (browser to robot speech, browser to"
                        " browser latency)")
    parser.add_argument("--profile", action=argparse.BooleanOptionalAction, default=None,
                        help="py-spy profile of the server relaying (default: on in a full run)")
    parser.add_argument("--nodes", type=int, default=1, metavar="N",
                        help="relay: also measure N line-server nodes sharing PostgreSQL,"
                        " every envelope crossing between them (default 1: not measured)")
    args = parser.parse_args(argv)
    if args.nodes < 1:
        parser.error("--nodes is 1 or more")
    unknown = [b for b in args.benches if b not in (*BENCHES, *LONG)]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; choose from"
                     f" {', '.join((*BENCHES, *LONG))}")
    args.benches = [b for b in (*BENCHES, *LONG) if b in args.benches] or list(BENCHES)
    if args.profile is None:
        args.profile = not args.quick
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    kept = args.out is None and not args.quick
    out = (args.out or REPO / "bench" / ("results" if kept else "out") /
           (stamp + ("-quick" if args.quick else ""))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    # What a run works on (recordings, server data, logs) stays out of a kept folder.
    work = REPO / "bench" / "out" / stamp / "work" if kept else out / "work"
    started = time.monotonic()
    host = machine()
    say(f"bench: {', '.join(args.benches)}{' (quick)' if args.quick else ''}; output in {out}")
    results, failures = asyncio.run(run_all(args, work))
    seconds = time.monotonic() - started
    figures: dict[str, Any] = {}
    for result in results:
        figures.update(result.figures)
    command = "bench/run" + (" --quick" if args.quick else "") + \
        (f" --nodes {args.nodes}" if args.nodes > 1 else "") + \
        ("" if args.benches == list(BENCHES) else " " + " ".join(args.benches))
    summary = {**figures, "seconds": round(seconds, 1), "command": command,
               "targets_missed": [f"{r.bench}: {row.name}" for r in results for row in r.rows
                                  if row.met is False],
               "machine": host, "failures": failures,
               "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "report": str(out / "report.md")}
    rows = {r.bench: [[row.name, row.value, row.unit, row.baseline, row.ratio, row.target,
                       row.met] for row in r.rows] for r in results}
    (out / "results.json").write_text(json.dumps(
        {**summary, "rows": rows, "series": {r.bench: r.series for r in results}}, indent=2))
    try:
        from bench.report import write_report
        write_report(out, results, summary)
    except Exception:
        say(f"the report could not be written:\n{traceback.format_exc()}")
    absent = [k for k in REQUIRED if args.benches == list(BENCHES) and figures.get(k) is None]
    print(f"\nreport: {out / 'report.md'} ({seconds:.0f} s)", flush=True)
    if failures:
        print("FAILED: " + "; ".join(failures), flush=True)
    if absent:
        print(f"missing figures: {', '.join(absent)}", flush=True)
    missed = [f"{r.bench}: {row.name}" for r in results for row in r.rows if row.met is False]
    if missed:
        print("TARGETS MISSED: " + "; ".join(missed), flush=True)
    if args.json:
        print(json.dumps(summary), flush=True)
    return 1 if failures or absent or missed else 0


if __name__ == "__main__":
    sys.exit(main())
