"""Call setup: from "call" to the first decoded audio and video frame on both sides.

Parley: a verified call between two Python terminals with robot media, signaled
through the line server (its own process) on 127.0.0.1: directory lookup,
sealed and signed offer, ringing, auto-answer, sealed answer, ICE, DTLS, the
handshake certificate checked against the signed fingerprint, then media.

Baseline: two bare aiortc peers in this process exchanging SDP directly, with
the same tracks (test pattern and tone), the same ICE configuration (no
servers, 127.0.0.1 only) and the same way of counting frames.

Both are measured from the moment "call" is pressed until *both* sides have
decoded their first audio *and* video frame, alternating one Parley call with
one baseline call so that the machine's noise falls on both alike.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from aiortc import RTCPeerConnection
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from bench.common import Result, median, percentile, r, say
from bench.line import BenchLine, hang_up
from parley.core.call import CallState, MediaKind
from parley.media import audio_loss
from parley.media.ice import IceConfig, use_host_addresses
from parley.media.tracks import SynthAudioTrack, TestPatternTrack
from parley.terminal.app import Terminal

KINDS = ("audio", "video")
TARGET_RATIO = 1.5


async def bare_aiortc_call(timeout: float = 20.0) -> dict[str, float]:
    """Two aiortc peers, SDP handed across directly: ms to each milestone."""
    audio_loss.install(False)  # aiortc as it comes, not as robot media overrides it
    try:
        return await _bare_aiortc_call(timeout)
    finally:
        audio_loss.install(True)


async def _bare_aiortc_call(timeout: float) -> dict[str, float]:
    config = IceConfig().rtc_configuration()
    a, b = RTCPeerConnection(config), RTCPeerConnection(config)
    firsts: dict[str, dict[str, float]] = {"a": {}, "b": {}}
    done = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    tracks: list[MediaStreamTrack] = []

    async def consume(side: str, track: MediaStreamTrack) -> None:
        while True:
            try:
                await track.recv()
            except MediaStreamError:
                return
            firsts[side].setdefault(track.kind, time.monotonic())
            if all(len(f) == len(KINDS) for f in firsts.values()):
                done.set()

    for side, pc in (("a", a), ("b", b)):
        pc.on("track", lambda track, side=side: tasks.append(
            asyncio.ensure_future(consume(side, track))))
    t0 = time.monotonic()
    try:
        for track in (SynthAudioTrack(), TestPatternTrack()):
            tracks.append(track)
            a.addTrack(track)
        await a.setLocalDescription(await a.createOffer())
        t_offer = time.monotonic()
        await b.setRemoteDescription(a.localDescription)
        for track in (SynthAudioTrack(), TestPatternTrack()):
            tracks.append(track)
            b.addTrack(track)
        await b.setLocalDescription(await b.createAnswer())
        await a.setRemoteDescription(b.localDescription)
        t_answer = time.monotonic()
        await asyncio.wait_for(done.wait(), timeout)
        end = max(t for f in firsts.values() for t in f.values())
        return {"total": (end - t0) * 1000, "offer": (t_offer - t0) * 1000,
                "answer_applied": (t_answer - t0) * 1000,
                "caller_av": (max(firsts["a"].values()) - t0) * 1000}
    finally:
        for task in tasks:
            task.cancel()
        await a.close()
        await b.close()
        for track in tracks:
            track.stop()


async def parley_call(line: BenchLine, caller: Terminal, callee: Terminal,
                      timeout: float = 20.0) -> dict[str, float]:
    """One verified call; ms from place_call to each milestone (on the caller's clock)."""
    marks: dict[str, float] = {}

    def listener(event: dict[str, Any]) -> None:
        if event.get("t") == "call":
            marks.setdefault(event["call"]["state"], time.monotonic())

    unsubscribe = caller.subscribe(listener)
    t0 = time.monotonic()
    try:
        placed = await caller.place_call("moscow", MediaKind.VIDEO)
        call_id = placed.call_id
        deadline = t0 + timeout
        ends: dict[str, float | None] = {"caller": None, "callee": None}
        while None in ends.values():
            if time.monotonic() > deadline:
                raise RuntimeError(f"call {call_id}: no media within {timeout} s")
            info = caller.book.info(call_id)
            if info.state is CallState.ENDED:
                raise RuntimeError(f"call ended during setup: {info.end_reason} {info.alarm}")
            for name, side in (("caller", "washington"), ("callee", "moscow")):
                if ends[name] is None:
                    ends[name] = line.engines[side].first_frames(call_id, KINDS)
            await asyncio.sleep(0.002)
        info = caller.book.info(call_id)
        if not info.verified:
            raise RuntimeError("the call came up unverified")
        end = max(t for t in ends.values() if t is not None)
        out = {"total": (end - t0) * 1000,
               "caller_av": ((ends["caller"] or end) - t0) * 1000}
        for state in ("dialing", "ringback", "connecting", "active"):
            if state in marks:
                out[state] = (marks[state] - t0) * 1000
        await hang_up(caller, callee, call_id)
        return out
    finally:
        unsubscribe()


async def run(root: Path, *, calls: int = 20, warmup: int = 2) -> Result:
    use_host_addresses(["127.0.0.1"])
    result = Result("setup")
    started = time.monotonic()
    line = BenchLine(root / "setup")
    await line.start()
    try:
        caller = await line.terminal("washington")
        callee = await line.terminal("moscow", auto_answer=True)
        parley: list[dict[str, float]] = []
        bare: list[dict[str, float]] = []
        say(f"setup: {warmup} warm-up + {calls} calls each, Parley and bare aiortc, alternating")
        for i in range(warmup + calls):
            order = ("parley", "bare") if i % 2 == 0 else ("bare", "parley")
            for which in order:
                if which == "parley":
                    sample = await parley_call(line, caller, callee)
                else:
                    sample = await bare_aiortc_call()
                if i >= warmup:
                    (parley if which == "parley" else bare).append(sample)
                await asyncio.sleep(0.15)
            if i >= warmup:
                say(f"  call {i - warmup + 1}/{calls}: Parley {parley[-1]['total']:.0f} ms,"
                    f" bare {bare[-1]['total']:.0f} ms")
    finally:
        await line.stop()

    def col(samples: list[dict[str, float]], key: str) -> list[float]:
        return [s[key] for s in samples if key in s]

    p_tot, b_tot = col(parley, "total"), col(bare, "total")
    p_med, b_med = median(p_tot), median(b_tot)
    ratio = p_med / b_med
    f = result.figures
    f.update({
        "setup_calls": len(p_tot),
        "setup_ms_median": r(p_med), "setup_ms_p95": r(percentile(p_tot, 95)),
        "setup_baseline_ms_median": r(b_med), "setup_baseline_ms_p95": r(percentile(b_tot, 95)),
        "setup_ratio": r(ratio, 2),
        "setup_ratio_p95": r(percentile(p_tot, 95) / percentile(b_tot, 95), 2),
        "setup_target_ratio": TARGET_RATIO,
        "setup_met": ratio <= TARGET_RATIO,
        "setup_phases_ms_median": {
            "parley": {k: r(median(col(parley, k))) for k in
                       ("dialing", "ringback", "connecting", "active", "caller_av", "total")},
            "bare": {k: r(median(col(bare, k))) for k in
                     ("offer", "answer_applied", "caller_av", "total")},
        },
    })
    result.row("setup median", p_med, "ms", b_med, ratio, f"<= {TARGET_RATIO}x",
               ratio <= TARGET_RATIO)
    result.row("setup p95", percentile(p_tot, 95), "ms", percentile(b_tot, 95),
               f["setup_ratio_p95"])
    ph = f["setup_phases_ms_median"]["parley"]
    result.notes.append(
        f"Parley phases (median ms after 'call'): offer sent {ph['dialing']}, ringing"
        f" {ph['ringback']}, answered {ph['connecting']}, DTLS verified {ph['active']},"
        f" caller has audio+video {ph['caller_av']}, both sides {ph['total']}")
    bh = f["setup_phases_ms_median"]["bare"]
    result.notes.append(
        f"bare aiortc phases: offer made {bh['offer']}, answer applied {bh['answer_applied']},"
        f" caller has audio+video {bh['caller_av']}, both sides {bh['total']}")
    result.series = {"parley_ms": p_tot, "bare_ms": b_tot}
    result.seconds = time.monotonic() - started
    return result
