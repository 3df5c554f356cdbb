"""Alarms in the web UI: they take over the screen, stay listed until acknowledged, and an
acknowledgement made on the page is the terminal's record, across reloads and the CLI."""

from __future__ import annotations

import pytest
from playwright.async_api import Browser, expect

from parley.lab import create_parties, enroll_terminal
from tests.browser import PersonFactory, chromium, open_ui, people, screenshot
from tests.harness import LocalLine

pytestmark = pytest.mark.browser
__all__ = ["chromium", "people"]  # fixtures used below


async def test_an_alarm_stays_listed_until_an_operator_acknowledges_it(
        line: LocalLine, people: PersonFactory, chromium: Browser) -> None:
    await line.provision()
    washington = await people("washington")
    page = await open_ui(chromium, washington)
    await expect(page.get_by_test_id("alarms-panel")).to_be_hidden()

    # Moscow, verified here, gains a device nobody here has verified.
    codes = create_parties(line.root / "server", {"moscow": ("The Kremlin", "UTC")}, [])
    await enroll_terminal(line.root / "laptop", "laptop", line.url, codes["moscow"])
    await line.terminal("laptop")
    modal = page.get_by_test_id("alarm")
    await expect(modal).to_be_visible()
    await expect(page.get_by_test_id("alarm-title")).to_have_text(
        "A verified party has a new device")
    await expect(page.get_by_test_id("alarm-message")).to_contain_text("moscow/laptop")
    await expect(page.get_by_test_id("alarm-ack")).to_be_focused()
    await page.keyboard.press("Escape")  # seen, but not dealt with
    await expect(modal).to_be_hidden()

    listed = page.get_by_test_id("open-alarm")
    await expect(listed).to_have_count(1)
    await expect(listed).to_have_attribute("data-code", "new_device")
    await expect(listed).to_contain_text("moscow/laptop")
    await screenshot(page, "alarm-listed")
    await page.reload()
    await expect(page.get_by_test_id("open-alarm")).to_have_count(1)  # it is the terminal's

    await page.get_by_test_id("alarm-acknowledge").click()
    await expect(page.get_by_test_id("alarms-panel")).to_be_hidden()
    await page.reload()
    await page.get_by_test_id("link-state").filter(has_text="line server: connected").wait_for()
    await expect(page.get_by_test_id("open-alarm")).to_have_count(0)
    kept = washington.terminal.store.alarms(include_acknowledged=True)
    assert [(a.code, a.acked_ms is not None) for a in kept] == [("new_device", True)]
