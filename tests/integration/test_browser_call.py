"""Calls placed and answered in a real browser: Chromium with fake media, real terminals.

In every direction both sides must show the same SAS, the remote video must
play (frames presented by the <video> element, frames decoded per getStats)
and the remote audio must be decoded (samples received, not concealment).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from playwright.async_api import Browser, expect

from parley.core.call import CallState, EndReason, MediaKind, dtls_statement
from parley.core.encoding import b64e
from parley.core.envelope import seal_envelope
from parley.core.keys import DeviceKeys, DevicePublicKeys
from parley.terminal.app import Terminal
from tests.browser import (
    PersonFactory,
    audio_decoded,
    call_button,
    chromium,
    open_ui,
    people,
    person_terminal,
    remote_video_frames,
    screenshot,
    video_decoded,
    wait_remote_video_plays,
    wait_stats,
)
from tests.harness import HostileRelay, LocalLine, frames, wait_until

pytestmark = pytest.mark.browser
__all__ = ["chromium", "people"]  # fixtures used below


async def robot_frames_flow(robot: Terminal, call_id: str, *, video: bool = True) -> None:
    """The robot receives the browser's fake camera (if a video call) and microphone."""
    deadline = asyncio.get_running_loop().time() + 20
    while True:
        got = await frames(robot, call_id)
        if got["audio"] > 0 and (got["video"] > 0) == video:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"the robot received {got}")
        await asyncio.sleep(0.1)


async def test_browser_calls_robot(line: LocalLine, people: PersonFactory,
                                   chromium: Browser) -> None:
    await line.provision()
    washington = await people("washington")
    moscow = await line.terminal("moscow", auto_answer=True)
    page = await open_ui(chromium, washington)
    await expect(page.get_by_test_id("presence")).to_have_text("online")

    await call_button(page, "moscow").click()
    await expect(page.get_by_test_id("call-state")).to_have_attribute("data-state", "active")
    robot = await moscow.wait_for_call(lambda c: c.state is CallState.ACTIVE, 20)
    await expect(page.get_by_test_id("sas")).to_have_text(robot.sas or "-")
    await expect(page.get_by_test_id("verified-badge")).to_be_visible()
    await wait_remote_video_plays(page)
    await expect(page.get_by_test_id("local-video")).to_be_visible()
    assert await page.get_by_test_id("local-video").evaluate(
        "v => v.srcObject !== null && v.srcObject.getVideoTracks().length === 1")
    stats = await wait_stats(washington, robot.call_id,
                             lambda s: video_decoded(s) and audio_decoded(s))
    assert stats["video"]["frame_width"] > 0
    await robot_frames_flow(moscow, robot.call_id)
    await expect(page.get_by_test_id("q-bitrate")).not_to_have_text("–")
    await screenshot(page, "call")

    # Mute and camera off reach the other terminal as the call's media state.
    await page.get_by_test_id("mute").click()
    await expect(page.get_by_test_id("mute")).to_have_attribute("aria-pressed", "true")
    await page.get_by_test_id("camera").click()
    await wait_until(lambda: not moscow.book.info(robot.call_id).remote_audio
                     and not moscow.book.info(robot.call_id).remote_video,
                     what="the robot hears of mute and camera off")

    await page.get_by_test_id("hangup").click()
    ended = await moscow.wait_for_call(lambda c: c.state is CallState.ENDED, 10)
    assert ended.end_reason is EndReason.REMOTE_HUNG_UP
    await expect(page.get_by_test_id("call-state")).to_have_attribute("data-reason", "hung_up")
    assert not washington.terminal.sessions


async def test_robot_calls_browser(line: LocalLine, people: PersonFactory,
                                   chromium: Browser) -> None:
    await line.provision()
    washington = await people("washington")
    moscow = await line.terminal("moscow")
    page = await open_ui(chromium, washington)

    placed = await moscow.place_call("washington")
    incoming = page.get_by_test_id("incoming")
    await expect(incoming).to_be_visible()
    await expect(page.get_by_test_id("incoming-peer")).to_have_text("moscow/hotline")
    await expect(page.get_by_test_id("incoming-accept")).to_be_focused()
    await page.get_by_test_id("incoming-accept").click()
    await expect(incoming).to_be_hidden()

    await expect(page.get_by_test_id("call-state")).to_have_attribute("data-state", "active")
    robot = await moscow.wait_for_call(
        lambda c: c.call_id == placed.call_id and c.state is CallState.ACTIVE, 20)
    await expect(page.get_by_test_id("sas")).to_have_text(robot.sas or "-")
    await expect(page.get_by_test_id("verified-badge")).to_be_visible()
    await wait_remote_video_plays(page)
    await wait_stats(washington, placed.call_id, lambda s: video_decoded(s) and audio_decoded(s))
    await robot_frames_flow(moscow, placed.call_id)

    moscow.hangup(placed.call_id)
    await expect(page.get_by_test_id("call-state")).to_have_attribute("data-reason",
                                                                      "remote_hung_up")
    await wait_until(lambda: not washington.terminal.sessions, what="browser media closed")


