"""Key verification in the web UI: the safety number and its QR code, marking a peer
verified, and the loud warning when a verified peer's key has changed."""

from __future__ import annotations

import time

import pytest
from playwright.async_api import Browser, expect

from parley.core.call import CallState
from parley.core.keys import DeviceKeys
from parley.terminal.store import TerminalStore
from tests.browser import PersonFactory, call_button, chromium, open_ui, people, screenshot
from tests.harness import LocalLine

pytestmark = pytest.mark.browser
__all__ = ["chromium", "people"]  # fixtures used below


def digits(text: str | None) -> str:
    return "".join(ch for ch in text or "" if ch.isdigit())


async def test_verifying_a_peer_from_its_safety_number(line: LocalLine, people: PersonFactory,
                                                       chromium: Browser) -> None:
    await line.provision(verify=False)
    washington = await people("washington")
    moscow = await line.terminal("moscow", auto_answer=True, require_verified=False)
    page = await open_ui(chromium, washington)
    party = page.locator('li.party[data-party="moscow"]')
    await expect(party.get_by_test_id("trust")).to_have_attribute("data-trust", "unverified")

    # Unverified peers are refused, and the page says how to fix it.
    await call_button(page, "moscow").click()
    await expect(page.get_by_test_id("page-error")).to_contain_text("not verified")
    # ...in the page's own terms: its button, not a command to type.
    await expect(page.get_by_test_id("page-error")).to_contain_text("Press Safety number")
    await expect(page.get_by_test_id("page-error")).not_to_contain_text("parley keys")
    assert not washington.terminal.book.calls()

    await page.locator('[data-testid="verify-button"][data-party="moscow"]').click()
    # What moscow's operator reads out from their own screen.
    theirs = (await moscow.peers.describe("washington"))[0]["safety_number"]
    number = page.get_by_test_id("safety-number")
    await expect(number).to_have_attribute("aria-label", f"safety number {theirs}")
    assert digits(await number.text_content()) == digits(theirs)
    qr = page.get_by_test_id("safety-qr")
    assert (await qr.get_attribute("src") or "").startswith("data:image/svg+xml")
    assert await qr.evaluate("img => img.complete && img.naturalWidth > 100")
    await expect(page.get_by_test_id("mark-verified")).to_be_focused()
    await screenshot(page, "verification")

    # A number that does not match is refused, and nothing is pinned.
    wrong = theirs[:-1] + str((int(theirs[-1]) + 1) % 10)
    await page.get_by_test_id("typed-number").fill(wrong)
    await page.get_by_test_id("mark-verified").click()
    await expect(page.get_by_test_id("verify-error")).to_contain_text("does not match")
    # ...said as a typo (one group off), not as an interception, and a number cut short is
    # said as such; only a number wrong throughout warns of different keys.
    await expect(page.get_by_test_id("verify-error")).to_contain_text("group 12")
    await expect(page.get_by_test_id("verify-error")).not_to_contain_text(
        "the keys the server gave us differ")
    await page.get_by_test_id("typed-number").fill(digits(theirs)[:10])
    await page.get_by_test_id("mark-verified").click()
    await expect(page.get_by_test_id("verify-error")).to_contain_text(
        "a safety number has 60 digits; you entered 10")
    await page.get_by_test_id("typed-number").fill(
        "".join(str((int(d) + 5) % 10) for d in digits(theirs)))
    await page.get_by_test_id("mark-verified").click()
    await expect(page.get_by_test_id("verify-error")).to_contain_text(
        "do not mark it verified: the keys the server gave us differ")
    assert washington.terminal.store.pin("moscow/hotline") is None

    await page.get_by_test_id("typed-number").fill(theirs)
    await page.keyboard.press("Enter")
    await expect(page.get_by_test_id("device-trust")).to_have_attribute("data-trust", "verified")
    await expect(party.get_by_test_id("trust")).to_have_attribute("data-trust", "verified")
    await expect(page.get_by_test_id("verify-error")).to_be_hidden()
    assert washington.terminal.store.pin("moscow/hotline") is not None

    # Verified on this side: the call goes through and is shown as verified.
    await call_button(page, "moscow").click()
    await expect(page.get_by_test_id("call-state")).to_have_attribute("data-state", "active")
    await expect(page.get_by_test_id("unverified-badge")).to_be_hidden()
    assert washington.terminal.book.calls()[-1].state is CallState.ACTIVE


async def test_a_changed_key_is_a_loud_warning(line: LocalLine, people: PersonFactory,
                                               chromium: Browser) -> None:
    await line.provision()
    # Washington verified moscow's device once; the directory now lists other keys
    # for it (re-enrolled, or impersonated). Here: the pin holds the old keys.
    store = TerminalStore(line.root / "washington")
    store.set_pin(DeviceKeys.generate().public("moscow/hotline"), "0" * 60,
                  time.time_ns() // 1_000_000)
    store.close()
    washington = await people("washington")
    await line.terminal("moscow", auto_answer=True)
    page = await open_ui(chromium, washington)

    party = page.locator('li.party[data-party="moscow"]')
    await expect(party.get_by_test_id("trust")).to_have_text("KEY CHANGED")
    await expect(party.get_by_test_id("party-warning")).to_contain_text(
        "A key of moscow changed since you verified it")
    await expect(party.get_by_test_id("party-warning")).to_contain_text("Press Safety number")
    await expect(party.get_by_test_id("party-warning")).not_to_contain_text("parley keys")
    await call_button(page, "moscow").click()
    await expect(page.get_by_test_id("page-error")).to_contain_text("has changed")
    assert not washington.terminal.book.calls()

    await page.locator('[data-testid="verify-button"][data-party="moscow"]').click()
    await expect(page.get_by_test_id("key-changed-warning")).to_be_visible()
    await screenshot(page, "key-changed")
