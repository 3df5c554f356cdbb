"""Speech quality: PESQ wide-band through verified calls, clean and at 1, 5 and 10 % loss.

The speech (Harvard sentences spoken by espeak-ng, 48 kHz) is the caller
robot's microphone in a voice call; the callee robot's decoded audio, laid out
by RTP timestamp with silence for frames that never came, is scored against
the clip with PESQ (P.862.2, wide-band, 16 kHz).

Baseline: the same clip through aiortc's own Opus encoder and decoder
(libopus, 96 kbit/s, 20 ms frames, CELT), with nothing in between. Robots
send Opus with in-band FEC (`parley.media.audio_loss`), which makes libopus
code speech in hybrid mode: ``pesq_opus_fec_only``, the clip through the
robots' FEC encoder and libopus decoder alone, shows what that costs on a
clean link (a diagnostic; the baseline stays aiortc's Opus).

Loss: the calls run in a network namespace made for the purpose, with
iptables dropping that share of UDP at random (`bench.quality_call`); the
kernel has no netem here, and nothing outside the namespace is touched. The
clean-link call runs in the same namespace with no rule.

Browser to robot: the person's web UI (src/parley/web) in Chromium calls a
robot; Chromium's fake microphone plays the clip (``--use-file-for-fake-audio-
capture``) with echo cancellation, noise suppression and automatic gain
control off, and the robot records. A real Parley call: server-relayed,
verified, SAS on both sides.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from bench import speech
from bench.common import PYTHON, Child, Result, median, need_commands, r, run_quiet, say
from bench.impair import Impairment
from parley.media import libopus
from parley.media.audio_loss import ConcealingOpusDecoder, FecOpusDecoder, FecOpusEncoder

TARGET_CLEAN_GAP = 0.3
TARGET_LOSS5_SHARE = 0.75
LOSSES = (0, 1, 5, 10)
TRIALS_FULL = 5  # calls per voice and loss level in a full run
JITTER_LOSS, JITTER_MS = 5.0, 20.0  # the link the two jitter buffers are compared on
AIORTC_PREFETCH = 4


def given_up_share(call: dict[str, Any]) -> float:
    total = call.get("released", 0) + call.get("given_up", 0)
    return call.get("given_up", 0) / total if total else float("nan")


def jitter_rows(result: Result, jitter: dict[str, list[dict[str, Any]]]) -> None:
    """Adaptive against aiortc's fixed depth on the same seeded links: the delay it held,
    and the frames it had to give up (lost on the link, or later than the delay)."""
    f = result.figures
    label = f"{JITTER_LOSS:g}% loss, {JITTER_MS:g} ms jitter"
    adaptive, fixed = jitter["adaptive"], jitter["fixed"]
    delay = median([c["mean_delay_ms"] for c in adaptive])
    fixed_delay = median([c["mean_delay_ms"] for c in fixed])
    share, fixed_share = (median([given_up_share(c) for c in calls]) for calls in (adaptive, fixed))
    late, fixed_late = (sum(c.get("late", 0) for c in calls) for calls in (adaptive, fixed))
    f["jitter_adaptive_delay_ms"] = r(delay)
    f["jitter_fixed_delay_ms"] = r(fixed_delay)
    f["jitter_adaptive_given_up_percent"] = r(100 * share, 2)
    f["jitter_fixed_given_up_percent"] = r(100 * fixed_share, 2)
    f["jitter_adaptive_late_packets"] = late
    f["jitter_fixed_late_packets"] = fixed_late
    f["jitter_adaptive_pesq"] = r(median([c["pesq"] for c in adaptive]), 2)
    f["jitter_fixed_pesq"] = r(median([c["pesq"] for c in fixed]), 2)
    f["jitter_calls"] = len(adaptive)
    met = share <= fixed_share
    f["jitter_given_up_met"] = met
    result.row(f"audio delay held, mean over the call, {label} (adaptive / aiortc's 4 frames)",
               delay,
               "ms", fixed_delay, delay / fixed_delay if fixed_delay else None)
    result.row(f"  frames lost or late there ({len(adaptive)} calls each)", 100 * share, "%",
               100 * fixed_share, share / fixed_share if fixed_share else None,
               "<= aiortc's", met)
    result.notes.append(
        f"jitter buffers: each pair of calls meets the same link ({label}: every packet"
        " held a uniform 0-40 ms, so they are reordered), packet for packet (bench/impair.py);"
        " frames lost or late: those the buffer gave up, rebuilt from FEC or concealed; late"
        " packets:"
        f" {late} adaptive, {fixed_late} with aiortc's depth")


def opus_fec_only(clip: np.ndarray) -> np.ndarray:
    """The clip through the robots' Opus as they send and decode it (FEC on), nothing else."""
    decoder = FecOpusDecoder() if libopus.available() else ConcealingOpusDecoder()
    return speech.through_opus(clip, FecOpusEncoder(), decoder)


