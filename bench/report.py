"""The Markdown report of a run, with PNG plots beside it."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench.common import Result, markdown_table

# (bench, figure saying whether it was met, the target from the recorded figures, the result)
TARGETS = [
    ("setup", "setup_met",
     lambda f: f"call setup median <= {f['setup_target_ratio']}x bare aiortc",
     lambda f: f"{f['setup_ratio']}x ({f['setup_ms_median']} ms vs"
               f" {f['setup_baseline_ms_median']} ms)"),
    ("latency", "mouth_to_ear_met",
     lambda f: f"mouth-to-ear p95 <= {f['mouth_to_ear_target_ms']:.0f} ms",
     lambda f: f"{f['mouth_to_ear_ms_p95']} ms"),
    ("quality", "pesq_clean_met",
     lambda f: f"PESQ clean within {f['pesq_clean_target_gap']} of Opus alone",
     lambda f: f"{f['pesq_clean']} vs {f['pesq_opus_only']} (gap {f['pesq_clean_gap']})"),
    ("quality", "pesq_loss5_met",
     lambda f: f"PESQ at 5% loss >= {f['pesq_loss5_target_share']}x clean",
     lambda f: f"{f.get('pesq_loss5')} = {f.get('pesq_loss5_share_of_clean')}x clean"),
    ("relay", "relay_met",
     lambda f: f"relay >= {f['relay_target_ratio']}x bare echo",
     lambda f: f"{f['relay_ratio']}x (2 terminals {f['relay_2_ratio']}x,"
               f" 50 terminals {f['relay_50_ratio']}x)"),
    ("relay", "idle_2000_met",
     lambda f: f"2,000 idle terminals < {f['idle_2000_target_mib']:.0f} MiB",
     lambda f: f"{f['idle_2000_mib']} MiB ({f['idle_2000_above_idle_mib']} MiB above idle)"),
]


def _plot_setup(result: Result, out: Path) -> str:
    s = result.series
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.boxplot([s["bare_ms"], s["parley_ms"]], vert=False, widths=0.5)
    ax.set_yticks([1, 2], ["bare aiortc", "Parley (verified,\nserver-relayed)"])
    ax.set_xlabel("ms from 'call' to first audio+video frame on both sides")
    ax.set_title("Call setup")
    return _save(fig, out / "setup.png")


def _plot_latency(result: Result, out: Path) -> str:
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.hist(result.series["latency_ms"], bins=30, color="tab:blue")
    target = result.figures["mouth_to_ear_target_ms"]
    ax.axvline(target, color="tab:red", linestyle="--", label=f"target p95 {target:.0f} ms")
    ax.set_xlabel("mouth-to-ear latency per click (ms)")
    ax.set_ylabel("clicks")
    ax.legend()
    ax.set_title("Audio latency through a call (loopback)")
    return _save(fig, out / "latency.png")


def _plot_quality(result: Result, out: Path) -> str:
    f = result.figures
    names = ["Opus alone", "call, clean"] + [f"{n}% loss" for n in (1, 5, 10)
                                              if f.get(f"pesq_loss{n}") is not None]
    values = [f["pesq_opus_only"], f["pesq_clean"]] + [f[f"pesq_loss{n}"] for n in (1, 5, 10)
                                                        if f.get(f"pesq_loss{n}") is not None]
    if f.get("pesq_browser_to_robot") is not None:
        names.append("browser to robot")
        values.append(f["pesq_browser_to_robot"])
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    ax.bar(names, values, color="tab:green")
    share = f["pesq_loss5_target_share"]
    ax.axhline(share * f["pesq_clean"], color="tab:red", linestyle="--",
               label=f"target at 5% loss ({share}x clean)")
    ax.set_ylim(1, 4.7)
    ax.set_ylabel("PESQ wide-band (MOS-LQO)")
    ax.legend(fontsize=8)
    ax.set_title("Speech quality")
    plt.setp(ax.get_xticklabels(), rotation=15)
    return _save(fig, out / "quality.png")


def _plot_relay(result: Result, out: Path) -> str:
    f = result.figures
    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 3.2))
    groups = ["2 terminals", "50 terminals"]
    x = range(len(groups))
    a.bar([i - 0.27 for i in x], [f["relay_2_echo_per_s"], f["relay_50_echo_per_s"]], 0.27,
          label="bare echo")
    a.bar(list(x), [f["relay_2_per_s"], f["relay_50_per_s"]], 0.27, label="Parley, ephemeral")
    a.bar([i + 0.27 for i in x], [f["relay_2_stored_per_s"], f["relay_50_stored_per_s"]], 0.27,
          label="Parley, stored")
    a.set_xticks(list(x), groups)
    a.set_ylabel("messages per second")
    a.legend(fontsize=8)
    a.set_title("Relay throughput")
    b.bar(["bare echo", "Parley"], [f["idle_2000_echo_mib"], f["idle_2000_mib"]],
          color="tab:purple")
    target = f["idle_2000_target_mib"]
    b.axhline(target, color="tab:red", linestyle="--", label=f"target {target:.0f} MiB")
    b.set_ylabel("server RSS (MiB)")
    b.legend(fontsize=8)
    b.set_title("2,000 idle connections")
    return _save(fig, out / "relay.png")


def _save(fig: Any, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def misses(f: dict[str, Any]) -> list[str]:
    """For each missed target: by how much, what limits it, what would close it."""
    out = []
    if f.get("pesq_loss5_met") is False:
        share = f["pesq_loss5_target_share"]
        short = share * f["pesq_clean"] - f["pesq_loss5"]
        out.append(
            f"**PESQ at 5% loss**: {f['pesq_loss5']} is {f['pesq_loss5_share_of_clean']}x the"
            f" clean call, {short:.2f} PESQ short of {share}x"
            f" ({f.get('pesq_loss5_packets_lost_percent')}% of packets lost). Not CPU: the"
            " losses are the network's. Robots already send Opus with in-band FEC and rebuild"
            " a lost packet from the next one with libopus decode_fec"
            " (parley.media.audio_loss); what remains is what is lost twice in a row, which"
            " libopus concealment only extrapolates and PESQ-WB marks down, and the call-to-call"
            " spread (a few calls at each level decide the median). What would close it: a"
            " higher expected-loss setting for the encoder (more bits to the FEC copy), RED"
            " (RFC 2198; Chromium offers audio/red, aiortc lacks it), or NACK and"
            " retransmission for audio (aiortc NACKs only video; on a link whose round trip is"
            " well under the jitter buffer's depth, a retransmission arrives in time).")
    if f.get("relay_met") is False:
        floor = min(f.get("relay_2_floor_ratio") or 1, f.get("relay_50_floor_ratio") or 1)
        target = f["relay_target_ratio"]
        out.append(
            f"**Relay throughput**: {f['relay_ratio']}x the bare echo,"
            f" {target - f['relay_ratio']:.2f} short of {target}x (2 terminals"
            f" {f.get('relay_2_ratio')}x, 50 terminals"
            f" {f.get('relay_50_ratio')}x). The line server already writes a socket once per"
            " event-loop turn, in batches of frames where the connection offers"
            " parley.batch.v1, parses and writes JSON with orjson, and checks the usual send"
            " frame on a fast path (server/fastpath.py); a relay that does the same with no"
            f" checks at all (bench/floor_server.py) reaches {floor}x in the same run. What is"
            " left is Python work per envelope (15 to 25 us of checks, routing and encoding"
            " beside aiohttp's own reading of each message) and, on this shared two-core"
            " machine, noise: the echo alone varies by a third between samples. Beyond one"
            " core: several server processes (SO_REUSEPORT) with a broker, as PRODUCT.md plans"
            f" for growth. Stored envelopes ({f.get('relay_2_stored_ratio')}x) are committed"
            " to SQLite a turn at a time, before the frames that report them leave.")
    return out


PLOTS = {"setup": _plot_setup, "latency": _plot_latency, "quality": _plot_quality,
         "relay": _plot_relay}


def write_report(out: Path, results: list[Result], summary: dict[str, Any]) -> Path:
    host = summary["machine"]
    lines = [
        "# Parley benchmarks",
        "",
        f"Run {time.strftime('%Y-%m-%d %H:%M %Z')} with `{summary['command']}`"
        f" ({summary['seconds']:.0f} s).",
        "",
        f"Machine: {host['cpu']}, {host['cores']} cores, {host['memory_gib']} GiB;"
        f" {host['os']}, kernel {host['kernel']}; Python {host['python']}, aiortc"
        f" {host['aiortc']}, aiohttp {host['aiohttp']}; load average at start"
        f" {host['load_avg_at_start']}.",
        "",
        "Every figure is beside a baseline measured in the same run; on a shared, noisy"
        " machine the ratios mean more than the absolute times.",
        "",
        "## Targets",
        "",
        "| target | result | met |",
        "|---|---|---|",
    ]
    have = {r.bench for r in results}
    for bench, key, target, show in TARGETS:
        if bench not in have or key not in summary:
            continue
        text, shown = target(summary), "-"
        with contextlib.suppress(KeyError):
            shown = show(summary)
        lines.append(f"| {text} | {shown} | {'yes' if summary[key] else '**no**'} |")
    missed = misses(summary)
    if missed:
        lines += ["", "### Missed: by how much, what limits it, what would close it", ""]
        lines += [f"- {text}" for text in missed]
    for result in results:
        lines += ["", f"## {result.bench} ({result.seconds:.0f} s)", "",
                  markdown_table(result.rows), ""]
        lines += [f"- {note}" for note in result.notes]
        plot = PLOTS.get(result.bench)
        if plot is not None:
            try:
                lines += ["", f"![{result.bench}]({plot(result, out)})"]
            except (KeyError, TypeError, ValueError) as exc:
                lines += ["", f"(no plot: {exc})"]
        prof = result.series.get("relay_profile")
        if prof:
            lines += ["", f"py-spy, line server relaying at saturation ({prof['samples']}"
                      " samples), self time:", "", "| function | % |", "|---|---|"]
            lines += [f"| `{name}` | {pct} |" for name, pct in prof["self"]]
            lines += ["", "Inclusive, Parley's own functions:", "", "| function | % |",
                      "|---|---|"]
            lines += [f"| `{name}` | {pct} |" for name, pct in prof["inclusive_parley"]]
    if summary.get("failures"):
        lines += ["", "## Failures", ""] + [f"- {f}" for f in summary["failures"]]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
