"""The README's long-call section, written from a kept soak run's results.json.

    python -m bench.soak_table bench/results/soak-120/results.json [--readme README.md]

Prints the section; with --readme, replaces what stands between the markers
``<!-- soak:begin -->`` and ``<!-- soak:end -->`` there, so that the figures the
README shows are exactly those of the kept run (tests/core/test_docs.py checks it).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

BEGIN, END = "<!-- soak:begin -->", "<!-- soak:end -->"


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f} ms"


def section(results: dict[str, Any], source: str, date: str | None = None) -> str:
    samples = results["series"]["soak"]["samples"]
    first, after, last = samples[0], samples[1] if len(samples) > 1 else samples[0], samples[-1]
    machine = results.get("machine", {})
    cpu = machine.get("cpu") or machine.get("processor") or "this machine"
    verdict = "held" if results["soak_verdict"] else "NOT held"
    when = date or results.get("finished", "")[:10]
    lines = [
        f"One verified robot-to-robot video call of {results['soak_minutes']:g} minutes"
        f" (`bench/run soak --minutes {results['soak_minutes']:g}`, {when}, kept in"
        f" `{source}`; {cpu}, {machine.get('cores', '?')} cores). Every ten minutes: RSS, file"
        " descriptors and asyncio tasks of the process holding both terminals, its CPU,"
        " mouth-to-ear audio latency, and the A/V offset (video's latency minus audio's:"
        " negative, video ahead of the sound by aiortc's audio buffer). Verdict:"
        f" **{verdict}** -- RSS {after['rss_mib']:g} MiB after the first interval,"
        f" {last['rss_mib']:g} MiB at the end ({results['soak_rss_growth_pct']:+g} %, limit"
        f" 10 %); latency {_ms(first['latency_ms'])} at the start, {_ms(last['latency_ms'])}"
        " at the end (limit: within 20 ms).",
        "",
        "| minute | RSS | fds | tasks | CPU | mouth-to-ear | A/V offset | audio / video frames |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in samples:
        lines.append(
            f"| {s['minute']:g} | {s['rss_mib']:g} MiB | {s['fds']} | {s['tasks']} |"
            f" {s['cpu_pct']:g} % | {_ms(s['latency_ms'])} | {_ms(s['av_offset_ms'])} |"
            f" {s['audio_frames']:,} / {s['video_frames']:,} |")
    return "\n".join(lines)


def replace(readme: str, text: str) -> str:
    head, sep, rest = readme.partition(BEGIN)
    _old, sep2, tail = rest.partition(END)
    if not sep or not sep2:
        raise SystemExit(f"the README has no {BEGIN} ... {END} section")
    return f"{head}{BEGIN}\n{text}\n{END}{tail}"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.soak_table")
    parser.add_argument("results", type=Path)
    parser.add_argument("--readme", type=Path)
    parser.add_argument("--date", help="when it ran, for a run kept before runs said so")
    args = parser.parse_args()
    text = section(json.loads(args.results.read_text()), str(args.results), args.date)
    if args.readme is None:
        print(text)
    else:
        args.readme.write_text(replace(args.readme.read_text(), text))


if __name__ == "__main__":
    main()
