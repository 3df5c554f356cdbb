"""Verified calls between two real terminals with real aiortc media over loopback."""

from __future__ import annotations

from functools import partial

from parley.core.call import CallState, EndReason, MediaKind
from tests.harness import LocalLine, active_call, frames, wait_for, wait_until


async def test_verified_call_flows_media_both_ways_and_hangs_up(line: LocalLine) -> None:
    await line.provision()
    washington = await line.terminal("washington")
    moscow = await line.terminal("moscow", auto_answer=True)
    caller, callee = await active_call(washington, moscow)
    assert caller.verified and callee.verified
    assert caller.sas == callee.sas and len(caller.sas.replace(" ", "")) == 6

    for t in (washington, moscow):
        await wait_for(partial(frames, t, caller.call_id),
                       lambda f: f["audio"] > 0 and f["video"] > 0, 10,
                       f"audio and video at {t.device_id}")
    washington.hangup(caller.call_id)
    ended = await moscow.wait_for_call(
        lambda c: c.call_id == caller.call_id and c.state is CallState.ENDED, 10)
    assert ended.end_reason is EndReason.REMOTE_HUNG_UP
    await wait_until(lambda: not washington.sessions and not moscow.sessions,
                     what="media sessions closed")


async def test_voice_only_call_sends_no_video(line: LocalLine) -> None:
    await line.provision()
    washington = await line.terminal("washington")
    moscow = await line.terminal("moscow", auto_answer=True)
    placed = await washington.place_call("moscow", MediaKind.AUDIO)
    await washington.wait_for_call(
        lambda c: c.call_id == placed.call_id and c.state is CallState.ACTIVE, 20)
    # A second of audio both ways (20 ms frames), time enough for any video to show too.
    for t in (washington, moscow):
        f = await wait_for(partial(frames, t, placed.call_id), lambda f: f["audio"] >= 50,
                           10, f"a second of audio at {t.device_id}")
        assert f["video"] == 0, f"{t.device_id} received video on a voice-only call"
