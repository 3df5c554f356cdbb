"""`parley demo` hands the call to people: each human side's UI address on a `ui: ` line."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, expect

from parley.children import Child
from tests.browser import UI_TIMEOUT_MS, VIEWPORT, call_button, chromium

pytestmark = pytest.mark.browser
__all__ = ["chromium"]  # fixture used below
READY = "Ctrl-C stops the demo."


async def start_demo(log_dir: Path, *args: str) -> tuple[Child, list[str]]:
    """`parley demo ARGS` once it is ready, and the UI addresses it printed on the way."""
    demo = await Child.spawn("demo", [sys.executable, "-m", "parley", "demo", *args], log_dir)
    urls = []
    try:
        while (text := await demo.line("", 60)) != READY:
            if text.startswith("ui: "):
                urls.append(text.removeprefix("ui: "))
    except BaseException:
        await demo.stop()
        raise
    return demo, urls


async def stop_demo(demo: Child) -> int:
    """Ctrl-C, as a person stops it; its exit status (it is killed if it does not stop)."""
    with contextlib.suppress(ProcessLookupError):
        demo.proc.send_signal(signal.SIGINT)
    try:
        return await asyncio.wait_for(demo.proc.wait(), 30)
    except TimeoutError:
        await demo.stop()  # SIGTERM, then SIGKILL
        raise AssertionError("the demo did not stop on Ctrl-C") from None


@contextlib.asynccontextmanager
async def running_demo(log_dir: Path, *args: str) -> AsyncIterator[list[str]]:
    """The demo's UI addresses while it runs; it must then stop cleanly on Ctrl-C."""
    demo, urls = await start_demo(log_dir, *args)
    try:
        yield urls
    finally:
        code = await stop_demo(demo)
    assert code == 0, f"the demo exited with {code}; its log is {demo.log_path}"


async def open_page(chromium: Browser, url: str) -> Page:
    page = await (await chromium.new_context(viewport=VIEWPORT)).new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    await page.goto(url)
    return page


async def hang_up(page: Page, seen_by: Page, reason: str) -> None:
    """Hang up on `page`; `seen_by` shows the call ended for `reason`."""
    await page.get_by_test_id("hangup").click()
    await expect(seen_by.get_by_test_id("call-state")).to_have_attribute("data-reason", reason)


async def test_demo_gives_each_human_side_a_ui(chromium: Browser, tmp_path: Path) -> None:
    async with running_demo(tmp_path, "--human", "moscow") as urls:
        assert len(urls) == 2, urls
        assert all(url.startswith("http://127.0.0.1:") and "?token=" in url for url in urls)
        washington, moscow = [await open_page(chromium, url) for url in urls]
        await expect(washington.get_by_test_id("me")).to_have_text("washington/hotline")
        await expect(moscow.get_by_test_id("me")).to_have_text("moscow/hotline")

        await call_button(washington, "moscow").click()
        await moscow.get_by_test_id("incoming-accept").click()
        for page in (washington, moscow):
            await expect(page.get_by_test_id("call-state")).to_have_attribute("data-state",
                                                                              "active")
        sas = await washington.get_by_test_id("sas").text_content()
        await expect(moscow.get_by_test_id("sas")).to_have_text(sas or "-")
        await hang_up(washington, moscow, "remote_hung_up")


async def test_demo_leaves_the_call_to_washington_with_a_robot_moscow(
        chromium: Browser, tmp_path: Path) -> None:
    async with running_demo(tmp_path) as urls:
        assert len(urls) == 1, urls
        page = await open_page(chromium, urls[0])
        await expect(page.get_by_test_id("me")).to_have_text("washington/hotline")
        await call_button(page, "moscow").click()  # the robot answers at once
        await expect(page.get_by_test_id("call-state")).to_have_attribute("data-state", "active")
        await expect(page.get_by_test_id("verified-badge")).to_be_visible()
        await expect(page.get_by_test_id("sas")).to_have_text(re.compile(r"^\d{3} \d{3}$"))
        await hang_up(page, page, "hung_up")
