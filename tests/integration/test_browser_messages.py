"""Messages in the web UI: a person sends and receives text and files, sees them delivered
and read, and sees a message arrive during a call without leaving it."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest
from playwright.async_api import Browser, expect

from tests.browser import PersonFactory, call_button, chromium, open_ui, people, screenshot
from tests.harness import LocalLine, wait_until

pytestmark = pytest.mark.browser
__all__ = ["chromium", "people"]  # fixtures used below


async def test_a_person_sends_and_receives_text_and_files_with_receipts(
        tmp_path: Path, line: LocalLine, people: PersonFactory, chromium: Browser) -> None:
    await line.provision()
    washington = await people("washington")
    moscow = await line.terminal("moscow")
    page = await open_ui(chromium, washington)

    # A message from moscow while the conversation is closed: an unread count.
    await moscow.messages.send_text("washington", "Are you available at 15:00 UTC?")
    party = page.locator('li.party[data-party="moscow"]')
    await expect(party.get_by_test_id("unread")).to_have_text("1")
    await party.get_by_test_id("messages-button").click()
    pane = page.get_by_test_id("messages-pane")
    await expect(pane).to_be_visible()
    incoming = pane.get_by_test_id("message").filter(has_text="Are you available")
    await expect(incoming).to_have_count(1)
    await expect(party.get_by_test_id("unread")).to_be_hidden()  # seen: read
    await wait_until(lambda: any(m["deliveries"] and m["deliveries"][0]["read_ms"]
                                 for m in moscow.messages.conversation("washington")
                                 if m["outgoing"]), 10, "moscow's read receipt")

    # A reply, typed and sent with Enter: sent, then delivered, then read.
    await pane.get_by_test_id("message-text").fill("Yes. 15:00 UTC is 10:00 here.")
    await page.keyboard.press("Enter")
    mine = pane.locator('[data-testid="message"].outgoing').filter(has_text="15:00 UTC is")
    await expect(mine.get_by_test_id("message-status")).to_have_attribute(
        "data-status", "delivered")
    assert [m["text"] for m in moscow.messages.conversation("washington")
            if not m["outgoing"]] == ["Yes. 15:00 UTC is 10:00 here."]
    moscow.messages.mark_read("washington")
    await expect(mine.get_by_test_id("message-status")).to_have_attribute("data-status", "read")

    # A file, each way.
    upload = tmp_path / "agenda.pdf"
    upload.write_bytes(os.urandom(700_000))
    await pane.get_by_test_id("message-file").set_input_files(str(upload))
    sent_file = pane.locator('[data-testid="message"].outgoing.kind-file')
    await expect(sent_file.get_by_test_id("message-status")).to_have_attribute(
        "data-status", "delivered", timeout=20_000)
    got = [m for m in moscow.messages.conversation("washington") if m["kind"] == "file"]
    assert got and got[0]["state"] == "complete" and got[0]["file"]["name"] == "agenda.pdf"
    path, _ = moscow.messages.file(got[0]["msg_id"])
    assert path.read_bytes() == upload.read_bytes()

    data = os.urandom(1_200_000)
    await moscow.messages.send_file("washington", data, "minutes.txt", "text/plain",
                                    "the minutes")
    card = pane.locator('[data-testid="message"].incoming.kind-file')
    await expect(card.get_by_test_id("file-download")).to_be_visible(timeout=20_000)
    await expect(card.get_by_test_id("message-body")).to_have_text("the minutes")
    await screenshot(page, "messages")
    async with page.expect_download() as waiting:
        await card.get_by_test_id("file-download").click()
    download = await waiting.value
    assert download.suggested_filename == "minutes.txt"
    saved = await asyncio.to_thread(Path(await download.path()).read_bytes)
    assert hashlib.sha256(saved).hexdigest() == hashlib.sha256(data).hexdigest()


async def test_a_message_arrives_during_a_call_without_leaving_it(
        line: LocalLine, people: PersonFactory, chromium: Browser) -> None:
    await line.provision()
    washington = await people("washington")
    moscow = await line.terminal("moscow", auto_answer=True)
    page = await open_ui(chromium, washington)
    await call_button(page, "moscow").click()
    await expect(page.get_by_test_id("call-state")).to_have_attribute("data-state", "active")
    await moscow.messages.send_text("washington", "Interpreter joining in two minutes.")
    panel = page.get_by_test_id("call-messages")
    await expect(panel.get_by_test_id("message").filter(
        has_text="Interpreter joining")).to_have_count(1)
    await expect(page.get_by_test_id("call-pane")).to_be_visible()  # still in the call
    await expect(page.get_by_test_id("call-state")).to_have_attribute("data-state", "active")
    # And one written there goes to moscow, the call going on.
    await panel.get_by_test_id("message-text").fill("Understood.")
    await panel.get_by_test_id("send-message").click()
    await wait_until(lambda: "Understood." in [m["text"] for m in
                                                moscow.messages.conversation("washington")
                                                if not m["outgoing"]], 10, "the reply")
    await screenshot(page, "message-during-call")
    assert washington.terminal.book.calls()[-1].state == "active"
