"""The line tests as people see them, in Chromium: the server's status page and the person's page.

Real test sets run real line tests through the real server; Chromium (Debian's,
through Playwright) loads the server's status page and a person's terminal
page. What is checked is what is drawn: the line, its colour, its history bars
and charts, who signed the last result -- and that a line whose test set
stopped turns red on the page by itself.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from playwright.async_api import Browser, Page

from parley.terminal.linetest import LineTestSettings
from tests.browser import VIEWPORT, PersonFactory, chromium, open_ui, people, screenshot
from tests.harness import LocalLine

pytestmark = pytest.mark.browser
__all__ = ["chromium", "people"]  # fixtures used below
LINE = "moscow:washington"
TESTS = 4
GREEN, RED = "rgb(63, 185, 80)", "rgb(248, 81, 73)"


async def status_page(browser: Browser, line: LocalLine) -> Page:
    context = await browser.new_context(viewport={**VIEWPORT, "height": 900})
    page = await context.new_page()
    await page.goto(line.url + "/")
    return page


async def test_the_status_page_and_the_persons_page_show_the_line_and_its_history(
        line: LocalLine, chromium: Browser, people: PersonFactory) -> None:
    await line.provision(test_sets=True)
    settings = LineTestSettings(test_set=True, duration_s=0.5, every_s=3)  # run by hand here
    washington = await line.terminal("washington-testset", linetest=settings)
    moscow = await line.terminal("moscow-testset", linetest=settings)
    person = await people("washington")
    for _ in range(TESTS):
        result = await washington.linetests.run("washington:moscow")
        assert result["status"] == "green", result

    page = await status_page(chromium, line)
    section = page.locator(f'section.line[data-line="{LINE}"]')
    assert await section.get_attribute("data-status") == "green"
    assert await section.locator(".state").inner_text() == "GREEN"
    assert await section.locator(".dot").evaluate(
        "d => getComputedStyle(d).backgroundColor") == GREEN
    day_bars, test_bars = section.locator(".bars").nth(0), section.locator(".bars").nth(1)
    assert await day_bars.locator("span").count() == 90
    assert await test_bars.locator("span").count() == TESTS
    assert await test_bars.locator("span").last.evaluate(
        "b => getComputedStyle(b).backgroundColor") == GREEN
    assert await day_bars.locator("span").last.evaluate(  # today's bar: green
        "b => getComputedStyle(b).backgroundColor") == GREEN
    charts = section.locator(".chart svg polyline")
    assert await charts.count() == 2  # setup time and loss
    for i in range(2):
        points = (await charts.nth(i).get_attribute("points") or "").split()
        assert len(points) == TESTS
    signed = await section.locator(".sig").inner_text()
    assert "washington/testset" in signed and "moscow/testset" in signed
    assert "verified" in signed
    # Drawn from nothing but the page itself: no request left it.
    assert await page.evaluate("performance.getEntriesByType('resource').map(e => e.name)") == []
    await screenshot(page, "line-status")

    ui = await open_ui(chromium, person)
    panel = ui.locator(f'[data-testid="line-test"][data-line="{LINE}"]')
    await panel.wait_for()
    assert await panel.get_attribute("data-status") == "green"
    assert "both verified here" in await panel.get_by_test_id("line-test-signed").inner_text()
    assert await panel.locator(".bars").first.locator(".bar").count() == TESTS
    server_says = await panel.get_by_test_id("line-test-server").inner_text()
    assert "shows the same: green" in server_says

    # Moscow's test set stops and nothing is tested: within two intervals the line is red,
    # on the status page (it reloads itself; here, at once) and on the person's page.
    await moscow.stop()
    line.terminals.remove(moscow)
    deadline = time.monotonic() + 15
    while True:
        await page.reload()
        if await section.get_attribute("data-status") == "red":
            break
        assert time.monotonic() < deadline, "the status page never turned red"
        await asyncio.sleep(0.5)
    assert "no test result for" in await section.locator(".reasons").inner_text()
    assert await section.locator(".dot").evaluate(
        "d => getComputedStyle(d).backgroundColor") == RED
    assert (await page.title()).startswith("RED")
    await ui.reload()
    await panel.wait_for()
    deadline = time.monotonic() + 10
    while await panel.get_attribute("data-status") != "red":
        assert time.monotonic() < deadline, "the person's page never turned red"
        await asyncio.sleep(0.5)
        await ui.reload()
        await panel.wait_for()
    assert "no test result for" in await panel.get_by_test_id("line-test-reasons").inner_text()
