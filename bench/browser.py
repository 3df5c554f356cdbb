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
from bench.samples import click
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


async def start_person(root: Path, name: str, people: list[tuple[Any, Any]]
                       ) -> tuple[Any, Any]:
    """A browser-media terminal of the bench line and its local UI, loopback ICE only,
    noted in `people` (for `stop_people`) before it is waited for."""
    from parley.terminal.app import TerminalConfig
    from parley.terminal.runner import build_terminal

    terminal, control = build_terminal(TerminalConfig(
        data_dir=root / name, media="browser",
        robot=RobotOptions(ice=IceConfig(host_addresses=("127.0.0.1",)))))
    await terminal.start()
    people.append((terminal, control))
    await control.start()
    await asyncio.wait_for(terminal.link.connected.wait(), 10)
    return terminal, control


async def stop_people(people: list[tuple[Any, Any]]) -> None:
    for terminal, control in reversed(people):
        await control.stop()
        await terminal.stop()


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

    use_host_addresses(["127.0.0.1"])
    wav = _microphone_file(root, clip)
    recorder = PlayoutRecorder()
    line = BenchLine(root)
    await line.start()
    people: list[tuple[Any, Any]] = []
    try:
        robot = await line.terminal("moscow", engine=RecordingMedia(
            RobotOptions(on_remote_audio=recorder.tap), recorder), auto_answer=True)
        terminal, control = await start_person(root, "washington", people)
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
        await stop_people(people)
        await line.stop()


# Click onsets in the page, as the page's audio graph sees them: the microphone's track
# (getUserMedia) and every remote audio track, each into an AudioWorklet that notes the
# first sample above a threshold after 0.3 s of quiet, in the page's clock
# (performance.timeOrigin + now(): the same clock in every page of one machine).
ONSETS_WORKLET = """
class Onsets extends AudioWorkletProcessor {
  constructor() { super(); this.quiet = 0; }
  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (channel) {
      for (let i = 0; i < channel.length; i++) {
        if (Math.abs(channel[i]) > 0.1) {
          if (this.quiet > 0.3 * sampleRate) this.port.postMessage(currentTime + i / sampleRate);
          this.quiet = 0;
        } else {
          this.quiet++;
        }
      }
    }
    return true;
  }
}
registerProcessor('onsets', Onsets);
"""
TAP_ONSETS = """
(() => {
  window.__onsets = {local: [], remote: []};
  let context = null;
  let loaded = null;  // one module load, awaited by every tap (they can come together)
  async function tap(stream, side) {
    if (!context) {
      context = new AudioContext();
      const url = URL.createObjectURL(new Blob([WORKLET_SOURCE], {type: 'application/javascript'}));
      loaded = context.audioWorklet.addModule(url);
    }
    await loaded;
    await context.resume();
    const node = new AudioWorkletNode(context, 'onsets');
    node.port.onmessage = (e) => window.__onsets[side].push(
      performance.timeOrigin + performance.now() - (context.currentTime - e.data) * 1000);
    const mute = context.createGain();
    mute.gain.value = 0;
    context.createMediaStreamSource(stream).connect(node).connect(mute).connect(context.destination);
  }
  const devices = navigator.mediaDevices;
  const getUserMedia = devices.getUserMedia.bind(devices);
  devices.getUserMedia = async (constraints) => {
    const stream = await getUserMedia(constraints);
    if (stream.getAudioTracks().length) tap(stream, 'local');
    return stream;
  };
  window.RTCPeerConnection = class extends window.RTCPeerConnection {
    constructor(...args) {
      super(...args);
      this.addEventListener('track', (e) => {
        if (e.track.kind === 'audio') tap(new MediaStream([e.track]), 'remote');
      });
    }
  };
})();
""".replace("WORKLET_SOURCE", repr(ONSETS_WORKLET))


def _click_track(root: Path, period_s: float) -> Path:
    """A WAV of the latency benchmark's clicks, one every `period_s`, for Chromium to loop."""
    root.mkdir(parents=True, exist_ok=True)
    period = np.zeros(int(period_s * speech.RATE))
    chirp = click(speech.RATE)
    period[:len(chirp)] = chirp * 32767
    wav = root / "clicks.wav"
    speech.write_wav(wav, np.tile(period, 17).astype(np.int16))
    return wav


def pair_onsets(sent: list[float], heard: list[float], within_ms: float = 500.0) -> list[float]:
    """Each click sent, paired with the first one heard after it (within `within_ms`): ms."""
    out = []
    last = float("-inf")
    for at in sorted(sent):
        if at - last < within_ms / 2:
            continue  # the same click on a second microphone track of the page
        last = at
        after = [h - at for h in heard if 0 < h - at < within_ms]
        if after:
            out.append(min(after))
    return out


async def browser_to_browser(root: Path, seconds: float, period_s: float = 0.6,
                             timeout: float = 30.0) -> dict[str, Any]:
    """Mouth-to-ear between two persons' web UIs in one Chromium: clicks as both microphones,
    washington's timed as its page captures them and as moscow's page receives them."""
    why = browser_missing()
    if why:
        raise RuntimeError(why)
    from playwright.async_api import async_playwright

    use_host_addresses(["127.0.0.1"])
    wav = _click_track(root, period_s)
    line = BenchLine(root)
    await line.start()
    people: list[tuple[Any, Any]] = []
    try:
        for name in ("washington", "moscow"):
            await start_person(root, name, people)
        async with async_playwright() as playwright:
            chromium = await playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True,
                args=[*CHROMIUM_ARGS, f"--use-file-for-fake-audio-capture={wav}"])
            try:
                pages = []
                for _terminal, control in people:
                    # The worklet is loaded from a blob: URL, which the UI's CSP forbids.
                    context = await chromium.new_context(bypass_csp=True)
                    await context.add_init_script(AUDIO_PROCESSING_OFF + TAP_ONSETS)
                    page = await context.new_page()
                    page.set_default_timeout(timeout * 1000)
                    await page.goto(control.url)
                    await page.get_by_test_id("link-state").filter(
                        has_text="line server: connected").wait_for()
                    pages.append(page)
                caller, callee = pages
                await caller.locator(
                    '[data-testid="voice-call-button"][data-party="moscow"]').click()
                await callee.get_by_test_id("incoming-accept").click()
                for page in pages:
                    await page.locator('[data-testid="call-state"][data-state="active"]'
                                       ).wait_for()
                await asyncio.sleep(2.0)  # past the first second of NetEQ settling
                start = await caller.evaluate("performance.timeOrigin + performance.now()")
                await asyncio.sleep(seconds)
                sent = [t for t in await caller.evaluate("window.__onsets.local") if t >= start]
                heard = await callee.evaluate("window.__onsets.remote")
                call = people[0][0].book.calls()[-1]
                peer = people[1][0].book.info(call.call_id)
                await callee.get_by_test_id("hangup").click()
            finally:
                await chromium.close()
        latencies = pair_onsets(sent, heard)
        return {"latencies_ms": latencies, "clicks_sent": len(sent),
                "verified": bool(call.verified and peer.verified and call.sas == peer.sas)}
    finally:
        await stop_people(people)
        await line.stop()