async def test_browser_calls_browser(line: LocalLine, people: PersonFactory,
                                     chromium: Browser) -> None:
    await line.provision()
    washington = await people("washington")
    moscow = await people("moscow")
    caller = await open_ui(chromium, washington)
    callee = await open_ui(chromium, moscow)

    await call_button(caller, "moscow").click()
    await expect(callee.get_by_test_id("incoming")).to_be_visible()
    await callee.get_by_test_id("incoming-accept").click()
    for page in (caller, callee):
        await expect(page.get_by_test_id("call-state")).to_have_attribute("data-state", "active")
        await expect(page.get_by_test_id("verified-badge")).to_be_visible()
    sas = await caller.get_by_test_id("sas").text_content()
    assert sas and len(sas.replace(" ", "")) == 6
    await expect(callee.get_by_test_id("sas")).to_have_text(sas)
    call_id = washington.terminal.book.calls()[-1].call_id
    assert moscow.terminal.book.info(call_id).sas == sas
    for person, page in ((washington, caller), (moscow, callee)):
        await wait_remote_video_plays(page)
        await wait_stats(person, call_id, lambda s: video_decoded(s) and audio_decoded(s))

    await callee.get_by_test_id("hangup").click()
    await expect(caller.get_by_test_id("call-state")).to_have_attribute("data-reason",
                                                                        "remote_hung_up")


async def test_voice_only_call_from_the_browser(line: LocalLine, people: PersonFactory,
                                                chromium: Browser) -> None:
    await line.provision()
    washington = await people("washington")
    moscow = await line.terminal("moscow", auto_answer=True)
    page = await open_ui(chromium, washington)

    await call_button(page, "moscow", voice=True).click()
    await expect(page.get_by_test_id("call-state")).to_have_attribute("data-state", "active")
    robot = await moscow.wait_for_call(lambda c: c.state is CallState.ACTIVE, 20)
    assert robot.media is MediaKind.AUDIO
    await expect(page.get_by_test_id("voice-only")).to_be_visible()
    await expect(page.get_by_test_id("camera")).to_be_hidden()
    stats = await wait_stats(washington, robot.call_id, audio_decoded)
    assert not video_decoded(stats)
    await robot_frames_flow(moscow, robot.call_id, video=False)


async def test_declining_an_incoming_call(line: LocalLine, people: PersonFactory,
                                          chromium: Browser) -> None:
    await line.provision()
    washington = await people("washington")
    moscow = await line.terminal("moscow")
    page = await open_ui(chromium, washington)

    placed = await moscow.place_call("washington")
    await expect(page.get_by_test_id("incoming")).to_be_visible()
    await page.get_by_test_id("incoming-decline").click()
    ended = await moscow.wait_for_call(
        lambda c: c.call_id == placed.call_id and c.state is CallState.ENDED, 10)
    assert ended.end_reason is EndReason.DECLINED
    await expect(page.get_by_test_id("incoming")).to_be_hidden()
    assert not washington.terminal.sessions

    # From the keyboard: the ring takes the focus; Escape declines.
    again = await moscow.place_call("washington")
    await expect(page.get_by_test_id("incoming-accept")).to_be_focused()
    await page.keyboard.press("Escape")
    ended = await moscow.wait_for_call(
        lambda c: c.call_id == again.call_id and c.state is CallState.ENDED, 10)
    assert ended.end_reason is EndReason.DECLINED


async def test_without_a_page_a_call_fails_with_the_reason(line: LocalLine,
                                                           people: PersonFactory) -> None:
    await line.provision()
    washington = await people("washington")
    await line.terminal("moscow", auto_answer=True)
    placed = await washington.terminal.place_call("moscow")
    ended = await washington.terminal.wait_for_call(
        lambda c: c.call_id == placed.call_id and c.state is CallState.ENDED, 10)
    assert ended.end_reason is EndReason.FAILED
    assert ended.alarm and "no browser page is open" in ended.alarm


# -- a hostile relay swaps the browser's DTLS fingerprint ---------------------------------

OTHER_FINGERPRINT = ":".join(["5A"] * 32)


def forged_answer(genuine: dict, call_id: str, recipient: DevicePublicKeys) -> dict:
    """The browser's call.answer as a man in the middle would replace it: his own certificate.

    He can seal to the recipient's public key, but can only sign with his own key.
    """
    attacker = DeviceKeys.generate()
    sender = genuine["from"]
    sdp = ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n"
           "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 127.0.0.1\r\na=mid:0\r\n"
           f"a=fingerprint:sha-256 {OTHER_FINGERPRINT}\r\na=setup:active\r\n"
           "a=rtpmap:111 opus/48000/2\r\n")
    payload = {"call_id": call_id, "sdp": sdp, "dtls": OTHER_FINGERPRINT,
               "dtls_sig": b64e(attacker.sign(dtls_statement(call_id, "callee", sender,
                                                             OTHER_FINGERPRINT)))}
    return seal_envelope(attacker, sender, recipient, "call.answer", payload, genuine["time"],
                         genuine["id"]).to_json()


