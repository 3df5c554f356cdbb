"""The end-to-end frame layer (SFrame) in real robot calls: sealed, opened, renewed, refused."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest

from parley.core.call import CallState
from parley.core.errors import ErrorCode
from parley.core.sframe import PROTECTION, FrameSealer
from parley.media.robot import RobotOptions
from parley.terminal.app import Terminal
from tests.harness import LocalLine, active_call, frames, wait_for, wait_until


async def layer(terminal: Terminal, call_id: str) -> dict[str, Any]:
    stats = await terminal.sessions[call_id].stats()
    return dict(stats["frame_layer"])


async def test_every_frame_is_sealed_and_opened_and_keys_are_renewed(line: LocalLine) -> None:
    await line.provision()
    washington = await line.terminal("washington", media_rekey_s=2.0)
    moscow = await line.terminal("moscow", auto_answer=True, media_rekey_s=2.0)
    caller, callee = await active_call(washington, moscow)
    assert caller.verified and callee.verified
    assert caller.media_protection == callee.media_protection == PROTECTION
    for t in (washington, moscow):
        await wait_for(partial(frames, t, caller.call_id),
                       lambda f: f["audio"] > 100 and f["video"] > 40, 15,
                       f"audio and video at {t.device_id}")
    w, m = await layer(washington, caller.call_id), await layer(moscow, caller.call_id)
    for kind in ("audio", "video"):
        # What one side sealed, the other opened; nothing dropped on a clean link.
        assert w[kind]["sealed"] > 0 and m[kind]["opened"] > 0
        assert m[kind]["dropped"] == w[kind]["dropped"] == {}, (kind, w, m)
    # Renewed every 2 s: both sides now seal under a later epoch, and media still flows.
    sealers = washington.sessions[caller.call_id].sealers  # type: ignore[attr-defined]
    await wait_until(lambda: (sealers["audio"].kid or 0) >= 4, 15, what="two re-keys")
    before = (await layer(moscow, caller.call_id))["audio"]["opened"]
    await wait_for(partial(layer, moscow, caller.call_id),
                   lambda s: s["audio"]["opened"] > before + 50, 10, "audio after re-keys")
    info = washington.book.info(caller.call_id)
    assert info.state is CallState.ACTIVE and info.verified


async def test_a_peer_without_the_layer_is_dropped_alarmed_and_not_verified(
        line: LocalLine) -> None:
    await line.provision()
    heard: list[int] = []
    # moscow's media stack sends frames without the layer (and sends no keys).
    washington = await line.terminal("washington", robot=RobotOptions(
        on_remote_audio=lambda _c, _ns, samples: heard.append(int(abs(samples).max()))))
    moscow = await line.terminal("moscow", robot=RobotOptions(frame_layer=False),
                                 auto_answer=True)
    caller, callee = await active_call(washington, moscow)
    assert not caller.verified and not callee.verified
    assert caller.media_protection == callee.media_protection == "dtls-srtp"
    alarms = [a for a in washington.store.alarms() if a.code == ErrorCode.MEDIA_UNPROTECTED]
    assert alarms and "sent no media key" in alarms[0].message
    # moscow's frames reach washington (DTLS-SRTP carries them) and are all dropped there.
    stats = await wait_for(partial(layer, washington, caller.call_id),
                           lambda s: sum(s["audio"]["dropped"].values()) > 100, 15,
                           "moscow's unsealed audio dropped at washington")
    assert stats["audio"]["opened"] == stats["video"]["opened"] == 0
    assert (await frames(washington, caller.call_id)) == {"audio": 0, "video": 0}
    assert heard == []


def _replaying(sealer: FrameSealer) -> Callable[[bytes], bytes]:
    """A sealer gone bad: it seals 30 frames, then sends those same 30 again and again."""
    seal, kept = sealer.seal, []

    def replay(frame: bytes) -> bytes:
        if len(kept) < 30:
            kept.append(seal(frame))
            return kept[-1]
        kept.append(kept.pop(0))
        return kept[-1]
    return replay


@pytest.mark.parametrize("attack", ["strip", "replay"])
async def test_a_peer_that_strips_the_layer_or_replays_frames_is_caught(
        line: LocalLine, attack: str) -> None:
    await line.provision()
    heard: list[int] = []
    washington = await line.terminal("washington", robot=RobotOptions(
        on_remote_audio=lambda _c, _ns, samples: heard.append(1)))
    moscow = await line.terminal("moscow", auto_answer=True)
    caller, _ = await active_call(washington, moscow)
    assert caller.verified
    await wait_until(lambda: len(heard) > 50, 10, what="moscow's audio at washington")
    # moscow's media stack turns hostile: it keeps sending keys' worth of nothing.
    for sealer in moscow.sessions[caller.call_id].sealers.values():  # type: ignore[attr-defined]
        sealer.seal = (lambda frame: frame) if attack == "strip" else _replaying(sealer)
    info = await washington.wait_for_call(
        lambda c: c.call_id == caller.call_id and not c.verified, 10)
    assert info.media_protection == "dtls-srtp" and info.state is CallState.ACTIVE
    assert "without valid end-to-end protection were dropped" in (info.alarm or "")
    alarms = [a for a in washington.store.alarms() if a.code == ErrorCode.MEDIA_UNPROTECTED]
    assert len(alarms) == 1
    stats = await layer(washington, caller.call_id)
    expected = {"strip": {"malformed", "auth", "wrong_stream", "unknown_key"},
                "replay": {"replay"}}[attack]
    assert set(stats["audio"]["dropped"]) <= expected and stats["audio"]["dropped"]
    # Nothing more is played: what came after the attack was all dropped.
    played = len(heard)
    await asyncio.sleep(1.5)
    # (what was already in flight or in the jitter buffer: a handful, against 75 in 1.5 s)
    assert len(heard) - played <= 10, f"{len(heard) - played} frames played after the attack"
    dropped = sum((await layer(washington, caller.call_id))["audio"]["dropped"].values())
    assert dropped >= 25 + 50  # still coming, still dropped
