"""A joint statement from two persons' pages, in Chromium: drafted, the other side's edit
seen as a diff, signed as shown by both, final with both signatures at both ends; and the
record's timeline with who cosigned it."""

from __future__ import annotations

import pytest
from playwright.async_api import Browser, expect

from tests.browser import PersonFactory, chromium, open_ui, people, screenshot
from tests.harness import LocalLine, wait_until

pytestmark = pytest.mark.browser
__all__ = ["chromium", "people"]  # fixtures used below


async def test_two_persons_draft_edit_and_sign_a_statement(
        line: LocalLine, people: PersonFactory, chromium: Browser) -> None:
    await line.provision()
    washington = await people("washington")
    moscow = await people("moscow")
    wpage = await open_ui(chromium, washington)
    mpage = await open_ui(chromium, moscow)

    # Washington drafts.
    await wpage.locator("details.statement-new summary").click()
    await wpage.get_by_test_id("statement-new-title").fill("Joint statement on the hotline")
    await wpage.get_by_test_id("statement-new-text").fill(
        "The two sides agree that the line stays open.\nIt is reviewed each year.")
    await wpage.get_by_test_id("statement-draft").click()
    await expect(wpage.get_by_test_id("statement-state")).to_contain_text("their turn")
    await expect(wpage.get_by_test_id("statement-edit-text")).to_have_count(0)

    # Moscow opens it and edits one line.
    item = mpage.get_by_test_id("statement").first
    await expect(item).to_contain_text("Your turn")
    await item.get_by_test_id("statement-open").click()
    await expect(mpage.get_by_test_id("statement-text")).to_contain_text("reviewed each year")
    await mpage.get_by_test_id("statement-edit-text").fill(
        "The two sides agree that the line stays open.\nIt is reviewed every year.")
    await mpage.get_by_test_id("statement-edit-send").click()
    await expect(mpage.get_by_test_id("statement-state")).to_contain_text("their turn")

    # Washington sees the edit as a diff, and signs version 2 as shown; then Moscow.
    await expect(wpage.get_by_test_id("statement-text")).to_contain_text("reviewed every year")
    await expect(wpage.get_by_test_id("diff-removed")).to_contain_text("reviewed each year")
    await expect(wpage.get_by_test_id("diff-added")).to_contain_text("reviewed every year")
    await expect(wpage.get_by_test_id("statement-version")).to_have_count(2)
    shown = await wpage.get_by_test_id("statement-text").get_attribute("data-sha256")
    ident = await wpage.get_by_test_id("statement-pane").get_attribute("data-statement")
    assert shown == washington.terminal.statements.get(ident)["versions"][1]["sha256"]
    await wpage.get_by_test_id("statement-sign").click()
    await expect(wpage.get_by_test_id("statement-state")).to_contain_text("Signed by you")
    await expect(mpage.get_by_test_id("statement-sign")).to_be_visible()
    await mpage.get_by_test_id("statement-sign").click()

    # Final at both, with both signatures; then in both logs.
    for page in (wpage, mpage):
        await expect(page.get_by_test_id("statement-final")).to_contain_text(
            "signed by moscow/hotline and washington/hotline")
        await expect(page.get_by_test_id("statement-state")).to_contain_text("Final")
        await expect(page.get_by_test_id("statement-pdf")).to_be_visible()
    await wait_until(lambda: washington.terminal.statements.get(ident)["in_both_logs"], 20,
                     "in both logs")
    await expect(wpage.get_by_test_id("statement-state")).to_contain_text("in both logs",
                                                                          timeout=15_000)
    final = washington.terminal.statements.get(ident)
    assert final["final"] == 2 and final["versions"][1]["signatures"] == [
        "moscow/hotline", "washington/hotline"]
    await screenshot(wpage, "statement")

    # The record's timeline: the statement's steps, and moscow's cosignature.
    await wpage.get_by_test_id("record-open").click()
    entries = wpage.get_by_test_id("record-entry")
    await expect(entries.first).to_be_visible()
    await expect(wpage.locator('[data-testid="record-entry"][data-type="statement"]')
                 ).to_have_count(5)
    await expect(wpage.get_by_test_id("record-witnesses")).to_contain_text(
        "Cosigned by moscow/hotline")
    await wpage.get_by_test_id("record-note").fill("Statement read to the press at 16:00.")
    await wpage.get_by_test_id("record-note-add").click()
    await expect(entries.first).to_contain_text("note: Statement read to the press")