class Namespace:
    """A network namespace of our own with loopback up; removed on exit."""

    def __init__(self) -> None:
        self.name = f"parley-bench-{os.getpid()}"

    def __enter__(self) -> Namespace:
        run_quiet("ip", "netns", "add", self.name)
        run_quiet("ip", "netns", "exec", self.name, "ip", "link", "set", "lo", "up")
        return self

    def __exit__(self, *_exc: object) -> None:
        run_quiet("ip", "netns", "del", self.name)


def can_use_netns() -> str | None:
    if os.geteuid() != 0:
        return "loss needs root (network namespaces and iptables): run bench/run as root"
    missing = need_commands("ip", "iptables")
    if missing:
        return f"missing {', '.join(missing)}: apt-get install iproute2 iptables"
    return None


def conditions(voices: list[str], trials: int, netns: bool) -> list[dict[str, Any]]:
    """The calls to place: every voice at every loss, random and bursty, `trials` times;
    then the jitter-buffer pair (5 % random loss, 20 ms jitter, adaptive against aiortc's
    fixed four frames) on the same links, seed for seed."""
    calls: list[dict[str, Any]] = []
    links = [Impairment()] if not netns else [Impairment()] + [
        Impairment(loss=loss, model=model, seed=0) for model in ("random", "bursty")
        for loss in LOSSES if loss]
    for voice in voices:
        for link in links:
            for trial in range(trials):
                seeded = Impairment(**{**asdict(link), "seed": 1000 * trial + len(calls)})
                calls.append({"voice": voice, "impairment": asdict(seeded), "trial": trial,
                              "prefetch": None, "name": f"{voice}-{len(calls)}"})
    if netns:
        for trial in range(max(trials, 3)):
            link = Impairment(loss=JITTER_LOSS, jitter_ms=JITTER_MS, seed=7000 + trial)
            for prefetch in (None, AIORTC_PREFETCH):
                calls.append({"voice": voices[0], "impairment": asdict(link), "trial": trial,
                              "prefetch": prefetch, "name": f"jitter-{len(calls)}"})
    return calls


async def place_calls(root: Path, clips: dict[str, Path], calls: list[dict[str, Any]],
                      netns: str | None) -> list[dict[str, Any]]:
    job = root / "job.json"
    job.write_text(json.dumps({"root": str(root / "line"), "netns": bool(netns),
                               "clips": {v: str(p) for v, p in clips.items()}, "calls": calls}))
    argv = [PYTHON, "-m", "bench.quality_call", str(job)]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    worker = await Child.spawn("quality-calls", argv, root / "logs")
    results = []
    try:
        for n in range(len(calls)):
            out = await worker.json_line(120)
            results.append(out)
            buffer = out.get("jitter_buffer") or {}
            say(f"quality: call {n + 1}/{len(calls)} ({out['voice']},"
                f" {Impairment(**out['impairment']).label},"
                f" {'adaptive' if out['prefetch'] is None else out['prefetch']} buffer):"
                f" {out['lost']} audio packets lost, {out['packets']} received,"
                f" buffer {buffer.get('delay_ms')} ms")
        await worker.line("done: ", 60)
    finally:
        await worker.stop()
    return results


def spread(values: list[float]) -> str:
    return f"{min(values):.2f}-{max(values):.2f}" if values else "-"


