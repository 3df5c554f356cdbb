"""The page speaks in its own terms: buttons not commands, the other party's name and local
time, a robot terminal's page saying what the robot does. Real Chromium, real terminals."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from playwright.async_api import Browser, expect

from parley.media.ice import IceConfig
from parley.media.robot import RobotOptions
from parley.terminal.app import TerminalConfig
from parley.terminal.runner import build_terminal
from tests.browser import (
    PersonFactory,
    PersonTerminal,
    call_button,
    chromium,
    open_ui,
    people,
    screenshot,
)
from tests.harness import LocalLine

pytestmark = pytest.mark.browser
__all__ = ["chromium", "people"]  # fixtures used below


async def test_each_party_shows_its_name_and_local_time_and_an_unverified_call_says_where_to_verify(
        line: LocalLine, people: PersonFactory, chromium: Browser) -> None:
    await line.provision(verify=False)
    washington = await people("washington", require_verified=False)
    await line.terminal("moscow", auto_answer=True, require_verified=False)
    page = await open_ui(chromium, washington)
    party = page.locator('li.party[data-party="moscow"]')
    await expect(party.get_by_test_id("party-display")).to_have_text("The Kremlin")
    time_there = party.get_by_test_id("party-time")
    await expect(time_there).to_contain_text("in Europe/Moscow (GMT+3)")
    shown = (await time_there.text_content() or "").split(" in ")[0]  # "Tue 19:42"
    now = datetime.now(ZoneInfo("Europe/Moscow"))
    # As it was a moment ago, now, or a moment later (a minute may turn meanwhile).
    moments = [(now + timedelta(minutes=m)).strftime("%a %H:%M") for m in (-1, 0, 1)]
    assert shown in moments, (shown, moments)

    await call_button(page, "moscow").click()
    await expect(page.get_by_test_id("call-state")).to_have_attribute("data-state", "active")
    badge = page.get_by_test_id("unverified-badge")
    await expect(badge).to_be_visible()
    await expect(badge).to_contain_text("press Safety number beside moscow")
    await screenshot(page, "unverified-call")


async def test_a_robot_terminals_page_says_the_robot_does_the_media(
        line: LocalLine, chromium: Browser) -> None:
    await line.provision()
    config = TerminalConfig(data_dir=line.root / "moscow", media="robot", auto_answer=True,
                            robot=RobotOptions(ice=IceConfig(host_addresses=("127.0.0.1",))))
    terminal, control = build_terminal(config)
    await terminal.start()
    await control.start()
    robot = PersonTerminal(terminal, control)
    try:
        await terminal.link.connected.wait()
        caller = await line.terminal("washington")
        page = await open_ui(chromium, robot)
        role = page.get_by_test_id("media-role")
        await expect(role).to_be_visible()
        await expect(role).to_contain_text("robot does the calls' audio and video")
        placed = await caller.place_call("moscow")
        await expect(page.get_by_test_id("call-state")).to_have_attribute("data-state",
                                                                          "active")
        await expect(page.get_by_test_id("stage-waiting")).to_contain_text(
            "The robot sends a test pattern and a tone")
        # Its Mute button mutes the robot: the terminal is told, and says so to the peer.
        await page.get_by_test_id("mute").click()
        await expect(page.get_by_test_id("mute")).to_have_text("Unmute")
        session = terminal.sessions[placed.call_id]
        assert getattr(session.audio_track, "enabled", True) is False
        await screenshot(page, "robot-page")
    finally:
        await robot.stop()
