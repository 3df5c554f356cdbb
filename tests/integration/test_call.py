"""Verified calls between two real terminals with real aiortc media over loopback."""

from __future__ import annotations

import time
from functools import partial

import pytest

from parley.core.call import CallState, EndReason, MediaKind
from parley.core.errors import ErrorCode, RemoteError
from parley.core.turn import TurnConfig, credential
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


async def test_the_server_issues_turn_credentials_and_a_relay_only_line_needs_them(
        line: LocalLine) -> None:
    await line.provision()
    washington = await line.terminal("washington")
    # This server has no TURN relay: it says so, with the line's policy.
    assert (await washington.link.turn("moscow")).servers == ()
    with pytest.raises(RemoteError) as refused:
        await washington.link.turn("nobody")
    assert refused.value.code is ErrorCode.NO_LINE
    # A line set to relay only cannot be called without one: the call fails, and says why.
    assert line.server is not None
    line.server.store.set_line_media("washington", "moscow", "relay")
    placed = await washington.place_call("moscow")
    ended = await washington.wait_for_call(
        lambda c: c.call_id == placed.call_id and c.state is CallState.ENDED, 20)
    assert "must go through a TURN relay" in (ended.alarm or ""), ended
    # With a relay configured, each device gets its own time-limited credentials.
    secret = b"s" * 32
    await line.stop_server()
    await line.start(port=line.port, turn=TurnConfig(("turn:127.0.0.1:3478",), secret, 7200))
    await wait_until(lambda: washington.link.connected.is_set(), 20, what="washington back")
    issued = await washington.link.turn("moscow")
    (server,) = issued.servers
    expiry, device = server.username.split(":", 1)
    assert device == "washington/hotline" and issued.relay_only
    assert abs(int(expiry) - (time.time() + 7200)) < 60
    assert server.credential == credential(secret, server.username)