async def run(root: Path, *, quick: bool = True, browser: bool = True) -> Result:
    result = Result("quality")
    started = time.monotonic()
    work = root / "quality"
    missing = speech.espeak_missing()
    if missing:
        raise RuntimeError(missing)
    voices = ["en"] if quick else list(speech.VOICES)
    clips = {v: speech.make_speech(work, v) for v in voices}
    clip_paths = {}
    for voice in voices:
        clip_paths[voice] = work / f"speech-{voice}.npy"
        np.save(clip_paths[voice], clips[voice])
    clip = clips["en"]
    f = result.figures

    opus_scores = {v: speech.pesq_wb(clips[v], speech.opus_only(clips[v])) for v in voices}
    opus = median(list(opus_scores.values()))
    f["pesq_opus_only"] = r(opus, 2)
    f["pesq_opus_fec_only"] = r(median([speech.pesq_wb(clips[v], opus_fec_only(clips[v]))
                                        for v in voices]), 2)

    why_not = can_use_netns()
    trials = 1 if quick else TRIALS_FULL
    calls = conditions(voices, trials, why_not is None)
    if why_not is None:
        with Namespace() as ns:
            done = await place_calls(work, clip_paths, calls, ns.name)
    else:
        result.notes.append(f"loss levels skipped: {why_not}")
        done = await place_calls(work, clip_paths, calls, None)

    scores: dict[tuple[str, float], list[float]] = {}
    by_voice: dict[str, dict[str, list[float]]] = {}
    missing_share: dict[tuple[str, float], list[float]] = {}
    jitter: dict[str, list[dict[str, Any]]] = {"adaptive": [], "fixed": []}
    for call in done:
        played = np.load(call["path"])
        score = speech.pesq_wb(clips[call["voice"]], played)
        speech.write_wav(Path(call["path"]).with_suffix(".wav"), played)
        link = Impairment(**call["impairment"])
        if link.jitter_ms:
            jitter["adaptive" if call["prefetch"] is None else "fixed"].append(
                {**(call.get("jitter_buffer") or {}), "pesq": score})
            continue
        key = (link.model if link.loss else "clean", link.loss)
        scores.setdefault(key, []).append(score)
        by_voice.setdefault(call["voice"], {}).setdefault(
            f"{key[0]}{link.loss:g}", []).append(score)
        packets, lost = call.get("packets") or 0, call.get("lost") or 0
        missing_share.setdefault(key, []).append(
            lost / (packets + lost) if packets + lost else float("nan"))
    clean = median(scores[("clean", 0)])
    f["pesq_clean"] = r(clean, 2)
    f["pesq_clean_spread"] = spread(scores[("clean", 0)])
    f["pesq_clean_gap"] = r(opus - clean, 2)
    f["pesq_clean_target_gap"] = TARGET_CLEAN_GAP
    f["pesq_loss5_target_share"] = TARGET_LOSS5_SHARE
    f["pesq_clean_met"] = opus - clean <= TARGET_CLEAN_GAP
    f["pesq_calls_per_level"] = len(scores[("clean", 0)])
    f["pesq_voices"] = voices
    n = len(scores[("clean", 0)])
    result.row(f"PESQ-WB clean link ({n} calls, {spread(scores[('clean', 0)])})", clean, "",
               opus, clean / opus, f"within {TARGET_CLEAN_GAP} of Opus alone",
               opus - clean <= TARGET_CLEAN_GAP)
    for model in ("random", "bursty"):
        for loss in LOSSES[1:]:
            if (model, loss) not in scores:
                continue
            values = scores[(model, loss)]
            score = median(values)
            key = f"pesq_loss{loss:g}" if model == "random" else f"pesq_bursty{loss:g}"
            f[key] = r(score, 2)
            f[f"{key}_spread"] = spread(values)
            f[f"{key}_packets_lost_percent"] = r(100 * median(missing_share[(model, loss)]), 1)
            name = f"PESQ-WB at {loss:g}% {model} loss ({len(values)} calls, {spread(values)})"
            if loss == 5 and model == "random":
                share = score / clean
                f["pesq_loss5_share_of_clean"] = r(share, 2)
                f["pesq_loss5_met"] = share >= TARGET_LOSS5_SHARE
                result.row(name, score, "", clean, share, f">= {TARGET_LOSS5_SHARE}x clean",
                           share >= TARGET_LOSS5_SHARE)
            else:
                result.row(name, score, "", clean, score / clean)
    result.series["pesq"] = {f"{m}{loss:g}": v for (m, loss), v in scores.items()}
    result.series["pesq_by_voice"] = {v: {k: r(median(x), 2) for k, x in d.items()}
                                      for v, d in by_voice.items()}
    result.notes.append(
        "baseline of the clean row: the clip through aiortc's Opus (libopus, 96 kbit/s,"
        " CELT) alone; of the loss rows: the clean call. Robots send Opus with in-band FEC"
        f" (hybrid mode; the clip through that alone: {f['pesq_opus_fec_only']}) and rebuild"
        " a lost packet from the next one's FEC with libopus (parley.media.audio_loss);"
        " libopus conceals the rest of a gap up to 100 ms, longer gaps play as silence."
        " FEC carries a copy of one packet only: a single loss is rebuilt, a burst of"
        f" {Impairment().burst:g} (bursty: Gilbert-Elliott, bench/impair.py) loses all but"
        " its last packet to concealment. Audio packets lost, as the callee counted them: "
        + ", ".join(f"{m} {loss:g}% -> {100 * median(v):.1f}%"
                    for (m, loss), v in missing_share.items() if loss))
    if jitter["adaptive"] and jitter["fixed"]:
        jitter_rows(result, jitter)
    if browser:
        try:
            from bench.browser import browser_to_robot

            out = await browser_to_robot(work / "browser", clip)
            score = speech.pesq_wb(clip, out["played"])
            speech.write_wav(work / "browser" / "robot-heard.wav", out["played"])
            f["pesq_browser_to_robot"] = r(score, 2)
            f["pesq_browser_verified"] = out["verified"]
            result.row("PESQ-WB browser to robot, clean", score, "", opus, score / opus)
            result.notes.append(
                "browser to robot: Chromium's own Opus (about 32 kbit/s mono, its default)"
                " with echo cancellation, noise suppression and AGC off; baseline: Opus alone"
                " as the robots use it")
        except Exception as exc:  # reported, not fatal: the other figures stand
            f["pesq_browser_to_robot"] = None
            f["pesq_browser_error"] = f"{type(exc).__name__}: {exc}"[:500]
            result.notes.append(f"browser to robot not measured: {exc}"[:300])
    result.seconds = time.monotonic() - started
    return result
