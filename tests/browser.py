"""A person's terminal driven through its web UI in Debian's Chromium, with fake media.

Real parts only: the terminal is a real `Terminal` with `BrowserMedia` and its
real local API server; the page is the real UI in a real Chromium, whose fake
camera and microphone (``--use-fake-device-for-media-stream``) feed real
WebRTC. Playwright drives the system Chromium (never a downloaded one).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Locator, Page, async_playwright

from parley.media.ice import IceConfig
from parley.media.robot import RobotOptions
from parley.terminal.app import Terminal, TerminalConfig
from parley.terminal.control import ControlServer
from parley.terminal.runner import build_terminal
from tests.chromium import CHROMIUM, CHROMIUM_ARGS
from tests.harness import LocalLine

VIEWPORT = {"width": 1366, "height": 800}  # a laptop screen
ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts" / "screenshots"  # every run, not committed
SCREENSHOTS = ROOT / "docs" / "screenshots"  # the README's: refreshed on request
UI_TIMEOUT_MS = 20_000  # call setup, ICE and DTLS on loopback take well under this


@contextlib.asynccontextmanager
async def chromium_browser() -> AsyncIterator[Browser]:
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} is missing: scripts/test installs it (scripts/test-packages.txt)")
    async with async_playwright() as playwright:
        # launch() gives the browser a fresh temporary profile, removed at close.
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                                   headless=True)
        try:
            yield browser
        finally:
            await browser.close()


@dataclass
class PersonTerminal:
    """A terminal whose media is its person's browser page."""

    terminal: Terminal
    control: ControlServer

    @property
    def url(self) -> str:
        return self.control.url

    async def stop(self) -> None:
        await self.control.stop()
        await self.terminal.stop()


async def person_terminal(line: LocalLine, name: str, *, server_url: str | None = None,
                          **options: Any) -> PersonTerminal:
    """A browser-media terminal on the line, its local UI on 127.0.0.1, loopback ICE only."""
    config = TerminalConfig(
        data_dir=line.root / name, server_url=server_url, media="browser",
        robot=RobotOptions(ice=IceConfig(host_addresses=("127.0.0.1",))), **options)
    terminal, control = build_terminal(config)
    await terminal.start()
    await control.start()
    await terminal.link.connected.wait()
    return PersonTerminal(terminal, control)


PersonFactory = Callable[..., Awaitable[PersonTerminal]]


@pytest.fixture
async def people(line: LocalLine) -> AsyncIterator[PersonFactory]:
    """people(name, **options): a person's terminal, stopped before the line is."""
    started: list[PersonTerminal] = []

    async def make(name: str, **options: Any) -> PersonTerminal:
        person = await person_terminal(line, name, **options)
        started.append(person)
        return person

    yield make
    for person in started:
        with contextlib.suppress(Exception):
            await person.stop()


@pytest.fixture
async def chromium() -> AsyncIterator[Browser]:
    async with chromium_browser() as browser:
        yield browser


async def open_ui(browser: Browser, person: PersonTerminal) -> Page:
    """The person's page, in its own browser context (its own profile and permissions)."""
    context = await browser.new_context(viewport=VIEWPORT)
    page = await context.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    await page.goto(person.url)
    await page.get_by_test_id("link-state").filter(has_text="line server: connected").wait_for()
    return page


def call_button(page: Page, party: str, *, voice: bool = False) -> Locator:
    testid = "voice-call-button" if voice else "call-button"
    return page.locator(f'[data-testid="{testid}"][data-party="{party}"]')


async def remote_video_frames(page: Page) -> int:
    """Frames the remote <video> element has presented (0 when nothing is attached)."""
    return int(await page.get_by_test_id("remote-video").evaluate(
        "v => v.srcObject ? v.getVideoPlaybackQuality().totalVideoFrames : 0"))


async def wait_remote_video_plays(page: Page) -> None:
    await page.get_by_test_id("remote-video").evaluate(
        """v => new Promise(resolve => {
             const check = () => (v.srcObject && v.videoWidth > 0
                                  && v.getVideoPlaybackQuality().totalVideoFrames > 0)
                                 ? resolve(true) : setTimeout(check, 50);
             check();
           })""")


async def wait_stats(person: PersonTerminal, call_id: str,
                     predicate: Callable[[dict[str, Any]], bool],
                     timeout: float = UI_TIMEOUT_MS / 1000) -> dict[str, Any]:
    """Wait until the page's getStats figures, as the terminal records them, satisfy `predicate`."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        stats = await person.terminal.call_stats(call_id)
        if predicate(stats):
            return stats
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"the page's media stats never got there: {stats}")
        await asyncio.sleep(0.1)


def audio_decoded(stats: dict[str, Any]) -> bool:
    """Remote audio is being decoded and played out, not made up to cover losses."""
    audio = stats.get("audio", {})
    received = audio.get("samples_received", 0)
    return received > 0 and audio.get("concealed_samples", 0) < received / 2


def video_decoded(stats: dict[str, Any]) -> bool:
    return stats.get("video", {}).get("frames_decoded", 0) > 0


async def screenshot(page: Page, name: str) -> Path:
    """Every run writes test-artifacts/screenshots/; the README's copies in docs/screenshots/
    are written when missing or with PARLEY_UPDATE_SCREENSHOTS=1 (each run has new keys and
    a new SAS, so rewriting them always would leave every checkout modified)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    await page.screenshot(path=str(path))
    readme_copy = SCREENSHOTS / f"{name}.png"
    if os.environ.get("PARLEY_UPDATE_SCREENSHOTS") == "1" or not readme_copy.exists():
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, readme_copy)
    return path


__all__ = [
    "CHROMIUM",
    "CHROMIUM_ARGS",
    "PersonTerminal",
    "audio_decoded",
    "call_button",
    "chromium",
    "chromium_browser",
    "open_ui",
    "people",
    "person_terminal",
    "remote_video_frames",
    "screenshot",
    "video_decoded",
    "wait_remote_video_plays",
    "wait_stats",
]