async def test_relay_swapping_the_browsers_fingerprint_raises_the_alarm(
        tmp_path: Path, chromium: Browser) -> None:
    relay = HostileRelay()
    await relay.bind()
    line = LocalLine(tmp_path)
    await line.start(public_url=relay.url)
    relay.upstream = line.url
    person = None
    try:
        await line.provision(via=relay.url)
        person = await person_terminal(line, "washington")
        moscow = await line.terminal("moscow")
        page = await open_ui(chromium, person)
        placed = await moscow.place_call("washington")
        swapped: list[str] = []

        browser_device = person.terminal.device_id

        async def tamper(direction: str, device: str | None, frame: dict) -> dict | None:
            env = frame.get("env") or {}
            if (direction == "up" and device == browser_device and frame.get("t") == "send"
                    and env.get("type") == "call.answer"):
                swapped.append(env["id"])
                return {**frame, "env": forged_answer(env, placed.call_id, moscow.me)}
            return frame

        relay.tamper = tamper
        await page.get_by_test_id("incoming-accept").click()

        alarm = page.get_by_test_id("alarm")
        await expect(alarm).to_be_visible()
        await expect(page.get_by_test_id("alarm-title")).to_have_text("Call intercepted")
        await expect(page.get_by_test_id("call-state")).to_have_attribute("data-reason",
                                                                          "intercepted")
        await expect(page.get_by_test_id("call-failed")).to_be_visible()
        await expect(page.get_by_test_id("verified-badge")).to_be_hidden()
        assert swapped, "the relay never saw the browser's answer"
        # Both terminals ended the call as intercepted; the robot raised the first alarm.
        robot = await moscow.wait_for_call(
            lambda c: c.call_id == placed.call_id and c.state is CallState.ENDED, 10)
        assert robot.end_reason is EndReason.INTERCEPTED
        assert any(a["code"] == "bad_signature" for a in moscow.alarms)
        mine = person.terminal.book.info(placed.call_id)
        assert mine.end_reason is EndReason.INTERCEPTED and not mine.verified
        assert person.terminal.alarms
        # No media played, and the page let go of the camera and the connection.
        await wait_until(lambda: not person.terminal.sessions, what="browser media closed")
        assert await remote_video_frames(page) == 0
        assert await page.get_by_test_id("remote-video").evaluate("v => v.srcObject") is None
        await screenshot(page, "intercepted")
    finally:
        if person is not None:
            await person.stop()
        await line.stop()
        await relay.stop()


# -- which page does the media ---------------------------------------------------------


async def test_the_newest_tab_does_the_media_and_when_it_closes_the_other_takes_over(
        line: LocalLine, people: PersonFactory, chromium: Browser) -> None:
    await line.provision()
    washington = await people("washington")
    moscow = await line.terminal("moscow", auto_answer=True)
    first = await open_ui(chromium, washington)
    second = await open_ui(chromium, washington)
    await expect(first.get_by_test_id("media-role")).to_be_visible()
    await expect(second.get_by_test_id("media-role")).to_be_hidden()

    # A call placed from the older tab runs its media in the newer one.
    await call_button(first, "moscow").click()
    for page in (first, second):
        await expect(page.get_by_test_id("call-state")).to_have_attribute("data-state", "active")
    await wait_remote_video_plays(second)
    assert await remote_video_frames(first) == 0

    # Closing the tab that holds the media loses the call's media, not the call: it
    # reconnects, with a new peer connection in the tab that is left (the media page
    # again), verified as before, the same SAS.
    sas = await first.get_by_test_id("sas").text_content()
    await second.close()
    await expect(first.get_by_test_id("call-state")).to_have_attribute("data-state",
                                                                       "reconnecting")
    await expect(first.get_by_test_id("media-role")).to_be_hidden()  # the media page again
    await expect(first.get_by_test_id("call-state")).to_have_attribute("data-state", "active",
                                                                       timeout=20_000)
    await wait_remote_video_plays(first)
    # This tab had no certificate of that call: the fingerprint it signs is another, so
    # the SAS is another -- shown, and said to be new, at both ends.
    robot = moscow.book.info(moscow.book.calls()[-1].call_id)
    assert robot.state is CallState.ACTIVE and robot.gen >= 1 and robot.sas_changed
    assert (await first.get_by_test_id("sas").text_content() or "").replace(" ", "") == \
        (robot.sas or "").replace(" ", "")
    assert robot.sas != (sas or "")
    await expect(first.get_by_test_id("sas-panel")).to_have_attribute("data-changed", "true")
    await expect(first.get_by_test_id("sas-label")).to_contain_text("changed")
