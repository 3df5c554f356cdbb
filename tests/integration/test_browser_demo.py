"""`parley demo` hands the call to people: each human side's UI address on a `ui: ` line."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys

import pytest
from playwright.async_api import Browser, expect

from tests.browser import UI_TIMEOUT_MS, VIEWPORT, call_button, chromium

pytestmark = pytest.mark.browser
__all__ = ["chromium"]  # fixture used below
READY = "Ctrl-C stops the demo."


async def start_demo(*args: str) -> tuple[asyncio.subprocess.Process, list[str]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "parley", "demo", *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True)
    assert proc.stdout is not None
    urls = []
    while True:
        raw = await asyncio.wait_for(proc.stdout.readline(), 60)
        assert raw, "the demo stopped before it was ready"
        line = raw.decode().strip()
        if line.startswith("ui: "):
            urls.append(line.removeprefix("ui: "))
        if line == READY:
            return proc, urls


async def stop_demo(proc: asyncio.subprocess.Process) -> int:
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGINT)
    try:
        await asyncio.wait_for(proc.communicate(), 30)
    except TimeoutError:
        os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        raise AssertionError("the demo did not stop on Ctrl-C") from None
    return proc.returncode or 0


async def test_demo_gives_each_human_side_a_ui(chromium: Browser) -> None:
    proc, urls = await start_demo("--human", "moscow")
    try:
        assert len(urls) == 2, urls
        assert all(url.startswith("http://127.0.0.1:") and "?token=" in url for url in urls)
        pages = []
        for url in urls:
            page = await (await chromium.new_context(viewport=VIEWPORT)).new_page()
            page.set_default_timeout(UI_TIMEOUT_MS)
            await page.goto(url)
            pages.append(page)
        washington, moscow = pages
        await expect(washington.get_by_test_id("me")).to_have_text("washington/hotline")
        await expect(moscow.get_by_test_id("me")).to_have_text("moscow/hotline")

        await call_button(washington, "moscow").click()
        await moscow.get_by_test_id("incoming-accept").click()
        for page in pages:
            await expect(page.get_by_test_id("call-state")).to_have_attribute("data-state",
                                                                              "active")
        sas = await washington.get_by_test_id("sas").text_content()
        await expect(moscow.get_by_test_id("sas")).to_have_text(sas or "-")
        await washington.get_by_test_id("hangup").click()
        await expect(moscow.get_by_test_id("call-state")).to_have_attribute("data-reason",
                                                                            "remote_hung_up")
    finally:
        code = await stop_demo(proc)
    assert code == 0


async def test_demo_leaves_the_call_to_washington_with_a_robot_moscow(
        chromium: Browser) -> None:
    proc, urls = await start_demo()
    try:
        assert len(urls) == 1, urls
        page = await (await chromium.new_context(viewport=VIEWPORT)).new_page()
        page.set_default_timeout(UI_TIMEOUT_MS)
        await page.goto(urls[0])
        await expect(page.get_by_test_id("me")).to_have_text("washington/hotline")
        await call_button(page, "moscow").click()  # the robot answers at once
        await expect(page.get_by_test_id("call-state")).to_have_attribute("data-state", "active")
        await expect(page.get_by_test_id("verified-badge")).to_be_visible()
        await expect(page.get_by_test_id("sas")).to_have_text(re.compile(r"^\d{3} \d{3}$"))
        await page.get_by_test_id("hangup").click()
        await expect(page.get_by_test_id("call-state")).to_have_attribute("data-reason",
                                                                          "hung_up")
    finally:
        code = await stop_demo(proc)
    assert code == 0
