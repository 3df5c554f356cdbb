"""Scheduling a talk from two persons' pages, in Chromium: request, another time proposed,
taken, confirmed at both ends in both zones, and the reminder shown."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from playwright.async_api import Browser, expect

from tests.browser import PersonFactory, chromium, open_ui, people, screenshot
from tests.harness import LocalLine

pytestmark = pytest.mark.browser
__all__ = ["chromium", "people"]  # fixtures used below


def local_input(moment: datetime, zone: str) -> str:
    """What a datetime-local input holds for `moment` in `zone`."""
    return moment.astimezone(ZoneInfo(zone)).strftime("%Y-%m-%dT%H:%M")


async def test_two_persons_agree_on_a_talk_and_both_are_reminded(
        line: LocalLine, people: PersonFactory, chromium: Browser) -> None:
    await line.provision()
    washington = await people("washington")
    moscow = await people("moscow")
    wpage = await open_ui(chromium, washington)
    mpage = await open_ui(chromium, moscow)
    now = datetime.now(UTC).replace(second=0, microsecond=0)

    # Washington asks for a talk tomorrow, at its own 10:00.
    await wpage.locator("details.talk-new summary").click()
    await wpage.get_by_test_id("talk-title").fill("Strategic stability")
    tomorrow = (now + timedelta(days=1)).astimezone(ZoneInfo("America/New_York")).replace(
        hour=10, minute=0)
    await wpage.get_by_test_id("talk-at").fill(tomorrow.strftime("%Y-%m-%dT%H:%M"))
    await wpage.get_by_test_id("talk-zone").select_option("America/New_York")
    await wpage.get_by_test_id("talk-duration").fill("90")
    await wpage.get_by_test_id("talk-send").click()

    # Moscow sees it in both zones, and proposes another time: in 8 minutes, its own clock.
    talk = mpage.get_by_test_id("talk").first
    await expect(talk).to_have_attribute("data-state", "proposed")
    when = talk.get_by_test_id("talk-when")
    await expect(when).to_contain_text("10:00")
    await expect(when).to_contain_text("in America/New_York")
    await expect(when).to_contain_text("in Europe/Moscow")
    soon = now + timedelta(minutes=8)
    await talk.get_by_test_id("talk-counter-at").fill(local_input(soon, "Europe/Moscow"))
    await talk.get_by_test_id("talk-propose").click()
    await expect(talk).to_have_attribute("data-state", "countered")

    # Washington sees the other time, in both zones, and takes it; Moscow accepts.
    wtalk = wpage.get_by_test_id("talk").first
    await expect(wtalk).to_have_attribute("data-state", "countered")
    await expect(wtalk.get_by_test_id("talk-counter")).to_contain_text(
        soon.astimezone(ZoneInfo("Europe/Moscow")).strftime("%H:%M") + " ")
    await wtalk.get_by_test_id("talk-take-counter").click()
    await expect(talk).to_have_attribute("data-state", "proposed")
    await talk.get_by_test_id("talk-accept").click()
    for page in (wpage, mpage):
        confirmed = page.get_by_test_id("talk").first
        await expect(confirmed).to_have_attribute("data-state", "confirmed")
        await expect(confirmed.get_by_test_id("talk-when")).to_contain_text(
            soon.strftime("%Y-%m-%d %H:%M") + " UTC")
    # Both are reminded (10 minutes before, or less), on the page; and may join.
    for page in (wpage, mpage):
        reminder = page.get_by_test_id("talk-reminder")
        await expect(reminder).to_contain_text("Strategic stability", timeout=20_000)
        await expect(reminder).to_contain_text("starts in")
        await expect(page.get_by_test_id("talk-join")).to_be_visible()
    assert washington.terminal.talks.book.talks == moscow.terminal.talks.book.talks
    await screenshot(wpage, "talks")
