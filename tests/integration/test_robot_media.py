"""Robot media: recording what arrives, and playing a file instead of the test pattern."""

from __future__ import annotations

import asyncio
from pathlib import Path

import av

from parley.core.call import CallState
from parley.media.robot import RobotMedia, RobotOptions
from tests.harness import LocalLine, active_call, frames, wait_until


def streams_with_frames(path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    with av.open(str(path)) as container:
        for frame in container.decode(*container.streams):
            kind = "audio" if isinstance(frame, av.AudioFrame) else "video"
            counts[kind] = counts.get(kind, 0) + 1
    return counts


async def test_recording_then_playing_the_recording_back(line: LocalLine,
                                                         tmp_path: Path) -> None:
    await line.provision()
    rec = tmp_path / "recordings"
    washington = await line.terminal("washington")
    moscow = await line.terminal("moscow", auto_answer=True, robot=RobotOptions(record_dir=rec))
    caller, _ = await active_call(washington, moscow)

    async def received() -> dict[str, int]:
        return await frames(moscow, caller.call_id)

    for _ in range(200):  # however loaded the machine, wait for some of each kind
        got = await received()
        if got["audio"] >= 25 and got["video"] >= 15:
            break
        await asyncio.sleep(0.05)
    washington.hangup(caller.call_id)
    await wait_until(lambda: not moscow.sessions, 20, "moscow's session to close")
    got = await frames(moscow, caller.call_id)
    recording = rec / f"{caller.call_id}.webm"
    counts = streams_with_frames(recording)
    # Every frame received is in the file: the recorder drains before it closes.
    assert counts.get("video") == got["video"] >= 15
    assert counts.get("audio", 0) >= got["audio"] >= 25

    # Now washington sends that recording instead of its own test pattern.
    await washington.stop()
    line.terminals.remove(washington)
    washington = await line.terminal("washington", robot=RobotOptions(play=recording))
    placed = await washington.place_call("moscow")
    await washington.wait_for_call(
        lambda c: c.call_id == placed.call_id and c.state is CallState.ACTIVE, 20)
    await wait_until(lambda: bool(moscow.sessions), 5, "moscow's media session")

    async def both_kinds_arrived() -> bool:
        got = await frames(moscow, placed.call_id)
        return got["audio"] > 0 and got["video"] > 0

    for _ in range(100):
        if await both_kinds_arrived():
            break
        await asyncio.sleep(0.05)
    assert await both_kinds_arrived()


async def test_mute_and_camera_off_reach_the_other_side(line: LocalLine) -> None:
    import numpy as np

    await line.provision()
    heard: list[float] = []
    washington = await line.terminal("washington")
    moscow = await line.terminal("moscow", auto_answer=True, robot=RobotOptions(
        on_remote_audio=lambda _call, _ns, samples: heard.append(
            float(np.abs(samples.astype(np.int32)).mean()))))
    caller, _ = await active_call(washington, moscow)
    await wait_until(lambda: len(heard) > 25, 10, "audio at moscow")
    assert max(heard[-10:]) > 500  # the tone is audible

    washington.set_media(caller.call_id, audio=False, video=False)
    seen = await moscow.wait_for_call(
        lambda c: c.call_id == caller.call_id and not c.remote_audio, 5)
    assert not seen.remote_video
    heard.clear()
    await wait_until(lambda: len(heard) > 40, 10, "more audio at moscow")
    assert max(heard[-15:]) < 50  # silence, not the tone

    washington.set_media(caller.call_id, audio=True, video=True)
    await moscow.wait_for_call(lambda c: c.call_id == caller.call_id and c.remote_audio, 5)
    heard.clear()
    await wait_until(lambda: len(heard) > 40, 10, "audio after unmute")
    assert max(heard[-10:]) > 500


async def test_robot_offers_only_configured_ice_never_a_public_stun_server() -> None:
    from parley.core.call import MediaKind
    from parley.media.robot import RobotMedia

    class Quiet:
        def media_connected(self, call_id: str, handshake_dtls: str) -> None: ...
        def media_failed(self, call_id: str, reason: str) -> None: ...
        def local_ice(self, call_id: str, candidate: str, mid: str | None,
                      mline: int | None) -> None: ...

    session = RobotMedia().open("c1", MediaKind.VIDEO, Quiet())
    try:
        desc = await session.create_offer()
        gatherer = session.pc.getTransceivers()[0].sender.transport.transport.iceGatherer
        assert gatherer._connection.stun_server is None
        assert gatherer._connection.turn_server is None
        candidates = [line for line in desc.sdp.splitlines() if line.startswith("a=candidate")]
        assert candidates and all(" 127.0.0.1 " in c and " typ host" in c for c in candidates)
    finally:
        await session.close()


def test_the_page_gets_exactly_the_configured_ice_servers_and_one_transport() -> None:
    from aiortc import RTCIceServer

    from parley.media.ice import IceConfig

    assert IceConfig().browser_configuration() == {
        "iceServers": [], "iceTransportPolicy": "all", "bundlePolicy": "max-bundle",
        "rtcpMuxPolicy": "require"}
    turn = IceConfig(servers=(RTCIceServer(urls="turn:127.0.0.1:3478", username="u",
                                           credential="p"),))
    assert turn.browser_configuration()["iceServers"] == [
        {"urls": "turn:127.0.0.1:3478", "username": "u", "credential": "p"}]


async def test_an_ended_call_leaves_no_media_session_behind(line: LocalLine) -> None:
    await line.provision()
    washington = await line.terminal("washington")
    moscow = await line.terminal("moscow", auto_answer=True)
    robots = [t.engine for t in (washington, moscow) if isinstance(t.engine, RobotMedia)]
    assert len(robots) == 2
    caller, _ = await active_call(washington, moscow)
    assert all(caller.call_id in robot.sessions for robot in robots)
    washington.hangup(caller.call_id)
    await wait_until(lambda: not any(robot.sessions for robot in robots), 10,
                     "both robots to let go of the call's media")
