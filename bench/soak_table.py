"""The README's long-call section, written from a kept soak run's results.json.

    python -m bench.soak_table bench/results/soak-120/results.json [--readme README.md]

Prints the section; with --readme, replaces what stands between the markers
``<!-- soak:begin -->`` and ``<!-- soak:end -->`` there, so that the figures the
README shows are exactly those of the kept run (tests/test_readme_figures.py
checks it).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from bench.common import median
from bench.soak import LATENCY_DRIFT_MAX_MS, RSS_GROWTH_MAX, rss_growth

BEGIN, END = "<!-- soak:begin -->", "<!-- soak:end -->"


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f} ms"


def section(results: dict[str, Any], source: str, date: str | None = None) -> str:
    samples = results["series"]["soak"]["samples"]
    first, last = samples[0], samples[-1]
    machine = results.get("machine", {})
    cpu = machine.get("cpu") or "this machine"
    when = date or results.get("finished", "")[:10]
    # The verdict from the samples, by the rule of bench/soak.py (for a run kept from
    # before the rule compared medians, its own one-sample verdict is said beside it).
    growth, single = rss_growth(samples)
    drift = abs(last["latency_ms"] - first["latency_ms"]) \
        if last["latency_ms"] is not None and first["latency_ms"] is not None else float("inf")
    # Runs before 2026-12-02's change timed mouth-to-ear from each frame's hand-off to
    # the encoder; since, from the capture of each sample (20 ms more, and the A/V
    # offset 20 ms more negative).
    since = ("from the capture of each sample, a 20 ms frame's fill included"
             if results.get("soak_latency_from") == "capture" else
             "from each frame's hand-off to the encoder, as this run's bench timed it;"
             " from the capture of each sample, as benches count now, it is 20 ms more,"
             " and the A/V offset 20 ms more negative")
    held = growth <= RSS_GROWTH_MAX and drift <= LATENCY_DRIFT_MAX_MS
    recorded = results.get("soak_verdict")
    after = [s["rss_mib"] for s in samples[1:]]
    lines = [
        f"One verified robot-to-robot video call of {results['soak_minutes']:g} minutes"
        f" (`bench/run soak --minutes {results['soak_minutes']:g}`, {when}, kept in"
        f" `{source}`; {cpu}, {machine.get('cores', '?')} cores). Every ten minutes: RSS,"
        " file descriptors and asyncio tasks of the process holding both terminals, its"
        f" CPU, mouth-to-ear audio latency ({since}), and the A/V offset (video's latency"
        " minus audio's: positive, the picture behind the sound).",
        "",
        f"Verdict: **{'held' if held else 'NOT held'}**. RSS after the first interval:"
        f" {median(after[:3]):g} MiB (median of the first three samples), at the end"
        f" {median(after[-3:]):g} MiB (median of the last three): {growth * 100:+.1f} %,"
        f" limit {RSS_GROWTH_MAX * 100:.0f} %; from one sample to the other,"
        f" {after[0]:g} -> {after[-1]:g} MiB ({single * 100:+.1f} %). Mouth-to-ear"
        f" {_ms(first['latency_ms'])} at the start, {_ms(last['latency_ms'])} at the end"
        f" (limit: within {LATENCY_DRIFT_MAX_MS:.0f} ms). File descriptors"
        f" {_span([s['fds'] for s in samples])}, asyncio tasks"
        f" {_span([s['tasks'] for s in samples])}.",
    ]
    if recorded is not None and bool(recorded) != held:
        lines.append("")
        lines.append(f"(The run itself, comparing single samples, said"
                     f" {'held' if recorded else 'NOT held'}.)")
    lines += [
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


def _span(values: list[int]) -> str:
    return f"{values[0]} throughout" if len(set(values)) == 1 else f"{min(values)}-{max(values)}"


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
