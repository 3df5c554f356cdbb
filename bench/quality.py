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
from pathlib import Path
from typing import Any

import numpy as np

from bench import speech
from bench.common import PYTHON, Child, Result, median, need_commands, r, run_quiet, say
from parley.media import libopus
from parley.media.audio_loss import ConcealingOpusDecoder, FecOpusDecoder, FecOpusEncoder

TARGET_CLEAN_GAP = 0.3
TARGET_LOSS5_SHARE = 0.75
LOSSES = (0, 1, 5, 10)


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


async def calls_at_loss(root: Path, clip: Path, losses: list[float], trials: int,
                        netns: str | None) -> list[dict[str, Any]]:
    job = root / "job.json"
    job.write_text(json.dumps({"root": str(root / "line"), "speech": str(clip),
                               "loss": losses, "trials": trials, "netns": bool(netns)}))
    argv = [PYTHON, "-m", "bench.quality_call", str(job)]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    worker = await Child.spawn("quality-calls", argv, root / "logs")
    results = []
    try:
        for _ in range(len(losses) * trials):
            out = await worker.json_line(120)
            results.append(out)
            say(f"quality: call at {out['loss']:g}% loss done ({out['lost']} audio packets"
                f" lost, {out['packets']} received)")
        await worker.line("done: ", 60)
    finally:
        await worker.stop()
    return results


async def run(root: Path, *, quick: bool = True, browser: bool = True) -> Result:
    result = Result("quality")
    started = time.monotonic()
    work = root / "quality"
    missing = speech.espeak_missing()
    if missing:
        raise RuntimeError(missing)
    clip = speech.make_speech(work)
    clip_path = work / "speech.npy"
    np.save(clip_path, clip)
    f = result.figures

    opus = speech.pesq_wb(clip, speech.opus_only(clip))
    f["pesq_opus_only"] = r(opus, 2)
    f["pesq_opus_fec_only"] = r(speech.pesq_wb(clip, opus_fec_only(clip)), 2)

    why_not = can_use_netns()
    losses = list(LOSSES) if why_not is None else [0]
    trials = 1 if quick else 3
    if why_not is None:
        with Namespace() as ns:
            calls = await calls_at_loss(work, clip_path, losses, trials, ns.name)
    else:
        result.notes.append(f"loss levels skipped: {why_not}")
        calls = await calls_at_loss(work, clip_path, losses, trials, None)

    scores: dict[float, list[float]] = {}
    missing_share: dict[float, list[float]] = {}
    for call in calls:
        played = np.load(call["path"])
        score = speech.pesq_wb(clip, played)
        speech.write_wav(Path(call["path"]).with_suffix(".wav"), played)
        scores.setdefault(call["loss"], []).append(score)
        packets, lost = call.get("packets") or 0, call.get("lost") or 0
        missing_share.setdefault(call["loss"], []).append(
            lost / (packets + lost) if packets + lost else float("nan"))
    clean = median(scores[0])
    f["pesq_clean"] = r(clean, 2)
    f["pesq_clean_gap"] = r(opus - clean, 2)
    f["pesq_clean_target_gap"] = TARGET_CLEAN_GAP
    f["pesq_loss5_target_share"] = TARGET_LOSS5_SHARE
    f["pesq_clean_met"] = opus - clean <= TARGET_CLEAN_GAP
    result.row("PESQ-WB clean link", clean, "", opus, clean / opus,
               f"within {TARGET_CLEAN_GAP} of Opus alone", opus - clean <= TARGET_CLEAN_GAP)
    for loss in losses[1:]:
        score = median(scores[loss])
        key = f"pesq_loss{loss:g}"
        f[key] = r(score, 2)
        f[f"{key}_packets_lost_percent"] = r(100 * median(missing_share[loss]), 1)
        if loss == 5:
            share = score / clean
            f["pesq_loss5_share_of_clean"] = r(share, 2)
            f["pesq_loss5_met"] = share >= TARGET_LOSS5_SHARE
            result.row(f"PESQ-WB at {loss:g}% loss", score, "", clean, share,
                       f">= {TARGET_LOSS5_SHARE}x clean", share >= TARGET_LOSS5_SHARE)
        else:
            result.row(f"PESQ-WB at {loss:g}% loss", score, "", clean, score / clean)
    result.series["pesq"] = {str(k): v for k, v in scores.items()}
    result.notes.append(
        "baseline of the clean row: the clip through aiortc's Opus (libopus, 96 kbit/s,"
        " CELT) alone; of the loss rows: the clean call. Robots send Opus with in-band FEC"
        f" (hybrid mode; the clip through that alone: {f['pesq_opus_fec_only']}) and rebuild"
        " a lost packet from the next one's FEC with libopus (parley.media.audio_loss);"
        " libopus conceals the rest of a gap up to 100 ms, longer gaps play as silence."
        " Audio packets lost, as the callee counted them: " + ", ".join(
            f"{loss:g}% -> {100 * median(missing_share[loss]):.1f}%" for loss in losses[1:]))

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
