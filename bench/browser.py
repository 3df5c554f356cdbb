"""Browser to robot: a person's web UI in Chromium calls a robot that records what it hears.

Everything is the real thing: the line server (own process), a terminal with
browser media and its local UI server, the UI (src/parley/web) in Debian's
Chromium driven by Playwright, and a robot terminal. The browser's microphone
is Chromium's fake capture device playing a WAV file; the one change made to
the page is that getUserMedia is asked for audio with echo cancellation, noise
suppression and automatic gain control off, so that what is measured is the
call, not the browser's voice processing.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from tests.chromium import CHROMIUM, CHROMIUM_ARGS

from bench import speech
from bench.line import BenchLine
from bench.quality_call import PlayoutRecorder, RecordingMedia
from parley.core.call import CallState
from parley.media.ice import IceConfig, use_host_addresses
from parley.media.robot import RobotOptions

LEAD_S = 3.0  # the fake microphone starts with getUserMedia, before the call is up
AUDIO_PROCESSING_OFF = """
(() => {
  const devices = navigator.mediaDevices;
  if (!devices) return;
  const original = devices.getUserMedia.bind(devices);
  devices.getUserMedia = (constraints) => {
    if (constraints && constraints.audio) {
      const audio = typeof constraints.audio === "object" ? constraints.audio : {};
      constraints = {...constraints, audio: {...audio, echoCancellation: false,
                                             noiseSuppression: false, autoGainControl: false}};
    }
    return original(constraints);
  };
})();
"""


def browser_missing() -> str | None:
    if shutil.which(CHROMIUM) is None:
        return f"{CHROMIUM} is missing: apt-get install chromium (bench/run does it as root)"
    try:
        import playwright  # noqa: F401

        from parley.terminal.runner import build_terminal  # noqa: F401
    except ImportError as exc:
        return f"cannot drive the web UI: {exc}"
    return None


def _microphone_file(root: Path, clip: np.ndarray) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    wav = root / "microphone.wav"
    speech.write_wav(wav, np.concatenate([np.zeros(int(LEAD_S * speech.RATE)), clip]))
    return wav


async def browser_to_robot(root: Path, clip: np.ndarray, timeout: float = 30.0
                           ) -> dict[str, Any]:
    """Call the robot from the web UI with `clip` as the microphone; what the robot heard."""
    why = browser_missing()
    if why:
        raise RuntimeError(why)
    from playwright.async_api import async_playwright

    from parley.terminal.app import TerminalConfig
    from parley.terminal.runner import build_terminal

    use_host_addresses(["127.0.0.1"])
    wav = _microphone_file(root, clip)
    recorder = PlayoutRecorder()
    line = BenchLine(root)
    await line.start()
    person = None
    try:
        robot = await line.terminal("moscow", engine=RecordingMedia(
            RobotOptions(on_remote_audio=recorder.tap), recorder), auto_answer=True)
        terminal, control = build_terminal(TerminalConfig(
            data_dir=root / "washington", media="browser",
            robot=RobotOptions(ice=IceConfig(host_addresses=("127.0.0.1",)))))
        await terminal.start()
        await control.start()
        person = (terminal, control)
        await asyncio.wait_for(terminal.link.connected.wait(), 10)
        async with async_playwright() as playwright:
            chromium = await playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True,
                args=[*CHROMIUM_ARGS, f"--use-file-for-fake-audio-capture={wav}%noloop"])
            try:
                context = await chromium.new_context()
                await context.add_init_script(AUDIO_PROCESSING_OFF)
                page = await context.new_page()
                page.set_default_timeout(timeout * 1000)
                await page.goto(control.url)
                await page.get_by_test_id("link-state").filter(
                    has_text="line server: connected").wait_for()
                button = page.locator('[data-testid="voice-call-button"][data-party="moscow"]')
                await button.click()
                call = await robot.wait_for_call(lambda c: c.state is CallState.ACTIVE, timeout)
                mine = await terminal.wait_for_call(
                    lambda c: c.call_id == call.call_id and c.state is CallState.ACTIVE, timeout)
                await asyncio.sleep(LEAD_S + len(clip) / speech.RATE + 1.5)
                robot.hangup(call.call_id)
                await robot.wait_for_call(
                    lambda c: c.call_id == call.call_id and c.state is CallState.ENDED, 10)
            finally:
                await chromium.close()
        return {"played": recorder.playout(),
                "verified": bool(call.verified and mine.verified and call.sas == mine.sas)}
    finally:
        if person is not None:
            await person[1].stop()
            await person[0].stop()
        await line.stop()
